from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..core.kv import KVContext
from .base import param, register
from .kv_base import KVCacheMethod


@register
@dataclass
class H2O(KVCacheMethod):
    """Heavy-Hitter Oracle: keep the entries with the largest accumulated attention, plus the
    most recent ones.

    Zhang et al., "H2O: Heavy-Hitter Oracle for Efficient Generative Inference of Large
    Language Models", NeurIPS 2023. https://arxiv.org/abs/2306.14048

    An entry's score is the attention it received from every query of the prompt (causal),
    summed over queries and averaged over the query heads of each KV head; selection is per
    KV head. A share ``recent_fraction`` of each budget goes to the most recent tokens (the
    paper splits the budget evenly). This needs every attention row of the prompt: they are
    computed at the reduction, a block of queries at a time (O(N^2) compute, O(N) memory per
    row block), not by switching the model to eager attention.

    While generating with ``decode_every``, the scores keep accumulating as in the paper: each
    generated token's attention over the cache (one row per layer and step) is added to every
    cached entry's total, and new entries start from their own; each reduction keeps the
    heaviest totals plus the recent share.

    Parameters:
        recent_fraction: share of the budget kept for the most recent tokens, in [0, 1].
        compression_ratio, cache_budget, decode_every: see :class:`KVCacheMethod`.
    """

    name = "h2o"
    paper = "Zhang et al., NeurIPS 2023 (arXiv:2306.14048)"
    decodes = True
    accumulates = True
    recent_fraction: float = param(0.5, ge=0, le=1)

    def scores(self, ctx: KVContext, keep: Tensor) -> Tensor:
        heavy = ctx.accumulated if ctx.accumulated is not None else ctx.attention(None)
        recent = self.recent(ctx, (keep.float() * self.recent_fraction).floor().long())
        return heavy.masked_fill(recent[:, None, :], torch.inf)
