from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from ..core.context import TokenContext
from ..core.reduction import Reduction
from .base import register
from .pruning import KeepRatioMethod

#: squared grid distance given to tokens without a grid position (synthetic, off-grid): taken
#: only once every token on the grid is
_OFF_GRID = 1e12


@register
@dataclass
class Uniform(KeepRatioMethod):
    """Spatially uniform selection: keep tokens evenly spread over the patch grid, whatever
    the content (the position-bias control of attention-based selection).

    Our own baseline. ``keep`` target points are laid on the grid of h x w patches in ``rows``
    evenly spaced rows (about ``sqrt(keep * h / w)``, so the spacing is near equal both ways),
    each row holding ``keep / rows`` evenly spaced points (rows differ by at most one); each
    point takes the nearest token not yet taken, in raster order of the points. On a full
    grid this is a strided sub-grid (8 x 8 patches at 16 tokens: rows and columns 0, 2, 4, 6);
    after an earlier reduction the nearest remaining tokens stand in. Unlike
    :class:`~tokenreduce.methods.Downsample`, which averages each cell, ``uniform`` selects:
    the kept tokens are unchanged. Protected tokens stay.

    Parameters:
        keep_ratio: fraction of unprotected tokens kept, in (0, 1].
        layers: 0-based indices of the sites that select (a vision-language model's handoff
            is site 0).
    """

    name = "uniform"
    paper = "baseline (spatially uniform selection, the position-bias control)"
    needs_grid = True

    def reduce(self, ctx: TokenContext, n_remove: int) -> Reduction:
        keep = ctx.num_reducible - n_remove
        points = uniform_points(keep, *ctx.grid).to(ctx.hidden.device)
        return nearest_to_points(points, ctx.state.position, ctx.grid, ctx.state.protected,
                                 ctx.model.num_prefix)  # fmt: skip


def uniform_points(keep: int, h: int, w: int) -> Tensor:
    """(keep, 2) (row, col) coordinates, in patch units, of ``keep`` points spread evenly over
    an ``h`` x ``w`` grid, in raster order: ``rows`` evenly spaced rows of ``keep / rows``
    evenly spaced points each (the first rows take one fewer when it does not divide), every
    point at the centre of its share of the grid. ValueError if ``keep`` exceeds ``h * w``."""
    if not 0 <= keep <= h * w:
        raise ValueError(f"uniform_points: keep={keep} points do not fit a {h} x {w} grid")
    if keep == 0:
        return torch.zeros(0, 2)
    rows = min(h, keep, max(math.ceil(keep / w), round(math.sqrt(keep * h / w))))
    points = []
    for i in range(rows):
        count = (i + 1) * keep // rows - i * keep // rows
        y = (2 * i + 1) * h / (2 * rows) - 0.5
        points += [(y, (2 * j + 1) * w / (2 * count) - 0.5) for j in range(count)]
    return torch.tensor(points)


def nearest_to_points(
    points: Tensor, position: Tensor, grid: tuple[int, int], protected: Tensor, num_prefix: int
) -> Reduction:
    """Keep, for each of ``points`` (K, 2) in turn, the unprotected token nearest to it on the
    grid (squared distance; ties to the lower index) among those not yet kept; protected
    tokens are kept too.

    Args:
        points: (K, 2) (row, col) targets in patch units.
        position: (B, N) original index of each token (``TokenState.position``); grid patches
            start after ``num_prefix`` prefix tokens, a negative position is off the grid.
        grid: the patch grid (rows, cols).
        protected: (B, N) bool, the same number in every sample.
        num_prefix: leading prefix tokens of the original sequence (not on the grid).
    """
    b, n = position.shape
    w = grid[1]
    patch = position - num_prefix
    on_grid = patch >= 0
    row, col = (patch.clamp_min(0) // w).float(), (patch.clamp_min(0) % w).float()
    rows_apart = row[:, None, :] - points[None, :, :1]
    cols_apart = col[:, None, :] - points[None, :, 1:]
    dist = rows_apart**2 + cols_apart**2
    dist = dist.masked_fill(~on_grid[:, None, :], _OFF_GRID)  # (B, K, N)
    taken = protected.clone()
    batch = torch.arange(b, device=position.device)
    for k in range(points.shape[0]):
        pick = dist[:, k].masked_fill(taken, math.inf).argmin(1)
        taken[batch, pick] = True
    kept = taken.nonzero()[:, 1].view(b, -1)
    return Reduction.select(kept, n)
