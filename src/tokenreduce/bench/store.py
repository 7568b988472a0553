"""The results store: one SQLite file (standard library ``sqlite3``, WAL mode).

Tables:

* ``tokenreduce_meta``: ``schema = tokenreduce.bench`` and ``version``; how a file is
  recognised as ours.
* ``runs``: one row per invocation (``run_id``, start and end times, status ``running`` /
  ``finished`` / ``interrupted`` / ``failed``, the command line and options as JSON) with its
  environment: package version, git revision, torch version, threads, CPU model, Python and
  platform.
* ``results``: one row per (run, configuration): the key columns ``task``, ``model``,
  ``data``, ``setting`` and ``config``, the method name and the task's metrics as JSON.
* ``artifacts``: pictures and other blobs a task produced for a configuration (PNG token
  maps), keyed like ``results``.
* the view ``measurements`` joins ``results`` with the environment of their run.

Every result is committed on its own, so a sweep that is interrupted or killed keeps every
finished row, and the file stays readable and resumable. A file that is not a database of
this schema is refused before anything is written to it.
"""

from __future__ import annotations

import json
import sqlite3
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

SCHEMA = "tokenreduce.bench"
VERSION = 1
_SQLITE_HEADER = b"SQLite format 3\x00"
_KEY = ("task", "model", "data", "setting", "config")

_DDL = """
CREATE TABLE tokenreduce_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE runs (
    run_id TEXT PRIMARY KEY,
    started REAL NOT NULL,
    finished REAL,
    status TEXT NOT NULL,
    command TEXT NOT NULL,
    options TEXT NOT NULL,
    package_version TEXT,
    git_revision TEXT,
    torch_version TEXT,
    threads INTEGER,
    cpu TEXT,
    python TEXT,
    platform TEXT
);
CREATE TABLE results (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id TEXT NOT NULL REFERENCES runs(run_id),
    task TEXT NOT NULL,
    model TEXT NOT NULL,
    data TEXT NOT NULL,
    setting TEXT NOT NULL,
    config TEXT NOT NULL,
    method TEXT NOT NULL,
    metrics TEXT NOT NULL,
    created REAL NOT NULL
);
CREATE INDEX results_key ON results(task, model, data, setting, config);
CREATE TABLE artifacts (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id TEXT NOT NULL REFERENCES runs(run_id),
    task TEXT NOT NULL,
    model TEXT NOT NULL,
    data TEXT NOT NULL,
    setting TEXT NOT NULL,
    config TEXT NOT NULL,
    name TEXT NOT NULL,
    mime TEXT NOT NULL,
    content BLOB NOT NULL,
    created REAL NOT NULL
);
CREATE INDEX artifacts_key ON artifacts(task, model, data, setting, config);
CREATE VIEW measurements AS
    SELECT results.*, runs.package_version, runs.git_revision, runs.torch_version,
           runs.threads, runs.cpu, runs.python, runs.platform, runs.status AS run_status
    FROM results JOIN runs USING (run_id);
"""

_ENV_COLUMNS = (
    "package_version",
    "git_revision",
    "torch_version",
    "threads",
    "cpu",
    "python",
    "platform",
)


class StoreError(RuntimeError):
    """The database file cannot be used: unreadable, not SQLite, or not our schema."""


@dataclass(frozen=True)
class Key:
    """What identifies a measurement across runs (resume skips a key already stored).

    ``task``: the task name; ``model``: model name and weight hash; ``data``: data set,
    split, size and content hash; ``setting``: measurement settings that change the numbers
    (batch size, threads) as canonical JSON; ``config``: the canonical method spec.
    """

    task: str
    model: str
    data: str
    setting: str
    config: str

    def group(self) -> tuple[str, str, str, str]:
        """Everything but the configuration: the rows a report compares side by side."""
        return (self.task, self.model, self.data, self.setting)


@dataclass(frozen=True)
class Result:
    """One stored measurement."""

    id: int
    run_id: str
    key: Key
    method: str
    metrics: dict[str, Any]
    created: float
    env: dict[str, Any]


