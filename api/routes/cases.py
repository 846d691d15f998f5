"""Case intake, reads and lifecycle transitions. Handlers parse, call one service, respond."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from api.deps import EVERYONE, ContextDep, R, allow
from api.schemas import (
    AssigneeList,
    AssignRequest,
    BatchItem,
    BatchResponse,
    CaseDetail,
    CasePage,
    CaseSummary,
    ErrorResponse,
    IntakeResponse,
    NoteIn,
    NoteOut,
    NotePage,
    SLAView,
    TransitionRequest,
)
from contracts.case import CaseIn, ExceptionType
from contracts.suggestion import CaseExplanation
from triage import actions, cases, classification, intake
from triage.auth import Principal
from triage.common import to_ts
from triage.errors import ValidationFailed
from triage.lifecycle import Status
from triage.models import AuditEvent, Case
from triage.models import Suggestion as SuggestionRow

router = APIRouter(prefix="/v1/cases", tags=["cases"])

ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (400, 401, 403, 404, 409, 413, 415, 422, 429, 503)
}

IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        max_length=200,
        description="Retry-safe key: a repeat with the same payload returns the original case.",
    ),
]


def _status_url(request: Request, case_id: str) -> str:
    # Same URL as url_for("get_case"), without searching the route table on every intake.
    return f"{str(request.base_url).rstrip('/')}/v1/cases/{case_id}"


def summary(row: Case) -> CaseSummary:
    return CaseSummary(
        id=row.id,
        status=Status(row.status),
        status_reason=row.status_reason,
        source_system=row.source_system,
        source_case_id=row.source_case_id,
        exception_type=row.exception_type,
        customer_id=row.customer_id,
        customer_tier=row.customer_tier,
        warehouse_id=row.warehouse_id,
        priority=row.priority,
        category=row.category,
        queue=row.queue,
        created_at=row.created_at,
        updated_at=row.updated_at,
        triaged_at=row.triaged_at,
        resolved_at=row.resolved_at,
        assignee=row.assignee,
        sla=SLAView(
            triage_due_at=row.triage_due_at,
            resolution_due_at=row.resolution_due_at,
            triage_breached=row.triage_sla_breached,
            resolution_breached=row.resolution_sla_breached,
        ),
        model_version=row.model_version,
        abstain_reasons=row.abstain_reasons,
        version=row.version,
    )


def detail(row: Case, suggestion: SuggestionRow | None) -> CaseDetail:
    return CaseDetail(
        **summary(row).model_dump(),
        case=row.payload,
        suggestion=suggestion.body if suggestion else None,
        policy_decisions=suggestion.decisions.get("items", []) if suggestion else [],
        triage_attempts=row.triage_attempts,
        resolution=row.resolution,
    )


@router.post(
    "",
    status_code=202,
    response_model=IntakeResponse,
    responses={
        **ERRORS,
        200: {"model": IntakeResponse, "description": "A replay of an earlier submission."},
    },
    summary="Submit one exception case",
    description="Answers 202 with the case id and a status URL; a replay answers 200 with "
    "`replayed: true`. The same Idempotency-Key or source ids with a different payload is a 409.",
)
def submit_case(
    case: CaseIn,
    request: Request,
    response: Response,
    ctx: ContextDep,
    principal: Annotated[Principal, Depends(allow(R.orchestrator, R.admin))],
    idempotency_key: IdempotencyKey = None,
) -> IntakeResponse:
    result = intake.submit_one(
        ctx.db, case, actor=principal.actor, settings=ctx.settings, idempotency_key=idempotency_key
    )
    case_id, status = result.case.id, Status(result.case.status)
    url = _status_url(request, case_id)
    response.headers["Location"] = url
    if result.replayed:
        response.status_code = 200
        response.headers["Idempotent-Replayed"] = "true"
    else:
        ctx.notify_worker()
    return IntakeResponse(case_id=case_id, status=status, status_url=url, replayed=result.replayed)


class BatchIn(BaseModel):
    """Up to 500 cases; each item is validated on its own against the case schema."""

    model_config = ConfigDict(extra="forbid")

    items: list[dict[str, Any]] = Field(
        min_length=1,
        json_schema_extra={"items": {"$ref": "#/components/schemas/CaseIn"}},
    )


@router.post(
    "/batch",
    status_code=202,
    response_model=BatchResponse,
    responses=ERRORS,
    summary="Submit up to 500 cases with per-item results",
    description="Valid items are stored, invalid ones are reported with field-level errors and "
    "never stored. With an Idempotency-Key header, item i uses '<key>:<i>'.",
)
def submit_batch(
    batch: BatchIn,
    request: Request,
    ctx: ContextDep,
    principal: Annotated[Principal, Depends(allow(R.orchestrator, R.admin))],
    idempotency_key: IdempotencyKey = None,
) -> BatchResponse:
    results = intake.submit_many(
        ctx.db,
        batch.items,
        actor=principal.actor,
        settings=ctx.settings,
        idempotency_key=idempotency_key,
    )
    items = [
        BatchItem(
            index=r.index,
            outcome=r.outcome,
            case_id=r.case.id if r.case else None,
            status_url=_status_url(request, r.case.id) if r.case else None,
            errors=r.errors,
        )
        for r in results
    ]
    counts = {
        k: sum(1 for i in items if i.outcome == k)
        for k in ("created", "replayed", "invalid", "conflict")
    }
    if counts["created"]:
        ctx.notify_worker()
    return BatchResponse(**counts, items=items)


@router.get(
    "/assignees",
    response_model=AssigneeList,
    responses=ERRORS,
    summary="Who a case can be assigned to (enabled agents and admins)",
)
def list_assignees(
    ctx: ContextDep,
    _p: Annotated[Principal, Depends(allow(R.agent, R.admin))],
) -> AssigneeList:
    with ctx.db.read() as s:
        return AssigneeList(items=cases.case_workers(s))


@router.get(
    "/{case_id}",
    response_model=CaseDetail,
    responses=ERRORS,
    name="get_case",
    summary="One case with its current suggestion and policy decisions",
)
def get_case(
    case_id: str,
    ctx: ContextDep,
    _p: Annotated[Principal, Depends(allow(*EVERYONE))],
) -> CaseDetail:
    with ctx.db.read() as s:
        row = cases.get(s, case_id)
        return detail(row, cases.current_suggestion(s, row))


def _note(e: AuditEvent | None) -> NoteOut:
    assert e is not None  # the note's own event, written in this transaction
    return NoteOut(
        seq=e.seq,
        at=e.ts,
        author=e.actor_id,
        author_role=e.actor_role,
        text=json.loads(e.payload)["text"],
    )


@router.post(
    "/{case_id}/notes",
    status_code=201,
    response_model=NoteOut,
    responses=ERRORS,
    summary="Add an internal work note to a case (audited; never sent to the customer)",
)
def add_note(
    case_id: str,
    body: NoteIn,
    ctx: ContextDep,
    principal: Annotated[Principal, Depends(allow(R.orchestrator, R.agent, R.approver, R.admin))],
) -> NoteOut:
    """What was checked, who was called, what is awaited: the hand-over a colleague reads
    before taking the case over. Any case status; a note cannot be edited or deleted
    (it is a ``case.note_added`` audit event). Auditors read notes but do not write them."""
    with ctx.db.write() as s:
        seq = cases.add_note(s, case_id, body.text, actor=principal.actor)
        return _note(s.get(AuditEvent, seq))


@router.get(
    "/{case_id}/notes",
    response_model=NotePage,
    responses=ERRORS,
    summary="A case's work notes, oldest first",
)
def list_notes(
    case_id: str,
    ctx: ContextDep,
    _p: Annotated[Principal, Depends(allow(*EVERYONE))],
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    cursor: Annotated[int | None, Query(ge=0, le=2**62)] = None,
) -> NotePage:
    with ctx.db.read() as s:
        rows = cases.notes(s, case_id, after_seq=cursor, limit=limit + 1)
        nxt = str(rows[limit - 1].seq) if len(rows) > limit else None
        return NotePage(items=[_note(e) for e in rows[:limit]], next_cursor=nxt)


@router.get(
    "/{case_id}/explanation",
    response_model=CaseExplanation,
    responses=ERRORS,
    summary="Why the classifier routed the case as it did: evidence per target",
)
def explain_case(
    case_id: str,
    ctx: ContextDep,
    _p: Annotated[Principal, Depends(allow(*EVERYONE))],
    top: Annotated[
        int, Query(ge=1, le=classification.MAX_TOP, description="Evidence items per target.")
    ] = 8,
) -> CaseExplanation:
    """The current suggestion's classifier, explained: for a model, each target's top label
    against its runner-up as an exact sum of log-odds over the case's words, phrases and
    fields (recomputed with the model version that classified the case, and checked against
    the stored probabilities); for the fixed rules, the rules that applied.

    409 when the case has no classification yet or its model version is no longer loadable.
    """
    return classification.explain_case(ctx.settings, ctx.db, case_id, top=top)


def _ts_param(value: datetime | None, name: str) -> str | None:
    if value is None:
        return None
    if value.tzinfo is None:
        raise ValidationFailed(f"{name} needs a timezone", fields={name: "naive datetime"})
    return to_ts(value)


@router.get(
    "",
    response_model=CasePage,
    responses=ERRORS,
    summary="List cases, newest first, with filters and cursor pagination",
)
def list_cases(
    ctx: ContextDep,
    principal: Annotated[Principal, Depends(allow(*EVERYONE))],
    status: Status | None = None,
    exception_type: ExceptionType | None = None,
    customer_id: Annotated[str | None, Query(max_length=128)] = None,
    warehouse_id: Annotated[str | None, Query(max_length=128)] = None,
    assignee: Annotated[
        str | None,
        Query(
            max_length=128,
            description="Cases this person holds (or resolved); `me` for the caller's own.",
        ),
    ] = None,
    queue: Annotated[
        str | None, Query(max_length=64, description="The case's current routing queue.")
    ] = None,
    priority: Annotated[str | None, Query(pattern=r"^P[1-4]$")] = None,
    category: Annotated[str | None, Query(max_length=64)] = None,
    created_from: Annotated[datetime | None, Query(description="ISO 8601 with timezone")] = None,
    created_to: Annotated[datetime | None, Query(description="ISO 8601 with timezone")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: Annotated[str | None, Query(max_length=500)] = None,
) -> CasePage:
    f = cases.CaseFilter(
        status=status.value if status else None,
        exception_type=exception_type.value if exception_type else None,
        customer_id=customer_id,
        warehouse_id=warehouse_id,
        assignee=principal.actor.id if assignee == "me" else assignee,
        queue=queue,
        priority=priority,
        category=category,
        created_from=_ts_param(created_from, "created_from"),
        created_to=_ts_param(created_to, "created_to"),
    )
    with ctx.db.read() as s:
        rows, next_cursor = cases.list_cases(s, f, limit=limit, cursor=cursor)
        return CasePage(items=[summary(r) for r in rows], next_cursor=next_cursor)


@router.post(
    "/{case_id}/transitions",
    response_model=CaseSummary,
    responses=ERRORS,
    summary="Move a case through its lifecycle (claim, release, resolve, escalate, retry)",
)
def transition_case(
    case_id: str,
    body: TransitionRequest,
    ctx: ContextDep,
    principal: Annotated[Principal, Depends(allow(R.agent, R.admin))],
) -> CaseSummary:
    """Resolving needs a ``resolution`` text and settles the case's actions: it is refused
    (409, field ``actions``) while one awaits approval, and suggested actions nobody requested
    are cancelled as not taken. Escalating needs a ``reason``."""
    with ctx.db.write() as s:
        row = actions.transition_case(
            s,
            case_id,
            body.to,
            actor=principal.actor,
            reason=body.reason,
            resolution=body.resolution,
            expected_version=body.expected_version,
        )
        out = summary(row)
    if body.to == Status.received:
        ctx.notify_worker()
    return out


@router.post(
    "/{case_id}/assignment",
    response_model=CaseSummary,
    responses=ERRORS,
    summary="Give a case to a colleague (claims it for them if nobody holds it)",
)
def assign_case(
    case_id: str,
    body: AssignRequest,
    ctx: ContextDep,
    principal: Annotated[Principal, Depends(allow(R.agent, R.admin))],
) -> CaseSummary:
    """Triaged, unresolved cases only (409, field ``status``, otherwise). An agent assigns a
    case nobody holds or one they hold; reassigning a colleague's case is for admins (403).
    The assignee must be an enabled agent or admin (422, field ``assignee``). Audited as
    ``case.assigned``; an unclaimed or escalated case moves to ``in_review``."""
    with ctx.db.write() as s:
        row = cases.assign(
            s,
            case_id,
            body.assignee,
            actor=principal.actor,
            reason=body.reason,
            expected_version=body.expected_version,
            settings=ctx.settings,
        )
        return summary(row)
