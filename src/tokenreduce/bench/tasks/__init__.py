"""Benchmark tasks: what is measured on a model for one configuration.

A task has a name, a data identity and a measurement setting (together with the model and
the configuration they form the store's key), and turns a configuration into a dict of
metrics. It declares the columns a table shows, the Pareto plots a report draws, and may
produce pictures. The runner, the store and the report know nothing more about a task, so a
new task (a language-model retrieval test, feature fidelity on another backbone) is a new
module here writing to the same store and the same report.

A task implements :meth:`Task.run`; :meth:`Task.measure` counts its progress steps. What
tasks share around their own metrics (the patched copy that is always restored, the cost
columns, integer option checks) is in :mod:`tokenreduce.bench.measure`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from torch import nn

from ..measure import FLAG_MARK, Progress, Steps, check_ints

#: one row of metrics by name, as the store keeps it
Metrics = dict[str, Any]

if TYPE_CHECKING:
    from ..models import LoadedModel


@dataclass(frozen=True)
class Column:
    """A metric as tables show it: ``key`` in the metrics dict, a header, a format spec;
    ``flag``: a metric that, when true in a row, marks this figure as not to be trusted
    (``timing_noisy`` for figures from paired timings)."""

    key: str
    header: str
    fmt: str = ".3f"
    higher_is_better: bool | None = None
    flag: str | None = None

    def format(self, value: Any) -> str:
        if value is None:
            return "-"
        try:
            return format(value, self.fmt)
        except (TypeError, ValueError):
            return str(value)

    def cell(self, metrics: Metrics) -> str:
        """This column's text for one row: the formatted figure, with :data:`~tokenreduce.bench.measure.FLAG_MARK`
        appended when the row's ``flag`` metric is true."""
        text = self.format(metrics.get(self.key))
        flagged = self.flag is not None and metrics.get(self.flag) and text != "-"
        return text + FLAG_MARK if flagged else text


@dataclass(frozen=True)
class Plot:
    """A Pareto plot: metric ``y`` against metric ``x``, one curve per method."""

    x: str
    y: str
    x_label: str
    y_label: str
    x_higher_is_better: bool = True


@dataclass(frozen=True)
class Options:
    """What ``tokenreduce bench`` passes to :meth:`Task.from_options`; ``None`` means the
    task's own default (a task documents its defaults in its docstring).

    ``limit``: evaluate the first N samples; ``batch_size``: evaluation and timing batch;
    ``threads``: torch threads (fixed and recorded); ``repeats`` / ``warmup``: timed and
    untimed calls per side; ``quick``: a CI-sized run; ``data``: a data folder or file the
    task reads; ``context``: context lengths in tokens (language-model tasks); ``split``: the
    data set a task offers several of (``vqa``: ``scenes`` or ``easy-vqa``).
    """

    threads: int = 1
    limit: int | None = None
    batch_size: int | None = None
    repeats: int | None = None
    warmup: int | None = None
    quick: bool = False
    data: Path | None = None
    context: tuple[int, ...] = field(default_factory=tuple)
    split: str | None = None


