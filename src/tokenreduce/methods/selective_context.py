"""Selective Context: drop the least informative phrases of a context.

Li, Dong, Guerin, Lin, "Compressing Context to Enhance Inference Efficiency of Large
Language Models", EMNLP 2023. A causal LM gives each token its self-information
``-log p(x_t | x_<t)``; tokens are pooled into lexical units (words, phrases or sentences)
and the least informative units are removed.

Units compete by their mean self-information per token (the paper filters units by a
percentile of their summed information; under a budget in tokens, information per token is
the quantity that fills it best). Phrases here are the spans between punctuation marks (the
paper uses a parser's noun phrases, which needs spaCy). Every document is scored on its own,
all of them in padded batches, and the budget is shared by the prompt's documents.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ..prompt import select
from ..prompt.units import LEVELS
from .base import param, register
from .prompt_base import Plan, PromptMethod, Read

if TYPE_CHECKING:
    from ..prompt.scorer import Scorer


@register
@dataclass
class SelectiveContext(PromptMethod):
    """Parameters: the budget (``rate``, ``target_token`` or ``threshold``, see
    :mod:`tokenreduce.methods.prompt_base`) and ``unit``, what is kept or dropped whole:
    ``"word"``, ``"phrase"`` (default) or ``"sentence"``."""

    name = "selective_context"
    paper = "Li et al., Compressing Context to Enhance Inference Efficiency of LLMs, EMNLP 2023"

    unit: str = param("phrase", type=str, choices=LEVELS)

    def plan(self, prompts: list[Read], scorer: Scorer) -> list[Plan]:
        info = iter(scorer.self_information([d.ids for p in prompts for d in p.docs]))
        return [self._plan_one(p, [next(info) for _ in p.docs]) for p in prompts]

    def _plan_one(self, prompt: Read, infos: list) -> Plan:
        # one unit numbering over all documents, so they share the budget
        unit_of_group, offset = [], 0
        for doc in prompt.docs:
            ids = doc.groups.units(self.unit) + offset
            unit_of_group.append(ids)
            offset = int(ids[-1]) + 1 if len(ids) else offset
        unit_of_token = np.concatenate(
            [u[d.groups.of_token] for u, d in zip(unit_of_group, prompt.docs, strict=True)]
        )
        scores = select.unit_means(np.concatenate([i.numpy() for i in infos]), unit_of_token)
        sizes = np.bincount(unit_of_token, minlength=offset)
        if prompt.target is None:
            kept_units = select.above(scores, self.floor)
        else:
            kept_units = select.keep_best(scores, sizes, prompt.target)
        keep = [kept_units[u] for u in unit_of_group]
        order = [d for d, mask in enumerate(keep) if mask.any()]
        return Plan(order, [keep[d] for d in order])
