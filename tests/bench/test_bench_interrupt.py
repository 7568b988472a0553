"""A sweep killed (SIGKILL) or interrupted (Ctrl-C) mid-run keeps every finished row, leaves
a readable database, and the same command resumes it to completion."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from benchutil import fast_args
from typer.testing import CliRunner

from tokenreduce import methods
from tokenreduce.cli import app

BUDGETS = " ".join(f"tome:r={r}" for r in range(1, 7))
CONFIGS = {"baseline", *(methods.describe(methods.build(f"tome:r={r}")) for r in range(1, 7))}


def _args(ckpt: Path, data: Path, db: Path) -> list[str]:
    args = fast_args(ckpt, data, db, db.with_suffix(".html"))
    # many slow-enough configurations, so that the signal lands mid-sweep
    return [*args, "--repeats", "40", "--no-pictures", "--budgets", BUDGETS]


def _count(db: Path) -> int:
    if not db.exists():
        return 0
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        try:
            return con.execute("SELECT count(*) FROM results").fetchone()[0]
        finally:
            con.close()
    except sqlite3.Error:  # not initialised yet
        return 0


def _run_until_rows(args: list[str], db: Path, rows: int, sig: int) -> tuple[int, int, str]:
    """Start the sweep in a subprocess, send ``sig`` once ``rows`` results are committed;
    return (exit code, rows seen before the signal, output)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "tokenreduce.cli", "bench", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        # a test run started in the background inherits an ignored SIGINT; the sweep must
        # see Ctrl-C as a user's terminal delivers it
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.monotonic() + 300
    seen = 0
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            seen = _count(db)
            if seen >= rows:
                proc.send_signal(sig)
                break
            time.sleep(0.02)
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    return proc.returncode, seen, out


def _rows(db: Path) -> list[tuple]:
    con = sqlite3.connect(db)
    try:
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        return con.execute("SELECT id, run_id, config, metrics FROM results ORDER BY id").fetchall()
    finally:
        con.close()


def _status(db: Path) -> list[str]:
    con = sqlite3.connect(db)
    try:
        return [s for (s,) in con.execute("SELECT status FROM runs ORDER BY started")]
    finally:
        con.close()


def _resume_and_check(args: list[str], db: Path, kept: list[tuple]) -> None:
    result = CliRunner().invoke(app, ["bench", *args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert f"{len(CONFIGS) - len(kept)} measured, {len(kept)} already stored" in result.output
    final = _rows(db)
    assert final[: len(kept)] == kept  # the finished rows were neither lost nor re-measured
    configs = [c for _, _, c, _ in final]
    assert sorted(configs) == sorted(CONFIGS)  # every configuration exactly once
    assert _status(db)[-1] == "finished"


def test_killed_sweep_keeps_rows_and_resumes(tmp_path, tiny_ckpt, idx_dir):
    db = tmp_path / "r.db"
    args = _args(tiny_ckpt, idx_dir, db)
    code, seen, out = _run_until_rows(args, db, 2, signal.SIGKILL)
    assert code == -signal.SIGKILL, out
    kept = _rows(db)
    assert seen >= 2 and len(kept) >= seen
    assert len(kept) < len(CONFIGS), "the sweep finished before the kill; make it slower"
    assert _status(db) == ["running"]  # killed: never marked finished
    _resume_and_check(args, db, kept)


def test_interrupted_sweep_keeps_rows_and_resumes(tmp_path, tiny_ckpt, idx_dir):
    db = tmp_path / "r.db"
    args = _args(tiny_ckpt, idx_dir, db)
    code, seen, out = _run_until_rows(args, db, 1, signal.SIGINT)
    assert code == 130, out
    assert "run the same command again to resume" in out
    kept = _rows(db)
    assert 1 <= seen <= len(kept) < len(CONFIGS)
    assert _status(db) == ["interrupted"]
    _resume_and_check(args, db, kept)
