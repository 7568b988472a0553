"""Shared parameters of the methods that keep a ratio of tokens at chosen layers."""

from __future__ import annotations

from dataclasses import dataclass

from ..core.budgets import Budget, KeepRatio
from ..core.context import ModelInfo
from .base import Method, check, check_layers


@dataclass
class KeepRatioMethod(Method):
    """Base for pruning methods: keep ``ceil(keep_ratio * n)`` of the ``n`` unprotected tokens
    at each of ``layers`` (0-based block indices; the reduction happens after the block's
    attention, before its MLP)."""

    budget_param = "keep_ratio"
    budget_identity = 1.0
    budget_sweep = (0.9, 0.7, 0.5)
    keep_ratio: float = 0.7
    layers: tuple[int, ...] = (3, 6, 9)

    def __post_init__(self) -> None:
        check(self.name, "keep_ratio", self.keep_ratio,
              isinstance(self.keep_ratio, (int, float)) and not isinstance(self.keep_ratio, bool)
              and 0 < self.keep_ratio <= 1, "a number in (0, 1]")
        self.layers = check_layers(self.name, self.layers)

    def budget(self, model: ModelInfo) -> Budget:
        return KeepRatio(float(self.keep_ratio), self.layers)
