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
    """Per-unit token targets, (U,) int64: close to ``ratios * sizes``, never more than
    ``sizes``, adding up to ``total`` (at most ``sizes.sum()``). Used to give each document
    its own compression ratio (LongLLMLingua's dynamic ratios) under one budget."""
    sizes = np.asarray(sizes, dtype=np.float64)
    want = np.clip(np.asarray(ratios, dtype=np.float64), 0.0, 1.0) * sizes
    for _ in range(8):  # rescale what is not yet at its ceiling until the total fits
        full = want >= sizes
        free = want[~full].sum()
        missing = total - want.sum()
        if abs(missing) < 0.5 or free <= 0:
            break
        want[~full] *= 1 + missing / free
        want = np.minimum(want, sizes)
    targets = np.floor(want).astype(np.int64)
    # hand out what flooring lost, largest fractions first
    short = int(total - targets.sum())
    if short > 0:
        order = np.argsort(-(want - targets), kind="stable")
        room = (sizes - targets)[order] > 0
        targets[order[room][:short]] += 1
    return targets
