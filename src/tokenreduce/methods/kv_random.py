from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..core.kv import KVContext
from ..core.scorers import random_scores
from .base import param, register
from .kv_base import KVCacheMethod


@register
@dataclass
class KVRandom(KVCacheMethod):
    """Random eviction: the baseline every cache scoring rule must beat.

    Each KV head of each layer keeps a seeded random subset of the prompt's entries. The draw
    is indexed by the token's position in its own prompt, so a left-padded batch keeps the
    same entries as its samples one by one, and a run is reproducible.

    Parameters:
        seed: seed of the random draw (an integer >= 0).
        compression_ratio, cache_budget, decode_every: see :class:`KVCacheMethod`.
    """

    name = "kv_random"
    decodes = True
    paper = "baseline"
    seed: int = param(0, ge=0)

    def scores(self, ctx: KVContext, keep: Tensor) -> Tensor:
        h = ctx.keys.shape[1]
        pos = ctx.position.clamp_min(0)  # padding is masked by the adapter
        # Fixed-size blocks seeded by (seed, layer, head, block): a token's draw depends on
        # its position only, never on how long the padded batch is.
        blocks = int(pos.max()) // _BLOCK + 1
        table = torch.stack(
            [
                torch.cat(
                    [
                        random_scores(_BLOCK, hash((self.seed, ctx.layer, head, j)) % 2**62)
                        for j in range(blocks)
                    ]
                )
                for head in range(h)
            ]
        ).to(ctx.keys.device)
        pos = pos if pos.dim() == 3 else pos[:, None, :].expand(-1, h, -1)
        return torch.stack([table[head][pos[:, head]] for head in range(h)], dim=1)


_BLOCK = 4096
