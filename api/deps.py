"""Application context and FastAPI dependencies (``Annotated`` aliases, swappable in tests)."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated
from urllib.parse import parse_qsl

from fastapi import Depends, Request
from starlette.exceptions import HTTPException

from triage import audit, auth
from triage.auth import Principal, Role
from triage.cases import format_loc
from triage.db import Database
from triage.errors import AuthenticationFailed, PermissionDenied, RateLimited, ValidationFailed
from triage.settings import Settings
from triage.worker import Worker

if TYPE_CHECKING:  # only named in an annotation: importing it pulls in Chroma
    from triage.stages import RetrievalStage


@dataclass
class AppContext:
    """Everything a request handler may use; built once per app in ``create_app``."""

    settings: Settings
    db: Database
    worker: Worker | None
    keys: auth.KeyCache
    limiter: auth.RateLimiter
    # the pipeline's retrieval stage (knowledge base, similar cases); None with retrieval off
    retrieval: RetrievalStage | None = None
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


# -- NUL characters ------------------------------------------------------------------------------
CONSOLE_PREFIX = "/console/"
"""Where the web console's pages live (they get error pages, the API JSON bodies)."""
NUL_PROBLEM = "contains a NUL character (U+0000), which no field accepts"


def _nul_in_json(value: object, loc: tuple[str | int, ...] = ()) -> tuple[str | int, ...] | None:
    """Where in a parsed JSON document the first NUL-bearing string or key is, if anywhere."""
    if isinstance(value, str):
        return loc if "\x00" in value else None
    if isinstance(value, dict):
        for k, v in value.items():
            if "\x00" in k:
                return (*loc, k)
            found = _nul_in_json(v, (*loc, k))
            if found is not None:
                return found
    elif isinstance(value, list):
        for i, v in enumerate(value):
            found = _nul_in_json(v, (*loc, i))
            if found is not None:
                return found
    return None


async def _nul_field(request: Request) -> str | None:
    """The name of the first path parameter, query parameter, JSON body field or urlencoded
    form field whose value (or name) holds a NUL character, or ``None``. Multipart bodies (data
    set uploads, which may hold any bytes) are left to their handlers."""
    for name, value in request.path_params.items():
        if "\x00" in str(value):
            return str(name)
    for name, value in request.query_params.multi_items():
        if "\x00" in name or "\x00" in value:
            return name or "query"
    if request.method not in ("POST", "PUT", "PATCH"):
        return None
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype == "application/json":
        body = await request.body()  # cached: FastAPI parses the same bytes
        if b"\\u0000" not in body:  # the only way JSON can carry NUL (raw NUL is invalid)
            return None
        try:
            loc = _nul_in_json(json.loads(body))
        except ValueError:
            return None  # malformed JSON: FastAPI's own 400 names it
        return None if loc is None else (format_loc(loc) or "body")
    if ctype == "application/x-www-form-urlencoded":
        body = await request.body()  # cached: the form is parsed from the same bytes
        if b"%00" not in body:
            return None
        for name, value in parse_qsl(body.decode("latin-1"), keep_blank_values=True):
            if "\x00" in name or "\x00" in value:
                return name or "body"
    return None


async def refuse_nul(request: Request) -> None:
    """App-wide dependency: refuse a NUL character anywhere a client can put text, before any
    handler or lookup sees it (PostgreSQL cannot store or even compare text holding U+0000, so
    it would surface as a server error there; nothing legitimate needs it). API: 422 naming the
    field. Console pages: the same refusal as an error page (via ``HTTPException``)."""
    found = await _nul_field(request)
    if found is None:
        return
    field_name = found.replace("\x00", "\\u0000")  # a NUL in a key is shown, not sent on
    if request.url.path.startswith(CONSOLE_PREFIX):
        raise HTTPException(status_code=422, detail=f"{field_name}: {NUL_PROBLEM}")
    raise ValidationFailed(f"{field_name}: {NUL_PROBLEM}", fields={field_name: NUL_PROBLEM})
