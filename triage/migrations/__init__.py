"""Alembic migrations (run with ``triage db upgrade``)."""
