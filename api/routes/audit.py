"""Audit trail: search, verify, export (auditors and admins)."""

from __future__ import annotations

import base64
from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query
from fastapi.responses import StreamingResponse

from api.deps import ContextDep, R, allow
from api.routes.cases import ERRORS
from api.schemas import AuditEventOut, AuditPage, VerifyResponse
from triage import audit
from triage.auth import Principal
from triage.common import to_ts
from triage.errors import ValidationFailed

router = APIRouter(prefix="/v1/audit", tags=["audit"])
Auditor = Annotated[Principal, Depends(allow(R.auditor, R.admin))]
_MAX_SEQ = 2**63 - 1


def _cursor(seq: int) -> str:
    return base64.urlsafe_b64encode(str(seq).encode()).decode().rstrip("=")


def _after(cursor: str | None) -> int | None:
    if cursor is None:
        return None
    try:
        seq = int(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode())
    except ValueError as exc:
        raise ValidationFailed(
            "malformed cursor", fields={"cursor": "not a cursor we issued"}
        ) from exc
    if not 0 <= seq <= _MAX_SEQ:  # outside BIGINT the driver fails (a 500), not the filter
        raise ValidationFailed("malformed cursor", fields={"cursor": "not a cursor we issued"})
    return seq


def _ts(value: datetime | None, name: str) -> str | None:
    if value is None:
        return None
    if value.tzinfo is None:
        raise ValidationFailed(f"{name} needs a timezone", fields={name: "naive datetime"})
    return to_ts(value)


def _filter(
    case_id: str | None,
    actor_id: str | None,
    action: str | None,
    since: datetime | None,
    until: datetime | None,
    cursor: str | None,
) -> audit.AuditFilter:
    return audit.AuditFilter(
        case_id=case_id,
        actor_id=actor_id,
        action=action,
        since=_ts(since, "since"),
        until=_ts(until, "until"),
        after_seq=_after(cursor),
    )


@router.get(
    "",
    response_model=AuditPage,
    responses=ERRORS,
    summary="Search the audit trail (oldest first, cursor-paginated)",
)
def list_audit(
    ctx: ContextDep,
    _p: Auditor,
    case_id: Annotated[str | None, Query(max_length=26)] = None,
    actor_id: Annotated[str | None, Query(max_length=128)] = None,
    action: Annotated[str | None, Query(max_length=64)] = None,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    cursor: Annotated[str | None, Query(max_length=64)] = None,
) -> AuditPage:
    f = _filter(case_id, actor_id, action, since, until, cursor)
    with ctx.db.read() as s:
        rows = audit.list_events(s, f, limit + 1)
        nxt = _cursor(rows[limit - 1].seq) if len(rows) > limit else None
        return AuditPage(
            items=[AuditEventOut(**audit.event_dict(e)) for e in rows[:limit]], next_cursor=nxt
        )


@router.get(
    "/verify",
    response_model=VerifyResponse,
    responses=ERRORS,
    summary="Verify the hash chain; reports the first broken sequence number",
)
def verify_audit(ctx: ContextDep, _p: Auditor) -> VerifyResponse:
    with ctx.db.read() as s:
        return VerifyResponse(
            **audit.verify(s).as_dict(), unfinished=[u.as_dict() for u in audit.unfinished(s)]
        )


@router.get(
    "/export",
    responses=ERRORS,
    response_class=StreamingResponse,
    summary="Export matching events as JSONL or CSV (streamed)",
)
def export_audit(
    ctx: ContextDep,
    _p: Auditor,
    format: Literal["jsonl", "csv"] = "jsonl",
    case_id: Annotated[str | None, Query(max_length=26)] = None,
    actor_id: Annotated[str | None, Query(max_length=128)] = None,
    action: Annotated[str | None, Query(max_length=64)] = None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> StreamingResponse:
    f = _filter(case_id, actor_id, action, since, until, None)

    def body():  # type: ignore[no-untyped-def]
        with ctx.db.read() as s:
            yield from audit.export_lines(audit.iter_events(s, f), format)

    media = "application/x-ndjson" if format == "jsonl" else "text/csv"
    return StreamingResponse(
        body(),
        media_type=media,
        headers={"Content-Disposition": f'attachment; filename="audit.{format}"'},
    )
