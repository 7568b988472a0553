from __future__ import annotations

from dataclasses import dataclass

from ..core.context import TokenContext
from ..core.reducers import topk_prune
from ..core.reduction import Reduction
from .base import register
from .pruning import KeepRatioMethod


@register
@dataclass
class TopK(KeepRatioMethod):
    """Attention-based top-K pruning: Algorithm 1 of the position paper.

    Kong et al., "Token Reduction Should Go Beyond Efficiency in Generative Models -- From
    Vision, Language to Multimodality", 2025. https://arxiv.org/abs/2505.18227

    Each token's importance is the attention it receives, s_i = mean_h Attn(q_cls, k_i), from
    the class token, or averaged over all queries when the model has none (that case
    computes the full attention map at the reduction layers). The top K tokens are kept and
    the rest are dropped.

    Parameters:
        keep_ratio: fraction of unprotected tokens kept at each reduction layer, in (0, 1].
        layers: 0-based indices of the blocks that prune (after attention).
    """

    name = "topk"
    paper = "Kong et al., 2025 (arXiv:2505.18227), Algorithm 1"

    def reduce(self, ctx: TokenContext, n_remove: int) -> Reduction:
        keep = ctx.num_reducible - n_remove
        return topk_prune(ctx.class_attention, keep, ctx.state.protected)
