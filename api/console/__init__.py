"""The web console under ``/console``: server-rendered pages for agents, approvers, auditors
and operations leads, on the same services and roles as the JSON API.

Kept import-light on purpose: ``cli.main`` imports :mod:`api.console.cli` at start-up, which
must not pull in FastAPI. The router lives in :mod:`api.console.routes`.
"""
