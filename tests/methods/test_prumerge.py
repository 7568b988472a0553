"""PruMerge and PruMerge+: an adaptive count by the IQR outlier test, pruned tokens merged."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import tokenreduce
from tokenreduce.adapters import HFLlavaAdapter
from tokenreduce.core.context import ModelInfo, TokenContext
from tokenreduce.core.state import TokenState
from tokenreduce.methods import InvalidParameter, PruMerge, PruMergePlus
from tokenreduce.methods.prumerge import merge_into_kept, outlier_count

from ..adapters.test_hf_llava import generate, pixels, prompt
from ..conftest import make_vit, placed
from ..lmutil import left_pad

INFO = ModelInfo("test", 1, 1, True, (4, 4), "vision-language")


def context(attention: torch.Tensor, keys: torch.Tensor) -> TokenContext:
    """A site over a class token (protected, first) and the tokens ``attention`` (B, N)
    ranks: queries and keys are chosen so that the class row's attention is ``attention``."""
    b, n = attention.shape
    k = torch.cat([torch.zeros(b, 1, keys.shape[-1]), keys], 1)[:, None]
    ctx = TokenContext(0, torch.randn(b, n + 1, 8), k, k, TokenState.initial(b, n + 1, 1),
                       INFO, 1.0)  # fmt: skip
    ctx.__dict__["class_attention"] = torch.cat([torch.zeros(b, 1), attention], 1)
    return ctx


def test_the_count_is_the_iqr_outlier_count():
    g = torch.Generator().manual_seed(0)
    attention = torch.rand(2, 16, generator=g) * 0.02
    attention[0, [3, 7, 11]] = torch.tensor([0.3, 0.2, 0.25])  # three outliers in the first
    attention[1, 5] = 0.4  # one in the second
    for row, expected in zip(attention, (3, 1), strict=True):
        q1, q3 = np.percentile(row.numpy(), [25, 75])
        assert outlier_count(row, 1.5) == int((row.numpy() > q3 + 1.5 * (q3 - q1)).sum())
        assert outlier_count(row, 1.5) == expected
    red = PruMerge(neighbours=2).reduce(context(attention, torch.randn(2, 16, 4, generator=g)), 16)
    assert red.valid.sum(1).tolist() == [1 + 3, 1 + 1]  # the class token and its outliers
    kept = [set(red.anchor[b, red.valid[b]].tolist()) for b in range(2)]
    assert kept == [{0, 4, 8, 12}, {0, 6}]  # one past each outlier: after the class token


def test_the_budget_floor_and_the_uniform_additions_keep_more():
    attention = torch.full((1, 16), 0.01)
    attention[0, 9] = 0.5
    ctx = context(attention, torch.randn(1, 16, 4))
    assert int(PruMerge().reduce(ctx, 16).valid.sum()) == 2
    assert int(PruMerge().reduce(ctx, 16 - 5).valid.sum()) == 1 + 5  # min_keep's floor
    plus = PruMergePlus(uniform_factor=4).reduce(ctx, 16)
    # 4 uniform tokens per outlier: places 0, 4, 8, 12 of the 16, and the outlier 9
    assert set(plus.anchor[0].tolist()) == {0, 1, 5, 9, 10, 13}


def test_pruned_tokens_join_the_most_similar_kept_token_among_those_that_gather_them():
    keys = torch.tensor([[1.0, 0], [0, 1], [1, 0.1], [0.1, 1], [1, 0.2], [-1, 0]])
    scores = torch.tensor([0.5, 0.4, 0.1, 0.1, 0.2, 0.3])
    size = torch.ones(6)
    red = merge_into_kept(torch.tensor([0, 1]), scores, keys, size,
                          torch.zeros(6, dtype=torch.bool), neighbours=2)  # fmt: skip
    # token 0 gathers 2 and 4, token 1 gathers 3 and 4: 4 joins 0, the more similar; 5 is in
    # no one's neighbourhood and is dropped
    assert red.assign[0].tolist() == [0, 1, 0, 1, 0, -1]
    merged = red.apply(torch.eye(6)[None])[0]
    torch.testing.assert_close(merged[0], torch.tensor([1, 0, 0.1, 0, 0.2, 0]) / 1.3)
    state = TokenState.initial(1, 6).apply(red)
    assert state.size.tolist() == [[3.0, 2.0]] and state.source[0, 5] == -1


@pytest.mark.parametrize("name", ["prumerge", "prumerge_plus"])
@torch.no_grad()
def test_batched_generate_equals_images_one_by_one(name):
    llava = HFLlavaAdapter.examples()["llava"]()
    rows = [prompt(1, 0), prompt(2, 1)]
    ids, mask = left_pad(rows)
    px = pixels(3)
    with tokenreduce.patch(llava, placed(name, llava)) as handle:
        batched, scores = generate(llava, ids, mask, px)
        counts = handle.state.size.gt(0).sum(1)  # tokens each image keeps
        alone = [generate(llava, rows[0], torch.ones_like(rows[0]), px[:1]),
                 generate(llava, rows[1], torch.ones_like(rows[1]), px[1:])]  # fmt: skip
    assert torch.equal(batched, torch.cat([a[0] for a in alone]))
    torch.testing.assert_close(scores, torch.cat([a[1] for a in alone]), atol=1e-4, rtol=1e-4)
    assert bool((counts < 16).all())


def test_a_vision_transformer_refuses_it():
    with pytest.raises(InvalidParameter, match="prumerge is a per-input token-sequence method"):
        tokenreduce.patch(make_vit(), PruMerge(layers=(1,)))


def test_plus_adds_about_uniform_factor_tokens_per_outlier_at_any_scale():
    attention = torch.full((1, 64), 0.01)
    attention[0, :12] = torch.linspace(0.3, 0.5, 12)  # 12 outliers among 64 tokens
    ctx = context(attention, torch.randn(1, 64, 4))
    kept = int(PruMergePlus(uniform_factor=3).reduce(ctx, 64).valid.sum()) - 1  # the class token
    assert 36 <= kept <= 12 + 36 < 64  # 36 evenly spaced, some of them outliers already
