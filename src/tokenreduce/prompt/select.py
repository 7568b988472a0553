"""Choosing what survives: whole units by score under a token budget, vectorised.

A unit (a word group, a phrase, a sentence, a document) has a score (higher: more worth
keeping) and a size in tokens. :func:`keep_best` keeps the best units whose sizes add up to
a token target without passing it; :func:`unit_means` turns per-token scores into a unit's
mean, the information per token that units of different sizes compete on under a token
budget.
"""

from __future__ import annotations

import numpy as np
import torch


def unit_means(token_scores: torch.Tensor | np.ndarray, unit_of_token: np.ndarray) -> np.ndarray:
    """The mean of ``token_scores`` (n,) over the tokens of each unit; ``unit_of_token`` (n,)
    holds unit ids 0..U-1 in order. Returns (U,) float64."""
    scores = np.asarray(token_scores, dtype=np.float64)
    if not len(scores):
        return np.zeros(0)
    sums = np.bincount(unit_of_token, weights=scores)
    counts = np.bincount(unit_of_token)
    return sums / np.maximum(counts, 1)


def keep_best(scores: np.ndarray, sizes: np.ndarray, target: int) -> np.ndarray:
    """Which units to keep, (U,) bool: the best-scored first while their sizes fit in
    ``target`` tokens; then, where the next best does not fit, the best of those that still
    do, until none fits. Ties keep the earlier unit. The kept sizes add up to at most
    ``target`` and fall short of it by less than the smallest unit left out."""
    sizes = np.asarray(sizes, dtype=np.int64)
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    fits = np.cumsum(sizes[order]) <= target
    keep = np.zeros(len(sizes), dtype=bool)
    first_miss = int(np.argmin(fits)) if not fits.all() else len(order)
    keep[order[:first_miss]] = True
    room = target - int(sizes[keep].sum())
    rest = order[first_miss:]
    # filling the remainder: each pass takes the best unit that still fits, and the room
    # shrinks, so this ends after at most a few passes for word-sized units
    while room > 0 and len(rest):
        fitting = rest[sizes[rest] <= room]
        if not len(fitting):
            break
        keep[fitting[0]] = True
        room -= int(sizes[fitting[0]])
        rest = rest[rest != fitting[0]]
    return keep


def above(scores: np.ndarray, floor: float) -> np.ndarray:
    """Units whose score is above ``floor``, (U,) bool (the threshold budget)."""
    return np.asarray(scores) > floor


def share_targets(sizes: np.ndarray, ratios: np.ndarray, total: int) -> np.ndarray:
    """Per-unit token targets, (U,) int64: proportional to ``ratios * sizes`` (one common
    factor, found by bisection), never more than ``sizes``, adding up to ``total`` (at most
    ``sizes.sum()``). Used to give each document its own compression ratio (LongLLMLingua's
    dynamic ratios) under one budget."""
    sizes = np.asarray(sizes, dtype=np.float64)
    total = min(int(total), int(sizes.sum()))
    # every unit gets a share, however small its ratio, so the factor can fill any total
    base = np.maximum(np.clip(np.asarray(ratios, dtype=np.float64), 0.0, None), 1e-6) * sizes

    def filled(factor: float) -> np.ndarray:
        return np.minimum(factor * base, sizes)

    lo, hi = 0.0, 1.0
    while filled(hi).sum() < total:
        hi *= 2
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if filled(mid).sum() < total else (lo, mid)
    want = filled(hi)
    targets = np.minimum(np.floor(want + 1e-9), sizes).astype(np.int64)
    # hand out what flooring lost, largest fractions first, one token each
    short = total - int(targets.sum())
    order = np.argsort(-(want - targets), kind="stable")
    order = order[targets[order] < sizes[order]]
    targets[order[:short]] += 1
    return targets
