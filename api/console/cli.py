"""``triage users``: create, list, disable console users and set their passwords.

Imports no web framework (the CLI starts fast); mounted in ``cli/main.py`` with
``app.add_typer(users_app, name="users")``.
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from triage import users
from triage.audit import Actor, ActorType
from triage.db import Database
from triage.errors import TriageError
from triage.settings import get_settings

users_app = typer.Typer(help="Console users (username + password).", no_args_is_help=True)
CLI_ADMIN = Actor(ActorType.human, "cli-admin", "admin")


def _password(password_stdin: bool) -> str:
    if password_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    value: str = typer.prompt("Password", hide_input=True, confirmation_prompt=True)
    return value


def _fail(message: str) -> typer.Exit:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    return typer.Exit(2)


@users_app.command("create")
def create(
    username: Annotated[str, typer.Option(help="Sign-in name (lower case).")],
    role: Annotated[str, typer.Option(help="agent, approver, auditor or admin.")],
    authority: Annotated[
        list[str] | None,
        typer.Option(help="Policy authority for approvals (repeatable), e.g. finance_approver."),
    ] = None,
    password_stdin: Annotated[
        bool, typer.Option("--password-stdin", help="Read the password from standard input.")
    ] = False,
) -> None:
    """Create a console user; the password is prompted for (or read from stdin)."""
    password = _password(password_stdin)
    db = Database(get_settings())
    try:
        with db.write() as s:
            created = users.create_user(
                s, username, password, role, created_by=CLI_ADMIN, authorities=authority or []
            )
    except TriageError as exc:
        raise _fail(exc.message) from exc
    finally:
        db.dispose()
    auths = ", ".join(created.authorities) or "none"
    typer.echo(f"created {created.username} (role {created.role.value}, authorities: {auths})")


@users_app.command("passwd")
def passwd(
    username: Annotated[str, typer.Option(help="The user.")],
    password_stdin: Annotated[bool, typer.Option("--password-stdin")] = False,
) -> None:
    """Set a new password; the user's open sessions end."""
    password = _password(password_stdin)
    db = Database(get_settings())
    try:
        with db.write() as s:
            users.set_password(s, username, password, by=CLI_ADMIN)
    except TriageError as exc:
        raise _fail(exc.message) from exc
    finally:
        db.dispose()
    typer.echo(f"password set for {username}")


@users_app.command("disable")
def disable(username: Annotated[str, typer.Option(help="The user.")]) -> None:
    """Disable a user; their sessions end at once."""
    db = Database(get_settings())
    try:
        with db.write() as s:
            users.disable_user(s, username, by=CLI_ADMIN)
    except TriageError as exc:
        raise _fail(exc.message) from exc
    finally:
        db.dispose()
    typer.echo(f"disabled {username}")


@users_app.command("list")
def list_cmd() -> None:
    """List console users."""
    db = Database(get_settings())
    try:
        with db.read() as s:
            for u in users.list_users(s):
                state = "disabled" if u.disabled_at else "active"
                auths = ",".join(u.authorities or []) or "-"
                typer.echo(f"{u.username:<24} {u.role:<9} {state:<8} {auths}")
    finally:
        db.dispose()
