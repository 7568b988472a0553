"""Language-model tasks of the bench (``niah``, ``multikey``, ``vt``, ``perplexity``) on a
tiny random Llama with an offline byte-level tokenizer (``conftest.tiny_lm``): accuracy
kept, KV bytes from the cache tensors, resume, the CLI end to end, and clear failures."""

from __future__ import annotations

import dataclasses
import json
import sqlite3
from pathlib import Path

import pytest
from benchutil import HEAD_DIM, KV_HEADS, LAYERS, tiny_vit
from typer.testing import CliRunner

from tokenreduce.bench.metrics import TIMING_RETRIES
from tokenreduce.bench.models import load
from tokenreduce.bench.tasks import Options, get
from tokenreduce.bench.tasks.longcontext import LongContextTask
from tokenreduce.cli import app

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


@pytest.fixture(scope="module")
def loaded(tiny_lm):
    return load(str(tiny_lm))


def options(prose: Path, **kw) -> Options:
    base = {"threads": 1, "limit": 2, "context": (48, 96), "data": prose, "repeats": 1,
            "warmup": 0}  # fmt: skip
    return Options(**{**base, **kw})


def kv_bytes(tokens: int) -> int:
    """Bytes of keys and values (float32) of ``tokens`` entries in every layer."""
    return LAYERS * 2 * KV_HEADS * HEAD_DIM * 4 * tokens


def test_baseline_keeps_everything_it_solves(loaded, prose):
    """The random model's own greedy answers as ground truth: the baseline then solves every
    sample and keeps 100% of them; a cache budget of the whole prompt (the reduction path
    runs, nothing is removed) keeps them all too; a cache cut to 6 entries loses some."""
    task = get("niah").from_options(loaded, options(prose))
    first = task.measure(loaded.model, "baseline", None)
    answers = [t.strip().split("\n")[0] for t in first["outputs"]]
    assert all(answers), "the tiny model's first line must not be empty for this test"
    samples: dict[int, list] = {}
    for p, a in zip(task.prompts, answers, strict=True):
        samples.setdefault(p.context, []).append(dataclasses.replace(p.sample, answer=a))
    own = type(task)(loaded.tokenizer, samples, repeats=1, warmup=0, decode_tokens=2)
    base = own.measure(loaded.model, "baseline", None)
    assert base["accuracy"] == 100.0 and base["solved"] == len(answers)
    assert base["solved_kept"] == 100.0 and base["accuracy_kept"] == 100.0
    assert base["ttft_speedup"] == 1.0 and base["kv_ratio"] == 1.0
    # paired with itself, the baseline's timing is steady at once
    assert base["timing_attempts"] == 1 and not base["ttft_noisy"] and not base["decode_noisy"]
    assert base["accuracy_by_context"] == "48: 100 · 96: 100"
    whole = own.measure(loaded.model, "snapkv:cache_budget=10000", base)
    assert whole["solved_kept"] == 100.0 and whole["kv_ratio"] == 1.0
    cut = own.measure(loaded.model, "streamingllm:cache_budget=6,n_sink=2", base)
    assert cut["solved_kept"] < 100.0 and cut["accuracy_delta"] < 0
    assert 1 <= cut["timing_attempts"] <= 1 + TIMING_RETRIES
    assert cut["timing_noisy"] == (cut["ttft_noisy"] or cut["decode_noisy"])
    assert cut["kv_ratio"] == pytest.approx(6 * len(answers) / sum(len(p.ids) for p in own.prompts))
    lines = LongContextTask.summary([("baseline", base), ("streamingllm:...", cut)])
    assert not any("solves no sample" in line for line in lines)


