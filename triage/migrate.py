"""Run Alembic migrations programmatically (``triage db upgrade`` and the test fixtures)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config

from triage.settings import Settings

try:  # POSIX: SQLite migrations queue on a file lock (see _migration_lock)
    import fcntl
except ImportError:  # pragma: no cover - Windows: no cross-process lock for SQLite
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger("triage.migrate")

MIGRATIONS = Path(__file__).parent / "migrations"
# Session advisory lock key serialising migrations on PostgreSQL ("triagemg" as 8 bytes).
MIGRATION_LOCK = int.from_bytes(b"triagemg", "big") & 0x7FFFFFFFFFFFFFFF
# How long a migration waits for another process's before giving up (a stuck deploy step
# should fail the start visibly, not hang it).
MIGRATION_LOCK_WAIT_SECONDS = 600.0
_POLL_SECONDS = 0.2


class MigrationBusy(RuntimeError):
    """Another process held the migration lock for longer than the caller would wait."""


def alembic_config(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def upgrade(settings: Settings, revision: str = "head", *, wait_s: float | None = None) -> None:
    """Bring the database schema up to ``revision`` (idempotent).

    Safe to run from several processes at once (an API server and a worker started together,
    replicas that all upgrade on start): they take turns on a lock (a PostgreSQL advisory
    lock, or a file lock beside a SQLite file), and whoever comes second finds the work done.
    Without it the second failed half-way with "table already exists" or a duplicate type.
    Raises :class:`MigrationBusy` after waiting ``wait_s`` seconds (default
    ``MIGRATION_LOCK_WAIT_SECONDS``) for another migration.
    """
    url = settings.resolved_database_url
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    with _migration_lock(url, MIGRATION_LOCK_WAIT_SECONDS if wait_s is None else wait_s):
        command.upgrade(alembic_config(url), revision)
        if settings.job_engine == "procrastinate":
            # The job engine keeps its own schema (procrastinate's tables and functions),
            # applied here so one deploy step migrates everything; idempotent.
            from triage import jobs

            jobs.ensure_schema(settings)


def _busy(wait_s: float) -> MigrationBusy:
    return MigrationBusy(
        f"another process has been migrating this database for {wait_s:.0f} s and still holds "
        "the migration lock; let it finish (or stop it) and start again"
    )


@contextmanager
def _migration_lock(url: str, wait_s: float) -> Iterator[None]:
    """Hold the database's migration lock (polling, so a wait is logged and bounded)."""
    if url.startswith("postgresql"):
        with _advisory_lock(url, wait_s):
            yield
        return
    path = url.removeprefix("sqlite:///") if url.startswith("sqlite:///") else ""
    if fcntl is None or not path or path == ":memory:":
        yield
        return
    with open(f"{path}.migratelock", "a+b") as handle:

        def take() -> bool:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False
            return True

        _wait_for(take, wait_s)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _wait_for(take: Callable[[], bool], wait_s: float) -> None:
    """Call ``take`` until it gets the lock; log once that we wait; MigrationBusy at the end."""
    end, told = time.monotonic() + wait_s, False
    while not take():
        if time.monotonic() > end:
            raise _busy(wait_s)
        if not told:
            log.info("another process is migrating the database; waiting for it")
            told = True
        time.sleep(_POLL_SECONDS)


@contextmanager
def _advisory_lock(url: str, wait_s: float) -> Iterator[None]:
    # A session-level lock on a connection of its own, in autocommit: Alembic runs on its own
    # connection and transaction; the server drops the lock if this process dies.
    from sqlalchemy import create_engine, text
    from sqlalchemy.exc import DBAPIError
    from sqlalchemy.pool import NullPool

    engine = create_engine(url, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    try:
        with engine.connect() as conn:
            query = text("SELECT pg_try_advisory_lock(:k)")
            _wait_for(lambda: bool(conn.scalar(query, {"k": MIGRATION_LOCK})), wait_s)
            try:
                yield
            finally:
                try:
                    conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": MIGRATION_LOCK})
                except DBAPIError:  # the connection is gone, and the server dropped the lock
                    log.warning("could not release the migration lock", exc_info=True)
    finally:
        engine.dispose()


def current(settings: Settings) -> str | None:
    from alembic.runtime.migration import MigrationContext
    from sqlalchemy import create_engine

    engine = create_engine(settings.resolved_database_url)
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    finally:
        engine.dispose()


def known_revision(revision: str) -> bool:
    """Whether this version of the product's migrations knows ``revision`` (a schema it can
    run on, or upgrade from)."""
    from alembic.script import ScriptDirectory
    from alembic.util import CommandError

    script = ScriptDirectory.from_config(alembic_config("sqlite://"))
    try:
        return script.get_revision(revision) is not None
    except CommandError:
        return False
