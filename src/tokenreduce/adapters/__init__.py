"""Adapters: the only code that knows a model family's internals."""

from __future__ import annotations

from torch import nn

from .base import Adapter, Trace
from .hf_decoder import HFDecoderAdapter
from .hf_vision import HFVisionAdapter
from .timm_vit import TimmViTAdapter

ADAPTERS: list[type[Adapter]] = [TimmViTAdapter, HFDecoderAdapter, HFVisionAdapter]


def find_adapter(model: nn.Module) -> type[Adapter]:
    for adapter in ADAPTERS:
        if adapter.matches(model):
            return adapter
    supported = "; ".join(a.family for a in ADAPTERS)
    raise TypeError(
        f"tokenreduce cannot patch a {type(model).__module__}.{type(model).__name__}; "
        f"supported model families: {supported}"
    )


__all__ = ["ADAPTERS", "Adapter", "Trace", "find_adapter"]
