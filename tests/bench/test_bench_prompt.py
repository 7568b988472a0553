"""The ``prompt`` task: prompt compression next to cache methods at the same budget, on the
tiny random Llama of ``conftest.tiny_lm`` (its byte-level tokenizer makes every byte a
token)."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tokenreduce.bench.configs import resolve
from tokenreduce.bench.models import load
from tokenreduce.bench.tasks import Options, get
from tokenreduce.bench.tasks.prompt import SUBTASKS, PromptCompression, rate_sweep
from tokenreduce.cli import app

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


@pytest.fixture(scope="module")
def loaded(tiny_lm):
    return load(str(tiny_lm))


@pytest.fixture(scope="module")
def task(loaded, prose) -> PromptCompression:
    options = Options(threads=1, limit=1, context=(96,), data=prose, repeats=1, warmup=0)
    return get("prompt").from_options(loaded, options)


def test_every_subtask_is_sampled(task):
    assert sorted(p.sample.task for p in task.prompts) == sorted(SUBTASKS)
    assert all(p.sample.documents for p in task.prompts)


def test_rate_one_is_the_baseline(loaded, task):
    base = task.measure(loaded.model, "baseline", None)
    same = task.measure(loaded.model, "llmlingua:rate=1.0", base)
    assert same["outputs"] == base["outputs"] and same["prompt_tokens"] == base["prompt_tokens"]
    assert same["rate_achieved"] == 1.0 and same["accuracy"] == base["accuracy"]
    assert base["compress_s"] == 0.0 and base["rate_achieved"] == 1.0
    assert set(base["accuracy_per_task"]) == set(SUBTASKS)


def test_a_compressed_prompt_is_shorter_and_timed_with_its_compression(loaded, task):
    base = task.measure(loaded.model, "baseline", None)
    quarter = task.measure(loaded.model, "longllmlingua:rate=0.25", base)
    assert quarter["method_kind"] == "prompt" and quarter["ratio"] == 0.75
    assert abs(quarter["rate_achieved"] - 0.25) <= 0.02
    assert quarter["prompt_tokens"] < 0.6 * base["prompt_tokens"]
    assert quarter["kv_ratio"] < 0.6
    assert quarter["compress_s"] > 0
    # the reduced side's time to first token includes the compression
    assert min(quarter["ttft_s_all"]) > quarter["compress_s"] * 0.5
    cache = task.measure(loaded.model, "snapkv:compression_ratio=0.75", base)
    assert cache["rate_achieved"] == 1.0 and cache["compress_s"] == 0.0
    lines = PromptCompression.summary(
        [("baseline", base), ("longllmlingua:rate=0.25", quarter),
         ("snapkv:compression_ratio=0.75", cache)]
    )  # fmt: skip
    assert len(lines) == 1 and lines[0].startswith("4x: best prompt compression longllmlingua")


def test_the_default_sweep_pairs_prompt_rates_with_cache_ratios():
    configs = resolve(None, depth=4, kind=PromptCompression.method_kinds, sweep=rate_sweep)
    assert configs[0] == "baseline"
    names = {c.partition(":")[0] for c in configs[1:]}
    assert names == {"selective_context", "llmlingua", "longllmlingua", "snapkv", "streamingllm"}
    assert sum("rate=0.1," in c for c in configs) == 3
    assert sum("compression_ratio=0.9," in c for c in configs) == 2
    quick = resolve(None, depth=4, quick=True, kind=PromptCompression.method_kinds,
                    sweep=rate_sweep)  # fmt: skip
    assert len(quick) == 6


def test_cli_runs_prompt_and_cache_methods(tiny_lm, prose, tmp_path: Path):
    db, out = tmp_path / "r.db", tmp_path / "r.html"
    args = ["bench", "--model", str(tiny_lm), "--task", "prompt", "--quick", "--context", "64",
            "--limit", "1", "--data", str(prose), "--methods", "selective_context,snapkv",
            "--threads", "1", "--db", str(db), "--out", str(out)]  # fmt: skip
    result = CliRunner().invoke(app, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    con = sqlite3.connect(db)
    rows = con.execute("SELECT config, metrics FROM results ORDER BY id").fetchall()
    con.close()
    assert [c.partition(":")[0] for c, _ in rows] == ["baseline", "selective_context", "snapkv"]
    kept = json.loads(rows[1][1])["rate_achieved"]
    assert abs(kept - 0.25) <= 0.1  # whole phrases on 64-token contexts
    assert "compress s" in out.read_text()
