"""SQLite's journal mode: files are WAL from their migration on, and a connection that has to
switch a file waits for the lock instead of failing (SQLite refuses the switch at once, busy
handler or not, while another connection writes)."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest

from triage import migrate
from triage.db import Database, use_wal
from triage.settings import Settings


def _mode(path: Path) -> str:
    conn = sqlite3.connect(path)
    try:
        return str(conn.execute("PRAGMA journal_mode").fetchone()[0])
    finally:
        conn.close()


def _file_with_a_writer(path: Path) -> sqlite3.Connection:
    """A file in rollback-journal mode and a connection holding its write lock."""
    writer = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    writer.execute("CREATE TABLE t (x INTEGER)")
    writer.execute("BEGIN IMMEDIATE")
    writer.execute("INSERT INTO t VALUES (1)")
    assert _mode(path) == "delete"
    return writer


def test_a_migrated_sqlite_file_is_in_wal_mode_before_the_product_connects(tmp_path):
    settings = Settings(environment="test", data_dir=tmp_path, database_url=None)
    migrate.upgrade(settings)
    path = Path(settings.resolved_database_url.removeprefix("sqlite:///"))
    assert _mode(path) == "wal"
    db = Database(settings)
    try:
        with db.read() as s:
            assert s.connection().exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    finally:
        db.dispose()


def test_switching_to_wal_waits_for_the_writer_to_commit(tmp_path):
    path = tmp_path / "x.db"
    writer = _file_with_a_writer(path)
    conn = sqlite3.connect(path, timeout=5, isolation_level=None)
    with pytest.raises(sqlite3.OperationalError, match="locked"):
        conn.execute("PRAGMA journal_mode=WAL")  # what SQLite does without the retry

    threading.Timer(0.3, lambda: writer.execute("COMMIT")).start()
    use_wal(conn)
    assert _mode(path) == "wal"
    assert conn.execute("SELECT count(*) FROM t").fetchone() == (1,)  # the commit landed first
    conn.close()
    writer.close()


def test_switching_to_wal_gives_up_at_its_deadline(tmp_path):
    path = tmp_path / "x.db"
    writer = _file_with_a_writer(path)
    conn = sqlite3.connect(path, isolation_level=None)
    with pytest.raises(sqlite3.OperationalError, match="locked"):
        use_wal(conn, deadline_s=0.2)
    writer.execute("ROLLBACK")
    use_wal(conn)  # once the lock is free
    assert _mode(path) == "wal"
    conn.close()
    writer.close()


def test_an_empty_environment_variable_means_not_set(monkeypatch, tmp_path):
    """``TRIAGE_CHROMA_PATH=`` once meant Path(""): the vector store in the working directory."""
    monkeypatch.setenv("TRIAGE_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("TRIAGE_CHROMA_PATH", "")
    monkeypatch.setenv("TRIAGE_LLM_MODEL", "")
    settings = Settings()
    assert settings.chroma_path is None and not settings.llm_configured
    from triage.stages import retrieval_config

    assert retrieval_config(settings).chroma.path == tmp_path / "chroma"
