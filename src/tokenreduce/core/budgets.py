"""Budgets: how many tokens survive at each site.

A budget answers one question for every kind of method, ``keep(site, n)``: of the ``n``
reducible tokens (unprotected tokens, cache entries, prompt tokens) present at ``site`` (a
layer index), how many survive. Reducers may keep more when their strategy caps a
reduction (ToMe's bipartite matching removes at most half).

The matched-budget helpers place reductions by the model's depth and turn a share of tokens
removed into a per-site keep ratio, so methods of different strategies can be compared at
equal token counts.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


class Budget:
    """Base class: :meth:`keep` is the one question every adapter asks."""

    def keep(self, site: int, n: int) -> int:
        """Tokens that survive at ``site`` out of the ``n`` reducible ones there."""
        raise NotImplementedError


@dataclass(frozen=True)
class ConstantR(Budget):
    """Remove ``r`` tokens at every layer."""

    r: int

    def keep(self, site: int, n: int) -> int:
        return n - min(self.r, n)


@dataclass(frozen=True)
class PerLayer(Budget):
    """An explicit list: ``schedule[i]`` tokens removed at layer i (0 past the end)."""

    schedule: tuple[int, ...]

    def keep(self, site: int, n: int) -> int:
        return n - min(self.schedule[site], n) if site < len(self.schedule) else n


def tome_schedule(num_layers: int, r: int, inflect: float = 0.0) -> tuple[int, ...]:
    """ToMe's linear schedule: constant ``r`` at ``inflect=0``; ``inflect>0`` removes fewer
    tokens early and more late (``inflect<0`` the opposite), keeping the mean near ``r``."""
    lo = int(r * (1.0 - inflect))
    hi = 2 * r - lo
    step = (hi - lo) / max(num_layers - 1, 1)
    return tuple(int(lo + step * i) for i in range(num_layers))


@dataclass(frozen=True)
class KeepRatio(Budget):
    """At each of ``layers``, keep ``ceil(keep_ratio * n)`` of the ``n`` reducible tokens."""

    keep_ratio: float
    layers: tuple[int, ...]

    def keep(self, site: int, n: int) -> int:
        return math.ceil(self.keep_ratio * n) if site in self.layers else n


def removed_count(n: int, ratio: float) -> int:
    """Tokens a ratio removes from ``n`` (floor, robust to float error: 0.3 * 10 -> 3)."""
    return int(n * ratio + 1e-9)


@dataclass(frozen=True)
class StagedPrune(Budget):
    """Prompt pruning at ``sites`` (ascending layers): after site i of K, the share
    ``ratio * (i + 1) / K`` of the ``n`` reducible prompt tokens (the protected ones, such as
    the last token or a vision-language model's text, are not counted) is gone. A layer that
    is no site keeps all ``n``."""

    ratio: float
    sites: tuple[int, ...]

    def keep(self, site: int, n: int) -> int:
        if site not in self.sites:
            return n
        return n - removed_count(n, self.removed_share(self.sites.index(site)))

    def removed_share(self, stage: int) -> float:
        """Share of the reducible tokens gone after site ``stage`` (0-based)."""
        return self.ratio * (stage + 1) / len(self.sites)


@dataclass(frozen=True)
class GeometricPrune(StagedPrune):
    """Prompt pruning at ``sites`` where every site keeps the same share of what the site
    before kept (PyramidDrop's stages): after site i of K, ``(1 - ratio) ** ((i + 1) / K)`` of
    the ``n`` reducible tokens remain, so the last site keeps ``1 - ratio`` of them, like
    :class:`StagedPrune`, and each site keeps ``(1 - ratio) ** (1 / K)`` of its input."""

    def removed_share(self, stage: int) -> float:
        return 1.0 - (1.0 - self.ratio) ** ((stage + 1) / len(self.sites))


def as_layers(layers: int | Sequence[int]) -> tuple[int, ...]:
    return (layers,) if isinstance(layers, int) else tuple(int(i) for i in layers)


# -- matched budgets ------------------------------------------------------------------------
#: where matched configurations reduce, as fractions of the depth
DEPTH_FRACTIONS = (0.25, 0.5, 0.75)


def layers_at(depth: int, fractions: Sequence[float] = DEPTH_FRACTIONS) -> list[int]:
    """Block indices at fixed fractions of the depth: [3, 6, 9] for 12 blocks at 1/4, 2/4,
    3/4 (distinct, within 0..depth-1)."""
    return sorted({min(depth - 1, max(0, int(depth * f))) for f in fractions})


def matched_keep_ratio(f: float, steps: int = len(DEPTH_FRACTIONS)) -> float:
    """The per-step keep ratio that leaves ``1 - f`` of the tokens after ``steps`` steps,
    rounded to 4 decimals; ``f`` in [0, 1)."""
    if not 0 <= f < 1:
        raise ValueError(f"a matched budget is a share of tokens removed in [0, 1), got {f!r}")
    return round((1.0 - f) ** (1.0 / steps), 4)


def matched_removed(f: float, n: int, steps: int = len(DEPTH_FRACTIONS)) -> list[int]:
    """Tokens removed at each step from ``n`` by a keep-ratio method at budget ``f``
    (:class:`KeepRatio`'s rule: keep ``ceil(k * m)`` of ``m``)."""
    k, out = matched_keep_ratio(f, steps), []
    for _ in range(steps):
        keep = math.ceil(k * n)
        out.append(n - keep)
        n = keep
    return out
