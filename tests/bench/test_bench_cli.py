"""``tokenreduce bench`` and ``report`` end to end: quick sweep, resume, fresh, bad input."""

from __future__ import annotations

import json
import re
import sqlite3
from pathlib import Path

import pytest
from benchutil import TINY_ARCH, fast_args, tiny_vit
from typer.testing import CliRunner

from tokenreduce import methods
from tokenreduce.bench.configs import default_methods
from tokenreduce.cli import app

runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, list(args), catch_exceptions=False)


def rows(db: Path) -> list[tuple[int, str, str]]:
    con = sqlite3.connect(db)
    try:
        return con.execute("SELECT id, run_id, config FROM results ORDER BY id").fetchall()
    finally:
        con.close()


def _real_setup():
    """The bundled demo model and the real test set, when both are installed."""
    from tokenreduce import assets
    from tokenreduce.data import find_fashion_mnist

    try:
        assets.load("fmnist-vit")
        folder = find_fashion_mnist("test")
    except (FileNotFoundError, KeyError):
        return None
    return folder


def test_quick_bench_end_to_end(tmp_path, tiny_ckpt, idx_dir):
    db, out = tmp_path / "r.db", tmp_path / "report.html"
    real = _real_setup()
    common = ["bench", "--quick", "--db", str(db), "--out", str(out), "--threads", "1"]
    if real is not None:  # the main job's own defaults, CI-sized
        args = [*common, "--data", str(real)]
    else:
        args = [*common, "--model", str(tiny_ckpt), "--data", str(idx_dir)]
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    stored = rows(db)
    configs = [c for _, _, c in stored]
    assert configs[0] == "baseline"
    # one budget per vision method, each measured once
    assert sorted(c.partition(":")[0] for c in configs[1:]) == sorted(default_methods("tokens", "vision"))
    con = sqlite3.connect(db)
    metrics = [json.loads(m) for (m,) in con.execute("SELECT metrics FROM results ORDER BY id")]
    runs = con.execute("SELECT status, threads, torch_version, cpu FROM runs").fetchall()
    con.close()
    assert runs[0][0] == "finished" and runs[0][1] >= 1 and runs[0][2] and runs[0][3]
    base = metrics[0]
    assert base["speedup"] == 1.0 and base["top1_delta"] == 0.0
    for m in metrics[1:]:
        assert m["gflops"] < base["gflops"]  # every default budget removes tokens
        assert m["flop_ratio"] == pytest.approx(base["gflops"] / m["gflops"])
        assert m["top1_delta"] == pytest.approx(m["top1"] - base["top1"])
        assert m["throughput"] > 0 and m["peak_mem_mb"] > 0 and m["speedup"] > 0
        assert m["throughput_scaled"] == pytest.approx(m["speedup"] * base["throughput"])
        assert m["timing_attempts"] >= 1 and m["timing_noisy"] == (m["speedup_spread"] > 0.2)
    # no terminal here: plain progress lines, and the img/s scale named under the table
    assert f"[{len(configs)}/{len(configs)}] " in result.output and "done in" in result.output
    assert "throughput (baseline × speedup): the baseline's" in result.output
    if real is not None:
        assert base["top1"] > 80  # the demo model really classifies the real test images
    html = out.read_text()
    assert html.count("<tr") == len(configs) + 1
    assert len(re.findall(r'src="data:image/png;base64,', html)) >= 2 + 1  # plots + pictures
    assert "http://" not in html and "https://" not in html  # self-contained
    # the same command again resumes: nothing re-measured, the report is rewritten
    out.unlink()
    again = invoke(*args)
    assert again.exit_code == 0, again.output
    assert "0 measured" in again.output
    assert rows(db) == stored and out.exists()


def test_resume_skips_finished_and_fresh_remeasures(tmp_path, tiny_ckpt, idx_dir):
    db, out = tmp_path / "r.db", tmp_path / "r.html"
    base = ["bench", *fast_args(tiny_ckpt, idx_dir, db, out), "--no-pictures"]
    assert invoke(*base, "--budgets", "tome:r=1").exit_code == 0
    first = rows(db)
    assert [c for *_, c in first] == ["baseline", methods.describe(methods.build("tome:r=1"))]
    result = invoke(*base, "--budgets", "tome:r=1 tome:r=2")
    assert result.exit_code == 0, result.output
    second = rows(db)
    assert second[:2] == first  # kept, not re-measured
    assert [c for *_, c in second[2:]] == [methods.describe(methods.build("tome:r=2"))]
    assert "1 measured, 2 already stored" in result.output
    assert invoke(*base, "--budgets", "tome:r=1", "--fresh").exit_code == 0
    third = rows(db)
    assert len(third) == 5 and third[3][1] == third[4][1] != second[2][1]
    # a different batch size is a different measurement setting: measured, not skipped
    other = [a if a != "10" else "5" for a in base]
    assert invoke(*other, "--budgets", "tome:r=1").exit_code == 0
    assert len(rows(db)) == 7


