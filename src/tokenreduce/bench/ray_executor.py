"""Sweeps on Ray: ``tokenreduce bench --executor ray`` measures configurations on the workers
of a Ray cluster (a local instance started by the command, or an existing cluster).

Each worker is a Ray actor that loads the model and builds the task once, from the same
command-line recipe the driver used (:class:`Recipe`), then measures one configuration at a
time, as many as the driver hands it. The driver obtains the baseline first (stored, or
measured by the first worker ready: every other row is compared to it), then hands the other
configurations to whichever worker is free and stores each result as it comes back: the
driver alone writes the SQLite store, so resuming, skipping stored configurations and the
``runs`` bookkeeping are those of the local executor. A configuration is measured whole
inside one worker, so its timings stay paired (the task times the unreduced and the reduced
model side by side in one call).

A worker that dies or fails while measuring is replaced by a fresh one and its configuration
is retried, at most ``retries`` times; a configuration that still fails is reported in a
:class:`SweepFailed` raised once every other configuration is done (the run is then recorded
as ``failed``). Ctrl-C kills the workers and leaves every finished row stored.

Ray is optional (``pip install "tokenreduce[ray]"``): this module imports it only when a
sweep or a session on Ray starts, so ``import tokenreduce`` and local sweeps never load it.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .configs import BASELINE
from .runner import Listener, Sweep, measure_one, setting_json, store_one, stored_baseline
from .store import Key, Store
from .tasks import Options, Task

#: what to run when Ray is missing
RAY_INSTALL = 'pip install "tokenreduce[ray]"'
#: how often a configuration is retried on a fresh worker by default
DEFAULT_RETRIES = 2


class SweepFailed(RuntimeError):
    """Configurations that failed on every attempt; ``failed`` maps each to its last error,
    ``retried`` has one line per failed attempt of the sweep (those retried with success
    included). Every other configuration was measured and stored before this was raised."""

    def __init__(self, failed: dict[str, str], retried: list[str]) -> None:
        self.failed, self.retried = failed, retried
        lines = "; ".join(f"{config}: {error}" for config, error in failed.items())
        super().__init__(f"{len(failed)} configuration(s) failed on every attempt: {lines}")


def import_ray() -> Any:
    """The ``ray`` module; ``RuntimeError`` naming the extra to install when it is missing."""
    try:
        import ray
    except ImportError:
        raise RuntimeError(f"--executor ray needs Ray; install it with {RAY_INSTALL}") from None
    return ray


@contextmanager
def ray_session(address: str | None = None) -> Iterator[Any]:
    """Yield ``ray`` connected to a cluster: the one already initialised in this process as
    it is, else ``address`` (``ray.init(address=...)``: ``auto`` for the one ``RAY_ADDRESS``
    or ``ray start`` on this machine names, ``host:port`` or ``ray://host:10001``), else a
    new local instance started here (without a dashboard). Only a connection made here is
    shut down on exit (which stops a local instance, and only disconnects from a cluster)."""
    ray = import_ray()
    started = not ray.is_initialized()
    if started and address:
        ray.init(address=address)
    elif started:  # a new local instance for this command alone, even beside a running one
        ray.init(address="local", include_dashboard=False)
    try:
        yield ray
    finally:
        if started:
            ray.shutdown()


@dataclass(frozen=True)
class Recipe:
    """How a worker rebuilds the driver's model and task: ``model``, what ``--model`` named
    (a path made absolute, since workers may run elsewhere), ``task`` the task's name and
    ``options`` its command-line options (:class:`~tokenreduce.bench.tasks.Options`)."""

    model: str
    task: str
    options: Options

    @classmethod
    def of(cls, model: str, task: str, options: Options) -> Recipe:
        """The recipe with local paths (a checkpoint, ``--data``) made absolute."""
        path = Path(model).expanduser()
        spec = str(path.resolve()) if path.exists() else model
        data = options.data.expanduser().resolve() if options.data is not None else None
        return cls(spec, task, replace(options, data=data))


class Worker:
    """One worker's state (run as a Ray actor): the model loaded and the task built once from
    ``recipe``, with ``recipe.options.threads`` torch threads."""

    def __init__(self, recipe: Recipe) -> None:
        from .models import load
        from .tasks import get

        torch.set_num_threads(recipe.options.threads)
        loaded = load(recipe.model)
        self.model: nn.Module = loaded.model
        self.task: Task = get(recipe.task).from_options(loaded, recipe.options)
        self.task.check_model(self.model)
        self.group = Key(
            self.task.name, loaded.key, self.task.data_id, setting_json(self.task), BASELINE
        ).group()

    def identity(self) -> tuple[str, str, str, str]:
        """The (task, model key, data, setting) group this worker's rows belong to."""
        return self.group

    def measure(
        self, config: str, baseline: dict[str, Any] | None, pictures: bool
    ) -> tuple[dict[str, Any], dict[str, bytes], float]:
        """``(metrics, pictures, seconds)`` of ``config``
        (:func:`~tokenreduce.bench.runner.measure_one`; ``seconds`` is its wall time here)."""
        start = time.monotonic()
        values, images = measure_one(self.task, self.model, config, baseline, pictures)
        return values, images, time.monotonic() - start


@dataclass
class RayExecutor:
    """The :class:`~tokenreduce.bench.runner.Executor` on Ray (see the module docstring).

    ``recipe``: how workers rebuild the model and task; ``workers``: actors measuring at the
    same time (>= 1), each reserving ``recipe.options.threads`` CPUs and one GPU when the
    cluster has GPUs; ``retries``: fresh attempts a configuration gets after its worker died
    or failed (>= 0); ``worker_cls``: the actor's class (:class:`Worker` or a subclass).
    Needs an initialised Ray (:func:`ray_session`).
    """

    recipe: Recipe
    workers: int = 1
    retries: int = DEFAULT_RETRIES
    worker_cls: type[Worker] = Worker

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise ValueError(f"workers must be >= 1, got {self.workers}")
        if self.retries < 0:
            raise ValueError(f"retries must be >= 0, got {self.retries}")

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
    ) -> None:
        """Measure ``todo`` on the cluster, storing each result here as it arrives; raise
        :class:`SweepFailed` after the others are stored when some configuration failed on
        every attempt (the baseline at once: the others need it)."""
        if not todo:  # everything stored already: no worker to start
            return
        baseline = stored_baseline(store, key, todo)

        def store_result(
            config: str, values: dict[str, Any], images: dict[str, bytes], seconds: float
        ) -> None:
            store_one(store, key, sweep, config, values, images)
            if listener:  # events arrive in completion order, each configuration whole
                steps = task.steps(config)
                listener.config_start(config, steps)
                listener.config_step(steps, steps)
                listener.config_done(config, store.find(key(config)), seconds)

        pool = _Pool(import_ray(), self, key(BASELINE).group(), pictures)
        try:
            if BASELINE in todo:
                pool.run([BASELINE], None, store_result)
                _raise_failed(pool)
                baseline = store.find(key(BASELINE)).metrics
            pool.run([c for c in todo if c != BASELINE], baseline, store_result)
        finally:
            sweep.retried.extend(pool.retried)
            pool.close()
        _raise_failed(pool)

    def actor_options(self, ray: Any) -> dict[str, Any]:
        """Ray resources of one worker; ``ValueError`` when no node of the cluster has the
        CPUs one worker needs (Ray would wait for them forever)."""
        threads = self.recipe.options.threads
        most = max((n["Resources"].get("CPU", 0) for n in ray.nodes() if n["Alive"]), default=0)
        if threads > most:
            raise ValueError(
                f"--threads {threads}: a Ray worker needs {threads} CPUs on one node, and the "
                f"largest node of the cluster has {most:g}"
            )
        gpus = 1 if ray.cluster_resources().get("GPU", 0) >= 1 else 0
        return {"num_cpus": threads, "num_gpus": gpus, "max_restarts": 0}


