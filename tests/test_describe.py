"""What a model family answers for itself: ``tokenreduce.describe``, the vision adapters'
``blocks``/``final_norm``, ``patch(model, None)`` (the unreduced model) and the public
language-model cache helpers (``tokenreduce.lm``)."""

from __future__ import annotations

import pytest
import torch

import tokenreduce
from tokenreduce.adapters import blocks, final_norm

from .conftest import HF_VARIANTS, VIT_VARIANTS, images, make_vit, run
from .lmutil import tiny_lm

VISION = [*VIT_VARIANTS, *HF_VARIANTS]
#: leading protected tokens of each builder's model: class, distillation, registers
PREFIX = {"cls": 1, "distilled": 2, "registers": 5, "avgpool": 0,
          "hf_vit": 1, "hf_dinov2": 1, "hf_clip": 1, "hf_siglip": 0}  # fmt: skip


# -- describe ---------------------------------------------------------------------------------
@pytest.mark.parametrize("variant", VISION)
def test_describe_a_vision_model(variant):
    info = tokenreduce.describe(make_vit(variant))
    assert info.kind == "vision"
    assert info.num_layers == 4  # the builders' depth
    assert info.num_prefix == PREFIX[variant]
    assert info.has_class_token == (variant not in ("avgpool", "hf_siglip"))
    assert info.grid == (8, 8)  # 32-pixel images, 4-pixel patches
    assert info.sites == ("block:after_attention",)
    assert info.family.startswith("hf_vision:" if variant in HF_VARIANTS else "timm_vit")


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
@pytest.mark.parametrize("variant", VISION)
@torch.inference_mode()
def test_blocks_and_final_norm_are_the_models_own(variant):
    """The blocks are the model's modules in order (each feeds the next), and the final norm
    is applied to the last block's output: to every token (timm, ViT, DINOv2, SigLIP) or to
    the class token (CLIP's post_layernorm)."""
    model = make_vit(variant)
    layers, norm = blocks(model), final_norm(model)
    owned = {id(m) for m in model.modules()}
    assert len(layers) == 4 and all(id(m) in owned for m in [*layers, norm])
    seen: dict[str, list[torch.Tensor]] = {"in": [], "out": [], "norm": []}

    def first(value):
        return value[0] if isinstance(value, tuple) else value

    hooks = [blk.register_forward_pre_hook(
        lambda _m, a, k: seen["in"].append(first(a) if a else k["hidden_states"]),
        with_kwargs=True) for blk in layers]  # fmt: skip
    hooks += [blk.register_forward_hook(lambda _m, _a, o: seen["out"].append(first(o)))
              for blk in layers]  # fmt: skip
    hooks.append(norm.register_forward_pre_hook(lambda _m, a: seen["norm"].append(a[0])))
    try:
        run(model, images(2))
    finally:
        for hook in hooks:
            hook.remove()
    for out, nxt in zip(seen["out"], seen["in"][1:], strict=False):
        assert torch.equal(out, nxt)
    last = seen["out"][-1]
    normed = seen["norm"][0]
    assert torch.equal(normed, last if normed.dim() == 3 else last[:, 0])


def test_blocks_and_final_norm_refuse_a_language_model():
    model = tiny_lm()
    with pytest.raises(TypeError, match="LlamaForCausalLM .*has no vision blocks"):
        blocks(model)
    with pytest.raises(TypeError, match="has no vision final norm"):
        final_norm(model)


# -- patch(model, None): the unreduced model ---------------------------------------------------
@pytest.mark.parametrize("variant", VISION)
@torch.inference_mode()
def test_unreduced_patch_is_the_model(variant):
    model = make_vit(variant)
    x = images(2)
    expected = run(model, x)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with tokenreduce.patch(model, None) as handle:
        got = run(model, x)
        assert handle.method is None
        full = 64 + PREFIX[variant]
        assert handle.trace.attn_tokens == [full] * 4
        assert handle.trace.mlp_tokens == [full] * 4
        assert handle.gflops() == handle.baseline_gflops() > 0
        assert bool((handle.state.size == 1).all())
    assert torch.equal(got, expected)
    assert tokenreduce.handle_of(model) is None
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


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
