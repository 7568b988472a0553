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


#: Paired ratios whose relative interquartile range exceeds this are too noisy to print as a
#: figure. On the shared 2-core CPU under the test suite's load the paired ratios of the quick
#: sweep spread 1-14%; a spread above 20% means the middle half of the pairs disagree by more
#: than a fifth of the speedup, the size of error a loaded machine produced in the main job
#: (EViT keep 0.7 at 0.90x where a quiet run gives 1.45x).
NOISY_SPREAD = 0.20

#: How many times a noisy timing is measured again before its row is flagged: each retry
#: costs one more set of timed repeats, which is small next to evaluating the data set.
TIMING_RETRIES = 2


def timing_noise(t_base: list[float], t_red: list[float]) -> tuple[float, bool]:
    """``(spread, noisy)`` of paired timings: ``spread`` is the relative interquartile range
    (Q3 - Q1) / median of the per-pair ratios ``t_base[i] / t_red[i]`` (0.0 for fewer than
    two pairs); ``noisy`` is ``spread > NOISY_SPREAD``. The interquartile range ignores a
    single slow call, which the median ignores too; it grows when the load changes often
    enough to move the median. Raises ``ValueError`` for lists of different lengths or a
    non-positive time."""
    if len(t_base) != len(t_red) or any(t <= 0 for t in (*t_base, *t_red)):
        raise ValueError(
            f"paired timings must be two lists of positive seconds of the same length, got "
            f"{len(t_base)} and {len(t_red)} values"
        )
    ratios = [b / r for b, r in zip(t_base, t_red, strict=True)]
    if len(ratios) < 2:
        return 0.0, False
    q1, _, q3 = statistics.quantiles(ratios, n=4, method="inclusive")
    spread = (q3 - q1) / median(ratios)
    return spread, spread > NOISY_SPREAD


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
