"""``tokenreduce bench --executor ray`` on a local Ray instance: the same stored rows as the
local executor, a killed worker's configuration retried on a fresh one with no finished row
lost, a configuration that fails on every attempt reported with the run marked failed; and
Ray stays optional (never imported by a local sweep, a clear error when missing)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from benchutil import fast_args, stored_rows
from typer.testing import CliRunner

from tokenreduce.bench import models, tasks
from tokenreduce.bench.ray_executor import (
    RAY_INSTALL,
    RayExecutor,
    Recipe,
    SweepFailed,
    Worker,
    import_ray,
)
from tokenreduce.bench.runner import run_sweep
from tokenreduce.bench.store import Store
from tokenreduce.cli import app

ray = pytest.importorskip("ray")

#: metrics that come from timing or memory: they differ between any two runs
TIMED = ("throughput", "speedup", "batch_ms", "baseline_", "peak_mem", "mem_ratio", "timing_")
CONFIGS = ["baseline", "tome:r=1", "tome:r=2", "tome:r=3"]


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    """One small local Ray instance for the module; the executor uses it as it is and does
    not shut it down."""
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def _untimed(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if not k.startswith(TIMED)}


def test_ray_sweep_stores_what_the_local_sweep_stores(tmp_path, idx_dir):
    base = ["--model", "fmnist-vit", "--data", str(idx_dir), "--limit", "24", "--batch-size"]
    base += ["12", "--repeats", "1", "--warmup", "0", "--threads", "1", "--no-pictures"]
    base += ["--budgets", "tome:r=4 evit:keep_ratio=0.5"]
    rows = {}
    for name, extra in (("local", []), ("ray", ["--executor", "ray", "--workers", "2"])):
        db = tmp_path / f"{name}.db"
        args = ["bench", *base, "--db", str(db), "--out", str(tmp_path / f"{name}.html")]
        result = CliRunner().invoke(app, [*args, *extra], catch_exceptions=False)
        assert result.exit_code == 0, result.output
        rows[name] = {config: _untimed(m) for _, config, m in stored_rows(db)}
    assert sorted(rows["ray"]) == sorted(rows["local"])
    assert len(rows["local"]) == 3
    assert {c: m["top1"] for c, m in rows["ray"].items()} == {
        c: m["top1"] for c, m in rows["local"].items()
    }
    assert rows["ray"] == rows["local"]  # token counts, FLOPs, agreement: every untimed figure
    assert ray.is_initialized()  # the command left the instance it did not start running


def _sweep(tmp_path: Path, ckpt: Path, data: Path, worker_cls: type, retries: int, workers: int):
    """Run ``CONFIGS`` on ``workers`` Ray workers of ``worker_cls`` into a fresh store; return
    (sweep or the error raised, stored rows, run statuses)."""
    options = tasks.Options(threads=1, limit=20, batch_size=10, repeats=1, warmup=0, data=data)
    loaded = models.load(str(ckpt))
    task = tasks.get("classification").from_options(loaded, options)
    recipe = Recipe.of(str(ckpt), "classification", options)
    executor = RayExecutor(recipe, workers=workers, retries=retries, worker_cls=worker_cls)
    db = tmp_path / "ray.db"
    with Store.open(db) as store:
        try:
            outcome = run_sweep(
                store, task, loaded.model, loaded.key, CONFIGS, threads=1, pictures=False,
                executor=executor,
            )  # fmt: skip
        except SweepFailed as err:
            outcome = err
        statuses = [run["status"] for run in store.runs()]
    return outcome, stored_rows(db), statuses


def _dying_worker(marker_dir: Path, config: str, times: int) -> type:
    """A worker class whose process exits (as a killed worker does) when it is handed
    ``config``, the first ``times`` times across all workers (counted in files)."""

    class DyingWorker(Worker):
        def measure(self, config_now, baseline, pictures):
            if config_now == config:
                done = len(list(marker_dir.glob("death-*")))
                if done < times:
                    (marker_dir / f"death-{done}").touch()
                    os._exit(1)
            return super().measure(config_now, baseline, pictures)

    return DyingWorker


def test_killed_worker_is_replaced_and_its_configuration_retried(tmp_path, tiny_ckpt, idx_dir):
    worker_cls = _dying_worker(tmp_path, "tome:r=2", times=1)
    sweep, rows, statuses = _sweep(tmp_path, tiny_ckpt, idx_dir, worker_cls, retries=2, workers=2)
    assert sorted(config for _, config, _ in rows) == sorted(CONFIGS)  # each exactly once
    assert rows[0][1] == "baseline"  # measured and stored before the others were handed out
    assert sorted(sweep.measured) == sorted(CONFIGS)
    assert len(sweep.retried) == 1 and sweep.retried[0].startswith("tome:r=2 (attempt 1 of 3)")
    assert statuses == ["finished"]


def test_retries_used_up_report_the_configuration_and_fail_the_run(tmp_path, tiny_ckpt, idx_dir):
    # one worker, dying on the last configuration: the fewest workers to start
    worker_cls = _dying_worker(tmp_path, "tome:r=3", times=99)
    error, rows, statuses = _sweep(tmp_path, tiny_ckpt, idx_dir, worker_cls, retries=1, workers=1)
    assert isinstance(error, SweepFailed)
    assert list(error.failed) == ["tome:r=3"]
    assert "tome:r=3" in str(error) and "1 configuration(s) failed" in str(error)
    assert [line.split(" (")[0] for line in error.retried] == ["tome:r=3", "tome:r=3"]
    assert "attempt 2 of 2" in error.retried[1]
    assert sorted(config for _, config, _ in rows) == ["baseline", "tome:r=1", "tome:r=2"]
    assert statuses == ["failed"]


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--ray-address", "auto"], "--ray-address need(s) --executor ray"),
        (["--workers", "2"], "--workers need(s) --executor ray"),
        (["--ray-retries", "1"], "--ray-retries need(s) --executor ray"),
        (["--executor", "dask"], "--executor 'dask': use 'local' or 'ray'"),
        (["--executor", "ray", "--workers", "0"], "Invalid value for '--workers'"),
    ],
)
def test_executor_options_are_checked(tmp_path, tiny_ckpt, idx_dir, extra, message):
    args = fast_args(tiny_ckpt, idx_dir, tmp_path / "r.db", tmp_path / "r.html")
    result = CliRunner().invoke(app, ["bench", *args, *extra])
    assert result.exit_code == 2
    assert message in " ".join(result.output.split())
    assert not (tmp_path / "r.db").exists()  # refused before anything was measured


def test_ray_is_optional(monkeypatch, tmp_path, tiny_ckpt, idx_dir):
    code = (
        "import sys, tokenreduce, tokenreduce.cli, tokenreduce.bench.runner, "
        "tokenreduce.bench.ray_executor; sys.exit('ray' in sys.modules)"
    )
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
    monkeypatch.setitem(sys.modules, "ray", None)  # what an environment without Ray sees
    with pytest.raises(RuntimeError, match="--executor ray needs Ray; install it with") as err:
        import_ray()
    assert RAY_INSTALL in str(err.value)
    args = fast_args(tiny_ckpt, idx_dir, tmp_path / "r.db", tmp_path / "r.html")
    result = CliRunner().invoke(app, ["bench", *args, "--executor", "ray"])
    assert result.exit_code == 2
    assert RAY_INSTALL in result.output