def check_file(path: Path) -> bool:
    """Check ``path`` without writing to it. Returns True when it is a database of this
    schema, False when it is absent or an empty database (safe to initialise), and raises
    :class:`StoreError` otherwise."""
    if not path.exists():
        return False
    if path.is_dir():
        raise StoreError(f"results database {path} is a directory, not a file")
    try:
        with open(path, "rb") as f:
            head = f.read(len(_SQLITE_HEADER))
    except OSError as err:
        raise StoreError(f"results database {path} cannot be read: {err}") from None
    if not head:
        return False  # an empty file is an empty SQLite database
    if head != _SQLITE_HEADER:
        raise StoreError(
            f"{path} is not an SQLite database (unrecognised header); refusing to touch it. "
            "Pass another --db path."
        )
    try:
        con = sqlite3.connect(f"file:{quote(str(path.resolve()))}?mode=ro", uri=True)
        try:
            names = {r[0] for r in con.execute("SELECT name FROM sqlite_master")}
            meta = {}
            if "tokenreduce_meta" in names:
                meta = dict(con.execute("SELECT key, value FROM tokenreduce_meta"))
        finally:
            con.close()
    except sqlite3.Error as err:
        raise StoreError(f"results database {path} cannot be read: {err}") from None
    if not names:
        return False
    if meta.get("schema") != SCHEMA:
        shown = ", ".join(sorted(names)[:6]) + (", ..." if len(names) > 6 else "")
        raise StoreError(
            f"{path} is an SQLite database of another schema (tables: {shown}); refusing to "
            "write to it. Pass another --db path."
        )
    try:
        version = int(meta.get("version", ""))
    except ValueError:
        version = -1
    if version != VERSION:
        raise StoreError(
            f"{path} holds tokenreduce results of schema version {meta.get('version')!r}; "
            f"this tokenreduce reads version {VERSION}. Pass another --db path."
        )
    return True


