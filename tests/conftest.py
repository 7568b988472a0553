"""Shared fixtures: tiny timm ViTs of every supported layout and tiny randomly initialised
Hugging Face vision transformers, built in milliseconds; a tiny Llama and a left-padded batch
for the language-model tests (``lmutil.py``)."""

from __future__ import annotations

import pytest
import torch

import tokenreduce

from .lmutil import padded_batch, tiny_lm

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


# Hugging Face vision models of the same shape (32x32 images, patch 4, 4 layers, width 48).
HF_VARIANTS = ("hf_vit", "hf_dinov2", "hf_clip", "hf_siglip")
HF_TINY = {"image_size": 32, "patch_size": 4, "num_hidden_layers": 4, "hidden_size": 48,
           "num_attention_heads": 3}


def make_hf(variant: str, seed: int = 0) -> torch.nn.Module:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(seed)
    if variant == "hf_vit":  # a classifier with the 10-way head, like the timm models
        cfg = transformers.ViTConfig(**HF_TINY, intermediate_size=96, num_labels=10)
        return transformers.ViTForImageClassification(cfg).eval()
    if variant == "hf_dinov2":
        return transformers.Dinov2Model(transformers.Dinov2Config(**HF_TINY, mlp_ratio=2)).eval()
    if variant == "hf_clip":
        cfg = transformers.CLIPVisionConfig(**HF_TINY, intermediate_size=96)
        return transformers.CLIPVisionModel(cfg).eval()
    if variant == "hf_siglip":  # no class token, attention-pooling head
        cfg = transformers.SiglipVisionConfig(**HF_TINY, intermediate_size=96)
        return transformers.SiglipVisionModel(cfg).eval()
    raise KeyError(variant)


def make_vit(variant: str = "cls", seed: int = 0) -> torch.nn.Module:
    if variant in HF_VARIANTS:
        return make_hf(variant, seed)
    name, extra = VIT_VARIANTS[variant]
    torch.manual_seed(seed)
    return timm.create_model(name, **TINY, **extra).eval()


def images(batch: int = 3, seed: int = 1) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, 32, 32, generator=gen)


def output(out) -> torch.Tensor:
    """A model's main output tensor: the tensor itself (timm), else the logits, the image
    embedding or the pooled output of a Hugging Face output object."""
    if isinstance(out, torch.Tensor):
        return out
    for key in ("logits", "image_embeds", "pooler_output"):
        value = getattr(out, key, None)
        if value is not None:
            return value
    return out.last_hidden_state


def run(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Forward ``x`` and return the main output tensor."""
    return output(model(x))


def record_sdpa_masks(monkeypatch) -> list:
    """Route ``F.scaled_dot_product_attention`` through a recorder for the rest of the test and
    return the list that receives each fused call's ``attn_mask`` (None where it had none)."""
    masks: list = []
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def recording(*args, **kwargs):
        masks.append(kwargs.get("attn_mask"))
        return sdpa(*args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", recording)
    return masks


def num_prefix(model: torch.nn.Module) -> int:
    """Leading protected tokens (class, distillation, registers) as the adapter sees them."""
    return tokenreduce.describe(model).num_prefix


@pytest.fixture(params=[*VIT_VARIANTS, *HF_VARIANTS])
def vit(request) -> torch.nn.Module:
    return make_vit(request.param)


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models run on one thread: more would only oversubscribe a shared machine. Use with
    ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def llama() -> torch.nn.Module:
    """A random 2-layer Llama (``lmutil.tiny_lm``), one per test module."""
    return tiny_lm("llama", layers=2)


@pytest.fixture(scope="module")
def batch() -> tuple[torch.Tensor, torch.Tensor]:
    """Three prompts left-padded to ``lmutil.PROMPT`` tokens: (input_ids, attention_mask)."""
    return padded_batch()
