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
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from functools import partial

from .. import methods
from .configs import _layers, default_sweep

FRACTIONS = (0.25, 0.5, 0.75)
QUICK_FRACTION = 0.5
#: where the matched methods reduce, as fractions of the depth
DEPTH_FRACTIONS = (0.25, 0.5, 0.75)


def keep_ratio(f: float, steps: int = len(DEPTH_FRACTIONS)) -> float:
    """The per-step keep ratio that leaves ``1 - f`` of the tokens after ``steps`` steps."""
    if not 0 <= f < 1:
        raise ValueError(f"a matched budget is a share of tokens removed in [0, 1), got {f!r}")
    return round((1.0 - f) ** (1.0 / steps), 4)


def removed_counts(f: float, n: int, steps: int = len(DEPTH_FRACTIONS)) -> list[int]:
    """Tokens removed at each step from ``n`` by a keep-ratio method at budget ``f``
    (``KeepRatio``'s rule: keep ``ceil(k * m)`` of ``m``)."""
    k, out = keep_ratio(f, steps), []
    for _ in range(steps):
        keep = math.ceil(k * n)
        out.append(n - keep)
        n = keep
    return out


def _has_fields(name: str, *fields: str) -> bool:
    names = {f.name for f in dataclasses.fields(methods.get(name))}
    return all(f in names for f in fields)


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
    layers = _layers(depth, DEPTH_FRACTIONS)
    steps = len(layers)
    budgets = (QUICK_FRACTION,) if quick else tuple(fractions)
    if name == "tome":
        specs = []
        for f in budgets:
            schedule = [0] * depth
            for layer, count in zip(layers, removed_counts(f, n_patches, steps), strict=True):
                schedule[layer] = count
            specs.append(f"tome:schedule={schedule}")
        if not quick:  # ToMe as published: a constant r in every block
            specs += [f"tome:r={max(1, round(f * n_patches / depth))}" for f in budgets]
        return [s.replace(" ", "") for s in specs]
    if name == "pool":
        return [f"pool:kernel=2,layers=[{layers[0]}]"]
    if _has_fields(name, "keep_ratio", "layers"):
        return [
            f"{name}:keep_ratio={keep_ratio(f, steps)},layers={layers}".replace(" ", "")
            for f in budgets
        ]
    return default_sweep(name, depth, quick)


def sweep_for(n_patches: int) -> Callable[[str, int, bool], list[str]]:
    """:func:`matched_sweep` for a model with ``n_patches`` patch tokens, as the ``sweep``
    argument of :func:`tokenreduce.bench.configs.resolve`."""
    return partial(matched_sweep, n_patches=n_patches)
