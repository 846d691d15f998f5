"""Who the audit trail names for what an operator does on the command line."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from triage.audit import Actor

ADMIN_CLI = "cli-admin"


def cli_admin() -> Actor:
    """The actor the audit trail names for admin commands run on the command line."""
    from triage import audit  # lazily, like every command: `triage --help` stays quick

    return audit.Actor(audit.ActorType.human, ADMIN_CLI, "admin")
