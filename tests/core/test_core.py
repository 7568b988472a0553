"""Core tensor functions: reductions, scorers, reducers, budgets, token state."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tokenreduce.core import (
    KeepRatio,
    PerLayer,
    Reduction,
    TokenState,
    attention_received,
    bipartite_merge,
    grid_pool,
    key_norm,
    tome_schedule,
    topk_fuse,
    topk_prune,
)

from ..tome_ref import reference_bipartite


@pytest.mark.parametrize("order", ["reference", "original"])
@pytest.mark.parametrize("t", [20, 21])
@pytest.mark.parametrize("r", [0, 1, 4, 9, 1000])
@pytest.mark.parametrize(("class_token", "distill_token"), [(True, False), (True, True), (False, False)])
def test_tome_matches_reference_bipartite_soft_matching(t, r, class_token, distill_token, order):
    gen = torch.Generator().manual_seed(t * 100 + r)
    x = torch.randn(3, t, 16, generator=gen)
    metric = torch.randn(3, t, 8, generator=gen)
    size = torch.randint(1, 4, (3, t), generator=gen).float()
    n_prot = int(class_token) + int(distill_token)
    protected = (torch.arange(t) < n_prot).expand(3, t)
    red = bipartite_merge(metric, r, protected, size, order)
    ref_x, ref_s, ref_origin = reference_bipartite(x, metric, size, r, class_token, distill_token)
    if order == "original":  # the same tokens, each at its place in the input order
        keep = ref_origin.argsort(1)
        ref_x = ref_x.gather(1, keep[..., None].expand_as(ref_x))
        ref_s, ref_origin = ref_s.gather(1, keep), ref_origin.gather(1, keep)
    assert torch.equal(red.anchor, ref_origin)
    torch.testing.assert_close(red.apply(size, "sum"), ref_s)
    if order == "reference":  # the same sums in the same order: the same bits
        assert torch.equal(red.apply(x), ref_x)
    torch.testing.assert_close(red.apply(x), ref_x, rtol=1e-5, atol=1e-6)
    assert red.num_out == t - min(r, (t - n_prot) // 2)
    # The source map of one merge: every original token points at the output token holding it.
    state = TokenState.initial(3, t, n_prot).apply(red)
    assert torch.equal(state.position, ref_origin)
    held = state.source.gather(1, ref_origin)  # each output token's own anchor points at it
    assert torch.equal(held, torch.arange(red.num_out).expand(3, -1))


def test_bipartite_merge_rejects_unknown_order():
    with pytest.raises(ValueError, match="order must be one of .*'sorted'"):
        bipartite_merge(torch.randn(1, 5, 4), 1, torch.zeros(1, 5, dtype=torch.bool),
                        torch.ones(1, 5), "sorted")


def test_reduction_modes_and_unmerge():
    # 5 tokens: 0 kept, 1 and 2 merged into slot 1 (weights 1 and 3), 3 dropped, 4 kept.
    group = torch.tensor([[0, 1, 1, -1, 4]])
    weight = torch.tensor([[1.0, 1.0, 3.0, 1.0, 1.0]])
    red = Reduction.from_groups(group, weight, torch.tensor([[True, True, False, False, True]]))
    x = torch.tensor([[[1.0], [2.0], [6.0], [9.0], [5.0]]])
    assert torch.equal(red.apply(x), torch.tensor([[[1.0], [5.0], [5.0]]]))
    assert torch.equal(red.apply(torch.ones(1, 5), "sum"), torch.tensor([[1.0, 2.0, 1.0]]))
    assert torch.equal(red.apply(torch.arange(5)[None], "anchor"), torch.tensor([[0, 1, 4]]))
    back, dropped = red.unmerge(red.apply(x), fill=-1.0)
    assert torch.equal(back[..., 0], torch.tensor([[1.0, 5.0, 5.0, -1.0, 5.0]]))
    assert dropped.tolist() == [[False, False, False, True, False]]
    with pytest.raises(ValueError, match="mode must be"):
        red.apply(x, "median")


def test_token_state_composes_source_map_and_unmerges():
    state = TokenState.initial(1, 6, num_protected=1)
    first = topk_prune(torch.tensor([[0.0, 0.9, 0.1, 0.8, 0.7, 0.2]]), 3, state.protected)
    state = state.apply(first)  # keeps 0, 1, 3, 4
    assert state.source.tolist() == [[0, 1, -1, 2, 3, -1]]
    merge = Reduction.from_groups(torch.tensor([[0, 1, 1, 3]]), state.size,
                                  torch.tensor([[True, True, False, True]]))
    state = state.apply(merge)  # originals 1 and 3 now share a token
    assert state.source.tolist() == [[0, 1, -1, 1, 2, -1]]
    assert state.size.tolist() == [[1.0, 2.0, 1.0]]
    assert state.position.tolist() == [[0, 1, 4]]
    values, dropped = state.unmerge(torch.tensor([[[10.0], [20.0], [30.0]]]))
    assert values[0, :, 0].tolist() == [10.0, 20.0, 0.0, 20.0, 30.0, 0.0]
    assert dropped.tolist() == [[False, False, True, False, False, True]]


def test_topk_fuse_weights_inattentive_tokens_by_score():
    scores = torch.tensor([[0.5, 0.3, 0.1, 0.05, 0.05]])
    protected = torch.tensor([[True, False, False, False, False]])
    red = topk_fuse(scores, 1, protected, torch.ones(1, 5))
    x = torch.tensor([[[0.0], [1.0], [2.0], [4.0], [8.0]]])
    out = red.apply(x)
    assert red.anchor.tolist() == [[0, 1, -1]]
    expected = (0.1 * 2 + 0.05 * 4 + 0.05 * 8) / 0.2
    torch.testing.assert_close(out[0, :, 0], torch.tensor([0.0, 1.0, expected]))
    assert red.apply(torch.ones(1, 5), "sum").tolist() == [[1.0, 1.0, 3.0]]


def test_grid_pool_averages_cells_and_keeps_prefix():
    # 1 prefix token + a 4x4 grid, kernel 2 -> 4 cells of 4 patches.
    position = torch.arange(17)[None]
    protected = position < 1
    red = grid_pool(position, (4, 4), 2, protected, torch.ones(1, 17), num_prefix=1)
    assert red.num_out == 5
    assert red.anchor.tolist() == [[0, 1, 3, 9, 11]]
    x = torch.arange(17.0)[None, :, None]
    # cell (0,0) holds patches 0,1,4,5 -> tokens 1,2,5,6
    assert red.apply(x)[0, 1, 0].item() == pytest.approx((1 + 2 + 5 + 6) / 4)


def test_attention_received_equals_full_softmax_row():
    gen = torch.Generator().manual_seed(0)
    q, k = torch.randn(2, 3, 7, 4, generator=gen), torch.randn(2, 3, 7, 4, generator=gen)
    full = ((q @ k.transpose(-2, -1)) * 4**-0.5).softmax(-1)
    torch.testing.assert_close(attention_received(q, k, slice(0, 1)), full[:, :, 0].mean(1))
    torch.testing.assert_close(attention_received(q, k, None), full.mean((1, 2)))
    bias = torch.log(torch.arange(1.0, 8.0))
    biased = ((q @ k.transpose(-2, -1)) * 4**-0.5 + bias).softmax(-1)
    torch.testing.assert_close(attention_received(q, k, slice(0, 1), bias=bias),
                               biased[:, :, 0].mean(1))
    assert key_norm(k).shape == (2, 7)


def test_budgets():
    assert tome_schedule(12, 13) == (13,) * 12
    sched = tome_schedule(12, 8, inflect=0.5)
    assert sched[0] == 4 and sched[-1] == 12 and sched == tuple(sorted(sched))
    assert KeepRatio(0.7, (3,)).keep(3, 196) == math.ceil(0.7 * 196)
    assert KeepRatio(0.7, (3,)).keep(2, 196) == 196
    assert PerLayer((1, 2)).keep(5, 100) == 100 and PerLayer((1, 50)).keep(1, 10) == 0


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(2, 40),
    n_prot=st.integers(0, 3),
    keep_frac=st.floats(0.0, 1.0),
    seed=st.integers(0, 10_000),
)
def test_topk_prune_properties(n, n_prot, keep_frac, seed):
    n_prot = min(n_prot, n - 1)
    keep = int(keep_frac * (n - n_prot))
    scores = torch.rand(2, n, generator=torch.Generator().manual_seed(seed))
    protected = (torch.arange(n) < n_prot).expand(2, n)
    red = topk_prune(scores, keep, protected)
    assert red.num_out == n_prot + keep
    assert bool((red.anchor[:, :n_prot] == torch.arange(n_prot)).all())
    assert bool((red.anchor.diff(dim=1) > 0).all())  # original order kept
    # every kept unprotected token scores at least as high as every dropped one
    kept = torch.zeros(2, n, dtype=torch.bool).scatter_(1, red.anchor, True) & ~protected
    dropped = ~kept & ~protected
    for b in range(2):
        if kept[b].any() and dropped[b].any():
            assert scores[b][kept[b]].min() >= scores[b][dropped[b]].max()


@settings(max_examples=40, deadline=None)
@given(n=st.integers(2, 30), r=st.integers(0, 40), seed=st.integers(0, 10_000))
def test_bipartite_merge_conserves_size(n, r, seed):
    gen = torch.Generator().manual_seed(seed)
    metric = torch.randn(2, n, 4, generator=gen)
    size = torch.randint(1, 5, (2, n), generator=gen).float()
    protected = (torch.arange(n) < 1).expand(2, n)
    red = bipartite_merge(metric, r, protected, size)
    assert red.num_out == n - min(r, (n - 1) // 2)
    torch.testing.assert_close(red.apply(size, "sum").sum(1), size.sum(1))
    assert bool((red.anchor[:, 0] == 0).all())
