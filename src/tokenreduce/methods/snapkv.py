from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..core.kv import KVContext, pool_scores
from .base import param, register
from .kv_base import KVCacheMethod


@register
@dataclass
class SnapKV(KVCacheMethod):
    """SnapKV: the observation window at the end of the prompt votes for the entries to keep.

    Li et al., "SnapKV: LLM Knows What You are Looking for Before Generation", NeurIPS 2024.
    https://arxiv.org/abs/2404.14469

    The last ``window_size`` queries (RoPE applied, computed for those rows only) attend to
    the prompt; the attention each entry receives is summed over the window, averaged over the
    query heads of each KV head, and pooled over ``kernel_size`` neighbours so that whole
    phrases survive (average pooling, the paper's default; its code also offers max pooling,
    which keeps every token next to a strongly attended one, e.g. all digits of a number).
    Selection is per KV head; the window itself is always kept.

    While generating with ``decode_every``, the observation window is the ``window_size``
    most recent tokens (the prompt's last ones, then the generated ones); the adapter keeps
    their queries, and pooling runs over the cache's neighbours.

    Parameters:
        window_size: observation window, in tokens (an integer >= 1).
        kernel_size: pooling width (an odd integer >= 1; 1 disables pooling).
        pooling: ``"avg"`` or ``"max"``.
        compression_ratio, cache_budget, decode_every: see :class:`KVCacheMethod`.
    """

    name = "snapkv"
    paper = "Li et al., NeurIPS 2024 (arXiv:2404.14469)"
    decodes = True
    window_size: int = param(32, ge=1)
    kernel_size: int = param(5, ge=1, odd=True)
    pooling: str = param("avg", choices=("avg", "max"))

    def num_protected(self) -> int:
        return self.window_size

    def protected_description(self) -> str:
        return f"the observation window, window_size={self.window_size}"

    def min_prompt(self) -> int:
        return self.window_size

    def decode_queries(self) -> int:
        return self.window_size

    def scores(self, ctx: KVContext, keep: Tensor) -> Tensor:
        scores = pool_scores(ctx.attention(self.window_size), self.kernel_size, self.pooling)
        window = self.recent(ctx, self.window_size)
        return scores.masked_fill(window[:, None, :], torch.inf)
