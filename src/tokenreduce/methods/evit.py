from __future__ import annotations

from dataclasses import dataclass

from ..core.context import TokenContext
from ..core.reducers import topk_fuse, topk_prune
from ..core.reduction import Reduction
from .base import param, register
from .pruning import KeepRatioMethod


@register
@dataclass
class EViT(KeepRatioMethod):
    """EViT: keep the attentive tokens, fuse the inattentive ones.

    Liang et al., "Not All Patches are What You Need: Expediting Vision Transformers via
    Token Reorganizations", ICLR 2022. https://arxiv.org/abs/2202.07800

    Tokens are scored by the attention the class token pays them (mean over heads; one row
    of the attention map, computed at the site). The top ``ceil(keep_ratio * n)`` stay; the
    rest are fused into a single token, their average weighted by attention (times size).

    Parameters:
        keep_ratio: fraction of unprotected tokens kept at each reduction layer, in (0, 1].
            The paper's default is 0.7.
        layers: 0-based indices of the blocks that reduce. The paper's default for 12 blocks
            is the 4th, 7th and 10th, i.e. ``(3, 6, 9)``.
        fuse: fuse the inattentive tokens into one extra token (True, the paper) or drop them.
    """

    name = "evit"
    paper = "Liang et al., ICLR 2022 (arXiv:2202.07800)"
    fuse: bool = param(True)

    def reduce(self, ctx: TokenContext, n_remove: int) -> Reduction:
        keep = ctx.num_reducible - n_remove
        scores = ctx.class_attention
        if self.fuse:
            return topk_fuse(scores, keep, ctx.state.protected, ctx.state.size)
        return topk_prune(scores, keep, ctx.state.protected)
