from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..core.context import TokenContext
from ..core.reducers import topk_prune
from ..core.reduction import Reduction, take
from ..core.scorers import cosine_similarity
from .base import param, register
from .pruning import KeepRatioMethod


@register
@dataclass
class PruneMerge(KeepRatioMethod):
    """Prune-then-merge hybrid at fixed rates, as DiffRate runs at inference.

    Chen et al., "DiffRate: Differentiable Compression Rate for Efficient Vision
    Transformers", ICCV 2023. https://arxiv.org/abs/2305.17997

    At each reducing block, after attention, the unprotected tokens are ranked by the
    attention the class token pays them (mean over heads; the full map's mean over queries
    for a model without a class token). The top ``ceil(keep_ratio * n)`` are kept as they
    are. Of the ``r`` others, the ``round(merge_share * r)`` ranked next are merged, each into
    its most similar kept token, by a size-weighted average; the least attentive rest are
    dropped. ``merge_share=0`` is top-K pruning, ``merge_share=1`` merges every token it
    removes. DiffRate learns its per-block prune and merge counts by a differentiable
    search; here they are set by ``keep_ratio``, ``layers`` and ``merge_share``, so the method
    runs off the shelf and matches the token counts of the keep-ratio pruning methods.
    Similarity is the cosine of the attention keys averaged over heads (ToMe's metric;
    DiffRate compares hidden states). Proportional attention (log size added to the
    attention logits) is on once tokens have merged, as in DiffRate and ToMe.

    Parameters:
        keep_ratio: fraction of unprotected tokens kept at each reduction layer, in (0, 1].
        layers: 0-based indices of the blocks that reduce (after attention).
        merge_share: share of the removed tokens that are merged rather than dropped, in
            [0, 1] (0.5: half of each cut merged, half dropped).
    """

    name = "prunemerge"
    paper = "Chen et al., ICCV 2023 (arXiv:2305.17997), inference at fixed rates"
    proportional_attention = True
    merge_share: float = param(0.5, ge=0, le=1)

    def reduce(self, ctx: TokenContext, n_remove: int) -> Reduction:
        state = ctx.state
        keep = ctx.num_reducible - n_remove
        n_merge = min(math.floor(self.merge_share * n_remove + 0.5), n_remove)
        if n_merge == 0 or keep == 0:  # nothing to merge into: a plain prune
            return topk_prune(ctx.class_attention, keep, state.protected)
        b, n = state.size.shape
        n_prot = state.num_protected
        # Rank: protected first, then by attention; ties broken by index for determinism.
        scores = ctx.class_attention.float().masked_fill(state.protected, float("inf"))
        order = scores.argsort(dim=1, descending=True, stable=True)
        dst = order[:, : n_prot + keep]  # tokens that stay (protected ones included)
        src = order[:, n_prot + keep : n_prot + keep + n_merge]  # tokens merged into them
        metric = ctx.key_mean
        sim = cosine_similarity(take(metric, src), take(metric, dst))
        sim.masked_fill_(state.protected.gather(1, dst)[:, None, :], -torch.inf)
        target = dst.gather(1, sim.argmax(dim=-1))  # input index of the token each joins
        group = torch.full((b, n), -1, dtype=torch.long, device=order.device)
        group.scatter_(1, dst, dst)
        group.scatter_(1, src, target)
        owns_slot = group == torch.arange(n, device=order.device)
        return Reduction.from_groups(
            group, state.size, owns_slot, num_out=n_prot + keep, num_fold=n_merge
        )
