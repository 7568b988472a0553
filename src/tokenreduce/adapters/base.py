"""What every adapter provides, and the run-time record a patched model keeps."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from torch import nn

from ..core.budgets import Budget
from ..core.context import ModelInfo
from ..core.state import TokenState
from ..methods.base import Method


@dataclass
class Trace:
    """What the last forward did: tokens entering attention and the MLP of every block, and
    the final token state (for visualisation, unmerging and FLOP counts)."""

    attn_tokens: list[int] = field(default_factory=list)
    mlp_tokens: list[int] = field(default_factory=list)
    state: TokenState | None = None


class Adapter:
    """The only code that knows a model family's internals.

    An adapter finds the sites, builds the token context there, applies reductions to the
    hidden states and all side data, and restores the model exactly on :meth:`unpatch`.
    """

    family: ClassVar[str]

    @classmethod
    def matches(cls, model: nn.Module) -> bool:
        raise NotImplementedError

    def __init__(self, model: nn.Module, method: Method) -> None:
        self.model = model
        self.method = method
        self.info: ModelInfo = self.describe(model)
        method.check_model(self.info)
        self.budget: Budget = method.budget(self.info)
        self.trace = Trace()

    @classmethod
    def describe(cls, model: nn.Module) -> ModelInfo:
        raise NotImplementedError

    def patch(self) -> None:
        raise NotImplementedError

    def unpatch(self) -> None:
        raise NotImplementedError

    def gflops(self, trace: Trace | None = None) -> float:
        """Analytic GFLOPs per sample (multiply-adds, the fvcore convention) of the last
        forward, or of the unreduced model before any forward."""
        raise NotImplementedError
