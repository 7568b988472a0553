from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ..core.reduction import Reduction, take
from .base import param, register
from .local_base import LocalMethod, LocalSite, cells, chosen_parts, level_param, per_timestep


def cell_destinations(method: str, site: LocalSite, sx: int, sy: int, rand: bool, seed: int):
    """tomesd's split of a grid into destinations and sources: one destination per ``sy`` x
    ``sx`` cell, a random one (``rand``, drawn per timestep: :func:`per_timestep`) or the
    top-left one. Returns ``(dst, src)``: token indices (B, D) and (B, N - D), each in raster
    order, D the number of cells."""
    rows, cols = cells(method, site, sx, sy)
    b, n = site.hidden.shape[:2]
    if rand:
        pick = per_timestep(site, seed, lambda g: torch.randint(sy * sx, (rows, cols), generator=g))
    else:
        pick = torch.zeros(b, rows, cols, dtype=torch.long, device=site.hidden.device)
    # The chosen cell member's raster index: cell (i, j), member k = (k // sx, k % sx).
    i = torch.arange(rows, device=pick.device)[:, None] * sy + pick // sx
    j = torch.arange(cols, device=pick.device)[None, :] * sx + pick % sx
    dst = (i * site.grid[1] + j).flatten(1).sort(dim=1).values
    is_dst = torch.zeros(b, n, dtype=torch.bool, device=pick.device).scatter_(1, dst, True)
    src = torch.sort(is_dst.to(torch.uint8), dim=1, stable=True).indices[:, : n - dst.shape[1]]
    return dst, src


def similar_destination(metric: Tensor, dst: Tensor, src: Tensor) -> tuple[Tensor, Tensor]:
    """Each source token's most similar destination by cosine similarity of ``metric``
    (B, N, C): ``(score, index)``, each (B, S), ``index`` into ``dst``'s columns."""
    metric = F.normalize(metric, dim=-1)
    scores = take(metric, src) @ take(metric, dst).transpose(-1, -2)
    return scores.max(dim=-1)


def merge_sources(n: int, dst: Tensor, src: Tensor, score: Tensor, match: Tensor, r: int):
    """The :class:`Reduction` merging the ``r`` sources of highest ``score`` (B, S) into their
    destinations (``match`` (B, S), columns of ``dst``): every slot the plain mean of its
    members, as tomesd's ``scatter_reduce(..., "mean")``. ``r`` is capped at the sources."""
    b = dst.shape[0]
    r = min(r, src.shape[1])
    order = score.argsort(dim=-1, descending=True)[:, :r]
    merged = src.gather(1, order)  # input indices of the merged sources
    into = dst.gather(1, match.gather(1, order))
    group = torch.arange(n, device=dst.device).repeat(b, 1).scatter_(1, merged, into)
    owns = torch.ones(b, n, dtype=torch.bool, device=dst.device).scatter_(1, merged, False)
    ones = torch.ones(b, n, device=dst.device)
    return Reduction.from_groups(group, ones, owns, num_out=n - r, num_fold=r)


@dataclass
class CellMergeParams:
    """The parameters tomesd's family of methods share (see :class:`ToMeSD`)."""

    ratio: float = param(0.5, ge=0, lt=1)
    max_downsample: int = level_param(1)
    sx: int = param(2, ge=1)
    sy: int = param(2, ge=1)
    use_rand: bool = param(True)
    merge_attn: bool = param(True)
    merge_crossattn: bool = param(False)
    merge_mlp: bool = param(False)
    seed: int = param(0, ge=0)

    def parts(self) -> frozenset[str]:
        return chosen_parts(self.merge_attn, self.merge_crossattn, self.merge_mlp)

    def split(self, site: LocalSite) -> tuple[Tensor, Tensor]:
        return cell_destinations(self.name, site, self.sx, self.sy, self.use_rand, self.seed)


@register
@dataclass
class ToMeSD(CellMergeParams, LocalMethod):
    """Token Merging for Stable Diffusion: bipartite soft matching with one destination per
    ``sx`` x ``sy`` cell, around the sub-layers of every chosen block.

    Bolya & Hoffman, "Token Merging for Fast Stable Diffusion", CVPR Workshops 2023.
    https://arxiv.org/abs/2303.17604 (reference code: dbolya/tomesd)

    In each block whose grid is at most ``max_downsample`` times coarser than the input
    latents, one token of every ``sy`` x ``sx`` cell becomes a destination (a random one per
    cell with ``use_rand``, else the top-left one) and the others sources. Each source is
    matched to its most similar destination by cosine similarity of the block's input
    tokens (B, N, C), and the ``floor(ratio * N)`` best-matched sources are merged into their
    destination by a plain mean. The chosen sub-layers (self-attention, cross-attention,
    feed-forward) run on the N - r merged tokens after the block's norm; their outputs are
    copied back to every member, so the block's output has all N tokens.

    Random destinations are drawn from a CPU generator seeded by ``seed``, the block and the
    sample's timestep: a sample draws the same cells in any batch, and a seeded sampling run
    is reproducible (tomesd keeps one generator per device, so its draws depend on the batch).
    The grid must be divisible into cells at every reduced level (ValueError otherwise;
    tomesd leaves the remainder unmerged).

    Parameters:
        ratio: share of each block's tokens merged away, in [0, 1) (tomesd's ``ratio``; at
            most the sources, 1 - 1/(sx*sy), go).
        max_downsample: coarsest resolution level reduced: 1 (only the highest-resolution
            blocks, tomesd's default), 2, 4 or 8. A DiT has one level, 1.
        sx, sy: cell width and height in tokens (>= 1; tomesd's default 2 x 2).
        use_rand: a random destination per cell (True, tomesd's default) or the top-left one.
        merge_attn, merge_crossattn, merge_mlp: which sub-layers run on the merged tokens
            (tomesd's defaults: self-attention only).
        seed: seed of the random destinations (an integer >= 0).
    """

    name = "tomesd"
    paper = "Bolya & Hoffman, CVPR Workshops 2023 (arXiv:2303.17604)"

    def reduce(self, site: LocalSite, n_remove: int) -> Reduction:
        dst, src = self.split(site)
        score, match = similar_destination(site.hidden, dst, src)
        return merge_sources(site.num_tokens, dst, src, score, match, n_remove)
