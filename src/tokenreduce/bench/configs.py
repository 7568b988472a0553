"""Which configurations a sweep measures: methods, budgets and their default sweeps.

A configuration is a canonical method spec (``tokenreduce.methods.describe``), so
``tome:r=8`` and ``tome:r=8,inflect=0.0`` are the same configuration; the unreduced model is
the configuration ``baseline``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable

from .. import methods

BASELINE = "baseline"

#: The methods a sweep runs when the command line names none, by the method kinds its task
#: measures; for kinds not listed, every registered method of those kinds. Text encoders (the
#: tasks that also take per-input methods) run merging, attention and random pruning and the
#: two encoder methods: grid methods (pool, downsample) have no patch grid on text, and the
#: other class-attention pruners differ from topk only in what they do with the rest.
DEFAULT_METHODS: dict[frozenset[str], tuple[str, ...]] = {
    frozenset({"tokens", "tokens_per_input"}): ("tome", "topk", "random", "power_bert", "ltp"),
    # the prompt task: each prompt compressor, and two cache methods at the same budgets
    frozenset({"prompt", "kv_cache", "prefill"}): (
        "selective_context", "llmlingua", "longllmlingua", "snapkv", "streamingllm",
    ),  # fmt: skip
}


class ConfigError(ValueError):
    """A method name or budget spec given on the command line is not usable."""


def default_sweep(name: str, depth: int, quick: bool = False) -> list[str]:
    """The default budgets of one method on a model with ``depth`` blocks, as the method
    declares them (:meth:`tokenreduce.methods.Method.default_sweep`: e.g. keep-ratio methods
    reduce at 1/4, 1/2 and 3/4 of the depth); ``quick`` keeps one mid-range budget."""
    return [methods.describe(m) for m in methods.get(name).default_sweep(depth, quick)]


def default_methods(
    kind: str | tuple[str, ...] = "tokens", model_kind: str | None = None
) -> list[str]:
    """The methods a sweep of ``kind`` (one method kind or several) runs when none are named:
    :data:`DEFAULT_METHODS` for those kinds, else every registered method of them. Methods
    that act on image tokens only (``needs_images``: ``vtw``, ``sparsevlm``) are left out
    unless the model is a vision-language one (``model_kind`` ``"vlm"``, or None: any), and so
    are methods that need weights trained for the model (``dynamicvit``: not
    ``Method.in_default_sweep``)."""
    kinds = frozenset((kind,) if isinstance(kind, str) else kind)
    names = DEFAULT_METHODS.get(kinds, token_methods(tuple(kinds)))
    images = model_kind in (None, "vlm")
    return [
        n
        for n in names
        if methods.get(n).in_default_sweep
        and (images or not getattr(methods.get(n), "needs_images", False))
    ]


def token_methods(kind: str | tuple[str, ...] = "tokens") -> list[str]:
    """Registered methods of ``kind`` (one kind or several, ``Method.kind``): ``"tokens"``
    reduce the hidden-state sequence (the vision methods), ``"kv_cache"`` the cache of a
    language model, ``"prefill"`` the prompt inside a language model."""
    kinds = (kind,) if isinstance(kind, str) else tuple(kind)
    return [n for n in methods.available() if methods.get(n).kind in kinds]


def split_specs(values: Iterable[str]) -> list[str]:
    """Split budget arguments into specs at whitespace or ``;`` outside brackets, so that
    ``"tome:r=8 evit:keep_ratio=0.5,layers=[2, 5]"`` gives two specs."""
    specs: list[str] = []
    for text in values:
        depth, cur = 0, ""
        for ch in text:
            depth += ch in "([{"
            depth -= ch in ")]}"
            if depth == 0 and (ch.isspace() or ch == ";"):
                if cur:
                    specs.append(cur)
                cur = ""
            else:
                cur += ch
        if cur:
            specs.append(cur)
    return specs


def canonical(spec: str) -> str:
    """The canonical form of a method spec; raises :class:`ConfigError` when it is invalid."""
    try:
        return methods.describe(methods.build(spec))
    except (ValueError, TypeError) as err:  # unknown method, unknown or invalid parameter
        raise ConfigError(f"invalid budget {spec!r}: {err}") from None


def _parse_method_names(text: str | None) -> list[str] | None:
    if text is None:
        return None
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise ConfigError("--methods is empty; give a comma-separated list of method names")
    return names


def resolve(
    method_names: str | None,
    budgets: Iterable[str] = (),
    depth: int = 12,
    quick: bool = False,
    kind: str | tuple[str, ...] = "tokens",
    sweep: Callable[[str, int, bool], list[str]] | None = None,
    model_kind: str | None = None,
) -> list[str]:
    """The configurations of a sweep, baseline first, duplicates removed.

    Args:
        method_names: comma-separated method names, or None for the default methods of
            ``kind`` (:func:`default_methods`; or, when ``budgets`` are given, the methods
            they name).
        budgets: explicit specs (``tome:r=8``); a method named here runs exactly these
            budgets instead of its default sweep.
        depth: number of blocks of the model (default sweeps place layers by depth).
        quick: one budget per method for methods without explicit budgets.
        kind: the method kind or kinds the task measures (``"tokens"`` for vision tasks).
        sweep: the default budgets of one method, ``sweep(name, depth, quick)``, for a task
            whose default budgets differ (:meth:`Task.default_sweep`); None for
            :func:`default_sweep`.
        model_kind: the loaded model's kind (``LoadedModel.kind``), which narrows the
            default methods (:func:`default_methods`); None: not known yet.
    """
    explicit: dict[str, list[str]] = {}
    for spec in split_specs(budgets):
        name = methods.parse_spec(spec)[0]
        explicit.setdefault(name, []).append(canonical(spec))
    names = _parse_method_names(method_names)
    if names is None:
        names = list(explicit) if explicit else default_methods(kind, model_kind)
    allowed = token_methods(kind)
    kinds = " or ".join(repr(k) for k in ((kind,) if isinstance(kind, str) else kind))
    for name in [*names, *explicit]:
        if name not in methods.available():
            raise ConfigError(
                f"unknown method {name!r}; available: {', '.join(methods.available())}"
            )
        if name not in allowed:
            raise ConfigError(
                f"method {name!r} is of kind {methods.get(name).kind!r}; this benchmark runs "
                f"methods of kind {kinds}: {', '.join(allowed)}"
            )
    missing = sorted(set(explicit) - set(names))
    if missing:
        raise ConfigError(
            f"--budgets names {', '.join(missing)} but --methods does not include "
            f"{'it' if len(missing) == 1 else 'them'}"
        )
    configs = [BASELINE]
    for name in names:
        specs = explicit.get(name) or [
            canonical(s) for s in (sweep or default_sweep)(name, depth, quick)
        ]
        for spec in specs:
            if spec not in configs:
                configs.append(spec)
    return configs


def label(config: str) -> str:
    """A short label: the method name, its first (budget) parameter, and the other parameters
    that differ from the method's defaults."""
    if config == BASELINE:
        return BASELINE
    try:
        method = methods.build(config)
        default = type(method)()
    except (ValueError, TypeError):  # a stored spec of a method this version lacks
        return config
    fields = [f for f in dataclasses.fields(method) if f.init]
    # the budget parameter first (fields a whole kind shares, such as ``adaptive``, come
    # before a method's own in declaration order), then the others that differ
    budget = next((f for f in fields if f.name == method.budget_param), fields[0])
    changed = [
        f"{f.name}={getattr(method, f.name)!r}".replace(" ", "")
        for f in [budget, *(f for f in fields if f is not budget)]
        if f is budget or getattr(method, f.name) != getattr(default, f.name)
    ]
    return f"{method.name}:{','.join(changed)}" if changed else method.name


def budget_label(config: str) -> str:
    """Just the budget: the method name and its first parameter (``tome:r=8``)."""
    full = label(config)
    name, _, params = full.partition(":")
    first = params.split(",", 1)[0] if params and "=" in params.split(",", 1)[0] else params
    return f"{name}:{first}" if first else name


def curve_of(config: str) -> str:
    """The curve of a configuration in a Pareto plot: its method, with the adaptive rule when
    it has one (``visionzip`` and ``visionzip adaptive=entropy``: a method's uniform and
    adaptive budgets are two curves)."""
    if config == BASELINE:
        return BASELINE
    name, params = methods.parse_spec(config)
    rule = params.get("adaptive")
    return f"{name} adaptive={rule}" if rule else name


def method_of(config: str) -> str:
    """The method name of a configuration (``baseline`` for the unreduced model)."""
    return BASELINE if config == BASELINE else config.partition(":")[0]
