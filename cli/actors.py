"""Who the audit trail names for what an operator does on the command line, and how those
changes reach the deployment's trail."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import typer

if TYPE_CHECKING:  # pragma: no cover
    from triage.audit import Actor, Intent

ADMIN_CLI = "cli-admin"


def cli_admin() -> Actor:
    """The actor the audit trail names for admin commands run on the command line."""
    from triage import audit  # lazily, like every command: `triage --help` stays quick

    return audit.Actor(audit.ActorType.human, ADMIN_CLI, "admin")


def on_deployment_trail(
    change: str | Intent,
    step: Callable[[], dict[str, Any]],
    *,
    target: str,
    nothing: str,
) -> dict[str, Any]:
    """Run ``step`` on the deployment's audit trail as the CLI admin and return its payload:
    ``audit.with_event`` when ``change`` is an action, ``audit.with_intent`` when it is an
    :class:`~triage.audit.Intent` (a long change). Both reach the database before the step.

    Exit 2 with one line when the database cannot be written (``target`` names what is audited,
    ``nothing`` says what was therefore left undone), or when the change ran but its outcome
    event could not be written (``triage.errors.Unavailable``, which says so)."""
    from sqlalchemy.exc import SQLAlchemyError

    from triage import audit
    from triage.db import Database
    from triage.errors import Unavailable
    from triage.settings import get_settings

    db = Database(get_settings())
    try:
        if isinstance(change, str):
            return audit.with_event(db, cli_admin(), change, step)
        return audit.with_intent(db, cli_admin(), change, step)
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
