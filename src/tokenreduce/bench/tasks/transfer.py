"""Architecture transfer: the same methods and budgets on every model family, accuracy kept.

The position paper asks whether a token reduction method found on one architecture carries
over to the others. This task answers it on the bundled families, each measured by its own
task's code on a small sample:

=================  ================  =======================================================
family             task              accuracy
=================  ================  =======================================================
``fmnist-vit``     classification    top-1 on Fashion-MNIST test
``dinov2-small``   segmentation      mIoU of a linear head on recovered patch features
``smollm2``        niah              needle-in-a-haystack accuracy at a 512-token context
``llava-shapes``   vqa               exact-match answers on the scenes test split
=================  ================  =======================================================

A configuration is spelled as on ``--model`` (the anchor, ``fmnist-vit`` by default: the
sweep's configurations are checked on it like any task's). On every family it runs at the
family's own placement of the same budget (:func:`placed`). The budget is the share of
tokens left after the last reducing layer: a keep-ratio method leaves that share where the
library places it in each family (``Method.placement``: at 1/4, 1/2, 3/4 of a ViT's depth,
each step keeping ``share ** (1/3)``; once at a VLM's vision handoff). A decoder LM takes no
token-sequence method; there the equivalent KV-cache method evicts the rest of the cache at
prefill (:data:`LM_EQUIVALENTS`: random -> ``kv_random``, attention top-k ->
``snapkv``). A method that cannot act on a family is stored as ``n/a`` with the library's own
refusal, never skipped.

One row per configuration: the share of tokens left, and per family the accuracy, the
accuracy kept (reduced / full, in percent) and the spec it ran as. Default sweep: ``random``, ``topk``, ``uniform`` and
``downsample`` keeping 50 % and 25 % of the tokens (``quick``: 25 %); other token methods run
when named (``--methods tome``). ``--limit`` is the sample size of every family (default 16;
``quick``: 4); ``--threads`` as everywhere.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from torch import nn

import tokenreduce

from ... import methods
from ...core.budgets import matched_keep_ratio
from ..configs import BASELINE, label
from ..measure import Steps
from . import Column, Metrics, Options, Task, get, register

#: the share of tokens kept by the default sweep (``quick``: the last)
KEEP_SHARES = (0.5, 0.25)
#: the methods the default sweep runs, each at :data:`KEEP_SHARES`
DEFAULT_METHODS = ("random", "topk", "uniform", "downsample")
#: a token-sequence method's KV-cache counterpart on a decoder LM (same scoring, in the cache)
LM_EQUIVALENTS = {"random": "kv_random", "topk": "snapkv"}
DEFAULT_LIMIT, QUICK_LIMIT = 16, 4
NA = "n/a"


@dataclass(frozen=True)
class Family:
    """A model family: the bundled ``asset``, the ``task`` that measures it, the ``metric``
    (a key of that task's metrics, higher is better) that counts as its accuracy, and the
    options it needs beyond the shared ones (``context``: the LM's context lengths)."""

    asset: str
    task: str
    metric: str
    context: tuple[int, ...] = ()


FAMILIES = (
    Family("fmnist-vit", "classification", "top1"),
    Family("dinov2-small", "segmentation", "miou"),
    Family("smollm2", "niah", "accuracy", context=(512,)),
    Family("llava-shapes", "vqa", "accuracy"),
)


def stages(method: methods.Method) -> int:
    """How many times a keep-ratio method reduces: once per layer it names (at least once)."""
    return len(getattr(method, "layers", None) or ()) or 1


def tokens_left(method: methods.Method) -> float:
    """The share of tokens a keep-ratio method leaves after its last reducing layer
    (``keep_ratio ** stages``): the budget that transfers between families."""
    return float(method.keep_ratio) ** stages(method)


def at_share(method: methods.Method, share: float, place: dict[str, Any]) -> methods.Method:
    """Keep-ratio ``method`` (its other parameters kept) placed by ``place``, leaving
    ``share`` of the tokens: each stage keeps ``share ** (1 / stages)``
    (:func:`matched_keep_ratio`)."""
    steps = len(place.get("layers", ())) or 1
    return replace(method, keep_ratio=matched_keep_ratio(1.0 - share, steps), **place)


def placed(config: str, model: nn.Module, kind: str) -> str:
    """``config`` (a method spec) as it runs on ``model`` of ``LoadedModel.kind`` ``kind``:
    a keep-ratio method leaving the same share of tokens (:func:`tokens_left`) at the
    family's own placement, on a decoder LM its :data:`LM_EQUIVALENTS` counterpart evicting
    that share of the cache at prefill, any other method as given. Raises ``ValueError``
    with the library's refusal when the model does not take it."""
    method = methods.build(config)
    cls = type(method)
    spec = config
    if cls.budget_param == "keep_ratio":
        share = tokens_left(method)
        if kind == "lm" and cls.name in LM_EQUIVALENTS:
            twin = methods.get(LM_EQUIVALENTS[cls.name])
            spec = methods.describe(twin(**{twin.budget_param: round(1.0 - share, 4)}))
        else:
            try:
                depth = tokenreduce.describe(model, cls).num_layers
            except ValueError:  # the family refuses the method: patching below says why
                depth = 0
            if depth:
                spec = methods.describe(at_share(method, share, cls.placement(depth)))
    tokenreduce.patch(model, spec).remove()  # raises the refusal
    return spec


def kept_share(reduced: float, full: float) -> float | None:
    """Accuracy kept in percent: ``100 * reduced / full``; None when the full model scores
    nothing (the share is undefined)."""
    return None if full <= 0 else 100.0 * reduced / full


@dataclass
class _Loaded:
    """One family ready to measure: its model, its task and its baseline metrics."""

    family: Family
    model: nn.Module
    kind: str
    task: Task
    baseline: Metrics | None = None


@register
class Transfer(Task):
    """Accuracy kept by the same methods and budgets on every family (module docstring).

    Args:
        families: the families measured, in table order.
        options: the command line's options; ``limit``, ``quick`` and ``threads`` pass to each
            family's task (timing cut to 1 repeat, no warm-up: only accuracy is compared).
        anchor: the model already loaded for ``--model`` (reused for its own family).
        load: ``name -> LoadedModel`` (default :func:`tokenreduce.bench.models.load`).
    """

    name = "transfer"
    description = (
        "architecture transfer: accuracy kept by the same methods and budgets on every "
        "family (ViT, DINOv2, decoder LM, VLM)"
    )
    model_kind = "classifier"
    columns = (
        Column("tokens_left", "tokens left %", ".0f"),
        *(Column(f"kept:{f.asset}", f"{f.asset} kept %", ".1f", True) for f in FAMILIES),
    )

    def __init__(
        self,
        families: tuple[Family, ...],
        options: Options,
        *,
        anchor: Any = None,
        load: Callable[[str], Any] | None = None,
    ) -> None:
        if not families:
            raise ValueError("transfer needs at least one family")
        limit = options.limit or (QUICK_LIMIT if options.quick else DEFAULT_LIMIT)
        self.families, self.threads, self.limit = families, options.threads, limit
        self.batch_size = options.batch_size or 8
        self.options = replace(options, limit=limit, repeats=1, warmup=0, batch_size=None)
        self.anchor, self._load = anchor, load
        self._loaded: dict[str, _Loaded] = {}
        names = "+".join(f"{f.asset}:{f.task}" for f in families)
        self._data_id = f"transfer[{names}][{limit}]"

    @classmethod
    def from_options(cls, loaded: Any, options: Options) -> Transfer:
        """Every bundled family (:data:`FAMILIES`), ``options.limit`` samples each."""
        if options.data is not None or options.context:
            raise ValueError("task 'transfer' takes no --data or --context: each family "
                             "reads its own task's data")  # fmt: skip
        return cls(FAMILIES, options, anchor=loaded)

    @property
    def setting(self) -> dict[str, Any]:
        return {"threads": self.threads, "limit": self.limit}

    @classmethod
    def default_sweep(cls, loaded: Any) -> Callable[[str, int, bool], list[str]]:
        """:data:`DEFAULT_METHODS` at :data:`KEEP_SHARES`, placed on the anchor model; a
        method not named there runs only when asked for (its own default budgets)."""

        def sweep(name: str, depth: int, quick: bool) -> list[str]:
            if name not in DEFAULT_METHODS:
                return []
            shares = KEEP_SHARES[-1:] if quick else KEEP_SHARES
            made = methods.get(name)
            return [methods.describe(at_share(made(), s, made.placement(depth))) for s in shares]

        return sweep

    def steps(self, config: str) -> int:
        return len(self.families)

    def run(self, model: nn.Module, config: str, baseline: Metrics | None, step: Steps) -> Metrics:
        row: Metrics = {"families": [f.asset for f in self.families], "tokens_left": 100.0}
        if config != BASELINE:
            method = methods.build(config)
            keeps = type(method).budget_param == "keep_ratio"
            row["tokens_left"] = 100.0 * tokens_left(method) if keeps else None
        for family in self.families:
            row.update(self._measure_family(family, config))
            step()
        return row

    def _family(self, family: Family) -> _Loaded:
        """The family's model and task, loaded once, its baseline measured once."""
        if family.asset not in self._loaded:
            from ..models import load

            anchor = self.anchor
            same = anchor is not None and anchor.name == family.asset
            loaded = anchor if same else (self._load or load)(family.asset)
            options = replace(self.options, context=family.context)
            task = get(family.task).from_options(loaded, options)
            self._loaded[family.asset] = _Loaded(family, loaded.model, loaded.kind, task)
        entry = self._loaded[family.asset]
        if entry.baseline is None:
            entry.baseline = entry.task.measure(entry.model, BASELINE, None)
        return entry

    def _measure_family(self, family: Family, config: str) -> Metrics:
        """``acc:``, ``kept:`` and ``spec:`` of one family for ``config`` (``kept`` is
        :data:`NA` and ``why:`` the refusal when the family does not take the method)."""
        entry = self._family(family)
        full = float(entry.baseline[family.metric])
        a = family.asset
        if config == BASELINE:
            return {f"acc:{a}": full, f"kept:{a}": kept_share(full, full), f"spec:{a}": BASELINE}
        try:
            spec = placed(config, entry.model, entry.kind)
        except ValueError as err:
            return {f"acc:{a}": None, f"kept:{a}": NA, f"spec:{a}": NA, f"why:{a}": str(err)}
        reduced = float(entry.task.measure(entry.model, spec, entry.baseline)[family.metric])
        return {f"acc:{a}": reduced, f"kept:{a}": kept_share(reduced, full), f"spec:{a}": spec}

    @classmethod
    def summary(cls, rows: list[tuple[str, dict[str, Any]]]) -> list[str]:
        """Per configuration: the spread of accuracy kept over the families it runs on, the
        spec it ran as on each, and the refusals of the families it cannot act on."""
        lines = []
        for config, m in rows:
            if config == BASELINE:
                full = ", ".join(f"{a} {m.get(f'acc:{a}', 0):.3g}" for a in m.get("families", ()))
                lines.append(f"full models' accuracy: {full}")
                continue
            kept = {a: m.get(f"kept:{a}") for a in m.get("families", ())}
            shares = [v for v in kept.values() if isinstance(v, float)]
            spread = f"{min(shares):.0f}-{max(shares):.0f}%" if shares else "no family"
            ran = "; ".join(f"{a}: {label(m.get(f'spec:{a}'))}" for a in kept if kept[a] != NA)
            lines.append(f"{label(config)}: accuracy kept {spread} across families ({ran})")
            for a in kept:
                if kept[a] == NA:
                    lines.append(f"  {a}: n/a: {m.get(f'why:{a}')}")
        return lines