def _raise_failed(pool: _Pool) -> None:
    if pool.failed:
        raise SweepFailed(dict(pool.failed), list(pool.retried))


class _Pool:
    """The driver's side of the workers: the actors, the calls in flight and each
    configuration's attempts. A worker gets a configuration only once it has started (its
    identity came back), so a worker that the cluster cannot place holds no work."""

    def __init__(self, ray: Any, executor: RayExecutor, group: tuple, pictures: bool) -> None:
        self.ray, self.executor, self.group, self.pictures = ray, executor, group, pictures
        self.remote = ray.remote(executor.worker_cls).options(**executor.actor_options(ray))
        self.actors: list[Any] = []
        self.idle: list[Any] = []
        self.calls: dict[Any, tuple[Any, str | None]] = {}  # ref -> (actor, config or None)
        self.attempts: collections.Counter[str] = collections.Counter()
        self.failed: dict[str, str] = {}
        self.retried: list[str] = []
        for _ in range(executor.workers):
            self._start_actor()

    def run(self, configs: list[str], baseline: dict[str, Any] | None, on_result) -> None:
        """Measure ``configs`` on the free workers, calling ``on_result(config, metrics,
        pictures, seconds)`` as each arrives, until each is stored or failed on every attempt."""
        queue = collections.deque(configs)
        while queue or self._measuring():
            while queue and self.idle:
                actor = self.idle.pop()
                config = queue.popleft()
                self.calls[actor.measure.remote(config, baseline, self.pictures)] = (actor, config)
            (ref,), _ = self.ray.wait(list(self.calls), num_returns=1)
            actor, config = self.calls.pop(ref)
            try:
                answer = self.ray.get(ref)
            except self.ray.exceptions.RayError as err:
                self._replace(actor, config, err, queue)
                continue
            if config is None:
                self._check_identity(answer)
            else:
                on_result(config, *answer)
            self.idle.append(actor)

    def close(self) -> None:
        """Kill every worker (the calls still in flight with them)."""
        for actor in self.actors:
            self.ray.kill(actor, no_restart=True)
        self.actors, self.idle, self.calls = [], [], {}

    def _measuring(self) -> bool:
        return any(config is not None for _, config in self.calls.values())

    def _start_actor(self) -> None:
        actor = self.remote.remote(self.executor.recipe)
        self.actors.append(actor)
        self.calls[actor.identity.remote()] = (actor, None)

    def _check_identity(self, group: tuple) -> None:
        if tuple(group) != tuple(self.group):
            raise RuntimeError(
                f"a Ray worker built (task, model, data, setting) = {tuple(group)}, the driver "
                f"{tuple(self.group)}: the workers must see the same model files, data and "
                "package version as the driver"
            )

    def _replace(self, actor: Any, config: str | None, err: Exception, queue) -> None:
        """Replace a worker whose call failed by a fresh one, and queue its configuration
        again unless it has used up its retries; a worker that could not start at all fails
        the sweep (a fresh one would fail the same way: missing files, a wrong install)."""
        self.ray.kill(actor, no_restart=True)
        self.actors.remove(actor)
        if config is None:
            raise RuntimeError(f"a Ray worker could not load the model and task: {err}") from err
        self.attempts[config] += 1
        reason = _short(err)
        total = self.executor.retries + 1
        self.retried.append(f"{config} (attempt {self.attempts[config]} of {total}): {reason}")
        if self.attempts[config] < total:
            queue.appendleft(config)
        else:
            self.failed[config] = reason
        self._start_actor()


def _short(err: Exception) -> str:
    """The first line of a Ray error (its full text carries the worker's traceback)."""
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"


__all__ = [
    "DEFAULT_RETRIES",
    "RAY_INSTALL",
    "Recipe",
    "RayExecutor",
    "SweepFailed",
    "Worker",
    "import_ray",
    "ray_session",
]
