"""Webhook outbox: inspect deliveries and replay dead letters (admins only)."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Path, Query

from api.deps import ContextDep, R, allow
from api.routes.cases import ERRORS
from api.schemas import OutboxOut, OutboxPage
from triage import webhooks
from triage.auth import Principal

router = APIRouter(prefix="/v1/outbox", tags=["admin"])
Admin = Annotated[Principal, Depends(allow(R.admin))]
# Outbox ids are BIGINT: a larger number is not an id we issued, and the database driver
# would fail on it (a 500) instead of answering "not found".
MAX_ID = 2**63 - 1


@router.get(
    "",
    response_model=OutboxPage,
    responses=ERRORS,
    summary="List webhook deliveries (filter dead letters with status=dead)",
)
def list_outbox(
    ctx: ContextDep,
    _p: Admin,
    status: Literal["pending", "delivered", "dead"] | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    cursor: Annotated[int | None, Query(ge=0, le=MAX_ID)] = None,
) -> OutboxPage:
    with ctx.db.read() as s:
        rows = webhooks.list_messages(s, status, limit + 1, cursor)
        nxt = str(rows[limit - 1].id) if len(rows) > limit else None
        return OutboxPage(
            items=[OutboxOut.model_validate(r, from_attributes=True) for r in rows[:limit]],
            next_cursor=nxt,
        )


@router.post(
    "/{message_id}/replay",
    response_model=OutboxOut,
    responses=ERRORS,
    summary="Re-arm a dead-lettered delivery",
)
def replay(
    message_id: Annotated[int, Path(ge=0, le=MAX_ID)], ctx: ContextDep, principal: Admin
) -> OutboxOut:
    with ctx.db.write() as s:
        msg = webhooks.replay(s, message_id, actor=principal.actor)
        return OutboxOut.model_validate(msg, from_attributes=True)
