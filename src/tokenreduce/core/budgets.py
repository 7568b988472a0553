"""Budgets: how many tokens a method removes at each layer.

A budget answers one question, ``remove(layer, n)``: of the ``n`` reducible (unprotected)
tokens present at ``layer``, how many should go. Reducers may remove fewer when their
strategy caps it (ToMe's bipartite matching removes at most half).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


class Budget:
    """Base class. ``layers`` is the tuple of layers where anything happens (None = all)."""

    def remove(self, layer: int, n: int) -> int:
        raise NotImplementedError

    def active_layers(self, num_layers: int) -> list[int]:
        return [i for i in range(num_layers) if self.remove(i, 1 << 30) > 0]

    def max_layer(self) -> int | None:
        """Highest layer index this budget names explicitly (checked against the model)."""
        return None


@dataclass(frozen=True)
class ConstantR(Budget):
    """Remove ``r`` tokens at every layer."""

    r: int

    def remove(self, layer: int, n: int) -> int:
        return min(self.r, n)


@dataclass(frozen=True)
class PerLayer(Budget):
    """An explicit list: ``schedule[i]`` tokens removed at layer i (0 past the end)."""

    schedule: tuple[int, ...]

    def remove(self, layer: int, n: int) -> int:
        return min(self.schedule[layer], n) if layer < len(self.schedule) else 0


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

    def remove(self, layer: int, n: int) -> int:
        return n - math.ceil(self.keep_ratio * n) if layer in self.layers else 0

    def max_layer(self) -> int | None:
        return max(self.layers) if self.layers else None


def as_layers(layers: int | Sequence[int]) -> tuple[int, ...]:
    return (layers,) if isinstance(layers, int) else tuple(int(i) for i in layers)
