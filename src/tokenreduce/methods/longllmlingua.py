"""LongLLMLingua: question-aware compression of long, multi-document contexts.

Jiang, Wu, Luo, Li, Lin, Yang, Qiu, "LongLLMLingua: Accelerating and Enhancing LLMs in Long
Context Scenarios via Prompt Compression", ACL 2024. Four of the paper's five parts:

1. *Question-aware coarse ranking* (sec. 4.1): a document matters as much as it makes the
   question likely: its importance is ``-mean log p(question + restrictive statement | doc)``
   negated (the restrictive statement, "We can get the answer to this question in the given
   documents.", is the paper's). The most important documents are kept until they hold
   ``context_budget`` tokens more than the target.
2. *Document reordering* (sec. 4.3): with ``reorder="sort"`` the kept documents are placed
   most important first, against the loss in the middle of long contexts.
3. *Dynamic compression ratios* (sec. 4.4): the i-th most important of N kept documents gets
   the ratio ``rate + dynamic_ratio * (1 - 2 i / (N - 1))``, all under one token target.
4. *Question-aware fine-grained compression* (sec. 4.2): tokens are scored by contrastive
   perplexity, how much the question lowers their self-information, in the iterative
   token-level loop of LLMLingua (:mod:`tokenreduce.prompt.iterative`).

The fifth, recovering the original spelling of entities in the model's answer, works on the
answer rather than the prompt and is not done here. Whole words are kept or dropped. Under a
threshold budget the coarse stage keeps every document (ranked and reordered) and a word
goes when the scorer, given the question, predicts it with at least that probability.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from ..prompt import select
from ..prompt.iterative import Contrast, compress_docs
from ..prompt.scorer import Stream
from .base import param, register
from .llmlingua import coarse_keep
from .prompt_base import Plan, PromptMethod, Read

if TYPE_CHECKING:
    from ..prompt.scorer import Scorer

RESTRICTIVE_STATEMENT = " We can get the answer to this question in the given documents."


def dynamic_ratios(rate: float, n: int, spread: float) -> np.ndarray:
    """Ratios of ``n`` documents from the most to the least important, (n,): ``rate`` plus
    a linear ramp from ``+spread`` to ``-spread`` (sec. 4.4)."""
    if n == 1:
        return np.array([rate])
    return rate + spread * (1 - 2 * np.arange(n) / (n - 1))


@register
@dataclass
class LongLLMLingua(PromptMethod):
    """Parameters: the budget (``rate``, ``target_token`` or ``threshold``, see
    :mod:`tokenreduce.methods.prompt_base`); ``segment_size`` and ``context_budget`` as in
    :class:`~tokenreduce.methods.LLMLingua`; ``dynamic_ratio``, the spread of the
    per-document ratios (0 gives every document the same); ``reorder``, ``"sort"`` (most
    important document first) or ``"original"``. Needs a question."""

    name = "longllmlingua"
    paper = "Jiang et al., LongLLMLingua: Accelerating LLMs in Long Context Scenarios, ACL 2024"

    segment_size: int = param(200, ge=1)
    context_budget: int = param(100, ge=0)
    dynamic_ratio: float = param(0.25, type=float, ge=0.0, le=1.0)
    reorder: str = param("sort", type=str, choices=("sort", "original"))

    def plan(self, prompts: list[Read], scorer: Scorer) -> list[Plan]:
        for p in prompts:
            if p.question is None:
                raise ValueError(
                    f"{self.name} ranks documents by the question: give question=..., or use "
                    "llmlingua or selective_context for a prompt without one"
                )
        statement = scorer.tokenize(RESTRICTIVE_STATEMENT).ids
        asks = [torch.cat([p.question.ids, statement]) for p in prompts]
        infos = iter(
            scorer.self_information(
                [a for a, p in zip(asks, prompts, strict=True) for _ in p.docs],
                prefixes=[d.ids for p in prompts for d in p.docs],
            )
        )
        importance = [np.array([-float(next(infos).mean()) for _ in p.docs]) for p in prompts]
        return [self._plan_one(p, imp, scorer) for p, imp in zip(prompts, importance, strict=True)]

    def _plan_one(self, prompt: Read, importance: np.ndarray, scorer: Scorer) -> Plan:
        sizes = prompt.sizes
        ranked = np.argsort(-importance, kind="stable")
        kept = np.ones(len(sizes), dtype=bool)
        if prompt.target is not None:
            kept = coarse_keep(ranked, sizes, prompt.target, self.context_budget)
        by_rank = [int(d) for d in ranked if kept[d]]
        order = by_rank if self.reorder == "sort" else sorted(by_rank)
        docs = [prompt.docs[d] for d in order]
        prefix = None if prompt.instruction is None else prompt.instruction.ids
        if prompt.target is None:
            head = torch.zeros(0, dtype=torch.long) if prefix is None else prefix
            reader = Stream(scorer, torch.cat([head, prompt.question.ids]))
            return Plan(order, compress_docs(docs, reader, self.segment_size, floor=self.floor))
        rate = prompt.target / max(int(sizes[kept].sum()), 1)
        ratio_by_rank = dynamic_ratios(rate, len(by_rank), self.dynamic_ratio)
        ratio = {d: r for d, r in zip(by_rank, ratio_by_rank, strict=True)}
        targets = select.share_targets(
            sizes[order], np.array([ratio[d] for d in order]), prompt.target
        )
        reader = Contrast(scorer, prefix, prompt.question.ids)
        return Plan(order, compress_docs(docs, reader, self.segment_size, targets=targets))
