from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..core.kv import KVContext
from .base import param, register
from .kv_base import KVCacheMethod


@register
@dataclass
class StreamingLLM(KVCacheMethod):
    """Attention sinks plus a recent window.

    Xiao et al., "Efficient Streaming Language Models with Attention Sinks", ICLR 2024.
    https://arxiv.org/abs/2309.17453

    The first ``n_sink`` tokens of the prompt (which soak up attention whatever their content)
    and the most recent tokens fill the budget; everything in between is evicted. Scores
    depend on positions only, so no attention is computed.

    Parameters:
        n_sink: sink tokens kept at the start of every prompt (an integer >= 0).
        compression_ratio, cache_budget, decode_every: see :class:`KVCacheMethod`.
    """

    name = "streamingllm"
    decodes = True
    paper = "Xiao et al., ICLR 2024 (arXiv:2309.17453)"
    n_sink: int = param(4, ge=0)

    def num_protected(self) -> int:
        return self.n_sink

    def protected_description(self) -> str:
        return f"n_sink={self.n_sink} sink tokens"

    def min_prompt(self) -> int:
        return max(1, self.n_sink)

    def scores(self, ctx: KVContext, keep: Tensor) -> Tensor:
        pos = ctx.position.float()  # later = more recent = better
        sink = (ctx.position >= 0) & (ctx.position < self.n_sink)
        return self.per_head(pos.masked_fill(sink, torch.inf), ctx)
