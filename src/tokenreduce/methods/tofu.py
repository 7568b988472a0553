from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import Tensor

from ..core.reduction import Reduction
from .base import param, register
from .local_base import LocalMethod, LocalPlan, LocalSite, MergePlan
from .tomesd import CellMergeParams, merge_sources, similar_destination


@register
@dataclass
class ToFu(CellMergeParams, LocalMethod):
    """Token Fusion: prune where a layer responds non-linearly to averaged inputs, merge with
    a norm-preserving average (MLERP) where it responds linearly.

    Kim et al., "Token Fusion: Bridging the Gap between Token Pruning and Token Merging",
    WACV 2024. https://arxiv.org/abs/2312.01026

    Sources are matched to destinations as :class:`~tokenreduce.methods.ToMeSD` matches them
    (one destination per ``sx`` x ``sy`` cell, cosine similarity of the block's input tokens,
    the ``floor(ratio * N)`` best-matched sources). What happens to a matched source depends
    on the site, as the paper's layer linearity decides it: averaging two inputs gives the
    average of the outputs only for a layer close to linear, which the paper finds the early
    layers are not. At the first ``prune_share`` of the sites (in execution order) a matched
    source is *pruned*: it does not enter its destination, which keeps its own value, and it
    receives the destination's output. At the later sites it is *merged* by MLERP: the slot
    is the direction of its members' mean scaled to the largest member norm, so merged tokens
    keep the norm distribution a plain mean shrinks.

    Parameters: those of :class:`~tokenreduce.methods.ToMeSD` (``ratio`` in [0, 1),
    ``max_downsample``, ``sx``, ``sy``, ``use_rand``, ``merge_attn``, ``merge_crossattn``,
    ``merge_mlp``, ``seed``), and
        prune_share: share of the sites, from the first, that prune rather than merge, in
            [0, 1] (0.5: the first half; 0 merges everywhere, 1 prunes everywhere).
    """

    name = "tofu"
    paper = "Kim et al., WACV 2024 (arXiv:2312.01026)"
    prune_share: float = param(0.5, ge=0, le=1)

    def prunes(self, site: LocalSite) -> bool:
        return site.site < self.prune_share * site.num_sites

    def plan(self, site: LocalSite) -> LocalPlan:
        plan = super().plan(site)
        if not isinstance(plan, MergePlan):
            return plan
        if self.prunes(site):
            return plan  # the reduction already gives pruned sources weight 0
        return MlerpPlan(plan.reduction, plan.parts)

    def reduce(self, site: LocalSite, n_remove: int) -> Reduction:
        dst, src = self.split(site)
        score, match = similar_destination(site.hidden, dst, src)
        red = merge_sources(site.num_tokens, dst, src, score, match, n_remove)
        if not self.prunes(site):
            return red
        # A pruned source joins its destination's slot with weight 0: the slot keeps the
        # destination's value, and unmerging still copies the slot's output back to it.
        owns = torch.zeros_like(red.weight).scatter_(1, red.anchor, 1.0)
        return dataclasses.replace(red, weight=owns)


@dataclass(frozen=True)
class MlerpPlan(MergePlan):
    """:class:`MergePlan` whose slots are MLERP merges: the members' mean direction at the
    largest member norm."""

    def combine(self, x: Tensor) -> Tensor:
        mean = self.reduction.apply(x)
        norms = x.float().norm(dim=-1)
        slot = self.reduction.assign.clamp_min(0)
        largest = norms.new_zeros(mean.shape[:2]).scatter_reduce(1, slot, norms, "amax")
        scale = largest / mean.float().norm(dim=-1).clamp_min(1e-6)
        return mean * scale[..., None].to(mean.dtype)
