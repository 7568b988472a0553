"""Shared fixtures: tiny timm ViTs of every supported layout, built in milliseconds."""

from __future__ import annotations

import pytest
import torch

timm = pytest.importorskip("timm")

# name -> timm constructor and kwargs; 8x8 patch grid, 4 blocks, tiny width.
VIT_VARIANTS = {
    "cls": ("vit_tiny_patch16_224", {}),
    "distilled": ("deit_tiny_distilled_patch16_224", {}),
    "registers": ("vit_tiny_patch16_224", {"reg_tokens": 4}),
    "avgpool": ("vit_tiny_patch16_224", {"class_token": False, "global_pool": "avg"}),
}
TINY = {"img_size": 32, "patch_size": 4, "depth": 4, "embed_dim": 48, "num_heads": 3,
        "num_classes": 10}


def make_vit(variant: str = "cls", seed: int = 0) -> torch.nn.Module:
    name, extra = VIT_VARIANTS[variant]
    torch.manual_seed(seed)
    return timm.create_model(name, **TINY, **extra).eval()


def images(batch: int = 3, seed: int = 1) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, 32, 32, generator=gen)


@pytest.fixture(params=list(VIT_VARIANTS))
def vit(request) -> torch.nn.Module:
    return make_vit(request.param)