def test_snapkv_half_cache_bytes_are_exact(loaded, prose):
    task = get("multikey").from_options(loaded, options(prose))
    base = task.measure(loaded.model, "baseline", None)
    half = task.measure(loaded.model, "snapkv:compression_ratio=0.5", base)
    lengths = [len(p.ids) for p in task.prompts]
    assert base["kv_bytes"] == kv_bytes(sum(lengths))  # batch 1: no padding entries
    assert half["kv_bytes"] == kv_bytes(sum(n - n // 2 for n in lengths))
    assert abs(half["kv_ratio"] - 0.5) < 0.02
    longest = [n for p, n in zip(task.prompts, lengths, strict=True) if p.context == 96]
    assert half["kv_mb"] * 2**20 == pytest.approx(kv_bytes(sum(n - n // 2 for n in longest)) / 2)
    assert half["method_kind"] == "kv_cache" and half["ratio"] == 0.5
    assert half["ttft_speedup"] > 0 and half["decode_tok_s"] > 0 and half["peak_mem_mb"] > 0
    assert half["ttft_cpu_speedup"] > 0 and half["decode_cpu_speedup"] > 0
    lines = LongContextTask.summary(
        [("baseline", base), ("snapkv:compression_ratio=0.5,window_size=32", half)]
    )
    assert any("KV bytes after prefill within 2%" in line and "met" in line for line in lines)
    assert any("solves no sample" in line for line in lines) or any(
        "best at 50%" in line for line in lines
    )


def test_fastv_prunes_the_prompt(loaded, prose):
    task = get("vt").from_options(loaded, options(prose, limit=1))
    base = task.measure(loaded.model, "baseline", None)
    pruned = task.measure(loaded.model, "fastv:prune_ratio=0.5,layer=1", base)
    assert pruned["method_kind"] == "prefill"
    # layers 0-1 keep the whole prompt, layers 2-3 about half of it
    assert 0.7 < pruned["kv_ratio"] < 0.8


def test_data_id_follows_prompts_and_setting(loaded, prose):
    a = get("niah").from_options(loaded, options(prose))
    b = get("niah").from_options(loaded, options(prose))
    c = get("niah").from_options(loaded, options(prose, context=(48,)))
    d = get("niah").from_options(loaded, options(prose, limit=3))
    assert a.data_id == b.data_id and a.setting == b.setting
    assert a.data_id.startswith("niah:prose.txt:seed=0:ctx=48/96:n=2#")
    assert len({a.data_id, c.data_id, d.data_id}) == 3
    assert get("vt").from_options(loaded, options(prose)).data_id != a.data_id
    quick = get("niah").from_options(loaded, Options(quick=True, data=prose))
    assert quick.contexts == (512,) and len(quick.prompts) == 2


def test_bad_input_fails_clearly(loaded, prose, tmp_path):
    with pytest.raises(ValueError, match="max_position_embeddings=1024"):
        get("niah").from_options(loaded, options(prose, context=(2000,)))
    with pytest.raises(FileNotFoundError, match="missing.txt not found"):
        get("niah").from_options(loaded, options(tmp_path / "missing.txt"))
    with pytest.raises(ValueError, match="needs a decoder language model.*VisionTransformer"):
        get("niah").from_options(loaded, options(prose)).check_model(tiny_vit())


def test_perplexity_identity_and_half_cache(loaded, prose):
    # prompts of 64 and 96 tokens: half of them still holds snapkv's 32-token window
    task = get("perplexity").from_options(loaded, options(prose, context=(64, 96)))
    base = task.measure(loaded.model, "baseline", None)
    assert base["ppl"] > 1 and base["tokens_scored"] == 2 * 2 * 64
    whole = task.measure(loaded.model, "snapkv:cache_budget=10000", base)
    assert whole["nll"] == pytest.approx(base["nll"], abs=1e-5)
    half = task.measure(loaded.model, "snapkv:compression_ratio=0.5", base)
    assert half["kv_ratio"] == 0.5  # every prompt has exactly 64 or 96 tokens
    assert half["nll"] != base["nll"]
    assert half["ppl_ratio"] == pytest.approx(half["ppl"] / base["ppl"])


def invoke(*args: str):
    return CliRunner().invoke(app, list(args), catch_exceptions=False)


def test_cli_quick_run_writes_store_and_report_then_resumes(tiny_lm, prose, tmp_path):
    db, out = tmp_path / "r.db", tmp_path / "r.html"
    args = ["bench", "--model", str(tiny_lm), "--task", "niah", "--quick", "--context", "64",
            "--data", str(prose), "--methods", "snapkv,streamingllm,fastv", "--threads", "1",
            "--db", str(db), "--out", str(out)]  # fmt: skip
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    con = sqlite3.connect(db)
    stored = con.execute(
        "SELECT id, task, data, config, metrics FROM results ORDER BY id"
    ).fetchall()
    con.close()
    configs = [r[3] for r in stored]
    assert configs[0] == "baseline" and len(configs) == 4
    assert {c.partition(":")[0] for c in configs[1:]} == {"snapkv", "streamingllm", "fastv"}
    assert {r[1] for r in stored} == {"niah"} and "ctx=64" in stored[0][2]
    for _, _, _, config, metrics in stored[1:]:
        m = json.loads(metrics)
        assert m["kv_ratio"] < 1 and m["timing_context"] == 64, config
    html = out.read_text()
    assert "kept % (solved)" in html and "TTFT speedup" in html
    assert html.count("<tr") == len(configs) + 1
    again = invoke(*args)
    assert again.exit_code == 0, again.output
    assert "0 measured, 4 already stored" in again.output


def test_cli_perplexity_quick(tiny_lm, prose, tmp_path):
    result = invoke(
        "bench", "--model", str(tiny_lm), "--task", "perplexity", "--quick", "--context", "64",
        "--data", str(prose), "--methods", "knorm", "--threads", "1",
        "--db", str(tmp_path / "r.db"), "--out", str(tmp_path / "r.html"),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "perplexity" in (tmp_path / "r.html").read_text()


def test_cli_vision_model_with_niah_fails(tiny_ckpt, tmp_path):
    result = invoke(
        "bench", "--model", str(tiny_ckpt), "--task", "niah", "--db", str(tmp_path / "r.db"),
        "--out", str(tmp_path / "r.html"),
    )  # fmt: skip
    assert result.exit_code == 2
    assert "task 'niah' needs a language model" in result.output
    assert not (tmp_path / "r.db").exists()