class Store:
    """An open results database. Use :meth:`open`; close with :meth:`close` or ``with``."""

    def __init__(self, path: Path, con: sqlite3.Connection) -> None:
        self.path = path
        self._con = con

    @classmethod
    def open(cls, path: str | Path, create: bool = True) -> Store:
        """Open (and with ``create``, initialise) the database at ``path``.

        Raises :class:`StoreError`, leaving the file untouched, when it exists but is
        unreadable, not SQLite, or of a foreign schema; also when it is absent and ``create``
        is false.
        """
        path = Path(path)
        ours = check_file(path)
        if not ours and not create:
            raise StoreError(f"no results database at {path}; run `tokenreduce bench` first")
        if not ours:
            path.parent.mkdir(parents=True, exist_ok=True)
        try:
            con = sqlite3.connect(str(path), timeout=30.0, isolation_level=None)
            con.execute("PRAGMA journal_mode=WAL")
            con.execute("PRAGMA synchronous=NORMAL")  # durable across a killed process in WAL
            con.execute("PRAGMA foreign_keys=ON")
            if not ours:
                with _transaction(con):
                    if _has_meta(con):  # another process initialised it meanwhile
                        return cls(path, con)
                    for stmt in _DDL.split(";"):
                        if stmt.strip():
                            con.execute(stmt)
                    con.executemany(
                        "INSERT INTO tokenreduce_meta VALUES (?, ?)",
                        [("schema", SCHEMA), ("version", str(VERSION))],
                    )
        except sqlite3.Error as err:
            raise StoreError(f"results database {path} cannot be opened: {err}") from None
        return cls(path, con)

    def close(self) -> None:
        self._con.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- runs -------------------------------------------------------------------------------
    def start_run(self, command: str, options: Mapping[str, Any], env: Mapping[str, Any]) -> str:
        """Record a new run and return its id."""
        run_id = time.strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:8]
        cols = ["run_id", "started", "status", "command", "options", *_ENV_COLUMNS]
        values = [run_id, time.time(), "running", command, _dumps(options)]
        values += [env.get(c) for c in _ENV_COLUMNS]
        with _transaction(self._con):
            self._con.execute(
                f"INSERT INTO runs ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})",
                values,
            )
        return run_id

    def finish_run(self, run_id: str, status: str) -> None:
        with _transaction(self._con):
            self._con.execute(
                "UPDATE runs SET finished = ?, status = ? WHERE run_id = ?",
                (time.time(), status, run_id),
            )

    def runs(self) -> list[dict[str, Any]]:
        cur = self._con.execute("SELECT * FROM runs ORDER BY started")
        names = [d[0] for d in cur.description]
        return [dict(zip(names, row, strict=True)) for row in cur]

    # -- results ----------------------------------------------------------------------------
    def add_result(
        self,
        run_id: str,
        key: Key,
        method: str,
        metrics: Mapping[str, Any],
        artifacts: Mapping[str, bytes] | None = None,
        mime: str = "image/png",
    ) -> int:
        """Store one measurement, with its pictures, in one transaction committed at once."""
        now = time.time()
        with _transaction(self._con):
            cur = self._con.execute(
                "INSERT INTO results (run_id, task, model, data, setting, config, method, "
                "metrics, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (run_id, *_key_values(key), method, _dumps(metrics), now),
            )
            for name, content in (artifacts or {}).items():
                self._insert_artifact(run_id, key, name, mime, content, now)
        return int(cur.lastrowid)

    def find(self, key: Key) -> Result | None:
        """The latest measurement of ``key``, or None."""
        rows = self._select_results(" AND ".join(f"{c} = ?" for c in _KEY), _key_values(key))
        return rows[-1] if rows else None

    def results(self, latest: bool = True, **where: str) -> list[Result]:
        """Stored measurements, oldest first, filtered by key columns (``task=...``);
        with ``latest`` only the newest row of every key."""
        bad = sorted(set(where) - set(_KEY))
        if bad:
            raise ValueError(f"cannot filter results by {bad}; key columns: {list(_KEY)}")
        clause = " AND ".join(f"{c} = ?" for c in where) or "1"
        rows = self._select_results(clause, tuple(where.values()))
        if not latest:
            return rows
        newest: dict[Key, Result] = {}
        for row in rows:
            newest[row.key] = row
        return sorted(newest.values(), key=lambda r: r.id)

    def _select_results(self, clause: str, params: tuple) -> list[Result]:
        cur = self._con.execute(f"SELECT * FROM measurements WHERE {clause} ORDER BY id", params)
        names = [d[0] for d in cur.description]
        out = []
        for values in cur:
            row = dict(zip(names, values, strict=True))
            out.append(
                Result(
                    id=row["id"],
                    run_id=row["run_id"],
                    key=Key(*(row[c] for c in _KEY)),
                    method=row["method"],
                    metrics=json.loads(row["metrics"]),
                    created=row["created"],
                    env={c: row[c] for c in (*_ENV_COLUMNS, "run_status")},
                )
            )
        return out

    # -- artifacts --------------------------------------------------------------------------
    def add_artifact(
        self, run_id: str, key: Key, name: str, content: bytes, mime: str = "image/png"
    ) -> None:
        """Store one named blob for ``key`` (a picture); the newest of a name wins."""
        with _transaction(self._con):
            self._insert_artifact(run_id, key, name, mime, content, time.time())

    def _insert_artifact(
        self, run_id: str, key: Key, name: str, mime: str, content: bytes, now: float
    ) -> None:
        self._con.execute(
            "INSERT INTO artifacts (run_id, task, model, data, setting, config, name, mime, "
            "content, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (run_id, *_key_values(key), name, mime, content, now),
        )

    def artifacts(self, key: Key) -> dict[str, tuple[str, bytes]]:
        """The newest artifact of each name for ``key``: ``{name: (mime, content)}``."""
        cur = self._con.execute(
            "SELECT name, mime, content FROM artifacts WHERE "
            + " AND ".join(f"{c} = ?" for c in _KEY)
            + " ORDER BY id",
            _key_values(key),
        )
        return {name: (mime, bytes(content)) for name, mime, content in cur}


def _has_meta(con: sqlite3.Connection) -> bool:
    sql = "SELECT count(*) FROM sqlite_master WHERE name = 'tokenreduce_meta'"
    return bool(con.execute(sql).fetchone()[0])


def _key_values(key: Key) -> tuple[str, ...]:
    return tuple(getattr(key, c) for c in _KEY)


def _dumps(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, allow_nan=False, default=str)


@contextmanager
def _transaction(con: sqlite3.Connection) -> Iterator[None]:
    con.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        con.execute("ROLLBACK")
        raise
    con.execute("COMMIT")
