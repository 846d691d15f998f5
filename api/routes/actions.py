"""Governed actions: agents request and edit, approvers approve or reject, the orchestration
layer reports execution. Every step goes through triage.actions (policy + audit)."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import date
from decimal import Decimal
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, ConfigDict, Field

from api.deps import EVERYONE, ContextDep, R, allow
from api.routes.cases import ERRORS
from contracts.case import CaseIn, CurrencyCode
from contracts.suggestion import ProposedAction
from triage import actions, audit, cases
from triage.auth import Principal
from triage.common import now_ts
from triage.errors import NotFound, PermissionDenied
from triage.models import ActionRow, FxRateRow

router = APIRouter(tags=["actions"])
Agent = Annotated[Principal, Depends(allow(R.agent, R.admin))]
Approver = Annotated[Principal, Depends(allow(R.approver, R.admin))]


class ActionOut(BaseModel):
    id: str
    case_id: str
    customer_id: str
    origin: str
    action_type: str
    action: dict[str, Any]
    amount: Decimal | None
    currency: str | None
    material: bool
    status: str
    requested_by: str | None
    proposed_by: str | None
    last_edited_by: str | None
    accepted_by: str | None
    policy_version: str | None
    action_hash: str | None
    decision: dict[str, Any] | None
    due_at: str | None
    escalation_level: int
    escalated_to: list[str] | None
    outcome_reason: str | None
    executed_at: str | None
    created_at: str
    updated_at: str
    version: int


def out(row: ActionRow) -> ActionOut:
    return ActionOut(
        id=row.id,
        case_id=row.case_id,
        customer_id=row.customer_id,
        origin=row.origin,
        action_type=row.action_type,
        action=row.body,
        amount=row.amount,
        currency=row.currency,
        material=row.material,
        status=row.status,
        requested_by=row.requested_by,
        proposed_by=row.proposed_by,
        last_edited_by=row.last_edited_by,
        accepted_by=row.accepted_by,
        policy_version=row.policy_version,
        action_hash=row.action_hash,
        decision=row.decision,
        due_at=row.due_at,
        escalation_level=row.escalation_level,
        escalated_to=row.escalated_to,
        outcome_reason=row.outcome_reason,
        executed_at=row.executed_at,
        created_at=row.created_at,
        updated_at=row.updated_at,
        version=row.version,
    )


class ActionPage(BaseModel):
    items: list[ActionOut]
    next_cursor: str | None


@router.get(
    "/v1/actions",
    response_model=ActionPage,
    responses=ERRORS,
    summary="List actions (the orchestration layer can pull status=approved here)",
)
def list_actions(
    ctx: ContextDep,
    _p: Annotated[Principal, Depends(allow(*EVERYONE))],
    status: Literal[
        "proposed",
        "pending_approval",
        "approved",
        "executed",
        "failed",
        "rejected",
        "forbidden",
        "expired",
        "cancelled",
    ]
    | None = None,
    case_id: Annotated[str | None, Query(max_length=26)] = None,
    customer_id: Annotated[str | None, Query(max_length=128)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: Annotated[str | None, Query(max_length=26)] = None,
) -> ActionPage:
    with ctx.db.read() as s:
        rows = actions.list_actions(
            s,
            status=status,
            case_id=case_id,
            customer_id=customer_id,
            limit=limit + 1,
            after=cursor,
        )
        nxt = rows[limit - 1].id if len(rows) > limit else None
        return ActionPage(items=[out(r) for r in rows[:limit]], next_cursor=nxt)


class ApprovalOut(BaseModel):
    approver_id: str
    approver_roles: list[str] | None
    decision: str
    reason: str | None
    action_hash: str
    current: bool = Field(
        description="Given for the action as it is now (else voided by an edit or a policy change)."
    )
    created_at: str


class ActionDetail(ActionOut):
    approvals: list[ApprovalOut]
    you: dict[str, Any] | None = Field(
        default=None,
        description="For approvers: whether you may approve, why not, and the quorum progress.",
    )


def _detail(s: Any, ctx: Any, row: ActionRow, principal: Principal) -> ActionDetail:
    you = None
    if row.status == actions.PENDING and principal.role in (R.approver, R.admin):
        you = actions.approval_view(
            s,
            row,
            actions.principal_for(principal.actor, list(principal.authorities)),
            actions.load_policy(ctx.settings),
        )
    approvals = [
        ApprovalOut(
            approver_id=a.approver_id,
            approver_roles=a.approver_roles,
            decision=a.decision,
            reason=a.reason,
            action_hash=a.action_hash,
            current=a.action_hash == row.action_hash,
            created_at=a.created_at,
        )
        for a in actions.approvals_of(s, row.id)
    ]
    return ActionDetail(**out(row).model_dump(), approvals=approvals, you=you)


@router.get(
    "/v1/actions/{action_id}",
    response_model=ActionDetail,
    responses=ERRORS,
    summary="One action with its approvals and, for approvers, what they may do",
)
def get_action(
    action_id: str, ctx: ContextDep, principal: Annotated[Principal, Depends(allow(*EVERYONE))]
) -> ActionDetail:
    with ctx.db.read() as s:
        row = s.get(ActionRow, action_id)
        if row is None:
            raise NotFound(f"action {action_id} not found")
        return _detail(s, ctx, row, principal)


class ActionBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    action: ProposedAction
    expected_version: int | None = Field(default=None, ge=1)


@router.post(
    "/v1/cases/{case_id}/actions",
    response_model=ActionOut,
    status_code=201,
    responses=ERRORS,
    summary="Propose an action of your own (decided at once)",
)
def create_action(case_id: str, body: ActionBody, ctx: ContextDep, principal: Agent) -> ActionOut:
    with ctx.db.write() as s:
        row = actions.create(
            s,
            case_id,
            body.action,
            actor=principal.actor,
            policy=actions.load_policy(ctx.settings),
            settings=ctx.settings,
        )
        return out(row)


class VersionBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    expected_version: int | None = Field(default=None, ge=1)


@router.post(
    "/v1/actions/{action_id}/request",
    response_model=ActionOut,
    responses=ERRORS,
    summary="Accept a proposed action: the policy layer decides what happens",
)
def request_action(
    action_id: str, ctx: ContextDep, principal: Agent, body: VersionBody | None = None
) -> ActionOut:
    with ctx.db.write() as s:
        row = actions.request(
            s,
            action_id,
            actor=principal.actor,
            policy=actions.load_policy(ctx.settings),
            settings=ctx.settings,
            expected_version=body.expected_version if body else None,
        )
        return out(row)


@router.patch(
    "/v1/actions/{action_id}",
    response_model=ActionOut,
    responses=ERRORS,
    summary="Edit an action; earlier approvals stop counting",
)
def edit_action(action_id: str, body: ActionBody, ctx: ContextDep, principal: Agent) -> ActionOut:
    with ctx.db.write() as s:
        row = actions.edit(
            s,
            action_id,
            body.action,
            actor=principal.actor,
            policy=actions.load_policy(ctx.settings),
            settings=ctx.settings,
            expected_version=body.expected_version,
        )
        return out(row)


class ReasonBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str = Field(min_length=1, max_length=2000)


@router.post(
    "/v1/actions/{action_id}/cancel",
    response_model=ActionOut,
    responses=ERRORS,
    summary="Withdraw an action that has not been released",
)
def cancel_action(action_id: str, body: ReasonBody, ctx: ContextDep, principal: Agent) -> ActionOut:
    with ctx.db.write() as s:
        return out(actions.cancel(s, action_id, actor=principal.actor, reason=body.reason))


class DecisionBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    action_hash: str = Field(
        min_length=64,
        max_length=64,
        description=("The hash of the action you reviewed (from GET /v1/actions/{id})."),
    )
    reason: str | None = Field(default=None, max_length=2000)


@router.post(
    "/v1/actions/{action_id}/approve",
    response_model=ActionOut,
    responses=ERRORS,
    summary="Approve the exact action you reviewed; releases it when quorum is met",
)
def approve_action(
    action_id: str, body: DecisionBody, ctx: ContextDep, principal: Approver
) -> ActionOut:
    return _as_approver(
        ctx,
        principal,
        action_id,
        "approval",
        lambda s: actions.approve(
            s,
            action_id,
            actor=principal.actor,
            authorities=list(principal.authorities),
            action_hash=body.action_hash,
            reason=body.reason,
            policy=actions.load_policy(ctx.settings),
            settings=ctx.settings,
        ),
    )


@router.post(
    "/v1/actions/{action_id}/reject",
    response_model=ActionOut,
    responses=ERRORS,
    summary="Reject an action (a reason is required)",
)
def reject_action(
    action_id: str, body: DecisionBody, ctx: ContextDep, principal: Approver
) -> ActionOut:
    return _as_approver(
        ctx,
        principal,
        action_id,
        "rejection",
        lambda s: actions.reject(
            s,
            action_id,
            actor=principal.actor,
            authorities=list(principal.authorities),
            action_hash=body.action_hash,
            reason=body.reason or "",
            policy=actions.load_policy(ctx.settings),
        ),
    )


def _as_approver(
    ctx: Any, principal: Principal, action_id: str, verb: str, decide: Callable[[Any], ActionRow]
) -> ActionOut:
    """Run an approver's decision; a refusal (403) is audited in its own transaction, since
    the decision's transaction rolls back."""
    try:
        with ctx.db.write() as s:
            return out(decide(s))
    except PermissionDenied as exc:
        with ctx.db.write() as s:
            actions.audit_refusal(s, action_id, principal.actor, verb, exc)
        raise


class OutcomeBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    status: Literal["done", "failed"]
    reason: str | None = Field(default=None, max_length=2000)


@router.post(
    "/v1/actions/{action_id}/outcome",
    response_model=ActionOut,
    responses=ERRORS,
    summary="The orchestration layer reports execution (idempotent)",
)
def report_outcome(
    action_id: str,
    body: OutcomeBody,
    ctx: ContextDep,
    principal: Annotated[Principal, Depends(allow(R.orchestrator, R.admin))],
) -> ActionOut:
    with ctx.db.write() as s:
        return out(
            actions.report_outcome(
                s, action_id, actor=principal.actor, done=body.status == "done", reason=body.reason
            )
        )


class InboxItem(BaseModel):
    action: ActionDetail
    case: dict[str, Any]
    evidence: dict[str, Any]


class Inbox(BaseModel):
    items: list[InboxItem]
    next_cursor: str | None


@router.get(
    "/v1/approvals",
    response_model=Inbox,
    responses=ERRORS,
    summary="Approver inbox: pending actions with evidence, SLA and what you may do",
)
def inbox(
    ctx: ContextDep,
    principal: Approver,
    customer_id: Annotated[str | None, Query(max_length=128)] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    cursor: Annotated[str | None, Query(max_length=26)] = None,
) -> Inbox:
    items = []
    with ctx.db.read() as s:
        rows = actions.list_actions(
            s, status=actions.PENDING, customer_id=customer_id, limit=limit + 1, after=cursor
        )
        notes = cases.latest_notes_by_case(s, [r.case_id for r in rows[:limit]], 3)
        for row in rows[:limit]:
            case_row = cases.get(s, row.case_id)
            sugg = cases.current_suggestion(s, case_row)
            body = sugg.body if sugg else {}
            case = CaseIn.model_validate(case_row.payload)
            items.append(
                InboxItem(
                    action=_detail(s, ctx, row, principal),
                    case={
                        "id": case_row.id,
                        "exception_type": case_row.exception_type,
                        "customer": case.references.customer.model_dump(mode="json"),
                        "references": case.references.model_dump(mode="json", exclude_none=True),
                        "amount_in_dispute": case.amount_in_dispute.model_dump(mode="json")
                        if case.amount_in_dispute
                        else None,
                        "status": case_row.status,
                    },
                    evidence={
                        "summary": body.get("summary"),
                        "citations": body.get("citations", []),
                        "policy_reasons": (row.decision or {}).get("reasons", []),
                        # the case's latest work notes: what the agent checked before asking
                        "work_notes": [
                            {
                                "at": e.ts,
                                "author": e.actor_id,
                                "text": json.loads(e.payload)["text"],
                            }
                            for e in notes.get(row.case_id, [])
                        ],
                    },
                )
            )
        nxt = rows[limit - 1].id if len(rows) > limit else None
    return Inbox(items=items, next_cursor=nxt)


