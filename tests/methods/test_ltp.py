"""Learned Token Pruning: tokens whose received attention falls below the layer's threshold
go, so each input keeps its own count (a batch turns ragged)."""

from __future__ import annotations

import pytest
import torch

import tokenreduce
from tokenreduce.adapters import HFEncoderAdapter
from tokenreduce.core.scorers import attention_received
from tokenreduce.methods import LTP, InvalidParameter, build

from .test_power_bert import TEXT, context

pytestmark = pytest.mark.usefixtures("one_thread")


def test_prunes_exactly_the_tokens_below_the_threshold_in_each_sample():
    ctx = context(n=12)
    received = attention_received(ctx.q, ctx.k, None, ctx.scale)
    theta = float(received[:, 1:-1].median())
    method = LTP(thresholds=(0.0, theta))
    red = method.reduce(ctx, n_remove=10)
    for b in range(2):
        keep = (received[b] >= theta) | ctx.state.protected[b]
        slots = red.anchor[b][red.valid[b]]
        assert slots.tolist() == keep.nonzero().squeeze(1).tolist()
    assert red.valid.sum(1).tolist() != [12, 12]


def test_never_removes_more_than_the_budget_allows():
    ctx = context(n=12)
    red = LTP(thresholds=(0.0, 1.0), min_keep=0.5).reduce(ctx, n_remove=5)  # all are below
    assert red.valid.sum(1).tolist() == [7, 7]
    assert LTP(thresholds=(0.0, 1.0), min_keep=0.5).budget(TEXT).keep(1, 10) == 5
    assert LTP(thresholds=(0.0, 1.0)).budget(TEXT).keep(0, 10) == 10  # threshold 0: no site


def test_the_default_ramp_rises_to_the_last_layer():
    assert LTP(threshold=0.04).layer_thresholds(4) == (0.01, 0.02, 0.03, 0.04)


@torch.no_grad()
def test_a_batch_without_padding_becomes_ragged_and_equals_its_samples():
    # Wider initial weights: attention far from uniform, so scores spread around 1/16.
    model = HFEncoderAdapter.examples()["hf_bert"](initializer_range=0.3)
    ids = torch.randint(5, 100, (3, 16), generator=torch.Generator().manual_seed(1))
    with tokenreduce.patch(model, "ltp:threshold=0.06") as handle:
        batched = model(ids).last_hidden_state
        state = handle.state
        for b in range(3):
            one = model(ids[b : b + 1]).last_hidden_state
            real = state.valid[b]
            assert torch.equal(state.position[b, real], handle.state.position[0])
            torch.testing.assert_close(batched[b, real], one[0], atol=1e-5, rtol=1e-4)
    assert state.ragged and len(set(state.valid.sum(1).tolist())) > 1  # own counts


def test_bad_parameters_and_models_fail_clearly():
    with pytest.raises(InvalidParameter, match="thresholds"):
        build("ltp:thresholds=(0.1,2)")
    with pytest.raises(InvalidParameter, match="min_keep"):
        LTP(min_keep=1.5)
    from ..conftest import make_vit

    with pytest.raises(InvalidParameter, match="per-input token-sequence"):
        tokenreduce.patch(make_vit("cls"), "ltp")


@torch.no_grad()
def test_calibrated_thresholds_keep_the_share_asked_on_their_batches():
    from tokenreduce.text import calibrate_ltp

    model = HFEncoderAdapter.examples()["hf_bert"](initializer_range=0.3)
    g = torch.Generator().manual_seed(0)
    batches = []
    for _ in range(2):
        ids = torch.randint(5, 100, (3, 20), generator=g)
        mask = torch.ones_like(ids)
        mask[1, 12:] = 0
        batches.append({"input_ids": ids, "attention_mask": mask})
    method = calibrate_ltp(model, batches, keep_ratio=0.5)
    assert len(method.thresholds) == 4 and list(method.thresholds) == sorted(method.thresholds)
    kept = reducible = 0
    with tokenreduce.patch(model, method) as handle:
        for batch in batches:
            model(**batch)
            kept += int(handle.state.valid.sum()) - 2 * 3  # [CLS] and [SEP] are not counted
            reducible += int(batch["attention_mask"].sum()) - 2 * 3
    assert abs(kept / reducible - 0.5) < 0.05
    assert "forward" not in model.encoder.layer[0].__dict__  # calibration left it unpatched
    with pytest.raises(ValueError, match="keep_ratio"):
        calibrate_ltp(model, batches, keep_ratio=0)
