from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..core.kv import KVContext
from ..core.scorers import random_scores
from .base import check, register
from .kv_base import KVCacheMethod, _is_int


@register
@dataclass
class KVRandom(KVCacheMethod):
    """Random eviction: the baseline every cache scoring rule must beat.

    Each KV head of each layer keeps a seeded random subset of the prompt's entries. The draw
    is indexed by the token's position in its own prompt, so a left-padded batch keeps the
    same entries as its samples one by one, and a run is reproducible.

    Parameters:
        seed: seed of the random draw (an integer >= 0).
        compression_ratio, cache_budget: see :class:`KVCacheMethod`.
    """

    name = "kv_random"
    paper = "baseline"
    seed: int = 0

    def __post_init__(self) -> None:
        check(self.name, "seed", self.seed, _is_int(self.seed) and self.seed >= 0,
              "an integer >= 0")
        super().__post_init__()

    def scores(self, ctx: KVContext, keep: Tensor) -> Tensor:
        b, h, n, _ = ctx.keys.shape
        draw = random_scores(h * n, self.seed * 1000 + ctx.layer, ctx.keys.device).view(h, n)
        pos = ctx.position.clamp_min(0)  # padding is masked by the adapter
        return torch.stack([draw[i][pos] for i in range(h)], dim=1)
