"""Matched budgets: every method removes the same share of the patch tokens at the same blocks.

A budget ``f`` (25, 50, 75 %) is the share of the ``n`` patch tokens gone after the last
reducing block. The matched configurations all reduce at the blocks at 1/4, 1/2 and 3/4 of
the depth (3, 6 and 9 of 12, after attention) and remove the same number of tokens there:

* keep-ratio methods (top-K, random, EViT, prune-then-merge) keep ``ceil(k * m)`` of the
  ``m`` tokens present, with ``k = (1 - f) ** (1/3)`` rounded to 4 decimals;
* ToMe gets the same counts as an explicit ``schedule``;

so pruning, merging and hybrid rows carry equal tokens per block and equal FLOPs (EViT keeps
one extra fused token). ToMe also runs as published, merging a constant
``r = round(f * n / depth)`` in every block: about the same final count, reached gradually.
Pooling averages 2 x 2 patch cells at the first reducing block (75 % removed). A method of
another kind of budget runs its default sweep (:func:`tokenreduce.bench.configs.default_sweep`).
``quick`` keeps the 50 % budget (pooling: its one configuration).

Each method declares its matched form (:meth:`tokenreduce.methods.Method.matched_sweep`);
this module only chooses the budgets.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from .. import methods
from ..core.budgets import DEPTH_FRACTIONS, matched_keep_ratio, matched_removed
from .configs import default_sweep

FRACTIONS = (0.25, 0.5, 0.75)
QUICK_FRACTION = 0.5

#: the per-step keep ratio of a budget, and the tokens removed at each step (core helpers)
keep_ratio = matched_keep_ratio
removed_counts = matched_removed


def matched_sweep(
    name: str,
    depth: int,
    quick: bool = False,
    *,
    n_patches: int,
    fractions: tuple[float, ...] = FRACTIONS,
) -> list[str]:
    """The matched configurations (method specs) of method ``name`` on a model with ``depth``
    blocks and ``n_patches`` patch tokens; see the module docstring."""
    if n_patches < 1 or depth < 1:
        raise ValueError(f"need n_patches >= 1 and depth >= 1, got {n_patches}, {depth}")
    budgets = (QUICK_FRACTION,) if quick else tuple(fractions)
    found = methods.get(name).matched_sweep(budgets, depth, n_patches, quick)
    if found is None:
        return default_sweep(name, depth, quick)
    return [methods.describe(m) for m in found]


def sweep_for(n_patches: int) -> Callable[[str, int, bool], list[str]]:
    """:func:`matched_sweep` for a model with ``n_patches`` patch tokens, as the ``sweep``
    argument of :func:`tokenreduce.bench.configs.resolve`."""
    return partial(matched_sweep, n_patches=n_patches)


__all__ = ["DEPTH_FRACTIONS", "FRACTIONS", "QUICK_FRACTION", "keep_ratio", "matched_sweep",
           "removed_counts", "sweep_for"]  # fmt: skip
