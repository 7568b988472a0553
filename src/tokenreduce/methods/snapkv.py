from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..core.kv import KVContext, pool_scores
from .base import check, register
from .kv_base import KVCacheMethod, _is_int


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
    window_size: int = 32
    kernel_size: int = 5
    pooling: str = "avg"

    def __post_init__(self) -> None:
        check(
            self.name,
            "window_size",
            self.window_size,
            _is_int(self.window_size) and self.window_size >= 1,
            "an integer >= 1",
        )
        check(
            self.name,
            "kernel_size",
            self.kernel_size,
            _is_int(self.kernel_size) and self.kernel_size >= 1 and self.kernel_size % 2 == 1,
            "an odd integer >= 1",
        )
        check(self.name, "pooling", self.pooling, self.pooling in ("avg", "max"), "'avg' or 'max'")
        super().__post_init__()

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
