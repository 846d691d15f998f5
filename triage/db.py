"""Database engine and sessions.

Two kinds of session exist because SQLite serialises writers: a *write* session starts its
transaction with ``BEGIN IMMEDIATE`` so that a transaction which reads the audit chain head and
then appends cannot be overtaken by another writer (which would otherwise fail late with
SQLITE_BUSY_SNAPSHOT or fork the chain). Read sessions stay deferred so readers never block.
On PostgreSQL both are ordinary sessions; the audit appender serialises itself with an advisory
lock instead (see :mod:`triage.audit`).

Services never commit: the caller (request boundary, worker loop, CLI command) owns the
transaction via :meth:`Database.write` / :meth:`Database.read`.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

try:  # POSIX: a cross-process write lock for SQLite (see Database._process_lock)
    import fcntl
except ImportError:  # pragma: no cover - Windows falls back to SQLite's busy handler
    fcntl = None  # type: ignore[assignment]

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

from triage.settings import Settings

WAL_SWITCH_SECONDS = 30.0


def use_wal(dbapi_conn: Any, *, deadline_s: float = WAL_SWITCH_SECONDS) -> None:
    """Put the SQLite file of a new DB-API connection in WAL mode (persistent in the file).

    Asks first: a file already in WAL mode is left alone. Switching takes an exclusive lock and
    SQLite answers ``database is locked`` at once, without its busy handler, to a connection that
    tries while another is switching or writing; so the switch is retried for ``deadline_s``.
    (Two threads opening their first connections to a freshly migrated file raced here.)
    In-memory databases have no WAL and keep their mode.
    """
    cur = dbapi_conn.cursor()
    try:
        mode = str(cur.execute("PRAGMA journal_mode").fetchone()[0]).lower()
        if mode in ("wal", "memory"):
            return
        end, pause = time.monotonic() + deadline_s, 0.005
        while True:
            try:
                cur.execute("PRAGMA journal_mode=WAL").fetchall()
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() + pause > end:
                    raise
            time.sleep(pause)
            pause = min(pause * 2, 0.1)
    finally:
        cur.close()


def _sqlite_engine(url: str, *, immediate: bool) -> Engine:
    path = url.removeprefix("sqlite:///")
    if path and path != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(
        url,
        connect_args={"check_same_thread": False, "timeout": 30, "isolation_level": None},
        pool_size=20,
        max_overflow=40,
    )

    @event.listens_for(engine, "connect")
    def _pragmas(dbapi_conn: Any, _record: Any) -> None:
        use_wal(dbapi_conn)
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.close()

    # pysqlite's own transaction handling is disabled (isolation_level=None) so we emit BEGIN
    # ourselves: IMMEDIATE for writers, DEFERRED for readers.
    begin = "BEGIN IMMEDIATE" if immediate else "BEGIN"

    @event.listens_for(engine, "begin")
    def _begin(conn: Any) -> None:
        conn.exec_driver_sql(begin)

    return engine


class Database:
    """Owns the engines and hands out transactional sessions."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.url = settings.resolved_database_url
        self.is_sqlite = self.url.startswith("sqlite")
        if self.is_sqlite:
            self.write_engine = _sqlite_engine(self.url, immediate=True)
            self.read_engine = _sqlite_engine(self.url, immediate=False)
        else:
            self.write_engine = create_engine(
                self.url,
                pool_size=settings.db_pool_size,
                max_overflow=settings.db_max_overflow,
                pool_pre_ping=True,
            )
            self.read_engine = self.write_engine
        self._write = sessionmaker(self.write_engine, expire_on_commit=False)
        self._sqlite_writer = threading.RLock()
        self._depth = threading.local()
        self._lockfile: Any = None
        path = settings.sqlite_file
        if fcntl is not None and path is not None:
            self._lockfile = open(f"{path}.writelock", "a+b")  # noqa: SIM115 - lives with us
        self._read = sessionmaker(self.read_engine, expire_on_commit=False)

    @contextmanager
    def write(self) -> Iterator[Session]:
        """A session whose transaction commits on success and rolls back on any exception.

        On SQLite, writers in this process also queue on a lock: SQLite's own busy handler
        sleeps in growing steps while it waits, which turns write contention into 100 ms+
        tail latencies; a lock hands over the moment the previous writer commits. Writers in
        other processes (CLI, workers) queue on a file lock for the same reason.
        """
        lock = self._sqlite_writer if self.is_sqlite else nullcontext()
        with lock, self._process_lock():
            session = self._write()
            try:
                yield session
                session.commit()
            except BaseException:
                session.rollback()
                raise
            finally:
                session.close()

    @contextmanager
    def _process_lock(self) -> Iterator[None]:
        """SQLite file databases: writers of all processes queue on an ``flock`` beside the
        database, which the kernel hands to the next waiter the moment it is released (SQLite's
        busy handler polls with sleeps of up to 100 ms). Taken once per thread (nesting)."""
        if self._lockfile is None:
            yield
            return
        depth = getattr(self._depth, "n", 0)
        if depth == 0:
            fcntl.flock(self._lockfile.fileno(), fcntl.LOCK_EX)
        self._depth.n = depth + 1
        try:
            yield
        finally:
            self._depth.n = depth
            if depth == 0:
                fcntl.flock(self._lockfile.fileno(), fcntl.LOCK_UN)

    @contextmanager
    def read(self) -> Iterator[Session]:
        """A read-only session; its transaction is always rolled back."""
        session = self._read()
        try:
            yield session
        finally:
            session.rollback()
            session.close()

    def dispose(self) -> None:
        if self._lockfile is not None:
            self._lockfile.close()
            self._lockfile = None
        self.write_engine.dispose()
        if self.read_engine is not self.write_engine:
            self.read_engine.dispose()
