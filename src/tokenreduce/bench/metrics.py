"""Measurements shared by benchmark tasks: paired timing, peak tensor memory, environment.

Timing follows one rule: a speedup is a ratio against the unreduced model measured in the
same process, interleaved with it, after a warm-up, as a median over repeats of the paired
ratios, with the number of threads fixed. Interleaving (A B B A ...) makes slow drifts of a shared machine
(other processes, frequency changes) hit both sides alike.
"""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


def time_call(fn: Callable[[], object]) -> float:
    """Wall-clock seconds of one call."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def paired_times(
    base: Callable[[], object],
    other: Callable[[], object],
    repeats: int,
    warmup: int,
) -> tuple[list[float], list[float]]:
    """Time ``base`` and ``other`` alternately: ``warmup`` untimed calls of each, then
    ``repeats`` timed calls of each in the order A B, B A, A B, ... Returns both lists of
    seconds."""
    if repeats < 1 or warmup < 0:
        raise ValueError(f"repeats must be >= 1 and warmup >= 0, got {repeats}, {warmup}")
    for _ in range(warmup):
        base()
        other()
    tb, to = [], []
    for i in range(repeats):
        if i % 2 == 0:
            tb.append(time_call(base))
            to.append(time_call(other))
        else:
            to.append(time_call(other))
            tb.append(time_call(base))
    return tb, to


def median(values: list[float]) -> float:
    return float(statistics.median(values))


class PeakTensorMemory(TorchDispatchMode):
    """Peak bytes of tensor storage created while active (activations; not the weights or
    the inputs, which exist before).

    Every tensor an operator returns is tracked by its storage until the storage is freed,
    so the peak is what the computation itself holds at once, independent of the
    allocator's caching and of other threads of the process. Scratch space that a fused
    kernel allocates and frees internally is not seen. Use on CPU, where PyTorch has no
    peak-memory counter; it slows the forward it watches, so never time under it.
    """

    def __init__(self) -> None:
        super().__init__()
        self._live: dict[int, tuple[StorageWeakRef, int]] = {}
        self.current = 0
        self.peak = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for ptr in [p for p, (ref, _) in self._live.items() if ref.expired()]:
            self.current -= self._live.pop(ptr)[1]
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                storage = t.untyped_storage()
                ptr = storage.data_ptr()
                if ptr and ptr not in self._live:
                    self._live[ptr] = (StorageWeakRef(storage), storage.nbytes())
                    self.current += storage.nbytes()
        self.peak = max(self.peak, self.current)
        return out


def peak_memory_mb(fn: Callable[[], object]) -> float:
    """Peak tensor memory (MiB) of one call of ``fn``; see :class:`PeakTensorMemory`."""
    tracker = PeakTensorMemory()
    with tracker:
        fn()
    return tracker.peak / 2**20


def environment(threads: int) -> dict[str, object]:
    """What a measurement depends on besides its configuration."""
    from .. import __version__

    return {
        "package_version": __version__,
        "git_revision": git_revision(),
        "torch_version": torch.__version__,
        "threads": threads,
        "cpu": cpu_model(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
    }


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_revision() -> str | None:
    """The git commit of the source tree this package runs from (``+dirty`` when it has
    uncommitted changes), or None outside a git checkout."""
    here = Path(__file__).resolve().parent
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5
        )
        if rev.returncode != 0:
            return None
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=here,
            capture_output=True,
            text=True,
            timeout=5,
        )
        return rev.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def default_threads() -> int:
    """Threads to use when none are given: what torch would use, capped by the CPUs this
    process may run on."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:
        cpus = os.cpu_count() or 1
    return max(1, min(torch.get_num_threads(), cpus))
