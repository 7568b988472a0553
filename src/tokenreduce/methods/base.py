"""The method base classes, declared parameter ranges, the registry, and string specs such as
``"tome:r=13"``.

Three kinds of method, one abstract base each, so an adapter says which it accepts by class:

* :class:`TokenMethod` (``kind = "tokens"``) reduces the hidden-state sequence inside the
  model (vision tokens): it writes :meth:`TokenMethod.reduce`;
* :class:`~tokenreduce.methods.kv_base.KVCacheMethod` (``"kv_cache"``) scores cached entries
  once the prompt has been read: it writes ``scores``;
* :class:`~tokenreduce.methods.prefill.PrefillMethod` (``"prefill"``) drops prompt tokens
  inside a decoder during prefill: it writes ``sites``.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import typing
from collections.abc import Callable
from typing import Any, ClassVar

from ..core.adaptive import RULES, AdaptiveRule, LevelPolicy, reduce_each
from ..core.budgets import Budget
from ..core.context import ModelInfo, TokenContext
from ..core.reduction import Reduction

_REGISTRY: dict[str, type[Method]] = {}


class InvalidParameter(ValueError):
    """A method parameter is outside its valid range."""


# -- declared parameter ranges ----------------------------------------------------------------
def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


@dataclasses.dataclass(frozen=True)
class Range:
    """The values a parameter accepts, and the words that name them in an error.

    ``type`` is ``int``, ``float`` (any number, never a bool), ``bool`` or ``str``; bounds are
    inclusive (``ge``, ``le``) or strict (``gt``, ``lt``); ``choices`` lists the allowed
    strings; ``odd`` asks for an odd integer; ``optional`` also allows None. ``valid`` and
    ``allowed`` replace the generated test and words for a shape no bound describes.
    """

    type: type
    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    choices: tuple[str, ...] | None = None
    odd: bool = False
    optional: bool = False
    valid: Callable[[Any], bool] | None = None
    allowed: str | None = None

    def accepts(self, value) -> bool:
        if value is None:
            return self.optional
        if self.valid is not None:
            return self.valid(value)
        if self.type is bool:
            return isinstance(value, bool)
        if self.type is str:
            return value in (self.choices or ())
        if not (_is_int(value) if self.type is int else _is_number(value)):
            return False
        return (
            (self.ge is None or value >= self.ge)
            and (self.gt is None or value > self.gt)
            and (self.le is None or value <= self.le)
            and (self.lt is None or value < self.lt)
            and (not self.odd or value % 2 == 1)
        )

    def describe(self) -> str:
        """``"an integer >= 0"``, ``"a number in [0, 1)"``, ``"'avg' or 'max'"``, ..."""
        if self.allowed is not None:
            words = self.allowed
        elif self.type is bool:
            words = "true or false"
        elif self.type is str:
            words = " or ".join(repr(c) for c in self.choices or ())
        else:
            words = self._describe_number()
        return f"None or {words}" if self.optional else words

    def _describe_number(self) -> str:
        noun = ("an odd integer" if self.odd else "an integer") if self.type is int else "a number"
        low, high = (self.ge, self.gt), (self.le, self.lt)
        if any(v is not None for v in low) and any(v is not None for v in high):
            left = f"[{self.ge}" if self.ge is not None else f"({self.gt}"
            right = f"{self.le}]" if self.le is not None else f"{self.lt})"
            return f"{noun} in {left}, {right}"
        for op, bound in ((">=", self.ge), (">", self.gt), ("<=", self.le), ("<", self.lt)):
            if bound is not None:
                return f"{noun} {op} {bound}"
        return noun


def param(
    default,
    *,
    type: type | None = None,
    convert: Callable | None = None,
    optional_in_spec: bool = False,
    **bounds,
):
    """A method field with its valid range, checked by :meth:`Method.__post_init__`.

    ``r: int = param(8, ge=0)`` accepts integers >= 0; ``keep_ratio: float = param(0.7, gt=0,
    le=1)`` numbers in (0, 1]. The type is the default's unless given (``type=int`` for an
    optional integer whose default is None). ``convert`` turns a value into its stored form
    before the check (e.g. a list of layers into a tuple). ``optional_in_spec`` makes the
    field keyword-only and leaves it out of :func:`describe` at its default (a parameter
    every method of a kind shares, so the specs of methods that do not set it stay as they
    were). Other keywords: see :class:`Range`.
    """
    kind = type or (default.__class__ if default is not None else int)
    meta = {"range": Range(kind, **bounds), "convert": convert, "in_spec": not optional_in_spec}
    if isinstance(default, (list, dict, set)):
        raise TypeError("param(): use a tuple for a sequence default")
    return dataclasses.field(default=default, metadata=meta, kw_only=optional_in_spec)


def as_tuple(value):
    """A list or a single int as a tuple; anything else unchanged (the check then names it)."""
    if _is_int(value):
        return (value,)
    return tuple(value) if isinstance(value, list | tuple) else value


def layer_tuple(default: tuple[int, ...] | None, *, optional: bool = False, ascending=False):
    """A field of 0-based layer indices (a single int or a list is accepted and stored as a
    tuple). ``ascending`` requires distinct indices in increasing order, as given."""

    def valid(value) -> bool:
        ok = isinstance(value, tuple) and all(_is_int(i) and i >= 0 for i in value)
        if ascending:
            ok = ok and len(value) >= 1 and list(value) == sorted(set(value))
        return ok

    allowed = (
        "a non-empty ascending tuple of distinct layer indices >= 0"
        if ascending
        else "a tuple of layer indices >= 0"
    )
    return param(default, type=tuple, convert=as_tuple, valid=valid, allowed=allowed,
                 optional=optional)  # fmt: skip


def check_params(method: Method) -> None:
    """Convert and check every declared field of ``method``; raise :class:`InvalidParameter`
    naming the first one outside its range."""
    for f in dataclasses.fields(method):
        rng = f.metadata.get("range")
        if rng is None:
            continue
        value = getattr(method, f.name)
        convert = f.metadata.get("convert")
        if convert is not None and value is not None:
            value = convert(value)
            setattr(method, f.name, value)
        check(method.name, f.name, value, rng.accepts(value), rng.describe())


def check_per_layer(method: str, param: str, values, model: ModelInfo) -> None:
    """Refuse a per-layer list (``param``, or None) longer than ``model``'s depth."""
    if values is not None and len(values) > model.num_layers:
        raise InvalidParameter(
            f"{method}: {param} has {len(values)} entries but the model has "
            f"{model.num_layers} layers"
        )


