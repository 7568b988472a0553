"""The ``tokenreduce`` command: ``bench`` (measure and store) and ``report`` (HTML).

Run ``tokenreduce bench --help`` and ``tokenreduce report --help`` for the options; the
README's "Benchmark" section explains budgets, resume and the results store.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Token reduction for transformers: benchmark methods and report the results.",
)

DEFAULT_DB = Path("results/tokenreduce.db")
DEFAULT_OUT = Path("results/report.html")
QUICK_LIMIT, QUICK_BATCH, QUICK_REPEATS, QUICK_WARMUP = 128, 32, 3, 1


def _fail(message: str) -> NoReturn:
    typer.secho(f"error: {message}", err=True, fg=typer.colors.RED)
    raise typer.Exit(2)


@app.command()
def bench(
    model: Annotated[
        str,
        typer.Option(
            help="Bundled asset name, local checkpoint (.safetensors file or folder with "
            "model.safetensors; architecture from its 'arch' metadata or a config.json "
            "beside it) or timm model name with cached pretrained weights."
        ),
    ] = "fmnist-vit",
    methods: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated method names (default: every method of kind 'tokens', or "
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
        typer.Option(
            min=1, help="Evaluation and timing batch size (default: 64; 32 with --quick)."
        ),
    ] = None,
    limit: Annotated[
        int | None,
        typer.Option(
            min=1, help="Evaluate the first N test images (default: all; 128 with --quick)."
        ),
    ] = None,
    quick: Annotated[
        bool,
        typer.Option(
            help="CI-sized run: 128 images in batches of 32, one budget per method, 3 timed repeats."
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
        typer.Option(min=1, help="Timed repeats per side (default: 10; 3 with --quick)."),
    ] = None,
    warmup: Annotated[
        int | None,
        typer.Option(min=0, help="Untimed warm-up calls per side (default: 2; 1 with --quick)."),
    ] = None,
    data: Annotated[
        Path | None,
        typer.Option(
            help="Folder with the Fashion-MNIST IDX .gz files (default: $TOKENREDUCE_DATA, "
            "then /usr/share/datasets/fashion-mnist)."
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
        bool, typer.Option(help="Store token-map pictures of a few test images for the report.")
    ] = True,
) -> None:
    """Measure top-1, GFLOPs, throughput, speedup and peak memory of every vision token
    reduction method at several budgets, plus the unreduced baseline, into the results store;
    then print a table and write the HTML report."""
    from .bench import configs as cfg
    from .bench import metrics, runner
    from .bench.models import ModelError
    from .bench.models import load as load_model
    from .bench.store import Store, StoreError, check_file

    try:  # names and budgets first: a typo should not wait for a model to load
        cfg.resolve(methods, budgets or (), quick=quick)
    except cfg.ConfigError as err:
        _fail(str(err))
    threads = threads or metrics.default_threads()
    batch_size = batch_size or (QUICK_BATCH if quick else 64)
    try:
        check_file(db)  # a foreign or broken store fails now, before anything is loaded
    except StoreError as err:
        _fail(str(err))
    try:
        loaded = load_model(model)
    except ModelError as err:
        _fail(str(err))
    try:
        configs = cfg.resolve(methods, budgets or (), depth=_depth(loaded.model), quick=quick)
        runner.check_configs(loaded.model, configs)
        task = _classification_task(
            loaded.model,
            data,
            limit or (QUICK_LIMIT if quick else None),
            batch_size,
            threads,
            repeats or (QUICK_REPEATS if quick else 10),
            QUICK_WARMUP if warmup is None and quick else (2 if warmup is None else warmup),
        )
    except (cfg.ConfigError, ValueError, FileNotFoundError) as err:
        _fail(str(err))
    try:
        store = Store.open(db)
    except StoreError as err:
        _fail(str(err))
    with store:
        options = {
            "model": model,
            "methods": methods,
            "budgets": budgets,
            "batch_size": batch_size,
            "limit": limit,
            "quick": quick,
            "threads": threads,
            "repeats": task.repeats,
            "warmup": task.warmup,
            "fresh": fresh,
        }
        from .bench.progress import RichListener

        listener = RichListener(len(configs))
        try:
            with listener:
                sweep = runner.run_sweep(
                    store,
                    task,
                    loaded.model,
                    loaded.key,
                    configs,
                    threads=threads,
                    fresh=fresh,
                    pictures=pictures,
                    command=_command_line(),
                    options=options,
                    listener=listener,
                )
        except KeyboardInterrupt:
            typer.secho(
                f"\ninterrupted: every finished configuration is stored in {db}; run the same "
                "command again to resume",
                err=True,
                fg=typer.colors.YELLOW,
            )
            raise typer.Exit(130) from None
        except (cfg.ConfigError, ValueError) as err:
            _fail(str(err))
        _print_group(store, sweep.group, configs)
        from .bench import report

        path = report.write(store, out, only=[sweep.group])
        typer.echo(
            f"{len(sweep.measured)} measured, {len(sweep.skipped)} already stored "
            f"(resumed); results in {db}; report: {path}"
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
    blocks = getattr(model, "blocks", None)
    return len(blocks) if blocks is not None else 12


def _classification_task(model, data, limit, batch_size, threads, repeats, warmup):
    from .bench.tasks.classification import ImageClassification
    from .data import LABELS, fashion_mnist

    images, labels = fashion_mnist("test", path=data)
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    task = ImageClassification(
        images,
        labels,
        "fashion-mnist:test",
        num_classes=len(LABELS),
        batch_size=batch_size,
        threads=threads,
        repeats=repeats,
        warmup=warmup,
        picture_indices=_picture_indices(labels),
    )
    task.check_model(model)
    return task


def _picture_indices(labels, count: int = 4) -> tuple[int, ...]:
    """The first image of each of ``count`` different classes."""
    seen: dict[int, int] = {}
    for i, y in enumerate(labels.tolist()):
        if y not in seen:
            seen[y] = i
        if len(seen) == count:
            break
    return tuple(sorted(seen.values()))


def _print_group(store, group, configs: list[str]) -> None:
    from rich.console import Console
    from rich.table import Table

    from .bench.configs import label
    from .bench.report import groups
    from .bench.tasks import task_class

    rows = groups(store).get(group, [])
    cls = task_class(group[0])
    cols = list(cls.columns) if cls else []
    from rich.text import Text

    table = Table(title=Text(f"{group[0]} · {group[1]} · {group[2]}"), title_justify="left")
    table.add_column("configuration", no_wrap=True)
    for c in cols:
        table.add_column(c.header, justify="right")
    for r in rows:
        if r.key.config in configs:
            style = "bold" if r.key.config == "baseline" else None
            table.add_row(
                Text(label(r.key.config)),
                *(c.format(r.metrics.get(c.key)) for c in cols),
                style=style,
            )
    console = Console()
    if not console.is_terminal:  # a pipe or a log: do not squeeze the table to 80 columns
        console = Console(width=200)
    console.print(table)
    if cls:
        for line in cls.summary(
            [(r.key.config, r.metrics) for r in rows if r.key.config in configs]
        ):
            console.print(line, markup=False, highlight=False)


def _command_line() -> str:
    return " ".join(shlex.quote(a) for a in ["tokenreduce", *sys.argv[1:]])


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
