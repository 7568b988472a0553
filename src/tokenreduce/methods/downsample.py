from __future__ import annotations

import math
from dataclasses import dataclass

from ..core.context import TokenContext
from ..core.reducers import grid_downsample
from ..core.reduction import Reduction
from .base import register
from .pruning import KeepRatioMethod


@register
@dataclass
class Downsample(KeepRatioMethod):
    """Downsample the patch grid: average pooling to the smallest grid of the same aspect
    that keeps the budget, ignoring content.

    The structure-only baseline of visual-token reduction, found to beat many scoring methods
    in a published head-to-head (Wen et al., "Token Pruning in Multimodal Large Language
    Models: Are We Solving the Right Problem?", 2025, https://arxiv.org/abs/2502.11501). A
    grid of h x w patches becomes h' x w' cells, ``h' = ceil(h * s)``, ``w' = ceil(w * s)``
    with ``s = sqrt(keep / (h * w))``: 24 x 24 at keep ratio 0.5, 0.25 and 0.11 gives 17 x
    17, 12 x 12 and 8 x 8 (LLaVA's 289, 144 and 64 of 576). Rows and columns are partitioned
    into cells of near-equal size; each cell's tokens are averaged, weighted by size.
    Protected tokens are untouched. Unlike :class:`~tokenreduce.methods.Pool`, the cell size
    follows from the keep ratio.

    Parameters:
        keep_ratio: fraction of unprotected tokens kept (the nearest whole grid of cells),
            in (0, 1].
        layers: 0-based indices of the sites that pool (a vision-language model's handoff is
            site 0).
    """

    name = "downsample"
    paper = "baseline (Wen et al., 2025, arXiv:2502.11501)"
    needs_grid = True

    def reduce(self, ctx: TokenContext, n_remove: int) -> Reduction:
        h, w = ctx.grid
        out = cells_for(ctx.num_reducible - n_remove, h, w)
        return grid_downsample(ctx.state.position, ctx.grid, out, ctx.state.protected,
                               ctx.state.size, ctx.model.num_prefix)  # fmt: skip


def cells_for(keep: int, h: int, w: int) -> tuple[int, int]:
    """The cell grid (h', w') for ``keep`` of ``h * w`` tokens: both sides scaled by
    ``sqrt(keep / (h * w))`` and rounded, at least one cell each way, and one row or column
    fewer than the grid when the rounding would keep every token of a budget that removes
    some."""
    scale = math.sqrt(keep / (h * w))
    out_h, out_w = max(1, round(h * scale)), max(1, round(w * scale))
    if (out_h, out_w) == (h, w) and keep < h * w:
        out_h, out_w = (h - 1, w) if h >= w and h > 1 else (h, max(1, w - 1))
    return out_h, out_w
