"""Trusting the language-model tasks' timings: TTFT and decoding pairs judged for noise each,
timed again while either is noisy, and flagged in tables, footnotes and summaries. No timing
here: synthetic seconds stand in for every prefill-and-decode call."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

transformers = pytest.importorskip("transformers")

from tests.lmutil import byte_tokenizer  # noqa: E402
from tokenreduce import lmtasks  # noqa: E402
from tokenreduce.bench.configs import BASELINE  # noqa: E402
from tokenreduce.bench.metrics import NOISY_SPREAD, TIMING_RETRIES  # noqa: E402
from tokenreduce.bench.report import table_html, table_notes  # noqa: E402
from tokenreduce.bench.store import Key, Result  # noqa: E402
from tokenreduce.bench.tasks import longcontext  # noqa: E402
from tokenreduce.bench.tasks.longcontext import (  # noqa: E402
    LongContextTask,
    NeedleInAHaystack,
    noise_metrics,
    noisiest_pair,
    timing_metrics,
)

FASTV = "fastv:ratio=0.5"
#: reduced runs twice as fast as the unreduced (0.2 s, 0.4 s), steady in both quantities
STEADY = [(0.1, 0.2, 0.1, 0.2)] * 4
#: TTFT ratios 2, 1, 2, 1 (noisy); decoding steady at 2
NOISY_TTFT = [(0.1, 0.2, 0.1, 0.2), (0.2, 0.2, 0.2, 0.2)] * 2
#: decoding ratios 2, 1, 2, 1 (noisy); TTFT steady at 2
NOISY_DECODE = [(0.1, 0.2, 0.1, 0.2), (0.1, 0.4, 0.1, 0.4)] * 2
UNREDUCED = [(0.2, 0.4, 0.2, 0.4)] * 4


# -- the rule, per timed quantity -------------------------------------------------------------
def test_each_timed_quantity_is_judged_on_its_own():
    ttft = noise_metrics(UNREDUCED, NOISY_TTFT, attempts=3)
    assert ttft["ttft_noisy"] and not ttft["decode_noisy"]
    assert ttft["ttft_spread"] > NOISY_SPREAD and ttft["decode_spread"] == 0.0
    decode = noise_metrics(UNREDUCED, NOISY_DECODE, attempts=1)
    assert decode["decode_noisy"] and not decode["ttft_noisy"]
    # the row-wide flag and spread the footnotes read: either quantity, the larger spread
    assert ttft["timing_noisy"] and decode["timing_noisy"]
    assert ttft["speedup_spread"] == ttft["ttft_spread"]
    assert decode["speedup_spread"] == decode["decode_spread"]
    assert ttft["timing_attempts"] == 3
    quiet = noise_metrics(UNREDUCED, STEADY, attempts=1)
    assert not quiet["timing_noisy"] and quiet["speedup_spread"] == 0.0


def test_the_noisiest_quantity_decides_whether_to_time_again():
    assert noisiest_pair((UNREDUCED, NOISY_TTFT)) == ([0.2] * 4, [0.1, 0.2, 0.1, 0.2])
    assert noisiest_pair((UNREDUCED, NOISY_DECODE)) == ([0.4] * 4, [0.2, 0.4, 0.2, 0.4])


def test_timing_metrics_keep_the_speed_figures_and_add_the_noise():
    values = timing_metrics(UNREDUCED, STEADY, decode_tokens=4, attempts=2)
    assert values["ttft_speedup"] == 2.0 and values["decode_speedup"] == 2.0
    assert values["ttft_s"] == 0.1 and values["decode_tok_s"] == 4 / 0.2
    assert values["baseline_decode_tok_s"] == 4 / 0.4
    assert values["ttft_noisy"] is False and values["timing_attempts"] == 2
    with pytest.raises(ValueError, match="same length"):
        timing_metrics(UNREDUCED, STEADY[:3], decode_tokens=4, attempts=1)


# -- timed again inside the task --------------------------------------------------------------
@pytest.fixture(scope="module")
def task() -> LongContextTask:
    """A niah task on one short sample, 4 timed repeats, no warm-up."""
    tok = byte_tokenizer()
    sentences = [f"The {w} river ran past the {w} hills at dawn." for w in ("old", "quiet", "far")]
    sample = lmtasks.make_sample("niah", tok, 64, 0.5, 0, sentences)
    return NeedleInAHaystack(tok, {64: [sample]}, repeats=4, warmup=0, decode_tokens=4)


def fake_runs(monkeypatch, reduced_runs: list) -> tuple[object, object]:
    """Stand-ins for the unreduced and the reduced model: every prefill-and-decode call of
    the first returns :data:`UNREDUCED`'s seconds, of the second the next of
    ``reduced_runs``."""
    model, reduced = object(), object()
    queue: Iterator = iter(reduced_runs)

    def prefill_and_decode(m, ids, steps):
        return UNREDUCED[0] if m is model else next(queue)

    monkeypatch.setattr(longcontext, "prefill_and_decode", prefill_and_decode)
    return model, reduced


def test_a_noisy_timing_is_taken_again_until_steady(task, monkeypatch):
    model, reduced = fake_runs(monkeypatch, NOISY_DECODE + STEADY)
    values = task._time(model, reduced, is_baseline=False)
    assert values["timing_attempts"] == 2
    assert not values["timing_noisy"] and values["decode_speedup"] == 2.0


def test_a_timing_that_stays_noisy_keeps_the_least_noisy_and_is_flagged(task, monkeypatch):
    slightly = [(0.1, 0.2, 0.1, 0.2), (0.1, 0.3, 0.1, 0.3)] * 2  # decoding ratios 2, 4/3
    model, reduced = fake_runs(monkeypatch, NOISY_DECODE + slightly + NOISY_TTFT)
    values = task._time(model, reduced, is_baseline=False)
    assert values["timing_attempts"] == 1 + TIMING_RETRIES
    assert values["decode_noisy"] and values["timing_noisy"] and not values["ttft_noisy"]
    assert values["decode_spread"] == noise_metrics(UNREDUCED, slightly, 1)["decode_spread"]


def test_the_baseline_paired_with_itself_is_never_noisy(task, monkeypatch):
    model, _ = fake_runs(monkeypatch, [])
    values = task._time(model, None, is_baseline=True)
    assert values["timing_attempts"] == 1 and not values["timing_noisy"]
    assert values["ttft_speedup"] == 1.0


# -- shown flagged ----------------------------------------------------------------------------
def noisy_ttft_row() -> dict:
    return {
        "method_kind": "prefill",
        "ratio": 0.5,
        "timing_context": 2048,
        **timing_metrics(UNREDUCED, NOISY_TTFT, decode_tokens=4, attempts=3),
    }


def test_columns_flag_only_the_noisy_quantity():
    cells = {c.key: c.cell(noisy_ttft_row()) for c in LongContextTask.columns}
    assert cells["ttft_speedup"].endswith("?") and cells["ttft_s"].endswith("?")
    assert not cells["decode_speedup"].endswith("?")
    assert not cells["decode_tok_s"].endswith("?")
    assert not cells["ttft_cpu_speedup"].endswith("?")  # CPU time: its own, steadier figure


def test_report_table_and_footnote_flag_the_noisy_row():
    metrics = noisy_ttft_row()
    html = table_html("niah", [Result(1, "r", Key("niah", "m", "d", "s", FASTV), "fastv",
                                      metrics, 0.0, {})])  # fmt: skip
    assert f"{metrics['ttft_speedup']:.2f}?" in html
    assert f"{metrics['decode_speedup']:.2f}?" not in html
    notes = table_notes([(FASTV, metrics)])
    assert len(notes) == 1 and f"{metrics['speedup_spread']:.0%}" in notes[0]
    assert "3 timing(s)" in notes[0]


def test_summary_flags_a_noisy_ttft_verdict():
    rows = [(BASELINE, {"solved": 1}), (FASTV, noisy_ttft_row())]
    (line,) = [s for s in LongContextTask.summary(rows) if "first token" in s]
    assert "x? time to first token" in line and "too noisy" in line
    quiet = {**noisy_ttft_row(), **timing_metrics(UNREDUCED, STEADY, 4, 1)}
    (line,) = [s for s in LongContextTask.summary([(FASTV, quiet)]) if "first token" in s]
    assert "2.00x time to first token" in line and "noisy" not in line
