from __future__ import annotations

from dataclasses import dataclass

import torch

from ..core.reduction import Reduction
from .base import register
from .local_base import LocalMethod, LocalSite, per_timestep
from .tomesd import CellMergeParams, merge_sources


@register
@dataclass
class RandomMerge(CellMergeParams, LocalMethod):
    """Random merging: tomesd's sites, cells and budget, with similarity replaced by chance.

    The baseline a merging rule must beat. The grid is split into destinations (one per
    ``sx`` x ``sy`` cell) and sources as :class:`~tokenreduce.methods.ToMeSD` splits it; then
    ``floor(ratio * N)`` sources, chosen at random, are each merged into a destination chosen
    at random, by a plain mean. Every draw comes from a generator seeded by ``seed``, the
    block and the sample's timestep, so a sample's merges do not depend on its batch.

    Parameters: those of :class:`~tokenreduce.methods.ToMeSD` (``ratio`` in [0, 1),
    ``max_downsample``, ``sx``, ``sy``, ``use_rand``, ``merge_attn``, ``merge_crossattn``,
    ``merge_mlp``, ``seed``).
    """

    name = "random_merge"
    paper = "baseline"

    def reduce(self, site: LocalSite, n_remove: int) -> Reduction:
        dst, src = self.split(site)
        s, d = src.shape[1], dst.shape[1]

        def draw(g: torch.Generator) -> torch.Tensor:
            # a random rank for each source, a random destination column for each source
            return torch.stack([torch.rand(s, generator=g), torch.randint(d, (s,), generator=g).float()])

        score, match = per_timestep(site, self.seed + 1, draw).unbind(1)
        return merge_sources(site.num_tokens, dst, src, score, match.long(), n_remove)
