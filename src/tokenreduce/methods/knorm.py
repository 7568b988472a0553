from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from ..core.kv import KVContext
from ..core.scorers import key_norm
from .base import register
from .kv_base import KVCacheMethod


@register
@dataclass
class KNorm(KVCacheMethod):
    """Keep the keys with the lowest L2 norm, per KV head.

    Devoto et al., "A Simple and Effective L2 Norm-Based Strategy for KV Cache Compression",
    EMNLP 2024. https://arxiv.org/abs/2406.11430

    Keys with a small norm tend to receive high attention, so the norm is a free proxy for
    attention: no query is needed.

    Parameters:
        compression_ratio, cache_budget, decode_every: see :class:`KVCacheMethod`.
    """

    name = "knorm"
    decodes = True
    paper = "Devoto et al., EMNLP 2024 (arXiv:2406.11430)"

    def scores(self, ctx: KVContext, keep: Tensor) -> Tensor:
        b, h, n, d = ctx.keys.shape
        # core key_norm averages over heads; one head per row gives the per-head norm.
        norms = key_norm(ctx.keys.reshape(b * h, 1, n, d)).view(b, h, n)
        return -norms
