"""ASGI entry point for process managers: ``uvicorn api.asgi:app`` (settings from TRIAGE_*)."""

from api.app import create_app

app = create_app()
