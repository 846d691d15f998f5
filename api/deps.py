"""Application context and FastAPI dependencies (``Annotated`` aliases, swappable in tests)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Request

from triage import audit, auth
from triage.auth import Principal, Role
from triage.db import Database
from triage.errors import AuthenticationFailed, PermissionDenied, RateLimited
from triage.settings import Settings
from triage.worker import Worker


@dataclass
class AppContext:
    """Everything a request handler may use; built once per app in ``create_app``."""

    settings: Settings
    db: Database
    worker: Worker | None
    keys: auth.KeyCache
    limiter: auth.RateLimiter
    # ids of the model jobs this app's threads run (closed as interrupted at shutdown)
    running_jobs: set[int] = field(default_factory=set)

    def notify_worker(self) -> None:
        if self.worker is not None:
            self.worker.notify()


def get_context(request: Request) -> AppContext:
    ctx: AppContext = request.app.state.ctx
    return ctx


ContextDep = Annotated[AppContext, Depends(get_context)]

ANONYMOUS = audit.Actor(audit.ActorType.integration, "anonymous", None)


def _deny(ctx: AppContext, request: Request, actor: audit.Actor, action: str, why: str) -> None:
    # Failed and forbidden calls are audited: probing shows up on the trail.
    with ctx.db.write() as s:
        audit.append(
            s, actor, action, {"method": request.method, "path": request.url.path, "reason": why}
        )


class RoleGuard:
    """Dependency that authenticates the bearer key and checks its role.

    ``roles`` is public so the RBAC matrix test can read what every endpoint declares.
    """

    def __init__(self, *roles: Role) -> None:
        self.roles = frozenset(roles)

    def __call__(self, request: Request, ctx: ContextDep) -> Principal:
        header = request.headers.get("authorization", "")
        scheme, _, raw = header.partition(" ")
        if scheme.lower() != "bearer" or not raw.strip():
            _deny(ctx, request, ANONYMOUS, "auth.unauthenticated", "missing bearer key")
            raise AuthenticationFailed(
                "missing API key: send 'Authorization: Bearer <key>'", field="Authorization"
            )
        try:
            principal = ctx.keys.authenticate(ctx.db, raw.strip())
        except AuthenticationFailed as exc:
            _deny(ctx, request, ANONYMOUS, "auth.unauthenticated", exc.message)
            raise AuthenticationFailed(exc.message, field="Authorization") from exc
        wait = ctx.limiter.allow(principal.key_id)
        if wait > 0:
            raise RateLimited(
                f"rate limit of {ctx.settings.rate_limit_per_second:g} requests/s "
                f"for this key exceeded; retry in {wait:.1f} s",
                retry_after=max(1, math.ceil(wait)),
            )
        if principal.role not in self.roles:
            allowed = ", ".join(sorted(r.value for r in self.roles))
            _deny(
                ctx,
                request,
                principal.actor,
                "auth.forbidden",
                f"role {principal.role.value} not in {allowed}",
            )
            raise PermissionDenied(
                f"role '{principal.role.value}' may not call this endpoint; allowed: {allowed}"
            )
        return principal


def allow(*roles: Role) -> Callable[..., Principal]:
    return RoleGuard(*roles)


R = Role
EVERYONE = (R.orchestrator, R.agent, R.approver, R.auditor, R.admin)
PEOPLE_AND_SYSTEMS = EVERYONE
