from __future__ import annotations

import math
from dataclasses import dataclass

from ..core.context import TokenContext
from ..core.reducers import dominant_and_contextual
from ..core.reduction import Reduction
from .base import param, register
from .pruning import KeepRatioMethod


@register
@dataclass
class VisionZip(KeepRatioMethod):
    """VisionZip: keep the dominant tokens, merge the rest into a few contextual ones.

    Yang et al., "VisionZip: Longer is Better but Not Necessary in Vision Language Models",
    CVPR 2025. https://arxiv.org/abs/2412.04467

    Dominant tokens are those the vision encoder's class token attends to most (mean over
    heads; on a vision-language model, at the vision tower's layer whose output is handed
    over, the class token's query and key included although it is not handed over). The
    remaining tokens are merged into ``contextual`` tokens: evenly spaced ones among them are
    the targets, and every other joins the target whose key is most similar, averaged by size.
    The paper's 64-token setting keeps 54 dominant and 10 contextual tokens.

    Parameters:
        keep_ratio: fraction of unprotected tokens kept, dominant plus contextual, in (0, 1]
            (LLaVA-1.5: 192, 128 or 64 of 576).
        layers: 0-based indices of the sites that reduce (a vision-language model's handoff
            is site 0).
        contextual_share: share of the kept tokens that are merged contextual tokens, in
            [0, 1) (10 of 64 in the paper: 0.16).
    """

    name = "visionzip"
    paper = "Yang et al., CVPR 2025 (arXiv:2412.04467)"
    contextual_share: float = param(0.16, ge=0, lt=1)

    def reduce(self, ctx: TokenContext, n_remove: int) -> Reduction:
        keep = ctx.num_reducible - n_remove
        contextual = min(math.floor(self.contextual_share * keep + 0.5), n_remove, keep)
        return dominant_and_contextual(ctx.class_attention, ctx.key_mean, keep, contextual,
                                       ctx.state.protected, ctx.state.size)  # fmt: skip
