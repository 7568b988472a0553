"""What every benchmark task does around its own metrics: count progress, check integer
options, patch a copy of the model for one configuration and always restore it, and turn
analytic cost, paired timings and peak memory into the shared cost columns.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from torch import nn

import tokenreduce

from .configs import BASELINE
from .metrics import median

#: called with (steps done, steps total) while a configuration is measured
Progress = Callable[[int, int], None]


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
) -> dict[str, Any]:
    """GFLOPs, FLOP ratio, throughput, paired speedup, memory and mean tokens of one row.

    ``gflops`` / ``base_gflops``: analytic GFLOPs per image of the reduced and the unreduced
    model; ``t_base`` / ``t_red``: seconds of the timed ``batch``-sized calls, paired by
    index (the same list twice for the baseline); ``peak``: peak tensor MiB; ``baseline``:
    the baseline row's metrics once measured (None while measuring the baseline itself).
    ``speedup`` is the median of the paired ratios: each pair ran back to back, so slow
    drift of the machine cancels; ``throughput_scaled`` puts rows measured minutes apart on
    one scale (the baseline's throughput times the row's speedup).
    """
    base_throughput = None if baseline is None else baseline["throughput"]
    base_peak = peak if baseline is None else baseline["peak_mem_mb"]
    flop_ratio = base_gflops / gflops if gflops > 0 else None
    speedup = median([b / r for b, r in zip(t_base, t_red, strict=True)])
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
    }


__all__ = ["Progress", "Steps", "check_ints", "cost_metrics", "fraction", "reduced_model"]
