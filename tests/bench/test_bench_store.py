"""The SQLite results store: schema checks that never touch a foreign file, resume keys,
latest-row selection, pictures, WAL mode."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from tokenreduce.bench.store import SCHEMA, Key, Store, StoreError

ENV = {
    "package_version": "0.1.0",
    "git_revision": None,
    "torch_version": "x",
    "threads": 1,
    "cpu": "cpu",
    "python": "3",
    "platform": "p",
}


def key(config: str, model: str = "m@1") -> Key:
    return Key("classification", model, "data[4]#ab", '{"batch_size":2}', config)


def test_new_store_is_wal_and_marked(tmp_path: Path):
    path = tmp_path / "sub" / "r.db"
    with Store.open(path):
        pass
    con = sqlite3.connect(path)
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert dict(con.execute("SELECT key, value FROM tokenreduce_meta"))["schema"] == SCHEMA


def test_results_latest_and_find(tmp_path: Path):
    with Store.open(tmp_path / "r.db") as store:
        run = store.start_run("bench", {"a": 1}, ENV)
        store.add_result(run, key("baseline"), "baseline", {"top1": 50.0})
        store.add_result(run, key("tome:r=1"), "tome", {"top1": 40.0}, {"image-0": b"png"})
        assert store.find(key("evit")) is None
        run2 = store.start_run("bench", {}, ENV)
        store.add_result(run2, key("tome:r=1"), "tome", {"top1": 41.0})
        store.finish_run(run2, "finished")
        latest = store.results()
        assert [r.key.config for r in latest] == ["baseline", "tome:r=1"]
        assert latest[1].metrics["top1"] == 41.0 and latest[1].run_id == run2
        assert len(store.results(latest=False)) == 3
        assert store.find(key("tome:r=1")).env["run_status"] == "finished"
        assert store.artifacts(key("tome:r=1")) == {"image-0": ("image/png", b"png")}
        assert store.results(model="other") == []
        with pytest.raises(ValueError, match="cannot filter"):
            store.results(colour="red")


def test_reopen_keeps_rows(tmp_path: Path):
    path = tmp_path / "r.db"
    with Store.open(path) as store:
        run = store.start_run("bench", {}, ENV)
        store.add_result(run, key("baseline"), "baseline", {"top1": 1.0})
    with Store.open(path, create=False) as store:
        assert store.find(key("baseline")).metrics == {"top1": 1.0}


def _assert_refused(path: Path, match: str, wal: bool = False) -> None:
    before = path.read_bytes()
    siblings = set(path.parent.iterdir())
    with pytest.raises(StoreError, match=match):
        Store.open(path)
    assert path.read_bytes() == before
    if not wal:  # reading a WAL-mode file read-only may add its empty -wal/-shm companions
        assert set(path.parent.iterdir()) == siblings


def test_foreign_schema_is_refused_untouched(tmp_path: Path):
    path = tmp_path / "other.db"
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE customers (id INTEGER, name TEXT)")
    con.execute("INSERT INTO customers VALUES (1, 'x')")
    con.commit()
    con.close()
    _assert_refused(path, "another schema.*customers")


def test_other_schema_version_is_refused(tmp_path: Path):
    path = tmp_path / "r.db"
    with Store.open(path):
        pass
    con = sqlite3.connect(path)
    con.execute("UPDATE tokenreduce_meta SET value = '99' WHERE key = 'version'")
    con.commit()
    con.close()
    _assert_refused(path, "schema version '99'", wal=True)


def test_not_sqlite_is_refused_untouched(tmp_path: Path):
    path = tmp_path / "notes.db"
    path.write_text("these are my notes, not a database\n")
    _assert_refused(path, "not an SQLite database")


def test_corrupt_database_is_refused_untouched(tmp_path: Path):
    path = tmp_path / "broken.db"
    path.write_bytes(b"SQLite format 3\x00" + bytes(range(256)) * 20)
    _assert_refused(path, "cannot be read")


def test_directory_and_missing_file(tmp_path: Path):
    with pytest.raises(StoreError, match="directory"):
        Store.open(tmp_path)
    with pytest.raises(StoreError, match="no results database"):
        Store.open(tmp_path / "absent.db", create=False)
    assert not (tmp_path / "absent.db").exists()


def test_empty_file_is_initialised(tmp_path: Path):
    path = tmp_path / "empty.db"
    path.touch()
    with Store.open(path) as store:
        assert store.results() == []
