"""PyramidKV: a per-layer budget that falls with depth."""

from __future__ import annotations

from tokenreduce import methods

from ..lmutil import info


def test_pyramidkv_budgets_fall_with_depth():
    m = methods.build("pyramidkv:compression_ratio=0.5,window_size=8,beta=4")
    keep = [m.budget(info(6)).keep(i, 1000) for i in range(6)]
    assert keep == sorted(keep, reverse=True) and keep[0] > keep[-1]
    assert abs(sum(keep) - 6 * 500) <= 6  # same total as uniform, up to rounding
