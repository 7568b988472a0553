"""The HTML report: self-contained, every stored string escaped, plots and pictures inline."""

from __future__ import annotations

import io
import re
import shutil
from pathlib import Path

from benchutil import fast_args
from PIL import Image
from typer.testing import CliRunner

from tokenreduce.bench.configs import BASELINE
from tokenreduce.bench.report import _frontier, short_labels
from tokenreduce.bench.store import Key, Store
from tokenreduce.cli import app

HOSTILE_MODEL = "<script>alert(1)</script>"
HOSTILE_DATA = '"><img src=x onerror=alert(2)>'
ENV = {
    "package_version": "<i>0</i>",
    "git_revision": None,
    "torch_version": "t",
    "threads": 1,
    "cpu": "<b>cpu</b>",
    "python": "3",
    "platform": "p",
}


def _png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 10, 10)).save(buf, format="PNG")
    return buf.getvalue()


def _fill(db: Path) -> None:
    with Store.open(db) as store:
        run = store.start_run("bench", {"model": HOSTILE_MODEL}, ENV)
        for config, method, top1, speed, gflops in [
            (BASELINE, BASELINE, 90.0, 1.0, 1.0),
            ("tome:r=8,inflect=0.0,prop_attn=True,schedule=None", "tome", 89.5, 1.5, 0.6),
            ("tome:r=16,inflect=0.0,prop_attn=True,schedule=None", "tome", 88.0, 2.0, 0.4),
            ("<svg onload=alert(3)>", "<u>weird</u>", 80.0, 1.2, 0.9),  # a foreign spec
        ]:
            key = Key(
                "classification", f"{HOSTILE_MODEL}@abc", HOSTILE_DATA, '{"batch_size":2}', config
            )
            metrics = {
                "top1": top1,
                "top1_delta": top1 - 90.0,
                "gflops": gflops,
                "flop_ratio": 1 / gflops,
                "throughput": 100 * speed,
                "throughput_scaled": 100 * speed,
                "speedup": speed,
                "speedup_per_flop": speed * gflops,
                "peak_mem_mb": 3.0,
            }
            store.add_result(run, key, method, metrics, {"image-0": _png()})
        store.finish_run(run, "finished")


def test_report_escapes_hostile_strings(tmp_path):
    folder = tmp_path / "<b>results"
    folder.mkdir()
    db, out = folder / "r.db", tmp_path / "report.html"
    _fill(db)
    result = CliRunner().invoke(app, ["report", "--db", str(db), "--out", str(out)])
    assert result.exit_code == 0, result.output
    html = out.read_text()
    for raw in (
        HOSTILE_MODEL,
        HOSTILE_DATA,
        "<svg onload",
        "<u>weird",
        "<b>cpu",
        "<i>0",
        "<b>results",
    ):
        assert raw not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;@abc" in html
    assert "&quot;&gt;&lt;img src=x onerror=alert(2)&gt;" in html
    assert "&lt;b&gt;results" in html
    assert html.count("<script") == 0
    # self-contained: two Pareto plots and one picture figure, all inline
    assert len(re.findall(r'<img alt="[^"]*" src="data:image/png;base64,', html)) == 3
    assert "http://" not in html and "https://" not in html
    assert "tome:r=16" in html and "fastest within 0.5 top-1 points" in html


def test_report_filters_and_missing_store(tmp_path):
    db, out = tmp_path / "r.db", tmp_path / "r.html"
    runner = CliRunner()
    result = runner.invoke(app, ["report", "--db", str(db), "--out", str(out)])
    assert result.exit_code == 2 and "no results database" in result.output
    assert not db.exists() and not out.exists()
    _fill(db)
    result = runner.invoke(
        app, ["report", "--db", str(db), "--out", str(out), "--model", HOSTILE_MODEL]
    )
    assert result.exit_code == 0 and out.exists()
    result = runner.invoke(app, ["report", "--db", str(db), "--out", str(out), "--model", "other"])
    assert result.exit_code == 2 and "no stored results match" in result.output


def test_bench_escapes_a_hostile_checkpoint_name(tmp_path, tiny_ckpt, idx_dir):
    ckpt = tmp_path / "<img src=x onerror=alert(4)>.safetensors"
    shutil.copy(tiny_ckpt, ckpt)
    out = tmp_path / "r.html"
    result = CliRunner().invoke(
        app, ["bench", *fast_args(ckpt, idx_dir, tmp_path / "r.db", out), "--budgets", "tome:r=1"]
    )
    assert result.exit_code == 0, result.output
    html = out.read_text()
    assert "<img src=x" not in html and "&lt;img src=x onerror=alert(4)&gt;@" in html


def test_frontier_and_labels():
    pts = [(1.0, 90.0), (2.0, 89.0), (1.5, 85.0), (3.0, 80.0), (2.5, 70.0)]
    assert _frontier(pts, x_higher=True) == [(1.0, 90.0), (2.0, 89.0), (3.0, 80.0)]
    assert _frontier([(1.0, 90.0), (0.5, 88.0), (0.7, 80.0)], x_higher=False) == [
        (0.5, 88.0),
        (1.0, 90.0),
    ]
    labels = short_labels(
        [
            "baseline",
            "pool:kernel=2,layers=(4,)",
            "pool:kernel=2,layers=(2,)",
            "tome:r=8,inflect=0.0,prop_attn=True,schedule=None",
        ]
    )
    assert labels["tome:r=8,inflect=0.0,prop_attn=True,schedule=None"] == "tome:r=8"
    assert labels["pool:kernel=2,layers=(2,)"] == "pool:kernel=2,layers=(2,)"  # disambiguated
    assert labels["pool:kernel=2,layers=(4,)"] == "pool:kernel=2"
