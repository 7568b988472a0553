"""The ``tokenreduce`` command: ``bench`` (measure and store) and ``report`` (HTML).

Run ``tokenreduce bench --help`` and ``tokenreduce report --help`` for the options; the
README's "Benchmark" section explains budgets, resume and the results store.
"""

from __future__ import annotations

import shlex
import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Annotated, Any, NamedTuple, NoReturn

import typer

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Token reduction for transformers: benchmark methods and report the results.",
)

DEFAULT_DB = Path("results/tokenreduce.db")
DEFAULT_OUT = Path("results/report.html")


def _fail(message: str) -> NoReturn:
    typer.secho(f"error: {message}", err=True, fg=typer.colors.RED)
    raise typer.Exit(2)


def _task_help() -> str:
    from .bench.tasks import TASKS

    listed = "; ".join(f"{n}: {c.description}" for n, c in TASKS.items())
    return (
        "What to measure (default: classification for an image classifier, fidelity for a "
        "vision backbone, niah for a language model, vqa for a vision-language model, "
        f"sentence-fidelity for a text encoder). Tasks: {listed}."
    )


# The signature is long because it is typer's option declarations; the body only hands them
# to the helpers below.
@app.command()
def bench(
    model: Annotated[
        str,
        typer.Option(
            help="Bundled asset name (fmnist-vit, dinov2-small, smollm2, gemma3-270m, "
            "llava-shapes, all-minilm-l6-v2), local "
            "checkpoint (.safetensors file or folder with model.safetensors; architecture "
            "from its 'arch' metadata or a config.json beside it), local Hugging Face folder, "
            "or timm model name with cached pretrained weights."
        ),
    ] = "fmnist-vit",
    task: Annotated[str | None, typer.Option(help=_task_help())] = None,
    methods: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated method names (default: every method the task sweeps, or "
            "those named in --budgets)."
        ),
    ] = None,
    budgets: Annotated[
        list[str] | None,
        typer.Option(
            help="Explicit configurations, e.g. 'tome:r=8 tome:r=16 evit:keep_ratio=0.5' "
            "(separated by spaces or ';', option repeatable). A method named here runs "
            "exactly these budgets instead of its default sweep."
        ),
    ] = None,
    batch_size: Annotated[
        int | None,
        typer.Option(min=1, help="Evaluation and timing batch size (default: the task's)."),
    ] = None,
    limit: Annotated[
        int | None,
        typer.Option(min=1, help="Evaluate the first N samples (default: the task's all)."),
    ] = None,
    quick: Annotated[
        bool,
        typer.Option(
            help="CI-sized run: few samples, one budget per method, 3 timed repeats "
            "(classification: 128 images in batches of 32)."
        ),
    ] = False,
    threads: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="torch threads, fixed for the whole run and recorded (default: the "
            "CPUs available, at most torch's default).",
        ),
    ] = None,
    repeats: Annotated[
        int | None,
        typer.Option(min=1, help="Timed repeats per side (default: the task's)."),
    ] = None,
    warmup: Annotated[
        int | None,
        typer.Option(min=0, help="Untimed warm-up calls per side (default: the task's)."),
    ] = None,
    context: Annotated[
        list[int] | None,
        typer.Option(
            min=16,
            help="Context length in tokens for language-model tasks (repeatable; default: "
            "the task's); for the text-encoder tasks one value, the tokens of the timed inputs.",
        ),
    ] = None,
    split: Annotated[
        str | None,
        typer.Option(
            help="Data set of a task that offers several: for vqa 'scenes' (default) or "
            "'easy-vqa' (their held-out test splits)."
        ),
    ] = None,
    data: Annotated[
        Path | None,
        typer.Option(
            help="Data the task reads: for classification the folder with the Fashion-MNIST "
            "IDX .gz files (default: $TOKENREDUCE_DATA, then /usr/share/datasets/fashion-mnist); "
            "for language-model tasks a prose text or .gz file (default: the Jargon File); for "
            "the text-encoder tasks the folder with WordNet's data.noun (default: "
            "$TOKENREDUCE_WORDNET, then /usr/share/wordnet)."
        ),
    ] = None,
    db: Annotated[Path, typer.Option(help="SQLite results store.")] = DEFAULT_DB,
    out: Annotated[Path, typer.Option(help="HTML report written at the end.")] = DEFAULT_OUT,
    fresh: Annotated[
        bool,
        typer.Option(
            help="Re-measure configurations already stored (default: resume, skipping them)."
        ),
    ] = False,
    pictures: Annotated[
        bool, typer.Option(help="Store token-map pictures of a few samples for the report.")
    ] = True,
    executor: Annotated[
        str,
        typer.Option(
            help="Where configurations are measured: 'local' (one after the other in this "
            "process) or 'ray' (on the workers of a Ray cluster; needs "
            'pip install "tokenreduce[ray]"). This process alone writes --db either way.'
        ),
    ] = "local",
    workers: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="--executor ray: workers measuring at the same time, each loading the model "
            "once and using --threads CPUs (default 1).",
        ),
    ] = None,
    ray_address: Annotated[
        str | None,
        typer.Option(
            help="--executor ray: the cluster to use ('auto': the one RAY_ADDRESS or 'ray "
            "start' on this machine names; host:port; ray://host:10001). Default: a new local "
            "Ray instance, started and stopped here."
        ),
    ] = None,
    ray_retries: Annotated[
        int | None,
        typer.Option(
            min=0,
            help="--executor ray: fresh attempts of a configuration whose worker died or "
            "failed (default 2).",
        ),
    ] = None,
) -> None:
    """Measure every token reduction method the task sweeps, at several budgets, plus the
    unreduced baseline, into the results store; then print a table and write the HTML
    report. On an image classifier: top-1, GFLOPs, throughput, speedup, peak memory."""
    from .bench import metrics
    from .bench.models import ModelError
    from .bench.models import load as load_model

    _check_names_and_store(task, methods, budgets, quick, db)
    where = _check_executor(executor, workers, ray_address, ray_retries)
    threads = threads or metrics.default_threads()
    try:
        loaded = load_model(model)
    except ModelError as err:
        _fail(str(err))
    options = _task_options(
        threads, limit, batch_size, repeats, warmup, quick, data, context, split
    )
    task_cls, configs, measured = _build_task(loaded, model, task, methods, budgets, options)
    recorded = {
        "model": model,
        "task": task_cls.name,
        "methods": methods,
        "budgets": budgets,
        "batch_size": batch_size,
        "limit": limit,
        "quick": quick,
        "threads": threads,
        "repeats": repeats,
        "warmup": warmup,
        "context": context,
        "split": split,
        "fresh": fresh,
        **where.recorded(),
    }
    with _executor_for(where, model, task_cls.name, options) as run_on:
        _sweep_and_report(
            db, out, measured, loaded, configs, recorded, fresh=fresh, pictures=pictures,
            executor=run_on,
        )  # fmt: skip


