"""The public entry point: ``patch(model, method)`` and the handle it returns."""

from __future__ import annotations

from torch import nn

from . import adapters
from .adapters import Adapter, Trace, find_adapter
from .core.context import ModelInfo
from .core.state import TokenState
from .methods.base import InvalidParameter, Method, available, build, get

_ATTR = "_tokenreduce_handle"


class Handle:
    """A patched model. Use as a context manager, or call :meth:`remove` to unpatch.

    Attributes:
        model: the patched model (the same object that was passed in).
        method: the method instance it runs; None for ``patch(model, None)``, the unreduced
            model (its trace, token state and GFLOPs are the unreduced model's).
    """

    def __init__(self, model: nn.Module, adapter: Adapter, reduced: bool = True) -> None:
        self.model = model
        self.method: Method | None = adapter.method if reduced else None
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
        return f"Handle({type(self.model).__name__}, {self._what}, {status})"

    @property
    def _what(self) -> str:
        return "unreduced" if self.method is None else repr(self.method)


def describe(model: nn.Module, kind: type[Method] | None = None) -> ModelInfo:
    """What tokenreduce knows of ``model``, answered by the adapter of its family.

    Args:
        model: a model of a supported family.
        kind: a method class (``tokenreduce.methods.TokenMethod``, a registered method's
            class, ...): the facts such a method sees, where a family's sites for that kind
            form a model of their own (a vision-language model's token methods see the
            handoff site alone: one site over each image's tokens).

    Returns:
        A :class:`~tokenreduce.core.context.ModelInfo`: ``kind`` ("vision", "language" or
        "vision-language"), ``num_layers`` (depth: blocks or decoder layers; the sites a method
        of ``kind`` indexes), ``num_prefix`` (leading protected tokens: class, distillation,
        registers; 0 for a language model), ``grid`` (the configured patch grid (rows, cols),
        None for a language model), ``sites`` (where the adapter reduces) and ``family``.

    Raises:
        TypeError: the model's family is not supported (the same message as :func:`patch`).
    """
    return adapters.describe(model, kind)


def _unreduced(adapter: type[Adapter], model: nn.Module) -> Method:
    """A method of a kind ``adapter`` takes, placed in ``model`` at the budget that removes
    nothing (the first registered such method that fits the model, so the choice is stable:
    one that needs what the model lacks, such as an instruction, is passed over)."""
    for name in available():
        cls = get(name)
        if issubclass(cls, adapter.accepts):
            info = adapter.describe_for(model, cls)
            place = cls.placement(info.num_layers)
            method = cls(**{cls.budget_param: cls.budget_identity}, **place)
            try:
                method.check_model(info)
            except InvalidParameter:
                continue
            return method
    raise TypeError(f"no registered method fits {adapter.family}")  # pragma: no cover


def patch(model: nn.Module, method: Method | str | None) -> Handle:
    """Patch ``model`` in place to reduce tokens with ``method``.

    Args:
        model: a supported model instance (one the adapter package's ``ADAPTERS`` match).
        method: a :class:`~tokenreduce.methods.Method` or a spec such as ``"tome:r=13"``;
            None for the unreduced model: outputs equal to the unpatched model's, with the
            handle's trace, token state and GFLOPs (the baseline of a benchmark).

    Returns:
        A :class:`Handle`; ``handle.remove()`` or leaving its ``with`` block unpatches.

    Raises:
        TypeError: the model's family is not supported (the message lists those that are).
        InvalidParameter: the method's parameters do not fit this model.
        RuntimeError: the model is already patched.

    Every forward of the patched model is guarded: one in which the reduction did not take
    effect raises :class:`tokenreduce.ReductionNotApplied` rather than
    returning the unreduced model's output (``patch(model, None)`` asks for it, so its
    guard only checks that the model's sites ran).
    """
    reduced = method is not None
    method = build(method) if reduced else None
    existing = getattr(model, _ATTR, None)
    if existing is not None:
        raise RuntimeError(
            f"this {type(model).__name__} is already patched ({existing._what}); "
            "call handle.remove() (or tokenreduce.unpatch(model)) first"
        )
    family = find_adapter(model)
    adapter = family(model, method if reduced else _unreduced(family, model))
    adapter.install()
    handle = Handle(model, adapter, reduced)
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