@router.get("/v1/policy", responses=ERRORS, summary="The active policy bundle")
def policy_info(
    ctx: ContextDep, _p: Annotated[Principal, Depends(allow(R.approver, R.auditor, R.admin))]
) -> dict[str, Any]:
    p = actions.load_policy(ctx.settings)
    return {"id": p.id, "version": p.version, "digest": p.digest, "base_currency": p.base_currency}


@router.post(
    "/v1/policy/recheck",
    responses=ERRORS,
    summary="Re-decide every open approval request under the active policy",
)
def recheck(
    ctx: ContextDep, principal: Annotated[Principal, Depends(allow(R.admin))]
) -> dict[str, int]:
    with ctx.db.write() as s:
        result = actions.recheck_open(
            s, actions.load_policy(ctx.settings), principal.actor, ctx.settings
        )
        audit.append(s, principal.actor, "policy.rechecked", result)
        return result


class FxRateIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    currency: CurrencyCode
    rate: Decimal = Field(
        gt=0,
        max_digits=18,
        decimal_places=8,
        description="Units of the policy's base currency for one unit.",
    )
    valid_from: date


@router.put("/v1/fx-rates", responses=ERRORS, summary="Set a dated FX rate (admins)")
def put_fx(
    body: FxRateIn, ctx: ContextDep, principal: Annotated[Principal, Depends(allow(R.admin))]
) -> dict[str, Any]:
    with ctx.db.write() as s:
        row = s.get(FxRateRow, (body.currency, body.valid_from))
        if row is None:
            s.add(
                FxRateRow(
                    currency=body.currency,
                    valid_from=body.valid_from,
                    rate=body.rate,
                    created_by=principal.actor.id,
                )
            )
        else:
            row.rate = body.rate
        audit.append(
            s,
            principal.actor,
            "fx_rate.set",
            {
                "currency": body.currency,
                "rate": str(body.rate),
                "valid_from": body.valid_from.isoformat(),
                "at": now_ts(),
            },
        )
    return body.model_dump(mode="json")


@router.get("/v1/fx-rates", responses=ERRORS, summary="The FX table the policy uses")
def list_fx(
    ctx: ContextDep, _p: Annotated[Principal, Depends(allow(R.approver, R.auditor, R.admin))]
) -> list[dict[str, Any]]:
    from sqlalchemy import select

    with ctx.db.read() as s:
        return [
            {"currency": r.currency, "rate": str(r.rate), "valid_from": r.valid_from.isoformat()}
            for r in s.scalars(select(FxRateRow).order_by(FxRateRow.currency, FxRateRow.valid_from))
        ]
