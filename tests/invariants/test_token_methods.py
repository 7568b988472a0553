"""The shared invariants of DESIGN.md, checked for every registered method on every layout.

A method is covered the moment it is registered: the suite is parametrised over
``tokenreduce.methods.available()`` and builds each method from its own test-sized
parameters (``test_params``), or with its budget parameter at the value that removes nothing
(``budget_param``, ``budget_identity``).
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

import tokenreduce
from tokenreduce import methods
from tokenreduce.core.state import TokenState

from ..adapters.test_pooling_heads import MAP_TAKES_MASK
from ..conftest import (
    HF_VARIANTS,
    TINY,
    VIT_VARIANTS,
    images,
    make_vit,
    num_prefix,
    record_sdpa_masks,
    run,
)  # fmt: skip

#: every token method a vision transformer takes (one that reads the instruction, ``needs_query``,
#: runs on the vision-language families: tests/invariants/test_every_family.py)
TOKEN_METHODS = [n for n in methods.available() if issubclass(methods.get(n), methods.TokenMethod)
                 and not methods.get(n).needs_query]  # fmt: skip


def has_field(name: str, field: str) -> bool:
    return field in {f.name for f in dataclasses.fields(methods.get(name))}


LAYERED_METHODS = [n for n in TOKEN_METHODS if has_field(n, "layers")]


def build(name: str, zero: bool = False) -> methods.Method:
    """The method sized for the tiny 4-block models (``test_params``: reductions at blocks 1
    and 2 where it has ``layers``); ``zero``: at the budget that removes nothing."""
    cls = methods.get(name)
    return cls.for_tests(**({cls.budget_param: cls.budget_identity} if zero else {}))


@pytest.fixture(params=TOKEN_METHODS)
def name(request) -> str:
    return request.param


# "map" where timm supports it (>= 1.0.16; older timm refuses it, see tests/adapters/test_pooling_heads.py)
@pytest.fixture(params=[*VIT_VARIANTS, *(["map"] if MAP_TAKES_MASK else []), *HF_VARIANTS])
def vit(request) -> torch.nn.Module:
    """The shared layouts, plus a timm ViT without class token pooled by an attention head
    (``global_pool="map"``, SigLIP style), whose head weighs merged tokens by size."""
    if request.param != "map":
        return make_vit(request.param)
    import timm

    torch.manual_seed(0)
    return timm.create_model(
        "vit_tiny_patch16_224", **TINY, class_token=False, global_pool="map"
    ).eval()


@torch.inference_mode()
def test_zero_budget_is_bitwise_identity(vit, name):
    x = images()
    expected = run(vit, x)
    with tokenreduce.patch(vit, build(name, zero=True)) as handle:
        out = run(vit, x)
        assert handle.trace.mlp_tokens == handle.trace.attn_tokens  # nothing removed
    assert torch.equal(out, expected)


@torch.inference_mode()
def test_reduction_happens(vit, name):
    with tokenreduce.patch(vit, build(name)) as handle:
        run(vit, images())
        assert handle.trace.mlp_tokens[-1] < handle.trace.attn_tokens[0]
        assert handle.gflops() < handle.baseline_gflops()
        assert handle.trace.grid == handle.info.grid == (8, 8)  # recorded per input


@torch.inference_mode()
def test_protected_tokens_survive_and_sizes_are_conserved(vit, name, monkeypatch):
    applied = []
    original_apply = TokenState.apply

    def checked_apply(self, red):
        new = original_apply(self, red)
        applied.append(new)
        return new

    monkeypatch.setattr(TokenState, "apply", checked_apply)
    n_prefix = num_prefix(vit)
    with tokenreduce.patch(vit, build(name)):
        run(vit, images())
    assert applied, "the method never reduced"
    for state in applied:  # after every reducing layer
        n0 = state.num_original
        # Prefix tokens keep their slots at the front, unmerged.
        assert torch.equal(state.source[:, :n_prefix], torch.arange(n_prefix).expand(3, -1))
        assert bool(state.protected[:, :n_prefix].all())
        assert not bool(state.protected[:, n_prefix:].any())
        assert bool((state.size[:, :n_prefix] == 1).all())
        # Each token's size is the number of original tokens mapped to it; with the dropped
        # ones, they account for every original token.
        counts = torch.zeros_like(state.size).scatter_add_(
            1, state.source.clamp_min(0), (state.source >= 0).to(state.size.dtype)
        )
        assert torch.equal(counts, state.size)
        dropped = (state.source < 0).sum(1)
        assert torch.equal(state.size.sum(1) + dropped, torch.full((3,), float(n0)))


@torch.inference_mode()
def test_batched_equals_per_sample(vit, name):
    x = images(batch=4)
    with tokenreduce.patch(vit, build(name)):
        batched = run(vit, x)
        single = torch.cat([run(vit, x[i : i + 1]) for i in range(4)])
    torch.testing.assert_close(batched, single, rtol=1e-4, atol=1e-5)


@torch.inference_mode()
def test_same_seed_same_result(name):
    x = images()
    outs = []
    for _ in range(2):
        model = make_vit("cls")
        with tokenreduce.patch(model, build(name)):
            outs.append(run(model, x))
    assert torch.equal(outs[0], outs[1])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@torch.inference_mode()
def test_runs_in_dtype(vit, name, dtype):
    vit = vit.to(dtype)
    shape = run(vit, images().to(dtype)).shape  # (3, 10) for a classifier
    with tokenreduce.patch(vit, build(name)):
        out = run(vit, images().to(dtype))
    assert out.dtype == dtype and out.shape == shape and shape[0] == 3
    assert bool(torch.isfinite(out.float()).all())


@torch.inference_mode()
def test_unpatch_restores_outputs_and_state_dict(vit, name):
    x = images()
    expected = run(vit, x)
    before = {k: v.clone() for k, v in vit.state_dict().items()}
    hooks = [len(m._forward_hooks) for m in vit.modules()]
    handle = tokenreduce.patch(vit, build(name))
    assert not torch.equal(run(vit, x), expected)
    handle.remove()
    handle.remove()  # idempotent
    assert torch.equal(run(vit, x), expected)
    after = vit.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all("forward" not in m.__dict__ for m in vit.modules())
    assert "pool" not in vit.__dict__ and tokenreduce.handle_of(vit) is None
    assert [len(m._forward_hooks) for m in vit.modules()] == hooks  # the grid hook is gone


@torch.inference_mode()
def test_two_patched_models_share_no_state(name):
    method = build(name)  # one method object, two models
    a, b = make_vit("cls", seed=0), make_vit("registers", seed=1)
    xa, xb = images(batch=2, seed=3), images(batch=5, seed=4)
    ha, hb = tokenreduce.patch(a, method), tokenreduce.patch(b, method)
    out_a = run(a, xa)
    tokens_a = list(ha.trace.mlp_tokens)
    run(b, xb)
    assert ha.state.size.shape[0] == 2 and hb.state.size.shape[0] == 5
    assert ha.trace.mlp_tokens == tokens_a
    assert torch.equal(run(a, xa), out_a)
    ha.remove()
    hb.remove()


def test_patching_twice_is_an_error(name):
    model = make_vit()
    with tokenreduce.patch(model, build(name)), pytest.raises(RuntimeError, match="already patched"):
        tokenreduce.patch(model, build(name))
    tokenreduce.patch(model, build(name)).remove()  # allowed again after unpatching


@pytest.mark.parametrize("layered", LAYERED_METHODS)
def test_layer_outside_the_model_is_an_error(layered):
    cls = methods.get(layered)
    with pytest.raises(ValueError, match=r"layers contains 7, outside this model's layers 0\.\.3"):
        tokenreduce.patch(make_vit(), cls(layers=(1, 7)))


def test_spec_round_trip(name):
    method = build(name)
    assert methods.build(methods.describe(method)) == method


def test_fast_attention_path_stays_on(name, monkeypatch):
    """Every reduction keeps the fused attention call: one per block."""
    calls = record_sdpa_masks(monkeypatch)
    model = make_vit()
    with torch.inference_mode(), tokenreduce.patch(model, build(name)):
        model(images())
    assert len(calls) == 4  # one fused attention call per block
