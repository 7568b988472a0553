"""The public API: patch/unpatch, string specs, and clear errors for bad input."""

from __future__ import annotations

import pytest
import torch

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
    with pytest.raises(ValueError, match=r"tome: unknown parameter\(s\) k; valid parameters: .*inflect, .*r, schedule"):
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
