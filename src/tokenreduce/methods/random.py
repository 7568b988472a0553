from __future__ import annotations

from dataclasses import dataclass

from ..core.context import TokenContext
from ..core.reducers import topk_prune
from ..core.reduction import Reduction
from ..core.scorers import random_scores
from .base import param, register
from .pruning import KeepRatioMethod


@register
@dataclass
class RandomPrune(KeepRatioMethod):
    """Random pruning: the baseline every scoring rule must beat.

    Keeps a random ``ceil(keep_ratio * n)`` of the unprotected tokens at each reduction
    layer. The draw depends only on ``seed`` and the layer, not on the batch, so a batch
    gives the same result as its samples one by one and a run is reproducible.

    Parameters:
        keep_ratio: fraction of unprotected tokens kept at each reduction layer, in (0, 1].
        layers: 0-based indices of the blocks that prune (after attention).
        seed: seed of the random draw (an integer >= 0).
    """

    name = "random"
    paper = "baseline"
    budget_sweep = (0.7, 0.5)
    seed: int = param(0, ge=0)

    def reduce(self, ctx: TokenContext, n_remove: int) -> Reduction:
        n = ctx.state.num_tokens
        keep = ctx.num_reducible - n_remove
        scores = random_scores(n, self.seed * 1000 + ctx.layer, ctx.hidden.device)
        return topk_prune(scores.expand(ctx.hidden.shape[0], n), keep, ctx.state.protected)
