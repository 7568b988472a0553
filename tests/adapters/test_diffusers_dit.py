"""The diffusers DiT family (DiTTransformer2DModel, PixArtTransformer2DModel): local sites
around each BasicTransformerBlock's sub-layers, with the model's own SDPA attention, and the
errors for what it cannot do."""

from __future__ import annotations

import pytest
import torch

import tokenreduce
from tokenreduce import ReductionNotApplied
from tokenreduce.adapters import DiffusersDiTAdapter
from tokenreduce.methods import InvalidParameter

from ..conftest import make_vit, output, record_sdpa_masks

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py
pytest.importorskip("diffusers")


def model_and_batch(example: str = "diffusers_dit", **overrides):
    model = DiffusersDiTAdapter.examples()[example](**overrides)
    return model, DiffusersDiTAdapter.example_batch(model)


@pytest.mark.parametrize("example", ["diffusers_dit", "diffusers_pixart"])
@torch.no_grad()
def test_self_attention_runs_on_merged_tokens_through_sdpa(example, monkeypatch):
    model, batch = model_and_batch(example)
    info = tokenreduce.describe(model)
    assert (info.kind, info.num_layers, info.grid) == ("diffusion", 2, (8, 8))
    calls = record_sdpa_masks(monkeypatch)
    with tokenreduce.patch(model, "tomesd:ratio=0.5") as handle:
        out = output(model(**batch))
    assert handle.trace.attn_tokens == [32, 32]  # half of the 8x8 grid merged away
    assert handle.trace.mlp_tokens == [64, 64]  # tomesd's default: self-attention only
    assert calls, "the model's attention no longer runs through SDPA"
    assert out.shape[0] == 2 and torch.isfinite(out).all()
    assert handle.gflops() < handle.baseline_gflops()


@torch.no_grad()
def test_chosen_sublayers_run_on_merged_tokens():
    model, batch = model_and_batch("diffusers_pixart")
    spec = "tomesd:ratio=0.25,merge_crossattn=true,merge_mlp=true"
    with tokenreduce.patch(model, spec) as handle:
        model(**batch)
    ran = {(c.part, c.tokens, c.context) for c in handle.trace.calls}
    assert ran == {("attn1", 48, 48), ("attn2", 48, 5), ("ff", 48, 48)}  # 5 text tokens


def test_a_grid_the_cells_do_not_divide_is_refused():
    model = DiffusersDiTAdapter.examples()["diffusers_dit"](sample_size=14)  # a 7x7 grid
    batch = DiffusersDiTAdapter.example_batch(model)
    with tokenreduce.patch(model, "tomesd"), pytest.raises(ValueError) as err:
        model(**batch)
    assert "7x7 token grid" in str(err.value) and "2x2 cells" in str(err.value)


def test_an_unsupported_block_is_named():
    model, _ = model_and_batch()
    model.transformer_blocks[1] = torch.nn.Identity()
    with pytest.raises(TypeError, match="block 1 of this DiTTransformer2DModel is a Identity"):
        tokenreduce.patch(model, "tomesd")


def test_methods_of_other_kinds_are_refused_both_ways():
    model, _ = model_and_batch()
    with pytest.raises(InvalidParameter, match="evit is a token-sequence method"):
        tokenreduce.patch(model, "evit")
    with pytest.raises(InvalidParameter, match="toca is a local-site"):
        tokenreduce.patch(make_vit("cls"), "toca")


@pytest.mark.parametrize("spec", ["tomesd:ratio=1.0", "tomesd:ratio=-0.1", "toca:ratio=1"])
def test_ratio_outside_zero_to_one_is_refused(spec):
    with pytest.raises(InvalidParameter, match=r"allowed: a number in \[0, 1\)"):
        tokenreduce.methods.build(spec)


def test_sublayers_that_never_run_raise(monkeypatch):
    """Sub-layers called through their class (a future diffusers re-dispatching them) never
    reach the instance forwards tokenreduce installed: the forward raises."""
    model, batch = model_and_batch()
    with tokenreduce.patch(model, "tomesd"):
        model(**batch)
        attention = type(model.transformer_blocks[0].attn1)
        feedforward = type(model.transformer_blocks[0].ff)
        for cls in (attention, feedforward):
            monkeypatch.setattr(cls, "__call__", lambda self, *a, _c=cls, **k: _c.forward(self, *a, **k))
        with pytest.raises(ReductionNotApplied, match="without reaching"):
            model(**batch)


@torch.no_grad()
def test_unpatch_restores_outputs_state_and_modules():
    model, batch = model_and_batch()
    plain = output(model(**batch))
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    with tokenreduce.patch(model, "toca"):
        model(**batch)
    assert torch.equal(output(model(**batch)), plain)
    assert all(torch.equal(v, weights[k]) for k, v in model.state_dict().items())
    for block in model.transformer_blocks:
        assert not block._forward_pre_hooks
        assert all("forward" not in m.__dict__ for m in (block.attn1, block.ff))
    assert not model._forward_pre_hooks and not model._forward_hooks


@torch.no_grad()
def test_a_self_attention_mask_over_reduced_tokens_is_refused():
    model, batch = model_and_batch("diffusers_pixart")
    block = model.transformer_blocks[0]
    hidden = torch.randn(2, 64, 16)
    mask = torch.zeros(2, 1, 64)
    with tokenreduce.patch(model, "tomesd"):
        model(**batch)
        with pytest.raises(ValueError, match="self-attention mask over its image tokens"):
            block.attn1(hidden, attention_mask=mask)
