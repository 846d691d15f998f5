"""Who the audit trail names for what an operator does on the command line, and how those
changes reach the deployment's trail."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import typer

if TYPE_CHECKING:  # pragma: no cover
    from triage.audit import Actor
    from triage.db import Database

ADMIN_CLI = "cli-admin"


def cli_admin() -> Actor:
    """The actor the audit trail names for admin commands run on the command line."""
    from triage import audit  # lazily, like every command: `triage --help` stays quick

    return audit.Actor(audit.ActorType.human, ADMIN_CLI, "admin")


def on_deployment_trail(
    record: Callable[[Database], dict[str, Any]], *, target: str, nothing: str
) -> dict[str, Any]:
    """Run ``record`` (an ``audit.with_event`` or ``audit.with_intent`` call, which reaches the
    database before its change) against the deployment's database and return its payload.

    Exit 2 with one line when the database cannot be written (``target`` names what is audited,
    ``nothing`` says what was therefore left undone), or when the change ran but its outcome
    event could not be written (``triage.errors.Unavailable``, which says so)."""
    from sqlalchemy.exc import SQLAlchemyError

    from triage.db import Database
    from triage.errors import Unavailable
    from triage.settings import get_settings

    db = Database(get_settings())
    try:
        return record(db)
    except SQLAlchemyError as exc:
        cause = str(getattr(exc, "orig", None) or exc).splitlines()[0][:200]
        hint = ""
        if "no such table" in cause or "does not exist" in cause:
            hint = " (a database never set up: run `triage db upgrade` first)"
        message = (
            f"{target} and its changes are audited, but the database could not be written "
            f"({type(exc).__name__}: {cause}){hint}; {nothing}"
        )
    except Unavailable as exc:
        message = exc.message
    finally:
        db.dispose()
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2)
