"""A rich progress display for sweeps (the CLI's :class:`~tokenreduce.bench.runner.Listener`)."""

from __future__ import annotations

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

    def config_done(self, config: str, result: Result | None) -> None:
        self.progress.advance(self._sweep)
