"""Migrations: up to head, all the way down, and up again, on SQLite and PostgreSQL; and the
models match what the migrations build (no schema change without a migration)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine

from tests.support import cli_runner
from triage import migrate
from triage.models import Base


def test_upgrade_downgrade_upgrade(settings):
    cfg = migrate.alembic_config(settings.resolved_database_url)
    migrate.upgrade(settings)
    assert migrate.current(settings) is not None
    command.downgrade(cfg, "base")
    assert migrate.current(settings) is None
    migrate.upgrade(settings)
    head = migrate.current(settings)
    engine = create_engine(settings.resolved_database_url)
    try:
        with engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    finally:
        engine.dispose()
    assert diff == [], f"models differ from migrations at {head}: {diff}"


def test_upgrading_to_0009_fills_the_assignee_from_the_audit_trail(client, keys, db, settings):
    """Cases claimed or resolved before ``cases.assignee`` existed get their holder from the
    actor of their latest claim or resolution; released ones stay unassigned."""
    from tests.support import bearer, sample_case
    from triage.pipeline import Pipeline, run_case

    def move(case_id: str, to: str, who: str, **extra: str) -> None:
        r = client.post(
            f"/v1/cases/{case_id}/transitions", json={"to": to, **extra}, headers=bearer(keys[who])
        )
        assert r.status_code == 200, r.text

    ids = []
    for n in range(3):
        r = client.post("/v1/cases", json=sample_case(n), headers=bearer(keys["orchestrator"]))
        ids.append(r.json()["case_id"])
        run_case(db, ids[-1], Pipeline(), settings, worker_id="w1")
    move(ids[0], "in_review", "agent")
    move(ids[1], "in_review", "agent")
    move(ids[1], "resolved", "admin", resolution="credited")
    move(ids[2], "in_review", "agent")
    move(ids[2], "awaiting_review", "agent")
    db.dispose()  # no pooled connection in the way of the ALTER TABLEs
    command.downgrade(migrate.alembic_config(settings.resolved_database_url), "0008")
    migrate.upgrade(settings)
    engine = create_engine(settings.resolved_database_url)
    try:
        with engine.connect() as conn:
            rows = dict(conn.exec_driver_sql("SELECT id, assignee FROM cases").all())
    finally:
        engine.dispose()
    assert rows == {ids[0]: "test-agent", ids[1]: "test-admin", ids[2]: None}, rows


def test_migrations_import_no_application_modules():
    """Each revision carries explicit table definitions: importing the app (whose models keep
    changing) from a migration would make old revisions build today's schema."""
    import ast
    from pathlib import Path

    versions = Path(migrate.__file__).parent / "migrations" / "versions"
    allowed = {"alembic", "sqlalchemy", "__future__"}
    for path in sorted(versions.glob("0*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            bad = [n for n in names if n.split(".")[0] not in allowed]
            assert not bad, f"{path.name} imports {bad}"


def _upgrade_in_a_process(url: str) -> subprocess.Popen[str]:
    code = (
        "import sys; from triage import migrate; from triage.settings import Settings; "
        "migrate.upgrade(Settings(environment='test', database_url=sys.argv[1]))"
    )
    return subprocess.Popen(
        [sys.executable, "-c", code, url],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
    )


@pytest.mark.integration
def test_processes_upgrading_at_once_take_turns(settings):
    """An API server and a worker (or replicas) that all upgrade on start: each round starts
    from an empty database, two processes migrate it at once, both succeed. Without the
    migration lock the second failed with "table ... already exists" (SQLite) or a duplicate
    type (PostgreSQL) in most rounds."""
    url = settings.resolved_database_url
    cfg = migrate.alembic_config(url)
    for _ in range(3):
        runs = [_upgrade_in_a_process(url) for _ in range(2)]
        outputs = [run.communicate(timeout=120)[0] for run in runs]
        assert [run.returncode for run in runs] == [0, 0], outputs
        assert migrate.current(settings) == ScriptDirectory.from_config(cfg).get_current_head()
        command.downgrade(cfg, "base")


def test_a_migration_waits_for_the_lock_and_gives_up_clearly(settings, monkeypatch):
    url = settings.resolved_database_url
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    with migrate._migration_lock(url, 5):  # another process's migration, as far as the lock
        with pytest.raises(migrate.MigrationBusy, match="still holds the migration lock"):
            migrate.upgrade(settings, wait_s=0.5)
        assert migrate.current(settings) is None  # it touched nothing
        monkeypatch.setattr(migrate, "MIGRATION_LOCK_WAIT_SECONDS", 0.5)
        triage = cli_runner(monkeypatch, settings)
        refused = triage("db", "upgrade")
        assert refused.exit_code == 2, refused.output
        assert "still holds the migration lock" in refused.stderr
        assert "Nothing was changed." in refused.stderr
    migrate.upgrade(settings, wait_s=0.5)  # released: it goes through
    assert migrate.current(settings) is not None
