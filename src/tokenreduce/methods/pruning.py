"""Shared parameters of the methods that keep a ratio of tokens at chosen layers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from ..core.budgets import Budget, KeepRatio, layers_at, matched_keep_ratio
from ..core.context import ModelInfo
from .base import TokenMethod, layer_tuple, param


@dataclass
class KeepRatioMethod(TokenMethod):
    """Base for pruning methods: keep ``ceil(keep_ratio * n)`` of the ``n`` unprotected tokens
    at each of ``layers`` (0-based block indices; the reduction happens after the block's
    attention, before its MLP). Sweeps reduce at 1/4, 1/2 and 3/4 of the model's depth (the
    EViT paper's (3, 6, 9) on 12 blocks)."""

    budget_param: ClassVar[str] = "keep_ratio"
    budget_identity: ClassVar[object] = 1.0
    budget_sweep: ClassVar[tuple] = (0.7, 0.5, 0.4)
    test_params: ClassVar[dict[str, Any]] = {"keep_ratio": 0.5, "layers": (1, 2)}
    keep_ratio: float = param(0.7, gt=0, le=1)
    layers: tuple[int, ...] = layer_tuple((3, 6, 9))

    def __post_init__(self) -> None:
        super().__post_init__()
        self.layers = tuple(sorted(set(self.layers)))

    def budget(self, model: ModelInfo) -> Budget:
        return KeepRatio(float(self.keep_ratio), self.layers)

    @classmethod
    def placement(cls, depth: int) -> dict[str, Any]:
        return {"layers": tuple(layers_at(depth))}

    @classmethod
    def matched_sweep(cls, fractions, depth, n_patches, quick=False):
        """``keep_ratio`` per reducing block so that a share ``f`` is gone after the last."""
        layers = tuple(layers_at(depth))
        return [cls(keep_ratio=matched_keep_ratio(f, len(layers)), layers=layers)
                for f in fractions]  # fmt: skip