def test_checkpoint_in_timm_hub_layout(tmp_path, idx_dir):
    """A folder with model.safetensors and timm's config.json is a valid --model."""
    from safetensors.torch import save_file
    from timm.models.vision_transformer import VisionTransformer

    args = {
        "img_size": 32,
        "patch_size": 8,
        "in_chans": 1,
        "embed_dim": 16,
        "depth": 2,
        "num_heads": 2,
    }
    model = VisionTransformer(num_classes=10, **args)
    folder = tmp_path / "my-vit"
    folder.mkdir()
    save_file(
        {k: v.contiguous() for k, v in model.state_dict().items()},
        str(folder / "model.safetensors"),
    )
    (folder / "config.json").write_text(
        json.dumps(
            {
                "architecture": "vit_tiny_patch16_224",
                "num_classes": 10,
                "model_args": args,
                "pretrained_cfg": {"input_size": [1, 32, 32], "mean": [0.5], "std": [0.5]},
            }
        )
    )
    db = tmp_path / "r.db"
    result = invoke(
        "bench",
        *fast_args(folder, idx_dir, db, tmp_path / "r.html"),
        "--budgets",
        "tome:r=2",
        "--no-pictures",
    )
    assert result.exit_code == 0, result.output
    con = sqlite3.connect(db)
    (model_key,) = con.execute("SELECT DISTINCT model FROM results").fetchone()
    assert model_key.startswith("my-vit@")


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--methods", "nosuch"], "unknown method 'nosuch'"),
        (["--budgets", "tome:r=-3"], "r=-3 is invalid"),
        (["--budgets", "evit:keep_ratio=1.5"], "keep_ratio=1.5 is invalid"),
        (["--budgets", "tome:speed=2"], "unknown parameter"),
        (["--budgets", "evit:layers=[7]"], "layers contains 7"),  # past the tiny model's depth
        (["--methods", "tome", "--budgets", "evit:keep_ratio=0.5"], "does not include"),
    ],
)
def test_bad_methods_and_budgets(tmp_path, tiny_ckpt, idx_dir, extra, message):
    db = tmp_path / "r.db"
    result = invoke("bench", *fast_args(tiny_ckpt, idx_dir, db, tmp_path / "r.html"), *extra)
    assert result.exit_code == 2
    assert message in result.output
    assert not db.exists()  # nothing is created for a run that cannot start


def test_non_kv_method_kind_is_refused(tmp_path, tiny_ckpt, idx_dir):
    others = [n for n in methods.available() if methods.get(n).kind != "tokens"]
    if not others:
        pytest.fail("expected at least one registered method of another kind (KV cache)")
    result = invoke(
        "bench",
        *fast_args(tiny_ckpt, idx_dir, tmp_path / "r.db", tmp_path / "r.html"),
        "--methods",
        others[0],
    )
    assert result.exit_code == 2 and "methods of kind 'tokens'" in result.output


def test_models_that_cannot_be_benchmarked(tmp_path, idx_dir):
    common = [
        "--data",
        str(idx_dir),
        "--db",
        str(tmp_path / "r.db"),
        "--out",
        str(tmp_path / "r.html"),
    ]
    result = invoke("bench", "--model", "resnet18", *common)
    assert result.exit_code == 2
    assert "resnet18" in result.output and "supported model families" in result.output
    result = invoke("bench", "--model", "no_such_model_xyz", *common)
    assert result.exit_code == 2 and "not a bundled asset" in result.output
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file")
    result = invoke("bench", "--model", str(bad), *common)
    assert result.exit_code == 2 and "cannot read" in result.output
    # a ViT whose head does not predict the data set's 10 classes
    from safetensors.torch import save_file

    arch = {**TINY_ARCH, "num_classes": 7}
    wrong = tmp_path / "seven.safetensors"
    save_file(
        {k: v.contiguous() for k, v in tiny_vit(arch).state_dict().items()},
        str(wrong),
        metadata={"arch": json.dumps(arch)},
    )
    result = invoke("bench", "--model", str(wrong), *common)
    assert result.exit_code == 2 and "10 classes" in result.output


def test_missing_data_says_how_to_get_it(tmp_path, tiny_ckpt):
    empty = tmp_path / "nodata"
    empty.mkdir()
    result = invoke(
        "bench", "--model", str(tiny_ckpt), "--data", str(empty), "--db", str(tmp_path / "r.db")
    )
    assert result.exit_code == 2
    assert "dataset-fashion-mnist" in result.output


def test_foreign_database_left_untouched(tmp_path, tiny_ckpt, idx_dir):
    db = tmp_path / "theirs.db"
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE invoices (id INTEGER)")
    con.commit()
    con.close()
    before = db.read_bytes()
    result = invoke("bench", *fast_args(tiny_ckpt, idx_dir, db, tmp_path / "r.html"))
    assert result.exit_code == 2 and "another schema" in result.output
    assert db.read_bytes() == before
    result = invoke("report", "--db", str(db), "--out", str(tmp_path / "r.html"))
    assert result.exit_code == 2 and db.read_bytes() == before
    assert not (tmp_path / "r.html").exists()


def test_help_lists_the_options():
    result = runner.invoke(app, ["bench", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    for option in (
        "--model",
        "--methods",
        "--budgets",
        "--batch-size",
        "--limit",
        "--quick",
        "--threads",
        "--repeats",
        "--db",
        "--out",
        "--fresh",
        "--task",
        "--context",
        "classification",
    ):
        assert option in result.output, option
