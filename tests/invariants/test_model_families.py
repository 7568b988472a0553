"""What every vision layout (every timm and Hugging Face builder in ``conftest.py``) answers for
itself: ``tokenreduce.describe``, the adapters' ``blocks``/``final_norm``, and
``patch(model, None)`` as the unreduced model."""

from __future__ import annotations

import pytest
import torch

import tokenreduce
from tokenreduce.adapters import blocks, final_norm

from ..conftest import HF_VARIANTS, VIT_VARIANTS, images, make_vit, run

VISION = [*VIT_VARIANTS, *HF_VARIANTS]
#: leading protected tokens of each builder's model: class, distillation, registers
PREFIX = {"cls": 1, "distilled": 2, "registers": 5, "avgpool": 0,
          "hf_vit": 1, "hf_dinov2": 1, "hf_clip": 1, "hf_siglip": 0}  # fmt: skip


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
