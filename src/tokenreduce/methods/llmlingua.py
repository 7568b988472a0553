"""LLMLingua: a budget controller over documents, then iterative token-level compression.

Jiang, Wu, Lin, Yang, Qiu, "LLMLingua: Compressing Prompts for Accelerated Inference of
Large Language Models", EMNLP 2023. Two of the paper's three parts:

1. *Budget controller* (sec. 3.2): with several context documents (demonstrations), those
   of highest perplexity under the scorer are kept, most perplexing first, until they hold
   ``context_budget`` tokens more than the target; they keep their original order.
2. *Iterative token-level compression* (sec. 3.3, :mod:`tokenreduce.prompt.iterative`): the
   kept documents are compressed segment by segment, each scored given the compressed text
   before it, to exactly the target.

The third part, aligning a small scorer to the target LLM by instruction tuning, is training
and not done here. Unlike the reference implementation, whole words are kept or dropped (a
word's tokens compete by their mean self-information), so no word or multi-byte character is
ever split; the instruction and question are kept and condition nothing but the stream's
start (the instruction).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ..prompt import select
from ..prompt.iterative import compress_docs
from ..prompt.scorer import Stream
from .base import param, register
from .prompt_base import Plan, PromptMethod, Read

if TYPE_CHECKING:
    from ..prompt.scorer import Scorer


def coarse_keep(order: np.ndarray, sizes: np.ndarray, target: int, extra: int) -> np.ndarray:
    """Documents kept by the budget controller, (D,) bool: in ``order`` (best first) until
    their tokens reach ``target + extra`` (the document that crosses it is kept too)."""
    reached = np.cumsum(sizes[order]) >= target + extra
    stop = int(np.argmax(reached)) + 1 if reached.any() else len(order)
    keep = np.zeros(len(sizes), dtype=bool)
    keep[order[:stop]] = True
    return keep


@register
@dataclass
class LLMLingua(PromptMethod):
    """Parameters: the budget (``rate``, ``target_token`` or ``threshold``, see
    :mod:`tokenreduce.methods.prompt_base`); ``segment_size``, tokens per iteration of the
    token-level stage (the paper's 200); ``context_budget``, tokens beyond the target that
    the document-level stage keeps for the token-level one (the reference's ``"+100"``)."""

    name = "llmlingua"
    paper = "Jiang et al., LLMLingua: Compressing Prompts for Accelerated Inference, EMNLP 2023"

    segment_size: int = param(200, ge=1)
    context_budget: int = param(100, ge=0)

    def plan(self, prompts: list[Read], scorer: Scorer) -> list[Plan]:
        # the budget controller ranks the documents of prompts that have a target and several
        ranks = [p.target is not None and len(p.docs) > 1 for p in prompts]
        docs = [d.ids for p, r in zip(prompts, ranks, strict=True) if r for d in p.docs]
        infos = iter(scorer.self_information(docs))
        perplexity = [
            np.array([float(next(infos).mean()) for _ in p.docs]) if r else None
            for p, r in zip(prompts, ranks, strict=True)
        ]
        return [self._plan_one(p, ppl, scorer) for p, ppl in zip(prompts, perplexity, strict=True)]

    def _plan_one(self, prompt: Read, perplexity: np.ndarray | None, scorer: Scorer) -> Plan:
        sizes = prompt.sizes
        kept = np.ones(len(sizes), dtype=bool)
        if perplexity is not None:
            order = np.argsort(-perplexity, kind="stable")
            kept = coarse_keep(order, sizes, prompt.target, self.context_budget)
        order = np.flatnonzero(kept).tolist()
        docs = [prompt.docs[d] for d in order]
        prefix = None if prompt.instruction is None else prompt.instruction.ids
        reader = Stream(scorer, prefix)
        if prompt.target is None:
            return Plan(order, compress_docs(docs, reader, self.segment_size, floor=self.floor))
        share = prompt.target / max(int(sizes[kept].sum()), 1)
        targets = select.share_targets(sizes[kept], np.full(len(docs), share), prompt.target)
        return Plan(order, compress_docs(docs, reader, self.segment_size, targets=targets))
