"""Choosing units under a token budget (``tokenreduce.prompt.select``)."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from tokenreduce.prompt import select

UNITS = st.lists(
    st.tuples(st.floats(-5, 5, allow_nan=False), st.integers(1, 6)), min_size=1, max_size=30
)


@settings(max_examples=300, deadline=None)
@given(UNITS, st.integers(0, 100))
def test_keep_best_fills_the_budget_without_passing_it(units, target):
    scores = np.array([s for s, _ in units])
    sizes = np.array([n for _, n in units])
    keep = select.keep_best(scores, sizes, target)
    used = int(sizes[keep].sum())
    assert used <= target
    assert not (sizes[~keep] <= target - used).any()  # nothing left out still fits
    if used < sizes.sum():
        # the best unit is kept whenever it fits on its own
        best = int(np.argmax(scores))
        assert keep[best] or sizes[best] > target


def test_keep_best_prefers_the_higher_score_and_the_earlier_tie():
    keep = select.keep_best(np.array([1.0, 3.0, 3.0, 2.0]), np.array([1, 1, 1, 1]), 2)
    assert keep.tolist() == [False, True, True, False]
    keep = select.keep_best(np.array([3.0, 3.0]), np.array([1, 1]), 1)
    assert keep.tolist() == [True, False]


def test_unit_means_are_per_token():
    means = select.unit_means(np.array([1.0, 3.0, 5.0]), np.array([0, 0, 1]))
    assert means.tolist() == [2.0, 5.0]


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(st.integers(1, 50), st.floats(0, 1.5)), min_size=1, max_size=10),
    st.floats(0, 1),
)
def test_share_targets_add_up_and_stay_within_each_size(docs, share):
    sizes = np.array([n for n, _ in docs])
    ratios = np.array([r for _, r in docs])
    total = int(share * sizes.sum())
    targets = select.share_targets(sizes, ratios, total)
    assert targets.sum() == total
    assert ((targets >= 0) & (targets <= sizes)).all()
