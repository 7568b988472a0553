"""The method base class, its registry, and string specs such as ``"tome:r=13"``."""

from __future__ import annotations

import ast
import dataclasses
import typing
from typing import ClassVar

from ..core.budgets import Budget
from ..core.context import ModelInfo, TokenContext
from ..core.reduction import Reduction

_REGISTRY: dict[str, type[Method]] = {}


class InvalidParameter(ValueError):
    """A method parameter is outside its valid range."""


class Method:
    """A named recipe: scorer + reducer + budget, with the paper's parameter names.

    Subclasses are dataclasses that validate their fields in ``__post_init__`` and implement
    :meth:`budget` and :meth:`reduce`. They never touch model internals.
    """

    name: ClassVar[str]
    paper: ClassVar[str] = ""
    #: where the method acts: "tokens" reduces the hidden-state sequence inside the model
    #: (vision tokens, prefill pruning); other kinds (e.g. "kv_cache") act on side data
    kind: ClassVar[str] = "tokens"
    #: add log(token size) to attention logits once tokens have been merged
    proportional_attention: ClassVar[bool] = False
    #: the method needs a 2-D patch grid (vision only)
    needs_grid: ClassVar[bool] = False
    #: the parameter that sets how much is removed, its value that removes nothing, and a
    #: default sweep of values from light to heavy reduction (used by benchmarks and tests)
    budget_param: ClassVar[str]
    budget_identity: ClassVar[object]
    budget_sweep: ClassVar[tuple]

    def budget(self, model: ModelInfo) -> Budget:
        raise NotImplementedError

    def reduce(self, ctx: TokenContext, n_remove: int) -> Reduction:
        raise NotImplementedError

    def uses_proportional_attention(self) -> bool:
        return self.proportional_attention

    def check_model(self, model: ModelInfo) -> None:
        """Fail at patch time if a parameter does not fit the model (e.g. a layer index)."""
        layers = getattr(self, "layers", None)
        if layers is not None:
            for i in layers:
                if not 0 <= i < model.num_layers:
                    raise InvalidParameter(
                        f"{self.name}: layers contains {i}, outside this model's layers "
                        f"0..{model.num_layers - 1} ({model.num_layers} blocks)"
                    )
        if self.needs_grid and model.grid is None:
            raise InvalidParameter(f"{self.name} needs a patch grid; {model.family} has none")


def register(cls: type[Method]) -> type[Method]:
    """Class decorator: make a method available by name (and to the shared test suite)."""
    if cls.name in _REGISTRY:
        raise ValueError(f"a method named {cls.name!r} is already registered")
    _REGISTRY[cls.name] = cls
    return cls


def available() -> list[str]:
    """Names of the registered methods."""
    return sorted(_REGISTRY)


def get(name: str) -> type[Method]:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(
            f"unknown method {name!r}; available: {', '.join(available())}"
        ) from None


def check(method: str, param: str, value, ok: bool, allowed: str) -> None:
    """Raise :class:`InvalidParameter` naming the parameter, its value and the valid range."""
    if not ok:
        raise InvalidParameter(f"{method}: {param}={value!r} is invalid; allowed: {allowed}")


def check_layers(method: str, layers) -> tuple[int, ...]:
    layers = (layers,) if isinstance(layers, int) else tuple(layers)
    check(method, "layers", layers, all(isinstance(i, int) and i >= 0 for i in layers),
          "a tuple of layer indices >= 0")
    return tuple(sorted(set(layers)))


def parse_spec(spec: str) -> tuple[str, dict]:
    """``"tome:r=13,prop_attn=false"`` -> ``("tome", {"r": 13, "prop_attn": False})``.

    Values are Python literals (``0.7``, ``[3,6,9]``, ``'name'``); ``true``/``false``/``none``
    are accepted in any case; anything else is kept as a string.
    """
    name, _, rest = spec.strip().partition(":")
    kwargs: dict = {}
    for item in _split_top_level(rest):
        key, eq, raw = item.partition("=")
        if not eq or not key.strip():
            raise ValueError(f"bad method spec {spec!r}: expected key=value, got {item!r}")
        kwargs[key.strip()] = _literal(raw.strip())
    return name.strip(), kwargs


def _split_top_level(text: str) -> list[str]:
    parts, depth, cur = [], 0, ""
    for ch in text:
        depth += ch in "([{"
        depth -= ch in ")]}"
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    parts.append(cur)
    return [p for p in (p.strip() for p in parts) if p]


def _literal(raw: str):
    low = raw.lower()
    if low in ("true", "false", "none"):
        return {"true": True, "false": False, "none": None}[low]
    try:
        return ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        return raw


def build(spec: str | Method) -> Method:
    """A method from an instance (returned as is) or a string spec."""
    if isinstance(spec, Method):
        return spec
    if not isinstance(spec, str):
        raise TypeError(f"method must be a Method or a spec string, got {type(spec).__name__}")
    name, kwargs = parse_spec(spec)
    cls = get(name)
    fields = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(kwargs) - fields)
    if unknown:
        raise ValueError(
            f"{name}: unknown parameter(s) {', '.join(unknown)}; "
            f"valid parameters: {', '.join(sorted(fields))}"
        )
    hints = typing.get_type_hints(cls)
    for key, value in kwargs.items():
        if "tuple" in str(hints.get(key)) and isinstance(value, (int, list)):
            kwargs[key] = (value,) if isinstance(value, int) else tuple(value)
    return cls(**kwargs)


def describe(method: Method) -> str:
    """The method as a spec string that :func:`build` turns back into an equal method."""
    args = ",".join(f"{f.name}={getattr(method, f.name)!r}" for f in dataclasses.fields(method))
    return f"{method.name}:{args}".replace(" ", "") if args else method.name
