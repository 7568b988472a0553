"""The ``fidelity`` task on tiny models: exact baseline, reduced rows, store and resume,
report, and ``tokenreduce bench --task fidelity`` end to end."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from benchutil import stored_rows, write_tiny_dinov2
from typer.testing import CliRunner

from tokenreduce.bench import matched, report, runner
from tokenreduce.bench.configs import BASELINE, default_methods, resolve
from tokenreduce.bench.models import load
from tokenreduce.bench.store import Store
from tokenreduce.bench.tasks import Options, get
from tokenreduce.cli import app

FAST = Options(threads=1, limit=4, quick=True, repeats=1, warmup=0)
TOPK = "topk:keep_ratio=0.5,layers=[1,2]"


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


@pytest.fixture(scope="module")
def dinov2_dir(tmp_path_factory) -> Path:
    return write_tiny_dinov2(tmp_path_factory.mktemp("hf") / "tiny-dinov2")


@pytest.fixture(scope="module")
def loaded(dinov2_dir):
    return load(str(dinov2_dir))


@pytest.fixture(scope="module")
def task(loaded):
    return get("fidelity").from_options(loaded, FAST)


def test_default_task_of_a_backbone_is_fidelity(loaded, task):
    assert loaded.default_task == "fidelity"
    assert task.inputs.shape == (4, 3, 32, 32)  # the config's image size, RGB
    assert task.sources == ("photo", "shape", "photo", "shape")
    assert task.picture_indices == (0, 2)  # the photos among the first four


def test_baseline_is_exact_and_a_reduction_costs_fidelity(loaded, task):
    model = loaded.model
    base = task.measure(model, BASELINE, None)
    for key in ("cls_cos", "cls_cos_min", "patch_cos", "patch_cos_min"):
        assert base[key] == pytest.approx(1.0, abs=1e-6)
    assert base["speedup"] == 1.0 and base["speedup_cpu"] == 1.0 and base["flop_ratio"] == 1.0
    assert base["pruned_share"] == 0
    assert base["mean_tokens"] == 65 and base["images"] == 4
    for config in (TOPK, "tome:r=6"):
        row = task.measure(model, config, base)
        assert row["cls_cos"] < 1 and row["patch_cos"] < 1
        assert row["cls_cos_min"] <= row["cls_cos"]
        assert row["flop_ratio"] > 1 and row["gflops"] < base["gflops"]
        assert row["flop_ratio"] == pytest.approx(base["gflops"] / row["gflops"])
        assert row["mean_tokens"] < base["mean_tokens"]
        assert row["throughput"] > 0 and row["speedup"] > 0 and row["peak_mem_mb"] > 0
        assert row["speedup_cpu"] > 0 and len(row["batch_cpu_ms_all"]) == task.repeats
        assert row["throughput_scaled"] == pytest.approx(row["speedup"] * base["throughput"])
        assert row["cls_cos_photo"] < 1 or row["cls_cos_shape"] < 1
        # pruned patches are recovered from earlier blocks; merged ones never are
        assert (row["pruned_share"] > 0) == config.startswith("topk")


def test_matched_default_budgets(loaded):
    sweep = get("fidelity").default_sweep(loaded)
    configs = resolve("topk,tome,prunemerge", depth=4, sweep=sweep)
    # 64 patches: keep ratios of 25/50/75 % removed at blocks 1, 2, 3, and ToMe merging the
    # same counts there, plus ToMe with a constant r
    assert matched.removed_counts(0.5, 64) == [13, 10, 8]
    assert "tome:r=8,inflect=0.0,prop_attn=True,schedule=(0,13,10,8),order='reference'" in configs
    assert "topk:keep_ratio=0.7937,layers=(1,2,3)" in configs
    assert "prunemerge:keep_ratio=0.63,layers=(1,2,3),merge_share=0.5" in configs
    assert len(configs) == 1 + 3 + 6 + 3


def test_store_resume_and_report(tmp_path, loaded, task):
    configs = [BASELINE, TOPK]
    with Store.open(tmp_path / "r.db") as store:
        first = runner.run_sweep(store, task, loaded.model, loaded.key, configs, threads=1)
        again = runner.run_sweep(store, task, loaded.model, loaded.key, configs, threads=1)
        html = report.render(store)
    assert first.measured == configs and again.measured == [] and again.skipped == configs
    assert "class cos" in html and "patch cos" in html and "fidelity" in html
    assert "class-token cosine to unreduced against GFLOPs per image" in html
    assert "class-token cosine &gt;= 0.95" in html  # the summary line
    # three Pareto plots and one picture figure per photo
    assert len(re.findall(r'src="data:image/png;base64,', html)) == 3 + 2


cli = CliRunner()


def _bench(*args: str):
    result = cli.invoke(app, ["bench", *args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result


def test_quick_cli_end_to_end(tmp_path, dinov2_dir):
    db, out = tmp_path / "r.db", tmp_path / "r.html"
    common = ["--db", str(db), "--out", str(out), "--threads", "1", "--repeats", "1"]
    result = _bench("--model", str(dinov2_dir), "--quick", "--limit", "2", *common)
    rows = stored_rows(db)
    assert {t for t, _, _ in rows} == {"fidelity"}  # the default task of a backbone
    assert rows[0][1] == BASELINE
    # one budget per vision method, each the 50 % matched one (pooling: its 2x2 cells)
    assert sorted(c.partition(":")[0] for _, c, _ in rows[1:]) == sorted(default_methods("tokens", "vision"))
    assert all(m["flop_ratio"] > 1 and m["cls_cos"] < 1 for _, _, m in rows[1:])
    assert "fastest with class-token cosine" in result.output
    html = out.read_text()
    assert "class cos" in html and html.count("<tr") == len(rows) + 1


def test_fidelity_on_an_image_classifier(tmp_path, tiny_ckpt):
    db = tmp_path / "r.db"
    _bench(
        "--model", str(tiny_ckpt), "--task", "fidelity", "--budgets", "tome:r=2",
        "--limit", "2", "--repeats", "1", "--warmup", "0", "--threads", "1",
        "--db", str(db), "--out", str(tmp_path / "r.html"),
    )  # fmt: skip
    rows = stored_rows(db)
    assert [c for _, c, _ in rows] == [
        BASELINE,
        "tome:r=2,inflect=0.0,prop_attn=True,schedule=None,order='reference'",
    ]
    base, tome = rows[0][2], rows[1][2]
    assert base["cls_cos"] == pytest.approx(1.0, abs=1e-6) and tome["cls_cos"] < 1
    assert base["images"] == 2


def test_bad_data_option_is_an_error(loaded):
    with pytest.raises(ValueError, match="reads no --data"):
        get("fidelity").from_options(loaded, Options(data=Path("x"), quick=True))
