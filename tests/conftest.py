"""Shared fixtures: a real database per test (SQLite file and PostgreSQL schema), built by the
migrations, plus an app, a client and one API key per role.

PostgreSQL: ``TRIAGE_TEST_POSTGRES_URL`` (set by scripts/test.sh) must answer; without it the
default local URL is tried and the PostgreSQL variants are skipped if nothing answers there.
Each PostgreSQL test gets its own schema (dropped afterwards), so tests never see each other.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import fresh_pg_schema
from triage import audit, auth, migrate
from triage.auth import Role
from triage.db import Database
from triage.settings import Settings

PG_DEFAULT = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
PG_URL = os.environ.get("TRIAGE_TEST_POSTGRES_URL")


def _pg_reachable() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 5432), timeout=0.5):
            return True
    except OSError:
        return False


def _pg_url() -> str | None:
    if PG_URL:
        return PG_URL  # required: a failure to connect must fail the run, not skip it
    return PG_DEFAULT if _pg_reachable() else None


@pytest.fixture(autouse=True)
def _no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Block real network calls: only loopback connections are allowed in tests."""
    real_connect = socket.socket.connect

    def guarded(self: socket.socket, address: Any) -> Any:
        host = address[0] if isinstance(address, tuple) else address
        if (
            isinstance(host, str)
            and host not in ("127.0.0.1", "localhost", "::1")
            and not host.startswith("/")
        ):
            raise RuntimeError(f"network access blocked in tests: {address!r}")
        return real_connect(self, address)

    monkeypatch.setattr(socket.socket, "connect", guarded)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'triage.db'}"
        return
    base = _pg_url()
    if base is None:
        pytest.skip("PostgreSQL not reachable on 127.0.0.1:5432 and TRIAGE_TEST_POSTGRES_URL unset")
    with fresh_pg_schema(base, "t") as url:
        yield url


@pytest.fixture
def settings(db_url: str, tmp_path: Path) -> Settings:
    return Settings(
        environment="test",
        data_dir=tmp_path,
        database_url=db_url,
        worker_enabled=False,
        webhook_backoff_base_seconds=0.0,
        webhook_max_attempts=3,
    )


@pytest.fixture
def db(settings: Settings) -> Iterator[Database]:
    migrate.upgrade(settings)
    database = Database(settings)
    yield database
    database.dispose()


ADMIN_ACTOR = audit.Actor(audit.ActorType.human, "test-admin", "admin")


@pytest.fixture
def keys(db: Database) -> dict[str, str]:
    out = {}
    with db.write() as s:
        for role in Role:
            out[role.value] = auth.create_key(
                s, f"test-{role.value}", role.value, created_by=ADMIN_ACTOR
            ).key
    return out


@pytest.fixture
def app(settings: Settings, db: Database) -> Any:
    from api.app import create_app

    return create_app(settings, db=db, start_worker=False)


@pytest.fixture
def client(app: Any) -> Iterator[Any]:
    from fastapi.testclient import TestClient

    with TestClient(app) as c:
        yield c


@pytest.fixture(scope="session")
def trained_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A registry with the default demo model, trained once per run (small: 700 cases)."""
    from triage import classification

    root = tmp_path_factory.mktemp("models-src")
    classification.train_default_model(Settings(data_dir=root), n_train=700, n_eval=200)
    return root / "models"


@pytest.fixture
def with_model(settings: Settings, trained_models: Path) -> str:
    """A copy of ``trained_models`` as this test's registry; the active version's id."""
    import shutil

    from triage import classification

    shutil.copytree(trained_models, settings.data_dir / "models")
    version = classification.registry(settings).active_version()
    assert version is not None
    return version
