"""Shared fixtures: tiny timm ViTs of every supported layout and tiny randomly initialised
Hugging Face vision transformers, built in milliseconds; a tiny Llama and a left-padded batch
for the language-model tests (``lmutil.py``)."""

from __future__ import annotations

import pytest
import torch

import tokenreduce
from tokenreduce import methods
from tokenreduce.adapters import ADAPTERS, HFVisionAdapter, TimmViTAdapter
from tokenreduce.adapters.hf_vision import EXAMPLE_SIZE as HF_SIZE
from tokenreduce.adapters.timm_vit import EXAMPLE_SIZE as TIMM_SIZE
from tokenreduce.methods import Method

from .lmutil import padded_batch, tiny_lm

timm = pytest.importorskip("timm")

# The example models of every registered family (``Adapter.examples``): timm ViTs of every
# supported layout and Hugging Face vision transformers, 32x32 images in 4x4 patches (an 8x8
# grid), 4 blocks of width 48; tiny decoders. A family is in the shared suites once registered.
EXAMPLES = {name: build for a in ADAPTERS for name, build in a.examples().items()}
VIT_VARIANTS = tuple(TimmViTAdapter.examples())
HF_VARIANTS = tuple(HFVisionAdapter.examples())
VISION_VARIANTS = tuple(n for a in ADAPTERS if a.kind == "vision" for n in a.examples())
TINY = TIMM_SIZE  # the examples' sizes, for the tests' other layouts
HF_TINY = HF_SIZE


def make_hf(variant: str, seed: int = 0) -> torch.nn.Module:
    pytest.importorskip("transformers")
    return EXAMPLES[variant](seed=seed)


def make_vit(variant: str = "cls", seed: int = 0) -> torch.nn.Module:
    return EXAMPLES[variant](seed=seed)


def images(batch: int = 3, seed: int = 1) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, 32, 32, generator=gen)


def output(out) -> torch.Tensor:
    """A model's main output tensor: the tensor itself (timm), else the logits, the image
    embedding or the pooled output of a Hugging Face output object, or a diffusers
    denoiser's ``sample``."""
    if isinstance(out, torch.Tensor):
        return out
    for key in ("logits", "image_embeds", "pooler_output", "sample"):
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


def placed(name: str, model: torch.nn.Module, **overrides) -> Method:
    """Registered method ``name`` with its test parameters (``Method.for_tests``), placed by
    the depth a method of its class sees in ``model`` (``tokenreduce.describe(model, cls)``),
    then ``overrides``."""
    cls = methods.get(name)
    depth = tokenreduce.describe(model, cls).num_layers
    return cls.for_tests(**{**cls.placement(depth), **overrides})


def identity(name: str, model: torch.nn.Module) -> Method:
    """Method ``name`` placed in ``model`` at the budget that removes nothing."""
    cls = methods.get(name)
    return placed(name, model, **{cls.budget_param: cls.budget_identity})


def num_prefix(model: torch.nn.Module) -> int:
    """Leading protected tokens (class, distillation, registers) as the adapter sees them."""
    return tokenreduce.describe(model).num_prefix


@pytest.fixture(params=VISION_VARIANTS)
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