class Task:
    """Base class of benchmark tasks."""

    name: ClassVar[str]
    #: one line for ``tokenreduce bench --help`` and error messages
    description: ClassVar[str] = ""
    #: what the model must be: "classifier" (image classifier), "vision" (any patched vision
    #: transformer, a backbone included), "lm" (a decoder language model with a tokenizer) or
    #: "vlm" (a vision-language model with its processor)
    model_kind: ClassVar[str] = "vision"
    #: the method kinds (``Method.kind``) this task sweeps
    method_kinds: ClassVar[tuple[str, ...]] = ("tokens",)
    #: the data sets ``--split`` may name (the first is the default); none: no ``--split``
    splits: ClassVar[tuple[str, ...]] = ()
    columns: ClassVar[tuple[Column, ...]] = ()
    plots: ClassVar[tuple[Plot, ...]] = ()
    #: the report's heading and caption over the task's :meth:`pictures` (by default the token
    #: maps most tasks draw; a task drawing something else says what its pictures show)
    picture_caption: ClassVar[tuple[str, str]] = (
        "Kept and merged tokens",
        "Each tile is the input with every patch coloured by its fate after the last block: "
        "as is = kept, grey = dropped, a colour = merged with the other patches of that colour.",
    )

    @classmethod
    def from_options(cls, loaded: LoadedModel, options: Options) -> Task:
        """Build the task for ``loaded`` (the model, its tokenizer for an LM) from the
        command line's options."""
        raise NotImplementedError(f"task {cls.name!r} cannot be built from the command line")

    #: set by a task's constructor unless it overrides :attr:`data_id`
    _data_id: str
    batch_size: int
    threads: int

    @property
    def data_id(self) -> str:
        """Data set, split, size and a content hash (the constructor's ``_data_id``)."""
        return self._data_id

    @property
    def setting(self) -> dict[str, Any]:
        """Measurement settings that change the numbers (by default the batch size and the
        torch threads)."""
        return {"batch_size": self.batch_size, "threads": self.threads}

    @classmethod
    def default_sweep(cls, loaded: LoadedModel) -> Callable[[str, int, bool], list[str]] | None:
        """The budgets a method runs when the command line names none, as
        ``sweep(name, depth, quick) -> specs``, for a task whose default budgets depend on the
        model (matched token counts); None: each method's own default sweep
        (:func:`tokenreduce.bench.configs.default_sweep`)."""
        return None

    def steps(self, config: str) -> int:
        """Progress steps :meth:`measure` reports for ``config``."""
        return 1

    def check_model(self, model: nn.Module) -> None:
        """Raise ``ValueError`` when the model does not fit the task (e.g. its classes)."""

    def measure(
        self,
        model: nn.Module,
        config: str,
        baseline: Metrics | None,
        progress: Progress | None = None,
    ) -> Metrics:
        """Metrics of ``config`` (``"baseline"`` for the unreduced model); ``baseline`` holds
        the baseline's metrics once measured. ``progress`` hears of each of the
        :meth:`steps` steps: this counts them and lets :meth:`run` do the work."""
        return self.run(model, config, baseline, Steps(progress, self.steps(config)))

    def run(self, model: nn.Module, config: str, baseline: Metrics | None, step: Steps) -> Metrics:
        """What :meth:`measure` does for a task, calling ``step()`` after each step."""
        raise NotImplementedError

    def pictures(self, model: nn.Module, config: str) -> dict[str, bytes]:
        """Named PNG pictures of ``config`` for the report (none by default)."""
        return {}

    @classmethod
    def summary(cls, rows: list[tuple[str, dict[str, Any]]]) -> list[str]:
        """Plain-text findings about stored ``(config, metrics)`` rows (none by default)."""
        return []


TASKS: dict[str, type[Task]] = {}


def register(cls: type[Task]) -> type[Task]:
    """Class decorator: make a task known to reports by its name."""
    if cls.name in TASKS:
        raise ValueError(f"a task named {cls.name!r} is already registered")
    TASKS[cls.name] = cls
    return cls


def task_class(name: str) -> type[Task] | None:
    """The registered task called ``name``, or None (a report then shows raw metrics)."""
    return TASKS.get(name)


def get(name: str) -> type[Task]:
    """The registered task called ``name``; ``ValueError`` naming the known ones otherwise."""
    if name not in TASKS:
        known = ", ".join(
            f"{n} ({c.description})" if c.description else n for n, c in TASKS.items()
        )
        raise ValueError(f"unknown task {name!r}; available tasks: {known}")
    return TASKS[name]


from . import (  # noqa: E402,F401  (registration; longcontext: niah, multikey, vt, docqa;
    classification,  # encoder: sentence-fidelity, retrieval, text-probe)
    encoder,
    fidelity,
    generation,
    hallucination,
    longcontext,
    perplexity,
    position_bias,
    prompt,
    segmentation,
    transfer,
    vqa,
)

__all__ = [
    "TASKS",
    "Column",
    "Metrics",
    "Options",
    "Plot",
    "Progress",
    "Steps",
    "Task",
    "check_ints",
    "get",
    "register",
    "task_class",
]
