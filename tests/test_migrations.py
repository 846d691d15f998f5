"""Migrations: up to head, all the way down, and up again, on SQLite and PostgreSQL; and the
models match what the migrations build (no schema change without a migration)."""

from __future__ import annotations

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine

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
