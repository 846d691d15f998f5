"""Migrations: up to head, all the way down, and up again, on SQLite and PostgreSQL; and the
models match what the migrations build (no schema change without a migration)."""

from __future__ import annotations

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine

import triage.users  # noqa: F401 - registers the console tables on Base.metadata
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