class Where(NamedTuple):
    """Where a sweep runs (``bench``'s executor options, checked)."""

    executor: str
    workers: int
    ray_address: str | None
    ray_retries: int

    def recorded(self) -> dict[str, Any]:
        """What the run's options record: the Ray options only for a sweep on Ray."""
        return self._asdict() if self.executor == "ray" else {"executor": self.executor}


def _check_executor(
    executor: str, workers: int | None, ray_address: str | None, ray_retries: int | None
) -> Where:
    """The executor options checked, defaults filled in, before the model is loaded: Ray
    must be installed for ``ray``, and options for Ray with the local executor are errors
    (they would be ignored without a word)."""
    from .bench.ray_executor import DEFAULT_RETRIES, import_ray

    if executor not in ("local", "ray"):
        _fail(f"--executor {executor!r}: use 'local' or 'ray'")
    if executor == "ray":
        try:
            import_ray()
        except RuntimeError as err:
            _fail(str(err))
    else:
        given = [
            name
            for name, value in (
                ("--workers", workers),
                ("--ray-address", ray_address),
                ("--ray-retries", ray_retries),
            )
            if value is not None
        ]
        if given:
            _fail(f"{', '.join(given)} need(s) --executor ray (the local executor runs here)")
    retries = DEFAULT_RETRIES if ray_retries is None else ray_retries
    return Where(executor, workers or 1, ray_address, retries)


@contextmanager
def _executor_for(where: Where, model: str, task: str, options: Any) -> Iterator[Any]:
    """Yield the sweep's executor: None (the local one), or a Ray executor inside a Ray
    session (a local instance started here and stopped after, or ``--ray-address``)."""
    if where.executor == "local":
        yield None
        return
    from .bench.ray_executor import RayExecutor, Recipe, ray_session

    with ExitStack() as stack:
        try:
            stack.enter_context(ray_session(where.ray_address))
        except (RuntimeError, ConnectionError, ValueError) as err:  # no cluster there
            cluster = where.ray_address or "a local Ray instance"
            _fail(f"--executor ray: could not start or reach {cluster}: {err}")
        recipe = Recipe.of(model, task, options)
        yield RayExecutor(recipe, workers=where.workers, retries=where.ray_retries)


