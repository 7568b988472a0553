"""PoWER-BERT: tokens ranked by the attention they receive over all heads and queries, and a
retention schedule followed by each input on its own length."""

from __future__ import annotations

import math

import pytest
import torch

import tokenreduce
from tokenreduce.adapters import HFEncoderAdapter
from tokenreduce.core.context import ModelInfo, TokenContext
from tokenreduce.core.scorers import attention_received
from tokenreduce.core.state import TokenState
from tokenreduce.methods import InvalidParameter, PoWERBERT, build

pytestmark = pytest.mark.usefixtures("one_thread")

TEXT = ModelInfo("text", num_layers=4, num_prefix=1, has_class_token=True, grid=None, kind="text")


def context(n: int = 10, seed: int = 0) -> TokenContext:
    """A batch of two at layer 1 with [CLS] and [SEP] (the last token) protected."""
    g = torch.Generator().manual_seed(seed)
    q, k = torch.randn(2, 3, n, 8, generator=g), torch.randn(2, 3, n, 8, generator=g)
    ends = torch.zeros(2, n, dtype=torch.bool)
    ends[:, [0, n - 1]] = True
    state = TokenState.initial(2, n, protected=ends)
    return TokenContext(1, torch.randn(2, n, 16, generator=g), q, k, state, TEXT, 8**-0.5)


def test_keeps_the_tokens_that_receive_the_most_attention_over_all_queries():
    ctx = context()
    red = PoWERBERT(keep_ratio=0.5).reduce(ctx, n_remove=4)
    received = attention_received(ctx.q, ctx.k, None, ctx.scale)  # every query, not [CLS]'s
    for b in range(2):
        kept = red.anchor[b].tolist()
        inner = received[b, 1:-1].argsort(descending=True)[:4] + 1
        assert kept == sorted([0, 9, *inner.tolist()])


def test_retention_is_followed_layer_by_layer_on_each_length():
    budget = PoWERBERT(retention=(0.8, 0.5, 0.5, 0.25)).budget(TEXT)
    for n0 in (40, 13):
        n, counts = n0, []
        for layer in range(4):
            n = budget.keep(layer, n)
            counts.append(n)
        shares = (0.8, 0.5, 0.5, 0.25)
        assert all(abs(c - s * n0) < 1 + layer for layer, (c, s) in enumerate(zip(counts, shares, strict=True)))
    assert PoWERBERT(keep_ratio=0.5).budget(TEXT).keep(3, 10) == math.ceil(10 * 0.5 / 0.625)


@torch.no_grad()
def test_a_bert_sheds_tokens_on_the_schedule_and_keeps_cls_and_sep():
    model = HFEncoderAdapter.examples()["hf_bert"]()
    ids = torch.randint(5, 100, (2, 22))
    with tokenreduce.patch(model, "power_bert:retention=(0.8,0.5,0.5,0.25)") as handle:
        out = model(ids, attention_mask=torch.ones_like(ids))
    counts = handle.trace.mlp_tokens  # reducible tokens 20, then the schedule, plus 2 ends
    assert [c - 2 for c in counts] == [16, 10, 10, 5]
    assert out.last_hidden_state.shape[1] == counts[-1]
    assert handle.state.position[:, [0, -1]].tolist() == [[0, 21], [0, 21]]


def test_bad_parameters_fail_naming_them():
    with pytest.raises(InvalidParameter, match="retention"):
        build("power_bert:retention=(0.5,0.9)")
    with pytest.raises(InvalidParameter, match="keep_ratio"):
        PoWERBERT(keep_ratio=0)
    with pytest.raises(InvalidParameter, match="5 entries but the model has 4"):
        tokenreduce.patch(
            HFEncoderAdapter.examples()["hf_bert"](), "power_bert:retention=(1,1,1,1,1)"
        )
