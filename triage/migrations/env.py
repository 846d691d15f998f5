"""Alembic environment: the URL comes from the caller's config, else from TRIAGE_ settings."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine, event

from triage.db import use_wal
from triage.models import Base
from triage.settings import get_settings

config = context.config
url = config.get_main_option("sqlalchemy.url") or get_settings().resolved_database_url
target_metadata = Base.metadata


def run_offline() -> None:
    context.configure(url=url, target_metadata=target_metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    connectable = config.attributes.get("connection")
    if connectable is not None:
        context.configure(
            connection=connectable, target_metadata=target_metadata, render_as_batch=True
        )
        with context.begin_transaction():
            context.run_migrations()
        return
    engine = create_engine(url)
    if engine.dialect.name == "sqlite":
        # The file is in WAL mode from its creation on: the product's first connections would
        # otherwise race to switch it (see triage.db.use_wal).
        event.listen(engine, "connect", lambda dbapi_conn, _record: use_wal(dbapi_conn))
    with engine.connect() as connection:
        context.configure(
            connection=connection, target_metadata=target_metadata, render_as_batch=True
        )
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