def _check_names_and_store(
    task: str | None, methods: str | None, budgets: list[str] | None, quick: bool, db: Path
) -> None:
    """Fail on unknown tasks, methods and invalid budgets, and on a foreign or broken
    store, before the model is loaded (a typo should not wait for it)."""
    from .bench import configs as cfg
    from .bench import tasks as tasks_mod
    from .bench.store import StoreError, check_file

    try:
        kinds = tasks_mod.get(task).method_kinds if task else None
        cfg.resolve(methods, budgets or (), quick=quick, kind=kinds or _all_kinds())
    except (cfg.ConfigError, ValueError) as err:
        _fail(str(err))
    try:
        check_file(db)
    except StoreError as err:
        _fail(str(err))


def _task_options(
    threads: int,
    limit: int | None,
    batch_size: int | None,
    repeats: int | None,
    warmup: int | None,
    quick: bool,
    data: Path | None,
    context: list[int] | None,
    split: str | None,
) -> Any:
    """The command line's task options (:class:`tokenreduce.bench.tasks.Options`)."""
    from .bench.tasks import Options

    return Options(
        threads=threads,
        limit=limit,
        batch_size=batch_size,
        repeats=repeats,
        warmup=warmup,
        quick=quick,
        data=data,
        context=tuple(context or ()),
        split=split,
    )


def _build_task(
    loaded: Any,
    spec: str,
    task: str | None,
    methods: str | None,
    budgets: list[str] | None,
    options: Any,
) -> tuple[Any, list[str], Any]:
    """(task class, configurations, task) for the loaded model: the task named or the
    model's default, the configurations resolved against the model's depth and checked on
    it, and the task built from ``options``; fails with the reason otherwise."""
    from .bench import configs as cfg
    from .bench import runner
    from .bench import tasks as tasks_mod

    task_cls = tasks_mod.get(task or loaded.default_task)
    _check_model_kind(task_cls, loaded, spec)
    if options.split is not None and options.split not in task_cls.splits:
        offers = f"one of {', '.join(task_cls.splits)}" if task_cls.splits else "no --split"
        _fail(f"--split {options.split!r}: task {task_cls.name!r} takes {offers}")
    try:
        configs = cfg.resolve(
            methods,
            budgets or (),
            depth=_depth(loaded.model),
            quick=options.quick,
            kind=task_cls.method_kinds,
            sweep=task_cls.default_sweep(loaded),
            model_kind=loaded.kind,
        )
        runner.check_configs(loaded.model, configs)
        measured = task_cls.from_options(loaded, options)
    except (cfg.ConfigError, ValueError, FileNotFoundError) as err:
        _fail(str(err))
    return task_cls, configs, measured


def _sweep_and_report(
    db: Path,
    out: Path,
    measured: Any,
    loaded: Any,
    configs: list[str],
    recorded: dict[str, Any],
    *,
    fresh: bool,
    pictures: bool,
    executor: Any = None,
) -> None:
    """Measure the configurations into the store (resuming unless ``fresh``) with
    ``executor`` (None: the local one), print the table and write the HTML report; an
    interrupt or a failed configuration leaves the finished ones stored."""
    from .bench import configs as cfg
    from .bench import report, runner
    from .bench.progress import listener_for
    from .bench.ray_executor import SweepFailed
    from .bench.store import Store, StoreError

    try:
        store = Store.open(db)
    except StoreError as err:
        _fail(str(err))
    with store:
        listener = listener_for(len(configs))
        try:
            with listener:
                sweep = runner.run_sweep(
                    store,
                    measured,
                    loaded.model,
                    loaded.key,
                    configs,
                    threads=recorded["threads"],
                    fresh=fresh,
                    pictures=pictures,
                    command=_command_line(),
                    options=recorded,
                    listener=listener,
                    executor=executor,
                )
        except KeyboardInterrupt:
            typer.secho(
                f"\ninterrupted: every finished configuration is stored in {db}; run the same "
                "command again to resume",
                err=True,
                fg=typer.colors.YELLOW,
            )
            raise typer.Exit(130) from None
        except SweepFailed as err:
            _report_retries(err.retried)
            _fail(f"{err}; every other configuration is stored in {db}")
        except (cfg.ConfigError, ValueError, RuntimeError) as err:
            _fail(str(err))
        _report_retries(sweep.retried)
        _print_group(store, sweep.group, configs)
        path = report.write(store, out, only=[sweep.group])
        typer.echo(
            f"{len(sweep.measured)} measured, {len(sweep.skipped)} already stored "
            f"(resumed); results in {db}; report: {path}"
        )


