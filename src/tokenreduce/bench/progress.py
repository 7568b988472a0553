"""Progress of sweeps (the CLI's :class:`~tokenreduce.bench.runner.Listener`): rich bars on
a terminal, plain periodic lines elsewhere (CI logs, ``nohup``, pipes), where a bar would
print nothing until the end."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from .configs import label
from .measure import NOISY, speedup_text
from .store import Result


class RichListener:
    """Two bars on stderr: configurations of the sweep, and steps of the current one."""

    def __init__(self, total: int, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True)
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=self.console,
            transient=False,
        )
        self._sweep = self.progress.add_task("sweep", total=total)
        self._config: int | None = None

    def __enter__(self) -> RichListener:
        self.progress.start()
        return self

    def __exit__(self, *exc) -> None:
        self.progress.stop()

    def sweep_start(self, todo: list[str], skipped: list[str]) -> None:
        self.progress.update(self._sweep, total=len(todo) + len(skipped), completed=len(skipped))
        if skipped:
            self.console.print(
                f"resuming: {len(skipped)} configuration(s) already stored, {len(todo)} to measure"
            )

    def config_start(self, config: str, steps: int) -> None:
        if self._config is not None:
            self.progress.remove_task(self._config)
        self._config = self.progress.add_task(f"  {escape(label(config))}", total=steps)

    def config_step(self, done: int, total: int) -> None:
        if self._config is not None:
            self.progress.update(self._config, completed=done, total=total)

    def config_done(
        self, config: str, result: Result | None, seconds: float | None = None
    ) -> None:
        self.progress.advance(self._sweep)


#: Seconds between two progress lines within one configuration: often enough that a log shows
#: a long run is alive (a full classification configuration takes minutes), rarely enough
#: that a sweep of an hour prints a few hundred lines, not one per batch.
PLAIN_PERIOD_S = 30.0


class PlainListener:
    """One line per event on ``stream``: the sweep's start, each configuration's start and
    end (its speedup, flagged when its timing stayed noisy), and between them a line at most
    every ``period`` seconds of ``clock`` with the steps done."""

    def __init__(
        self,
        stream: TextIO | None = None,
        *,
        period: float = PLAIN_PERIOD_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stream = stream or sys.stderr
        self.period, self.clock = period, clock
        self._total = self._index = 0
        self._config = ""
        self._started = self._last = 0.0

    def __enter__(self) -> PlainListener:
        return self

    def __exit__(self, *exc) -> None:
        pass

    def _line(self, text: str) -> None:
        print(text, file=self.stream, flush=True)

    def _prefix(self) -> str:
        return f"[{self._index}/{self._total}] {label(self._config)}"

    def sweep_start(self, todo: list[str], skipped: list[str]) -> None:
        self._total, self._index = len(todo) + len(skipped), len(skipped)
        self._line(f"sweep: {len(todo)} configuration(s) to measure, {len(skipped)} already stored")

    def config_start(self, config: str, steps: int) -> None:
        self._index += 1
        self._config = config
        self._started = self._last = self.clock()
        self._line(f"{self._prefix()}: started ({steps} steps)")

    def config_step(self, done: int, total: int) -> None:
        now = self.clock()
        if now - self._last < self.period:
            return
        self._last = now
        share = 100 * done / total if total else 100.0
        self._line(
            f"{self._prefix()}: {done}/{total} steps ({share:.0f}%), "
            f"{_clock_text(now - self._started)} elapsed"
        )

    def config_done(
        self, config: str, result: Result | None, seconds: float | None = None
    ) -> None:
        """``seconds``: the configuration's measuring time where it was measured elsewhere
        (a Ray worker); else the time since :meth:`config_start`."""
        metrics = result.metrics if result is not None else {}
        speed = ""
        if metrics.get("speedup") is not None:
            noisy = " (noisy timing)" if metrics.get(NOISY) else ""
            speed = f", speedup {speedup_text(metrics)}{noisy}"
        elapsed = _clock_text(self.clock() - self._started if seconds is None else seconds)
        self._line(f"{self._prefix()}: done in {elapsed}{speed}")


def _clock_text(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes}:{secs:02d}"


def listener_for(total: int, console: Console | None = None) -> RichListener | PlainListener:
    """Bars when ``console`` (stderr by default) is a terminal, plain lines otherwise."""
    console = console or Console(stderr=True)
    return RichListener(total, console) if console.is_terminal else PlainListener(console.file)
