"""What every benchmark task does around its own metrics: count progress, check integer
options, patch a copy of the model for one configuration and always restore it, and turn
analytic cost, paired timings (timed again while too noisy to trust) and peak memory into the
shared cost columns.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from torch import nn

import tokenreduce

from .configs import BASELINE
from .metrics import TIMING_RETRIES, median, timing_noise

#: called with (steps done, steps total) while a configuration is measured
Progress = Callable[[int, int], None]

T = TypeVar("T")

#: the metric that flags figures from a paired timing too noisy to trust (:func:`cost_metrics`)
NOISY = "timing_noisy"
#: appended to a figure of a row whose timing stayed noisy
FLAG_MARK = "?"

#: Tables and plots show throughput on one scale: rows are measured minutes apart on a machine
#: whose load may change, so each row's own images/s are not comparable; the baseline row's
#: images/s times each row's paired speedup are (``throughput_scaled``, put on the shown
#: baseline by :func:`tokenreduce.bench.report.one_scale`).
THROUGHPUT_HEADER = "img/s (baseline × speedup)"
#: the x axis of throughput plots (see :data:`THROUGHPUT_HEADER`)
THROUGHPUT = "throughput (images/s: baseline × paired speedup)"


class Steps:
    """The progress of one ``Task.measure`` call: ``step = Steps(progress, total)``,
    then ``step()`` after each step (reported to ``progress``), ``step.skip(n)`` for steps
    that need no work this time."""

    def __init__(self, progress: Progress | None, total: int) -> None:
        self.progress, self.total, self.done = progress, total, 0

    def __call__(self) -> None:
        self.done += 1
        if self.progress is not None:
            self.progress(self.done, self.total)

    def skip(self, n: int) -> None:
        self.done += n


def check_ints(*checks: tuple[str, Any, int]) -> None:
    """Raise ``ValueError`` unless every ``(name, value, minimum)`` has an integer value (not
    a bool) of at least its minimum."""
    for name, value, low in checks:
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")


@contextmanager
def reduced_model(
    model: nn.Module, config: str, *, copy_model: bool = True
) -> Iterator[tuple[nn.Module, Any]]:
    """Yield ``(reduced, handle)``: the model patched with ``config`` and its handle
    (``patch(model, None)``, the unreduced model with the same handle, for the baseline);
    the patch is removed on exit, also on error.

    With ``copy_model`` (the default) a deep copy is patched and ``model`` stays plain, so
    timing can alternate between the two without patching inside the timed region, and the
    baseline's timed runs use the plain ``model`` without the adapter's cost.
    """
    target = copy.deepcopy(model) if copy_model else model
    handle = tokenreduce.patch(target, None if config == BASELINE else config)
    try:
        yield target, handle
    finally:
        handle.remove()


def until_steady(
    time_once: Callable[[], T],
    pairs: Callable[[T], tuple[list[float], list[float]]],
    retries: int = TIMING_RETRIES,
) -> tuple[T, int]:
    """``(timing, attempts)``: call ``time_once`` (one set of paired timed repeats), and
    again, at most ``retries`` more times, while the paired ratios of ``pairs(timing)``
    (the ``t_base``, ``t_red`` seconds) are noisy (:func:`~tokenreduce.bench.metrics.
    timing_noise`). Returns the least noisy timing and how many were taken; whether even
    that one is noisy is for :func:`cost_metrics` to record."""
    best, best_spread, attempts = None, float("inf"), 0
    while attempts <= retries:
        timing = time_once()
        attempts += 1
        spread, noisy = timing_noise(*pairs(timing))
        if spread < best_spread:
            best, best_spread = timing, spread
        if not noisy:
            break
    return best, attempts


def speedup_text(metrics: dict[str, Any], key: str = "speedup", flag: str = NOISY) -> str:
    """A row's speedup ``metrics[key]`` as summaries print it (``1.45x``), flagged
    (``0.90x?``) when the metric ``flag`` says its timing stayed noisy (tasks timing several
    quantities flag each one: ``ttft_speedup`` by ``ttft_noisy``)."""
    return f"{metrics[key]:.2f}x" + (FLAG_MARK if metrics.get(flag) else "")


def fraction(part: float | None, whole: float | None) -> float | None:
    """``part / whole``, or None when either is missing or ``whole`` is zero."""
    return part / whole if part is not None and whole else None


def cost_metrics(
    *,
    gflops: float,
    base_gflops: float,
    mean_tokens: float,
    t_base: list[float],
    t_red: list[float],
    batch: int,
    peak: float,
    baseline: dict[str, Any] | None,
    attempts: int = 1,
) -> dict[str, Any]:
    """GFLOPs, FLOP ratio, throughput, paired speedup, memory and mean tokens of one row,
    and how far the paired timing can be trusted.

    ``gflops`` / ``base_gflops``: analytic GFLOPs per image of the reduced and the unreduced
    model; ``t_base`` / ``t_red``: seconds of the timed ``batch``-sized calls, paired by
    index (the same list twice for the baseline); ``peak``: peak tensor MiB; ``baseline``:
    the baseline row's metrics once measured (None while measuring the baseline itself).
    ``speedup`` is the median of the paired ratios: each pair ran back to back, so slow
    drift of the machine cancels; ``throughput_scaled`` puts rows measured minutes apart on
    one scale (the baseline's throughput times the row's speedup). ``speedup_spread`` is
    the relative interquartile range of the paired ratios and ``timing_noisy`` whether it
    stayed above :data:`~tokenreduce.bench.metrics.NOISY_SPREAD` after ``attempts``
    timings (:func:`until_steady`); tables then flag the speed figures instead of printing
    them plain.
    """
    base_throughput = None if baseline is None else baseline["throughput"]
    base_peak = peak if baseline is None else baseline["peak_mem_mb"]
    flop_ratio = base_gflops / gflops if gflops > 0 else None
    speedup = median([b / r for b, r in zip(t_base, t_red, strict=True)])
    spread, noisy = timing_noise(t_base, t_red)
    throughput = batch / median(t_red)
    return {
        "gflops": gflops,
        "baseline_gflops": base_gflops,
        "flop_ratio": flop_ratio,
        "throughput": throughput,
        "throughput_scaled": speedup * (base_throughput or throughput),
        "baseline_throughput": batch / median(t_base),
        "speedup": speedup,
        "speedup_per_flop": speedup / flop_ratio if flop_ratio else None,
        "batch_ms": 1000 * median(t_red),
        "batch_ms_all": [1000 * t for t in t_red],
        "baseline_batch_ms_all": [1000 * t for t in t_base],
        "peak_mem_mb": peak,
        "mem_ratio": fraction(peak, base_peak),
        "mean_tokens": mean_tokens,
        "speedup_spread": spread,
        "timing_noisy": noisy,
        "timing_attempts": attempts,
    }


__all__ = [
    "FLAG_MARK",
    "NOISY",
    "THROUGHPUT",
    "THROUGHPUT_HEADER",
    "Progress",
    "Steps",
    "check_ints",
    "cost_metrics",
    "fraction",
    "reduced_model",
    "speedup_text",
    "until_steady",
]
