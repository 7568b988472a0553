"""Adapters: the only code that knows a model family's internals."""

from __future__ import annotations

from torch import nn

from ..core.context import ModelInfo
from ..methods.base import Method
from .base import Adapter, ReductionNotApplied, Trace
from .diffusers import DiffusersDiTAdapter, DiffusersUNetAdapter
from .hf_decoder import HFDecoderAdapter, cache_bytes, cache_kwargs, find_cache, output_cache
from .hf_encoder import HFEncoderAdapter
from .hf_vision import HFVisionAdapter
from .hf_vlm import HFLlavaAdapter, HFQwenVLAdapter
from .timm_vit import TimmViTAdapter

ADAPTERS: list[type[Adapter]] = [
    TimmViTAdapter, HFDecoderAdapter, HFVisionAdapter, HFLlavaAdapter, HFQwenVLAdapter,
    HFEncoderAdapter, DiffusersDiTAdapter, DiffusersUNetAdapter,
]  # fmt: skip


def find_adapter(model: nn.Module) -> type[Adapter]:
    for adapter in ADAPTERS:
        if adapter.matches(model):
            return adapter
    supported = "; ".join(a.family for a in ADAPTERS)
    raise TypeError(
        f"tokenreduce cannot patch a {type(model).__module__}.{type(model).__name__}; "
        f"supported model families: {supported}"
    )


def describe(model: nn.Module, kind: type[Method] | None = None) -> ModelInfo:
    """Facts about ``model`` from the adapter of its family (TypeError if none matches), as
    a method of class ``kind`` sees them when given."""
    family = find_adapter(model)
    return family.describe(model) if kind is None else family.describe_for(model, kind)


def blocks(model: nn.Module) -> list[nn.Module]:
    """The transformer blocks of a supported vision model, in order; TypeError otherwise."""
    return find_adapter(model).blocks(model)


def final_norm(model: nn.Module) -> nn.Module:
    """The norm that turns a supported vision model's last block output into its final
    features; TypeError otherwise."""
    return find_adapter(model).final_norm(model)


__all__ = [
    "ADAPTERS",
    "Adapter",
    "ReductionNotApplied",
    "Trace",
    "blocks",
    "cache_bytes",
    "cache_kwargs",
    "describe",
    "final_norm",
    "find_adapter",
    "find_cache",
    "output_cache",
]
