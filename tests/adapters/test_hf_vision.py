"""The Hugging Face vision adapter: what the shared invariant suite does not cover.

(The shared suite in ``tests/invariants/test_token_methods.py`` already runs every token method
over tiny Hugging Face ViT, DINOv2, CLIP and SigLIP models.)
"""

from __future__ import annotations

import pytest
import torch

import tokenreduce
from tokenreduce.core.state import TokenState

from ..conftest import HF_TINY, images, make_hf, record_sdpa_masks, run

transformers = pytest.importorskip("transformers")


def test_unsupported_hf_vision_class_is_named():
    cfg = transformers.Dinov2Config(**HF_TINY, mlp_ratio=2, num_labels=3)
    model = transformers.Dinov2ForImageClassification(cfg)
    with pytest.raises(TypeError, match=r"Dinov2ForImageClassification; supported .*Dinov2Model"):
        tokenreduce.patch(model, "tome:r=4")


def test_full_clip_model_points_to_its_vision_tower():
    cfg = transformers.CLIPConfig(
        vision_config={**HF_TINY, "intermediate_size": 96},
        text_config={
            "hidden_size": 32,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "intermediate_size": 64,
            "vocab_size": 100,
        },
    )
    model = transformers.CLIPModel(cfg)
    with pytest.raises(TypeError, match=r"CLIPModel.*model\.vision_model"):
        tokenreduce.patch(model, "tome:r=4")
    tokenreduce.patch(model.vision_model, "tome:r=4").remove()  # the tower itself is fine


def test_kv_cache_method_is_rejected():
    with pytest.raises(ValueError, match="kind 'tokens'"):
        tokenreduce.patch(make_hf("hf_vit"), "snapkv:compression_ratio=0.5")


@torch.inference_mode()
def test_image_size_not_multiple_of_patch_is_an_error():
    model = make_hf("hf_dinov2")  # DINOv2 interpolates, so only the patch multiple matters
    with tokenreduce.patch(model, "tome:r=4"), pytest.raises(ValueError, match=r"34x32 .* 4x4"):
        model(torch.randn(1, 3, 34, 32))


@torch.inference_mode()
def test_other_image_size_updates_the_grid():
    model = make_hf("hf_dinov2")
    x = torch.randn(2, 3, 48, 32)  # 12 x 8 patches instead of 8 x 8
    with tokenreduce.patch(model, "pool:kernel=2,layers=(1,)") as handle:
        out = model(x)
        assert handle.trace.grid == (12, 8)  # this input's grid
        assert handle.info.grid == (8, 8)  # the configured one
        assert handle.trace.mlp_tokens == [97, 25, 25, 25]  # 96 patches pooled 2x2, + class
        assert handle.baseline_gflops() > handle.gflops()
    assert out.last_hidden_state.shape == (2, 25, 48)


@torch.inference_mode()
def test_registers_are_protected():
    cfg = transformers.Dinov2WithRegistersConfig(**HF_TINY, mlp_ratio=2, num_register_tokens=3)
    model = transformers.Dinov2WithRegistersModel(cfg).eval()
    x = images()
    expected = model(x).pooler_output
    with tokenreduce.patch(model, "topk:keep_ratio=0.5,layers=(1,2)") as handle:
        model(x)
        state = handle.state
        assert handle.info.num_prefix == 4
        assert torch.equal(state.position[:, :4], torch.arange(4).expand(3, -1))
        assert bool(state.protected[:, :4].all()) and not bool(state.protected[:, 4:].any())
    assert torch.equal(model(x).pooler_output, expected)


@torch.inference_mode()
@pytest.mark.parametrize("variant", ["hf_vit", "hf_dinov2", "hf_clip", "hf_siglip"])
def test_sdpa_is_kept(variant, monkeypatch):
    model = make_hf(variant)
    assert model.config._attn_implementation == "sdpa"
    calls = record_sdpa_masks(monkeypatch)
    with tokenreduce.patch(model, "tome:r=8,prop_attn=true"):
        run(model, images())
    assert len(calls) == 4 + (variant == "hf_siglip")  # SigLIP's pooling head uses SDPA too
    # Proportional attention enters the fused kernel as an additive bias once tokens merged.
    assert calls[0] is None and all(c is not None for c in calls[1:4])


@torch.inference_mode()
@pytest.mark.parametrize("variant", ["hf_vit", "hf_dinov2", "hf_clip", "hf_siglip"])
def test_eager_and_sdpa_agree_under_reduction(variant):
    sdpa_model = make_hf(variant)
    eager_model = make_hf(variant)
    eager_model.set_attn_implementation("eager")
    x = images()
    outs = []
    for model in (sdpa_model, eager_model):
        with tokenreduce.patch(model, "tome:r=8"):
            outs.append(run(model, x))
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-4, atol=1e-4)


@torch.inference_mode()
def test_siglip_pooling_head_weighs_merged_tokens_by_size():
    """A token of size s in the attention-pooling head counts as s identical patches."""
    model = make_hf("hf_siglip")
    gen = torch.Generator().manual_seed(0)
    h = torch.randn(2, 5, 48, generator=gen)
    dup = torch.cat([h[:, :1], h[:, :1], h[:, :1], h[:, 1:]], dim=1)  # token 0 three times
    expected = model.head(dup)
    with tokenreduce.patch(model, "tome:r=2") as handle:
        state = TokenState.initial(2, 5)
        state.size[:, 0] = 3.0
        state.merged = True
        handle._adapter.trace.state = state
        weighted = model.head(h)
        state.merged = False  # before any merge the head is the original one, bitwise
        assert torch.equal(model.head(dup), expected)
    torch.testing.assert_close(weighted, expected, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(model.head(h), expected, atol=1e-3)


@torch.inference_mode()
def test_hidden_states_output_and_unmerge_to_patch_grid():
    model = make_hf("hf_dinov2")
    with tokenreduce.patch(model, "tome:r=8") as handle:
        out = model(images(), output_hidden_states=True)
        assert [t.shape[1] for t in out.hidden_states[1:]] == handle.trace.mlp_tokens
        dense, dropped = handle.state.unmerge(out.last_hidden_state)
    assert dense.shape == (3, 65, 48) and not bool(dropped.any())
