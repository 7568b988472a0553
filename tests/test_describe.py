"""What a model family answers for itself: ``tokenreduce.describe``, the vision adapters'
``blocks``/``final_norm``, ``patch(model, None)`` (the unreduced model) and the public
language-model cache helpers (``tokenreduce.lm``). What every vision layout answers is checked
over all of them in ``tests/invariants/test_model_families.py``."""

from __future__ import annotations

import pytest
import torch

import tokenreduce
from tokenreduce.adapters import blocks, final_norm

from .conftest import images, make_vit
from .lmutil import tiny_lm


# -- describe ---------------------------------------------------------------------------------
@pytest.mark.parametrize("family", ["llama", "qwen3", "gemma3"])
def test_describe_a_language_model(family):
    info = tokenreduce.describe(tiny_lm(family, layers=3))
    assert info.kind == "language"
    assert (info.num_layers, info.num_prefix, info.grid) == (3, 0, None)
    assert info.family.startswith(f"hf_decoder:{family}")  # gemma3_text for Gemma-3
    assert "kv_cache:prefill" in info.sites


def test_describe_matches_the_patched_handle():
    model = make_vit("registers")
    with tokenreduce.patch(model, "tome:r=2") as handle:
        assert handle.info == tokenreduce.describe(model)


def test_describe_refuses_an_unsupported_model_as_patch_does():
    model = torch.nn.Linear(3, 3)
    with pytest.raises(TypeError) as from_patch:
        tokenreduce.patch(model, "tome:r=1")
    with pytest.raises(TypeError) as from_describe:
        tokenreduce.describe(model)
    assert str(from_describe.value) == str(from_patch.value)
    assert "cannot patch a torch.nn.modules.linear.Linear" in str(from_describe.value)


def test_model_info_kind_is_checked():
    from tokenreduce.core.context import ModelInfo

    with pytest.raises(ValueError, match="kind must be one of .*'audio'"):
        ModelInfo("x", 2, 0, False, None, kind="audio")
    assert ModelInfo("x", 2, 1, True, (4, 4)).kind == "vision"  # inferred from the grid


# -- blocks and final norm --------------------------------------------------------------------


def test_blocks_and_final_norm_refuse_a_language_model():
    model = tiny_lm()
    with pytest.raises(TypeError, match="LlamaForCausalLM .*has no vision blocks"):
        blocks(model)
    with pytest.raises(TypeError, match="has no vision final norm"):
        final_norm(model)


# -- patch(model, None): the unreduced model ---------------------------------------------------


@torch.inference_mode()
def test_unreduced_patch_costs_what_a_zero_budget_costs():
    model = make_vit("cls")
    x = images(2)
    with tokenreduce.patch(model, "tome:r=0") as zero:
        model(x)
        cost = zero.gflops()
    with tokenreduce.patch(model, None) as handle:
        model(x)
        assert handle.gflops() == cost
        assert repr(handle) == "Handle(VisionTransformer, unreduced, active)"
        with pytest.raises(RuntimeError, match=r"already patched \(unreduced\)"):
            tokenreduce.patch(model, None)


@pytest.mark.parametrize("family", ["llama", "gemma3"])
@torch.inference_mode()
def test_unreduced_patch_of_a_language_model(family):
    model = tiny_lm(family, layers=3)
    ids = torch.randint(0, 100, (2, 24), generator=torch.Generator().manual_seed(0))
    expected = model(ids, use_cache=True).logits
    generated = model.generate(ids[:1], max_new_tokens=4, do_sample=False)
    with tokenreduce.patch(model, None) as handle:
        assert handle.method is None
        assert torch.equal(model(ids, use_cache=True).logits, expected)
        assert torch.equal(model.generate(ids[:1], max_new_tokens=4, do_sample=False), generated)
        assert handle.gflops() == handle.baseline_gflops() > 0


def test_unreduced_patch_refuses_an_unsupported_model():
    with pytest.raises(TypeError, match="supported model families"):
        tokenreduce.patch(torch.nn.Linear(3, 3), None)


# -- tokenreduce.lm ----------------------------------------------------------------------------
@torch.inference_mode()
def test_lm_cache_helpers_are_public():
    model = tiny_lm(layers=2)
    ids = torch.randint(0, 100, (1, 10), generator=torch.Generator().manual_seed(1))
    out = model(ids, use_cache=True)
    cache = tokenreduce.lm.output_cache(out)
    assert cache is not None
    # 2 layers x (keys + values) x 2 KV heads x 10 tokens x head_dim 16 x 4 bytes
    assert tokenreduce.lm.cache_bytes(cache) == 2 * 2 * 2 * 10 * 16 * 4
    step = model(ids[:, -1:], **tokenreduce.lm.cache_kwargs(model, cache), use_cache=True)
    assert tokenreduce.lm.output_cache(step) is cache
    assert tokenreduce.lm.cache_bytes(cache) == 2 * 2 * 2 * 11 * 16 * 4
