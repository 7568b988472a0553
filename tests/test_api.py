"""The public API: patch/unpatch, string specs, and clear errors for bad input."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import tokenreduce
from tokenreduce import methods
from tokenreduce.methods import InvalidParameter

from .conftest import images, make_vit


@pytest.mark.parametrize(
    ("spec", "pattern"),
    [
        ("tome:r=-1", r"tome: r=-1 is invalid; allowed: an integer >= 0"),
        ("tome:r=2.5", r"tome: r=2\.5 is invalid"),
        ("tome:inflect=3", r"inflect=3 is invalid; allowed: a number in \[-1, 1\]"),
        ("evit:keep_ratio=0", r"evit: keep_ratio=0 is invalid; allowed: a number in \(0, 1\]"),
        ("topk:keep_ratio=1.5", r"keep_ratio=1\.5 is invalid"),
        ("random:seed=-3", r"seed=-3 is invalid"),
        ("pool:kernel=0", r"kernel=0 is invalid; allowed: an integer >= 1"),
        ("evit:layers=[-1]", r"layers=\(-1,\) is invalid"),
        ("evit:fuse=maybe", r"fuse='maybe' is invalid; allowed: true or false"),
    ],
)
def test_bad_parameters_fail_at_construction(spec, pattern):
    with pytest.raises(InvalidParameter, match=pattern):
        methods.build(spec)


def test_unknown_method_and_parameter():
    with pytest.raises(ValueError, match=r"unknown method 'tomee'; available: .*evit.*tome"):
        methods.build("tomee:r=3")
    with pytest.raises(ValueError, match=r"tome: unknown parameter\(s\) k; valid parameters: inflect"):
        methods.build("tome:k=3")
    with pytest.raises(ValueError, match="expected key=value"):
        methods.build("tome:13")


def test_spec_parsing():
    assert methods.build("evit:keep_ratio=0.5,layers=[2,5],fuse=false") == methods.get("evit")(
        keep_ratio=0.5, layers=(2, 5), fuse=False
    )
    assert methods.build("tome:r=13").r == 13
    assert methods.build("pool:layers=3").layers == (3,)
    assert methods.build("tome") == methods.get("tome")()


def test_unsupported_model_names_the_class_and_the_families():
    with pytest.raises(TypeError, match=r"cannot patch a torch\.nn\.modules\.linear\.Linear; supported model families: timm VisionTransformer"):
        tokenreduce.patch(torch.nn.Linear(2, 2), "tome")


def test_tome_schedule_longer_than_the_model():
    with pytest.raises(InvalidParameter, match="schedule has 6 entries but the model has 4 blocks"):
        tokenreduce.patch(make_vit(), "tome:schedule=[1,1,1,1,1,1]")


def test_r_larger_than_possible_is_clamped_to_half():
    model = make_vit()
    with torch.inference_mode(), tokenreduce.patch(model, "tome:r=1000") as handle:
        model(images())
    # 65 tokens, 1 protected: each block merges at most half of the unprotected ones.
    assert handle.trace.attn_tokens == [65, 33, 17, 9]
    assert handle.trace.mlp_tokens == [33, 17, 9, 5]


@pytest.mark.parametrize("name", [n for n in methods.available() if methods.get(n).kind == "tokens"])
def test_fast_attention_path_stays_on(name, monkeypatch):
    calls = []
    sdpa = F.scaled_dot_product_attention

    def counting(*args, **kwargs):
        calls.append(kwargs.get("attn_mask"))
        return sdpa(*args, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", counting)
    model = make_vit()
    spec = f"{name}:layers=[1,2]" if name != "tome" else "tome:r=8"
    with torch.inference_mode(), tokenreduce.patch(model, spec):
        model(images())
    assert len(calls) == 4  # one fused attention call per block


def test_proportional_attention_adds_log_size_bias(monkeypatch):
    masks = []
    sdpa = F.scaled_dot_product_attention
    monkeypatch.setattr(F, "scaled_dot_product_attention",
                        lambda *a, **k: masks.append(k.get("attn_mask")) or sdpa(*a, **k))
    model = make_vit()
    with torch.inference_mode(), tokenreduce.patch(model, "tome:r=8") as handle:
        model(images())
    assert masks[0] is None  # nothing merged before the first block
    assert masks[1] is not None and masks[1].shape[-1] == handle.trace.attn_tokens[1]
    masks.clear()
    with torch.inference_mode(), tokenreduce.patch(model, "tome:r=8,prop_attn=false"):
        model(images())
    assert all(m is None for m in masks)


def test_average_pool_weights_tokens_by_size():
    model = make_vit("avgpool")
    feats = {}
    model.fc_norm.register_forward_hook(lambda m, i, o: feats.__setitem__("pooled", i[0]))
    model.norm.register_forward_hook(lambda m, i, o: feats.__setitem__("tokens", o))
    with torch.inference_mode(), tokenreduce.patch(model, "tome:r=8") as handle:
        model(images())
        size = handle.state.size
    expected = (feats["tokens"] * size[..., None]).sum(1) / size.sum(1, keepdim=True)
    torch.testing.assert_close(feats["pooled"], expected)
    assert not torch.allclose(feats["pooled"], feats["tokens"].mean(1))


def test_handle_reports_flops_and_repr():
    model = make_vit()
    handle = tokenreduce.patch(model, "topk:keep_ratio=0.5,layers=[1]")
    assert handle.gflops() == handle.baseline_gflops()  # before any forward
    with torch.inference_mode():
        model(images())
    assert handle.gflops() < handle.baseline_gflops()
    assert "active" in repr(handle)
    handle.remove()
    assert "removed" in repr(handle)
