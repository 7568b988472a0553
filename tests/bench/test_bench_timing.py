"""Trusting timings: noisy paired ratios detected, timed again, flagged in tables and reports;
throughput on one scale; plain progress lines without a terminal. No timing here: synthetic
seconds, a fake clock and direct listener calls."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from rich.console import Console

from tokenreduce.bench.configs import BASELINE, label
from tokenreduce.bench.measure import THROUGHPUT_HEADER, cost_metrics, until_steady
from tokenreduce.bench.metrics import NOISY_SPREAD, TIMING_RETRIES, timing_noise
from tokenreduce.bench.progress import PlainListener, RichListener, listener_for
from tokenreduce.bench.report import groups, one_scale, render, table_notes
from tokenreduce.bench.store import Key, Result, Store
from tokenreduce.bench.tasks.classification import ImageClassification
from tokenreduce.cli import _print_group

TOME = "tome:r=8,inflect=0.0,prop_attn=True,schedule=None"
EVIT = "evit:keep_ratio=0.7,layers=(3,6,9),fuse=True"
QUIET = ([0.100, 0.102, 0.101, 0.099], [0.050, 0.051, 0.050, 0.050])  # ratios ~2.0
NOISY = ([0.1, 0.1, 0.1, 0.1], [0.1, 0.05, 0.1, 0.05])  # ratios 1, 2, 1, 2


# -- the rule --------------------------------------------------------------------------------
def test_spread_is_the_relative_interquartile_range_of_the_paired_ratios():
    # ratios 1.0, 1.5, 2.0, 2.5, 3.0: Q1 1.5, Q3 2.5, median 2.0 -> 0.5
    t_base = [1.0, 1.5, 2.0, 2.5, 3.0]
    spread, noisy = timing_noise(t_base, [1.0] * 5)
    assert spread == pytest.approx(0.5) and noisy
    quiet_spread, quiet_noisy = timing_noise(*QUIET)
    assert 0.0 < quiet_spread < 0.05 and not quiet_noisy
    assert timing_noise(*NOISY)[1]
    assert timing_noise([0.1], [0.2]) == (0.0, False)  # one pair has no spread


def test_one_slow_call_does_not_make_a_timing_noisy():
    # nine steady pairs at 2.0x and one call slowed by another process
    t_base = [0.2] * 10
    t_red = [0.1] * 9 + [0.4]
    spread, noisy = timing_noise(t_base, t_red)
    assert spread == 0.0 and not noisy


def test_the_threshold_decides():
    def ratios(half_iqr: float) -> list[float]:  # quartiles 1 -/+ half_iqr, median 1
        return [0.5, 1.0 - half_iqr, 1.0, 1.0 + half_iqr, 1.5]

    below = timing_noise(ratios(NOISY_SPREAD / 2 - 0.01), [1.0] * 5)
    above = timing_noise(ratios(NOISY_SPREAD / 2 + 0.01), [1.0] * 5)
    assert below == (pytest.approx(NOISY_SPREAD - 0.02), False)
    assert above == (pytest.approx(NOISY_SPREAD + 0.02), True)


def test_bad_timings_are_refused():
    with pytest.raises(ValueError, match="same length"):
        timing_noise([0.1, 0.2], [0.1])
    with pytest.raises(ValueError, match="positive"):
        timing_noise([0.1, 0.0], [0.1, 0.1])


# -- timed again while noisy -----------------------------------------------------------------
def _timings(*sequence):
    calls = iter(sequence)
    return lambda: next(calls)


def test_a_quiet_timing_is_taken_once():
    timing, attempts = until_steady(_timings(QUIET, NOISY), lambda t: t)
    assert timing is QUIET and attempts == 1


def test_a_noisy_timing_is_taken_again_until_quiet():
    timing, attempts = until_steady(_timings(NOISY, QUIET, NOISY), lambda t: t, retries=2)
    assert timing is QUIET and attempts == 2


def test_a_timing_that_stays_noisy_keeps_the_least_noisy_and_stops():
    worse = ([0.1] * 4, [0.1, 0.02, 0.1, 0.02])  # ratios 1, 5, 1, 5
    timing, attempts = until_steady(_timings(worse, NOISY, worse, QUIET), lambda t: t)
    assert attempts == TIMING_RETRIES + 1 == 3  # the quiet fourth is never asked for
    assert timing is NOISY


def test_cost_metrics_record_the_spread_and_the_flag():
    common = dict(gflops=0.5, base_gflops=1.0, mean_tokens=10.0, batch=4, peak=1.0)
    base = cost_metrics(**common, t_base=[0.1, 0.1], t_red=[0.1, 0.1], baseline=None)
    assert base["timing_noisy"] is False and base["speedup_spread"] == 0.0
    noisy = cost_metrics(**common, t_base=NOISY[0], t_red=NOISY[1], baseline=base, attempts=3)
    assert noisy["timing_noisy"] is True and noisy["timing_attempts"] == 3
    assert noisy["speedup_spread"] == pytest.approx(timing_noise(*NOISY)[0])


# -- shown flagged, on one scale -------------------------------------------------------------
def _metrics(speedup: float, throughput: float, scaled: float, noisy: bool = False) -> dict:
    return {
        "top1": 80.0,
        "top1_delta": 0.0,
        "gflops": 1.0 / speedup,
        "flop_ratio": speedup,
        "throughput": throughput,
        "throughput_scaled": scaled,
        "speedup": speedup,
        "speedup_per_flop": 1.0,
        "speedup_spread": 0.45 if noisy else 0.02,
        "timing_noisy": noisy,
        "timing_attempts": 3 if noisy else 1,
    }


def _fill(db: Path) -> tuple[str, str, str, str]:
    """A baseline (100 img/s), a quiet ToMe row scaled to an earlier baseline (80 img/s),
    and a noisy EViT row."""
    setting = '{"batch_size":2}'
    with Store.open(db) as store:
        run = store.start_run("bench", {}, {"threads": 1})
        for config, method, m in [
            (BASELINE, BASELINE, _metrics(1.0, 100.0, 100.0)),
            (TOME, "tome", _metrics(1.5, 140.0, 120.0)),
            (EVIT, "evit", _metrics(0.9, 85.0, 90.0, noisy=True)),
        ]:
            key = Key("classification", "m@abc", "d", setting, config)
            store.add_result(run, key, method, m, {})
        store.finish_run(run, "finished")
    return ("classification", "m@abc", "d", setting)


def test_cli_table_flags_noisy_figures_and_names_the_scale(tmp_path, capsys):
    db = tmp_path / "r.db"
    group = _fill(db)
    with Store.open(db) as store:
        _print_group(store, group, [BASELINE, TOME, EVIT])
    out = capsys.readouterr().out
    assert THROUGHPUT_HEADER in out
    cells = {line.strip("│ ").partition(" ")[0]: line for line in out.splitlines()}
    evit, tome = cells[label(EVIT)], cells[label(TOME)]
    assert "0.90?" in evit and "90?" in evit  # speedup and img/s flagged
    assert "?" not in tome and "150" in tome  # 1.5 x the shown baseline's 100, not 120
    assert "throughput (baseline × speedup): the baseline's 100 samples/s × each row's paired speedup" in out
    assert f"? {label(EVIT)}: timing too noisy to trust" in out
    assert "spread 45% (limit 20%) after 3 timing(s)" in out


def test_report_flags_noisy_figures(tmp_path):
    db = tmp_path / "r.db"
    _fill(db)
    with Store.open(db) as store:
        html = render(store)
    assert "<td>0.90?</td>" in html and "<td>1.50</td>" in html
    assert "timing too noisy to trust" in html and "the baseline&#x27;s 100 samples/s" in html


def test_one_scale_uses_the_shown_baseline(tmp_path):
    db = tmp_path / "r.db"
    group = _fill(db)
    with Store.open(db) as store:
        rows = groups(store)[group]
    scaled = {r.key.config: r.metrics["throughput_scaled"] for r in rows}
    assert scaled == {BASELINE: 100.0, TOME: pytest.approx(150.0), EVIT: pytest.approx(90.0)}
    lone = Result(1, "r", Key("t", "m", "d", "s", TOME), "tome", {"speedup": 2.0}, 0.0, {})
    assert one_scale([lone]) == [lone]  # nothing to scale to without a baseline


def test_notes_only_where_they_apply():
    assert table_notes([(BASELINE, {"accuracy": 1.0})]) == []  # no throughput column
    assert table_notes([(TOME, _metrics(1.5, 1.0, 1.0))]) == []  # no baseline, quiet


def test_classification_columns_flag_the_speed_figures():
    flagged = {c.key for c in ImageClassification.columns if c.flag == "timing_noisy"}
    assert flagged == {"throughput_scaled", "speedup", "speedup_per_flop"}
    top1 = next(c for c in ImageClassification.columns if c.key == "top1")
    assert top1.cell({"top1": 80.0, "timing_noisy": True}) == "80.00"


# -- progress without a terminal -------------------------------------------------------------
class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _result(config: str, metrics: dict) -> Result:
    return Result(1, "r", Key("t", "m", "d", "s", config), "tome", metrics, 0.0, {})


def test_plain_listener_prints_starts_ends_and_periodic_progress():
    stream, clock = io.StringIO(), FakeClock()
    listener = PlainListener(stream, period=30.0, clock=clock)
    listener.sweep_start([TOME, EVIT], [BASELINE])
    listener.config_start(TOME, 100)
    for done in range(1, 101):
        clock.now += 1.0  # 100 steps of one second: lines at 30, 60 and 90 s
        listener.config_step(done, 100)
    listener.config_done(TOME, _result(TOME, {"speedup": 1.5, "timing_noisy": False}))
    listener.config_start(EVIT, 4)
    listener.config_step(1, 4)  # no time has passed: no line
    clock.now += 75.0
    listener.config_done(EVIT, _result(EVIT, {"speedup": 0.9, "timing_noisy": True}))
    lines = stream.getvalue().splitlines()
    assert lines == [
        "sweep: 2 configuration(s) to measure, 1 already stored",
        f"[2/3] {label(TOME)}: started (100 steps)",
        f"[2/3] {label(TOME)}: 30/100 steps (30%), 0:30 elapsed",
        f"[2/3] {label(TOME)}: 60/100 steps (60%), 1:00 elapsed",
        f"[2/3] {label(TOME)}: 90/100 steps (90%), 1:30 elapsed",
        f"[2/3] {label(TOME)}: done in 1:40, speedup 1.50x",
        f"[3/3] {label(EVIT)}: started (4 steps)",
        f"[3/3] {label(EVIT)}: done in 1:15, speedup 0.90x? (noisy timing)",
    ]


def test_plain_lines_without_a_terminal_bars_on_one():
    piped = Console(file=io.StringIO(), force_terminal=False)
    assert isinstance(listener_for(3, piped), PlainListener)
    tty = Console(file=io.StringIO(), force_terminal=True)
    assert isinstance(listener_for(3, tty), RichListener)


def test_summaries_flag_a_noisy_fastest_row():
    rows = [(BASELINE, _metrics(1.0, 100.0, 100.0)), (EVIT, _metrics(1.9, 190.0, 190.0, True))]
    (line,) = ImageClassification.summary(rows)
    assert "1.90x? throughput" in line
    rows[1] = (EVIT, _metrics(1.9, 190.0, 190.0, False))
    assert "1.90x throughput" in ImageClassification.summary(rows)[0]


def test_the_scale_note_prints_rates_readably():
    fast = table_notes([(BASELINE, _metrics(1.0, 6199.4, 6199.4))])
    slow = table_notes([(BASELINE, _metrics(1.0, 2.345, 2.345))])
    assert "baseline's 6199 samples/s" in fast[0] and "baseline's 2.35 samples/s" in slow[0]


def test_plain_listener_reports_the_time_measured_elsewhere():
    # a Ray worker's configuration arrives whole: its start and end events come together,
    # so the time printed is the worker's, not the (zero) time between the two events
    stream, clock = io.StringIO(), FakeClock()
    listener = PlainListener(stream, clock=clock)
    listener.sweep_start([TOME], [])
    listener.config_start(TOME, 4)
    listener.config_done(TOME, _result(TOME, {"speedup": 1.5, "timing_noisy": False}), 125.0)
    assert stream.getvalue().splitlines()[-1] == f"[1/1] {label(TOME)}: done in 2:05, speedup 1.50x"