def _report_retries(retried: list[str]) -> None:
    """One line on stderr per failed attempt that the executor retried."""
    for line in retried:
        typer.secho(f"retried: {line}", err=True, fg=typer.colors.YELLOW)


def _all_kinds() -> tuple[str, ...]:
    """Before the model is loaded and the task known, every method kind is accepted, so
    that only unknown names and invalid budgets fail this early."""
    from .methods import available, get

    return tuple({get(n).kind for n in available()})


def _check_model_kind(task_cls, loaded, spec: str) -> None:
    from .bench.models import KIND_WORDS

    need = "vision" if task_cls.model_kind == "classifier" else task_cls.model_kind
    if loaded.kind != need:
        _fail(
            f"task {task_cls.name!r} needs {KIND_WORDS[need]}; --model {spec!r} is "
            f"{KIND_WORDS[loaded.kind]}"
        )
    if task_cls.model_kind == "classifier" and not loaded.is_classifier:
        _fail(
            f"task {task_cls.name!r} needs an image classifier; --model {spec!r} has no "
            "classification head (try --task fidelity)"
        )


@app.command("report")
def report_cmd(
    db: Annotated[Path, typer.Option(help="SQLite results store.")] = DEFAULT_DB,
    out: Annotated[Path, typer.Option(help="HTML file to write.")] = DEFAULT_OUT,
    model: Annotated[
        str | None, typer.Option(help="Only this model (its name, or name@hash as stored).")
    ] = None,
    task: Annotated[str | None, typer.Option(help="Only this task.")] = None,
) -> None:
    """Write one self-contained HTML report (tables, Pareto plots, token pictures) of the
    latest stored result of every configuration."""
    from .bench import report
    from .bench.store import Store, StoreError

    try:
        store = Store.open(db, create=False)
    except StoreError as err:
        _fail(str(err))
    with store:
        found = report.groups(store)
        keep = [
            g
            for g in found
            if (task is None or g[0] == task)
            and (model is None or model in (g[1], g[1].rpartition("@")[0]))
        ]
        if not keep:
            _fail(f"no stored results match (model={model!r}, task={task!r}) in {db}")
        path = report.write(store, out, only=keep)
    typer.echo(f"report of {len(keep)} group(s): {path}")


# -- helpers ---------------------------------------------------------------------------------
def _depth(model: Any) -> int:
    """Number of blocks or decoder layers (default sweeps place their layers by depth), as
    the model's adapter answers it."""
    from .api import describe

    return describe(model).num_layers


def _print_group(store, group, configs: list[str]) -> None:
    """The table of ``configs`` in ``group`` (figures of a noisy timing flagged), its
    footnotes (the img/s scale, the noisy rows) and the task's summary, on stdout."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    from .bench.configs import label
    from .bench.report import groups, table_notes
    from .bench.tasks import task_class

    rows = [r for r in groups(store).get(group, []) if r.key.config in configs]
    cls = task_class(group[0])
    cols = list(cls.columns) if cls else []
    table = Table(title=Text(f"{group[0]} · {group[1]} · {group[2]}"), title_justify="left")
    table.add_column("configuration", no_wrap=True)
    for c in cols:
        table.add_column(c.header, justify="right")
    for r in rows:
        style = "bold" if r.key.config == "baseline" else None
        table.add_row(Text(label(r.key.config)), *(c.cell(r.metrics) for c in cols), style=style)
    console = Console()
    if not console.is_terminal:  # a pipe or a log: do not squeeze the table to 80 columns
        console = Console(width=200)
    console.print(table)
    pairs = [(r.key.config, r.metrics) for r in rows]
    for line in table_notes(pairs) + (cls.summary(pairs) if cls else []):
        console.print(line, markup=False, highlight=False)


def _command_line() -> str:
    return " ".join(shlex.quote(a) for a in ["tokenreduce", *sys.argv[1:]])


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
