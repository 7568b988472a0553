"""The sweep: measure every configuration of one model on one task into the store.

Resume is the default: a configuration whose key (task, model, data, setting, config) is
already stored is skipped, so an interrupted sweep picks up where it stopped. Each result
is committed with its pictures as soon as it is measured. ``fresh`` re-measures everything.

An :class:`Executor` measures the configurations still to do: :func:`measure_locally` (the
default) one after the other in this process, :class:`~tokenreduce.bench.ray_executor.
RayExecutor` on the workers of a Ray cluster. Either way this process alone writes the
store, so resuming and the ``runs`` bookkeeping do not depend on where rows were measured.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import nn

import tokenreduce

from . import metrics
from .configs import BASELINE, ConfigError, method_of
from .store import Key, Result, Store
from .tasks import Task


class Listener(Protocol):
    """Receives progress events (the CLI draws progress bars from them on a terminal and
    prints periodic lines elsewhere, :mod:`tokenreduce.bench.progress`)."""

    def sweep_start(self, todo: list[str], skipped: list[str]) -> None: ...
    def config_start(self, config: str, steps: int) -> None: ...
    def config_step(self, done: int, total: int) -> None: ...
    def config_done(self, config: str, result: Result, seconds: float | None = None) -> None:
        """``seconds``: the measuring time when the configuration was measured elsewhere."""


@dataclass
class Sweep:
    """What a sweep did: its run id, the configurations measured now and those skipped;
    ``retried``: one line per failed attempt that an executor retried (a Ray worker that
    died), empty for the local executor."""

    run_id: str
    group: tuple[str, str, str, str]
    measured: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    retried: list[str] = field(default_factory=list)
    status: str = "running"


class Executor(Protocol):
    """Measures ``todo`` (the baseline first when it is in it) and stores each result at once
    with ``store.add_result(sweep.run_id, key(config), ...)``, appending the configuration to
    ``sweep.measured``; the baseline's metrics come from the store when it is not in ``todo``.
    It raises what stops the sweep (``KeyboardInterrupt`` included) after storing every
    finished result."""

    def __call__(
        self,
        store: Store,
        task: Task,
        model: nn.Module,
        key: Callable[[str], Key],
        todo: list[str],
        sweep: Sweep,
        *,
        pictures: bool,
        listener: Listener | None,
    ) -> None: ...


def setting_json(task: Task) -> str:
    import json

    return json.dumps(task.setting, sort_keys=True, separators=(",", ":"))


def check_configs(model: nn.Module, configs: list[str]) -> None:
    """Patch and unpatch every configuration once, so that a parameter that does not fit
    the model (a layer index past its depth) fails before anything is measured. A method
    that patches no model (prompt compression) is checked by its task."""
    for config in configs:
        if config == BASELINE or tokenreduce.methods.build(config).runs_without_patch:
            continue
        try:
            tokenreduce.patch(model, config).remove()
        except ValueError as err:
            raise ConfigError(f"{config}: {err}") from None


def run_sweep(
    store: Store,
    task: Task,
    model: nn.Module,
    model_key: str,
    configs: list[str],
    *,
    threads: int,
    fresh: bool = False,
    pictures: bool = True,
    command: str = "bench",
    options: dict[str, Any] | None = None,
    listener: Listener | None = None,
    executor: Executor | None = None,
) -> Sweep:
    """Measure ``configs`` (the baseline is always measured or taken from the store first)
    with ``executor`` (default :func:`measure_locally`).

    The run is recorded as ``finished``, ``interrupted`` (Ctrl-C) or ``failed``; finished
    configurations stay stored in every case.
    """
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    torch.set_num_threads(threads)
    task.check_model(model)
    configs = baseline_first(configs)
    check_configs(model, configs)
    setting = setting_json(task)

    def key(config: str) -> Key:
        return Key(task.name, model_key, task.data_id, setting, config)

    skipped = [] if fresh else [c for c in configs if store.find(key(c)) is not None]
    todo = [c for c in configs if c not in skipped]
    run_id = store.start_run(command, options or {}, metrics.environment(torch.get_num_threads()))
    sweep = Sweep(run_id, key(BASELINE).group(), skipped=skipped)
    if listener:
        listener.sweep_start(todo, skipped)
    measure = executor or measure_locally
    try:
        measure(store, task, model, key, todo, sweep, pictures=pictures, listener=listener)
    except KeyboardInterrupt:
        _finish(store, sweep, "interrupted")
        raise
    except BaseException:
        _finish(store, sweep, "failed")
        raise
    _finish(store, sweep, "finished")
    return sweep


def baseline_first(configs: list[str]) -> list[str]:
    """``configs`` with the baseline added or moved first: every other row is compared to it."""
    return [BASELINE, *(c for c in configs if c != BASELINE)]


def measure_locally(
    store: Store,
    task: Task,
    model: nn.Module,
    key: Callable[[str], Key],
    todo: list[str],
    sweep: Sweep,
    *,
    pictures: bool,
    listener: Listener | None,
) -> None:
    """The local :class:`Executor`: measure and store every configuration of ``todo`` in
    order in this process, each committed at once."""
    baseline = stored_baseline(store, key, todo)
    for config in todo:
        if listener:
            listener.config_start(config, task.steps(config))
        progress = listener.config_step if listener else None
        values, images = measure_one(task, model, config, baseline, pictures, progress)
        store_one(store, key, sweep, config, values, images)
        if config == BASELINE:
            baseline = values
        if listener:
            listener.config_done(config, store.find(key(config)))


def stored_baseline(
    store: Store, key: Callable[[str], Key], todo: list[str]
) -> dict[str, Any] | None:
    """The baseline's stored metrics, or None when it is to be measured now (in ``todo``)."""
    stored = store.find(key(BASELINE))
    return None if BASELINE in todo or stored is None else stored.metrics


def measure_one(
    task: Task,
    model: nn.Module,
    config: str,
    baseline: dict[str, Any] | None,
    pictures: bool,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[dict[str, Any], dict[str, bytes]]:
    """``(metrics, pictures)`` of one configuration: what every executor runs where the model
    is (the task times the baseline and the configuration side by side in this call, so
    timings stay paired within one process)."""
    values = task.measure(model, config, baseline, progress)
    images = task.pictures(model, config) if pictures else {}
    return values, images


def store_one(
    store: Store,
    key: Callable[[str], Key],
    sweep: Sweep,
    config: str,
    values: dict[str, Any],
    images: dict[str, bytes],
) -> None:
    """Commit one measured configuration under the sweep's run and record it as measured."""
    store.add_result(sweep.run_id, key(config), method_of(config), values, images)
    sweep.measured.append(config)


def _finish(store: Store, sweep: Sweep, status: str) -> None:
    sweep.status = status
    store.finish_run(sweep.run_id, status)
