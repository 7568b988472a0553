"""Offline assets (models) loaded by name, with no network.

>>> model = tokenreduce.assets.load("fmnist-vit")
>>> tokenreduce.assets.available()
['fmnist-vit']

An entry is one loader function registered with ``@register(name, description)``; keyword
arguments given to ``load`` are passed to it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

_LOADERS: dict[str, tuple[Callable[..., Any], str]] = {}


def register(name: str, description: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register ``fn`` as the loader of asset ``name``."""

    def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
        if name in _LOADERS:
            raise ValueError(f"asset {name!r} is already registered")
        _LOADERS[name] = (fn, description)
        return fn

    return deco


def available() -> list[str]:
    """Names accepted by ``load``, sorted."""
    return sorted(_LOADERS)


def describe() -> dict[str, str]:
    """Name -> one-line description of every asset."""
    return {name: desc for name, (_, desc) in sorted(_LOADERS.items())}


def load(name: str, **kw: Any) -> Any:
    """Load the asset called ``name`` (see ``available()``) with loader options ``kw``."""
    if not isinstance(name, str) or name not in _LOADERS:
        raise KeyError(f"unknown asset {name!r}; available assets: {', '.join(available())}")
    return _LOADERS[name][0](**kw)


@register(
    "fmnist-vit",
    "timm ViT, 12 blocks, 56x56 input, patch 4 (196 patch tokens + class token), "
    "trained on Fashion-MNIST; bundled",
)
def _fmnist_vit(file: str | None = None) -> Any:
    from . import fmnist_vit

    return fmnist_vit.load(file)


@register(
    "fmnist-vit-tome",
    "fmnist-vit fine-tuned with ToMe r=16 in the loop; run it patched with 'tome:r=16' "
    "(checkpoints/fmnist-vit-tome.md); bundled",
)
def _fmnist_vit_tome(file: str | None = None) -> Any:
    from . import fmnist_vit

    return fmnist_vit.load(file or fmnist_vit.CHECKPOINT.with_name("fmnist-vit-tome.safetensors"))


from . import dinov2 as _dinov2  # noqa: E402,F401  (registers "dinov2-small")
from . import dit_fmnist as _dit_fmnist  # noqa: E402,F401  (registers "dit-fmnist")
from . import llava_shapes as _llava_shapes  # noqa: E402,F401  (registers "llava-shapes")
from . import llm as _llm  # noqa: E402,F401  (registers "smollm2", "gemma3-270m")
from . import minilm as _minilm  # noqa: E402,F401  (registers "all-minilm-l6-v2")

__all__ = ["available", "describe", "load", "register"]
