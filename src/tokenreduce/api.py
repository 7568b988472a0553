"""The public entry point: ``patch(model, method)`` and the handle it returns."""

from __future__ import annotations

from torch import nn

from .adapters import Adapter, Trace, find_adapter
from .core.context import ModelInfo
from .core.state import TokenState
from .methods.base import Method, build

_ATTR = "_tokenreduce_handle"


class Handle:
    """A patched model. Use as a context manager, or call :meth:`remove` to unpatch.

    Attributes:
        model: the patched model (the same object that was passed in).
        method: the method instance it runs.
    """

    def __init__(self, model: nn.Module, adapter: Adapter) -> None:
        self.model = model
        self.method: Method = adapter.method
        self._adapter = adapter

    @property
    def trace(self) -> Trace:
        """Token counts per block and the final token state of the last forward."""
        return self._adapter.trace

    @property
    def state(self) -> TokenState | None:
        """The token state after the last forward (``size``, ``source`` map, positions)."""
        return self._adapter.trace.state

    @property
    def info(self) -> ModelInfo:
        """Facts about the patched model: layers, prefix tokens, patch grid."""
        return self._adapter.info

    def gflops(self) -> float:
        """Analytic GFLOPs per sample of the last forward (the unreduced cost before one)."""
        return self._adapter.gflops(self._adapter.trace)

    def baseline_gflops(self) -> float:
        """Analytic GFLOPs per sample of the unreduced model."""
        return self._adapter.gflops(None)

    @property
    def active(self) -> bool:
        return getattr(self.model, _ATTR, None) is self

    def remove(self) -> None:
        """Restore the model exactly (same outputs, same state dict). Idempotent."""
        if self.active:
            self._adapter.uninstall()
            delattr(self.model, _ATTR)

    def __enter__(self) -> Handle:
        return self

    def __exit__(self, *exc) -> None:
        self.remove()

    def __repr__(self) -> str:
        status = "active" if self.active else "removed"
        return f"Handle({type(self.model).__name__}, {self.method!r}, {status})"


def patch(model: nn.Module, method: Method | str) -> Handle:
    """Patch ``model`` in place to reduce tokens with ``method``.

    Args:
        model: a supported model instance (see ``tokenreduce.adapters.ADAPTERS``).
        method: a :class:`~tokenreduce.methods.Method` or a spec such as ``"tome:r=13"``.

    Returns:
        A :class:`Handle`; ``handle.remove()`` or leaving its ``with`` block unpatches.

    Raises:
        TypeError: the model's family is not supported (the message lists those that are).
        InvalidParameter: the method's parameters do not fit this model.
        RuntimeError: the model is already patched.

    Every forward of the patched model is guarded: one in which the reduction did not take
    effect raises :class:`~tokenreduce.adapters.base.ReductionNotApplied` rather than
    returning the unreduced model's output.
    """
    method = build(method)
    existing = getattr(model, _ATTR, None)
    if existing is not None:
        raise RuntimeError(
            f"this {type(model).__name__} is already patched with {existing.method!r}; "
            "call handle.remove() (or tokenreduce.unpatch(model)) first"
        )
    adapter = find_adapter(model)(model, method)
    adapter.install()
    handle = Handle(model, adapter)
    setattr(model, _ATTR, handle)
    return handle


def unpatch(model: nn.Module) -> None:
    """Undo :func:`patch` on ``model``; a no-op on an unpatched model."""
    handle = getattr(model, _ATTR, None)
    if handle is not None:
        handle.remove()


def handle_of(model: nn.Module) -> Handle | None:
    """The active handle of a patched model, or None."""
    return getattr(model, _ATTR, None)