def check(method: str, param: str, value, ok: bool, allowed: str) -> None:
    """Raise :class:`InvalidParameter` naming the parameter, its value and the valid range."""
    if not ok:
        raise InvalidParameter(f"{method}: {param}={value!r} is invalid; allowed: {allowed}")


# -- the method kinds ---------------------------------------------------------------------------
class Method:
    """A named recipe: scorer + reducer + budget, with the paper's parameter names.

    Subclasses are dataclasses of one of the three kinds (:class:`TokenMethod`,
    ``KVCacheMethod``, ``PrefillMethod``). Each field declares its range with :func:`param`;
    :meth:`__post_init__` checks them all, so a bad value fails at construction. Methods
    never touch model internals.
    """

    name: ClassVar[str]
    paper: ClassVar[str] = ""
    #: short name of the kind, for display and benchmark filtering ("tokens", "kv_cache",
    #: "prefill"); adapters accept methods by class, never by this string
    kind: ClassVar[str]
    #: the kind in words, for error messages ("token-sequence", "KV-cache", "prefill")
    kind_words: ClassVar[str]
    #: for a kind that patches no model, how to run it instead (said when patch refuses it)
    runs_without_patch: ClassVar[str] = ""
    #: the parameter that sets how much is removed, its value that removes nothing, and the
    #: default sweep of its values from light to heavy reduction (benchmarks)
    budget_param: ClassVar[str]
    budget_identity: ClassVar[object]
    budget_sweep: ClassVar[tuple]
    #: parameters sized for the tests' tiny models (a few blocks, prompts of a few dozen
    #: tokens), merged into every instance the shared invariant suites build
    test_params: ClassVar[dict[str, Any]] = {}
    #: whether a benchmark sweep runs the method when none is named; False for a method that
    #: needs weights trained for the model (it is run by naming them in a spec)
    in_default_sweep: ClassVar[bool] = True

    def __post_init__(self) -> None:
        check_params(self)

    def budget(self, model: ModelInfo) -> Budget:
        """How many tokens (or cache entries) survive at each site of ``model``:
        ``budget(model).keep(site, n)``."""
        raise NotImplementedError

    def check_model(self, model: ModelInfo) -> None:
        """Fail at patch time if a parameter does not fit the model (e.g. a layer index)."""

    # -- sweeps: what a benchmark runs by default --------------------------------------------
    @classmethod
    def placement(cls, depth: int) -> dict[str, Any]:
        """Parameters that place the method in a model of ``depth`` blocks for a sweep (e.g.
        the layers a keep-ratio method reduces at); none by default."""
        return {}

    @classmethod
    def default_sweep(cls, depth: int, quick: bool = False) -> list[Method]:
        """The budgets a benchmark runs on a model of ``depth`` blocks, light to heavy: each
        value of :attr:`budget_sweep` placed by :meth:`placement`; ``quick`` keeps the middle
        one."""
        values = cls.budget_sweep
        if quick:
            values = values[len(values) // 2 :][:1]
        return [cls(**{cls.budget_param: v}, **cls.placement(depth)) for v in values]

    @classmethod
    def matched_sweep(
        cls, fractions: tuple[float, ...], depth: int, n_patches: int, quick: bool = False
    ) -> list[Method] | None:
        """The configurations that remove the shares ``fractions`` of ``n_patches`` tokens at
        the matched blocks (``tokenreduce.bench.matched``), or None when the method's budget
        cannot be matched (it then runs :meth:`default_sweep`)."""
        return None

    @classmethod
    def for_tests(cls, **overrides) -> Method:
        """An instance with :attr:`test_params`, then ``overrides`` (the invariant suites)."""
        fields = {f.name for f in dataclasses.fields(cls) if f.init}
        sized = {k: v for k, v in cls.test_params.items() if k in fields}
        return cls(**{**sized, **overrides})


class SequenceMethod(Method):
    """What the token-sequence kinds share: a subclass writes :meth:`budget` and
    :meth:`reduce`; the adapter calls ``reduce`` at every site where the budget removes
    something. Not a kind itself (see :class:`TokenMethod`, :class:`PerInputTokenMethod`)."""

    #: add log(token size) to attention logits once tokens have been merged
    proportional_attention: ClassVar[bool] = False
    #: the method needs a 2-D patch grid (vision only)
    needs_grid: ClassVar[bool] = False
    #: the method reads the instruction's embeddings (``TokenContext.query``): only sites
    #: that give them take it (``ModelInfo.gives_query``: a vision-language model's handoff)
    needs_query: ClassVar[bool] = False
    test_params: ClassVar[dict[str, Any]] = {"layers": (1, 2)}  # blocks of the 4-block models

    def reduce(self, ctx: TokenContext, n_remove: int) -> Reduction:
        """The reduction removing ``n_remove`` of the ``ctx.num_reducible`` tokens at this site
        (a reducer may remove fewer where its strategy caps it)."""
        raise NotImplementedError

    def uses_proportional_attention(self) -> bool:
        return self.proportional_attention

    def check_model(self, model: ModelInfo) -> None:
        layers = getattr(self, "layers", None)
        if layers is not None:
            for i in layers:
                if not 0 <= i < model.num_layers:
                    raise InvalidParameter(
                        f"{self.name}: layers contains {i}, outside this model's layers "
                        f"0..{model.num_layers - 1} ({model.num_layers} blocks)"
                    )
        if self.needs_grid and model.grid is None and not model.grid_per_input:
            raise InvalidParameter(f"{self.name} needs a patch grid; {model.family} has none")
        if self.needs_query and not model.gives_query:
            raise InvalidParameter(
                f"{self.name} ranks tokens by their relevance to the instruction, but "
                f"{model.family} ({model.kind}) gives no instruction at its sites; it runs on "
                "vision-language models, at the handoff of the image tokens"
            )


#: the model kinds (``ModelInfo.kind``) whose token sites take per-sample counts: a
#: vision-language model's handoff pads shorter samples' prompts and masks the padding
ADAPTIVE_KINDS = ("vision-language",)


@dataclasses.dataclass
class TokenMethod(SequenceMethod):
    """A method that reduces the hidden-state sequence at sites inside the model (vision
    tokens, text tokens) by the same count in every sample of a batch without padding, or,
    under an adaptive budget, by a count of each sample's own.

    Adaptive budgets (every token method whose budget is a ``keep_ratio``; keyword-only, left
    out of the spec when unset): ``adaptive`` is None (every sample keeps
    ``ceil(keep_ratio * n)``) or a rule of :mod:`tokenreduce.core.adaptive` (``'threshold'``,
    ``'iqr'``, ``'entropy'``) by which the samples of a batch share the same total, each a
    count proportional to a difficulty estimate from its class-token attention;
    ``adaptive_k`` is the rule's parameter (``threshold``: t >= 0 on the normalised score,
    default 1; ``iqr``: the multiplier k >= 0, default 1.5; ``entropy``, ``policy``: none);
    ``adaptive_policy`` is the weights file of the rule ``policy`` (a learned budget policy,
    :mod:`tokenreduce.train.budget_policy`). Specs read
    ``"visionzip:keep_ratio=0.25,layers=0,adaptive=entropy"``. Sites must take per-sample
    counts (:data:`ADAPTIVE_KINDS`: a vision-language model's handoff); a method whose budget
    is not a keep ratio (ToMe's ``r``, pool's kernel) refuses it.
    """

    kind: ClassVar[str] = "tokens"
    kind_words: ClassVar[str] = "token-sequence"
    adaptive: str | None = param(None, type=str, optional=True, choices=tuple(RULES),
                                 optional_in_spec=True)  # fmt: skip
    adaptive_k: float | None = param(None, type=float, optional=True, ge=0,
                                     optional_in_spec=True)  # fmt: skip
    adaptive_policy: str | None = param(None, type=str, optional=True, optional_in_spec=True,
                                        valid=lambda v: isinstance(v, str),
                                        allowed="a budget policy file (JSON)")  # fmt: skip

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        # Adapters call ``reduce`` with the uniform count; under an adaptive budget the batch
        # is split into samples with counts of their own, whichever class wrote ``reduce``.
        own = cls.__dict__.get("reduce")
        if own is not None and not getattr(own, "adaptive_entry", False):
            cls.reduce = _adaptive_entry(own)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.adaptive is None:
            check(self.name, "adaptive_k", self.adaptive_k, self.adaptive_k is None,
                  "None unless adaptive names a rule")  # fmt: skip
            check(self.name, "adaptive_policy", self.adaptive_policy,
                  self.adaptive_policy is None, "None unless adaptive is 'policy'")  # fmt: skip
            return
        if self.budget_param != "keep_ratio":
            takers = [n for n in available()
                      if issubclass(get(n), TokenMethod) and get(n).budget_param == "keep_ratio"]  # fmt: skip
            raise InvalidParameter(
                f"{self.name}: adaptive={self.adaptive!r} is invalid: an adaptive budget shares "
                f"a keep_ratio's tokens among the samples, and {self.name}'s budget is "
                f"{self.budget_param}, which sets no per-sample count; methods that take it: "
                f"{', '.join(takers)}"
            )
        try:
            rule = self.adaptive_rule
            if rule.policy is not None:
                LevelPolicy.load(rule.policy)  # a missing or broken file fails here, not mid-run
        except ValueError as err:
            name = "adaptive_policy" if self.adaptive == "policy" else "adaptive_k"
            raise InvalidParameter(f"{self.name}: {name}={getattr(self, name)!r} is invalid: "
                                   f"{err}") from None  # fmt: skip

    @property
    def adaptive_rule(self) -> AdaptiveRule | None:
        """The rule by which the samples of a batch share its tokens; None when uniform."""
        if self.adaptive is None:
            return None
        return AdaptiveRule(self.adaptive, self.adaptive_k, self.adaptive_policy)

    def check_model(self, model: ModelInfo) -> None:
        super().check_model(model)
        if self.adaptive is not None and model.kind not in ADAPTIVE_KINDS:
            raise InvalidParameter(
                f"{self.name}: adaptive={self.adaptive!r} needs sites that take a token count "
                f"per sample ({' or '.join(ADAPTIVE_KINDS)} models: the handoff pads shorter "
                f"samples); {model.family} is a {model.kind} model, whose later layers run "
                f"every sample at one length"
            )


def _adaptive_entry(reduce: Callable[..., Reduction]) -> Callable[..., Reduction]:
    """``reduce`` as adapters call it: as written for a uniform budget or a batch of one (which
    keeps the uniform count), else sample by sample at the counts the adaptive rule gives."""

    @functools.wraps(reduce)
    def entry(self: TokenMethod, ctx: TokenContext, n_remove: int) -> Reduction:
        rule = self.adaptive_rule
        if rule is None or ctx.hidden.shape[0] == 1:
            return reduce(self, ctx, n_remove)
        return reduce_each(ctx, n_remove, rule, functools.partial(reduce, self))

    entry.adaptive_entry = True
    return entry


class PerInputTokenMethod(SequenceMethod):
    """A token-sequence method whose reductions give each input its own token count (a score
    threshold): a batch without padding turns ragged, with padding slots at each shorter
    sample's end, so only adapters whose later layers hide padding slots (text encoders)
    accept it. Its budget's ``keep(site, n)`` is the fewest tokens a site may keep; the
    method's ``reduce`` decides per input how many of the ``n_remove`` allowed go."""

    kind: ClassVar[str] = "tokens_per_input"
    kind_words: ClassVar[str] = "per-input token-sequence"


def kinds_text(kinds: tuple[type[Method], ...]) -> str:
    """``"a KV-cache or prefill method: fastv, h2o, ... (kind 'kv_cache' or 'prefill')"``: the
    registered methods of the given classes, for an error that refuses another kind."""
    words = " or ".join(k.kind_words for k in kinds)
    names = ", ".join(n for n in available() if issubclass(get(n), kinds))
    codes = " or ".join(repr(k.kind) for k in kinds)
    return f"a {words} method: {names} (kind {codes})"


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
    """The method as a spec string that :func:`build` turns back into an equal method (every
    field, except those declared ``optional_in_spec`` while at their default)."""
    fields = dataclasses.fields(method)
    own = [f for f in fields if f.metadata.get("in_spec", True)]
    shared = [f for f in fields if f not in own and getattr(method, f.name) != f.default]
    shown = own + shared
    args = ",".join(f"{f.name}={getattr(method, f.name)!r}" for f in shown)
    return f"{method.name}:{args}".replace(" ", "") if args else method.name
