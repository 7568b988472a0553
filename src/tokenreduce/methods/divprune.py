from __future__ import annotations

from dataclasses import dataclass

from ..core.context import TokenContext
from ..core.reducers import max_min_diverse
from ..core.reduction import Reduction
from .base import register
from .pruning import KeepRatioMethod


@register
@dataclass
class DivPrune(KeepRatioMethod):
    """DivPrune: keep the most diverse tokens, with no attention at all.

    Alvar et al., "DivPrune: Diversity-based Visual Token Pruning for Large Multimodal
    Models", CVPR 2025. https://arxiv.org/abs/2503.02175

    The kept tokens are the greedy solution of the max-min diversity problem over the
    tokens' features in cosine distance: first the token farthest from its nearest
    neighbour, then, one at a time, the token farthest from every token kept so far. On a
    vision-language model the features are the image tokens as the projector hands them to
    the language model (the paper's setting); on a vision transformer, the hidden states after
    the block's attention.

    Parameters:
        keep_ratio: fraction of unprotected tokens kept at each reduction layer, in (0, 1]
            (the paper's default keeps 9.8% of LLaVA-1.5's 576 image tokens).
        layers: 0-based indices of the sites that prune (a vision-language model's handoff
            is site 0).
    """

    name = "divprune"
    paper = "Alvar et al., CVPR 2025 (arXiv:2503.02175)"

    def reduce(self, ctx: TokenContext, n_remove: int) -> Reduction:
        return max_min_diverse(ctx.hidden, ctx.num_reducible - n_remove, ctx.state.protected)
