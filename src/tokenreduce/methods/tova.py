from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from ..core.kv import KVContext
from .base import register
from .kv_base import KVCacheMethod


@register
@dataclass
class TOVA(KVCacheMethod):
    """Token Omission Via Attention: keep the entries the last token attends to most.

    Oren et al., "Transformers are Multi-State RNNs", EMNLP 2024.
    https://arxiv.org/abs/2401.06104

    The score is the attention from the prompt's last query, averaged over all heads of the
    layer, so every KV head keeps the same tokens (the paper's choice). Only that one query
    row is computed.

    Parameters:
        compression_ratio, cache_budget, decode_every: see :class:`KVCacheMethod`.
    """

    name = "tova"
    decodes = True
    paper = "Oren et al., EMNLP 2024 (arXiv:2401.06104)"

    def decode_queries(self) -> int:
        return 1

    def scores(self, ctx: KVContext, keep: Tensor) -> Tensor:
        return self.per_head(ctx.attention(1).mean(dim=1), ctx)
