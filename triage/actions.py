"""Governed actions: proposals, policy decisions, approvals bound to the action hash, execution.

Lifecycle of an action row::

    proposed ──request──► pending_approval ──quorum met──► approved ──outcome──► executed | failed
        │                     │   ▲                          ▲
        │                     │   └── edit (approvals void) ─┘ (auto_execute skips approval)
        └─────────────────────┴──► forbidden | rejected | expired | cancelled

Rules the service enforces (a direct API call cannot skip them):
- only the policy layer decides (``policies.evaluate``); nothing the advisor outputs executes;
- an approval is bound to the hash of the exact action (type, arguments, amount, currency,
  case, evidence, policy version); any edit changes the hash and earlier approvals stop counting;
- segregation of duties and authority limits are checked by ``policies.can_approve`` for every
  approval; release needs ``policies.quorum_status(...).satisfied``;
- a released action is written to the outbox in the same transaction as the decision that
  released it, so the orchestration layer receives it exactly once (receivers de-duplicate on
  the event id);
- two decisions racing on one action: the row version guards the update, one wins, the other
  gets a 409.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, cast

from pydantic import TypeAdapter, ValidationError
from sqlalchemy import and_, or_, select, update
from sqlalchemy.orm import Session

import policies
from contracts.case import CaseIn
from contracts.suggestion import MATERIAL_ACTIONS, ProposedAction
from triage import audit, cases, webhooks
from triage.audit import Actor
from triage.common import new_id, now_ts, parse_ts, to_ts, utcnow
from triage.errors import Conflict, NotFound, PermissionDenied, ValidationFailed
from triage.lifecycle import Status
from triage.models import ActionApproval, ActionRow, Case, FxRateRow
from triage.settings import Settings

log = logging.getLogger("triage.actions")

# The annotated union is not a class, which mypy's view of TypeAdapter disagrees with
# depending on the cache state; cast instead of an ignore that is sometimes "unused".
ACTION_ADAPTER: TypeAdapter[Any] = TypeAdapter(cast(Any, ProposedAction))

PROPOSED = "proposed"
PENDING = "pending_approval"
APPROVED = "approved"
EXECUTED = "executed"
FAILED = "failed"
REJECTED = "rejected"
FORBIDDEN = "forbidden"
EXPIRED = "expired"
CANCELLED = "cancelled"
OPEN = (PROPOSED, PENDING)
EDITABLE = (PROPOSED, PENDING, REJECTED)

# How our statuses count towards cumulative exposure in the policy layer.
_EXPOSURE_STATUS = {
    PENDING: "pending",
    APPROVED: "approved",
    EXECUTED: "executed",
    REJECTED: "rejected",
    FORBIDDEN: "rejected",
    EXPIRED: "expired",
    CANCELLED: "cancelled",
    FAILED: "failed",
}


# ---------------------------------------------------------------- mapping onto the policy layer


def _money(action: ProposedAction) -> tuple[Decimal | None, str | None]:
    if action.type.value == "adjust_inventory":
        return getattr(action, "value", None), getattr(action, "currency", None)
    return getattr(action, "amount", None), getattr(action, "currency", None)


def _arguments(action: ProposedAction) -> dict[str, Any]:
    """The action's own arguments for the policy catalogue (money and metadata go elsewhere)."""
    return action.model_dump(
        exclude={"type", "rationale", "evidence", "amount", "currency", "value"},
        exclude_none=True,
    )


def to_request(row: ActionRow, case: CaseIn) -> policies.ActionRequest:
    """Map a stored action onto the policy layer's input (see docs/policies.md section 9).

    Raises ValidationFailed (422) when the action cannot be expressed to the policy layer;
    an input the policy layer refuses must never surface as a server error.
    """
    try:
        return _to_request(row, case)
    except ValidationError as exc:
        fields = {
            "action." + ".".join(str(p) for p in e["loc"]): e["msg"]
            for e in exc.errors(include_url=False)
        }
        raise ValidationFailed(
            "the action does not fit the policy layer's input", fields=fields
        ) from exc


def _to_request(row: ActionRow, case: CaseIn) -> policies.ActionRequest:
    action = ACTION_ADAPTER.validate_python(row.body)
    amount, currency = _money(action)
    arguments = _arguments(action)
    return policies.ActionRequest(
        action_id=row.id,
        action_type=action.type.value,
        arguments=arguments,
        amount=amount,
        currency=currency,
        case_id=row.case_id,
        customer_id=case.references.customer.id,
        customer_tier=case.references.customer.tier.value,
        evidence_ids=tuple(action.evidence),
        origin=row.origin,
        requested_by=row.requested_by or row.proposed_by or "unknown",
        proposed_by=row.proposed_by,
        last_edited_by=row.last_edited_by,
        accepted_by=row.accepted_by,
    )


def fx_table(session: Session, base: str) -> policies.FxTable:
    rows = session.scalars(select(FxRateRow)).all()
    return policies.FxTable(
        base_currency=base,
        rates=tuple(
            policies.FxRate(currency=r.currency, rate=r.rate, valid_from=r.valid_from) for r in rows
        ),
    )


def context(
    session: Session,
    row: ActionRow,
    case: CaseIn,
    policy: policies.PolicySet,
    now: datetime | None = None,
) -> policies.DecisionContext:
    """Everything besides the action: clock, FX, the case's and customer's other actions."""
    now = now or utcnow()
    day_start = to_ts(now.replace(hour=0, minute=0, second=0, microsecond=0))
    others = session.scalars(
        select(ActionRow).where(
            ActionRow.id != row.id,
            ActionRow.status != PROPOSED,
            or_(
                ActionRow.case_id == row.case_id,
                and_(ActionRow.customer_id == row.customer_id, ActionRow.created_at >= day_start),
            ),
        )
    ).all()
    prior = []
    for o in others:
        if o.amount is None or o.currency is None:
            continue
        prior.append(
            policies.ExposureItem(
                action_id=o.id,
                action_type=o.action_type,
                case_id=o.case_id,
                customer_id=o.customer_id,
                amount=o.amount,
                currency=o.currency,
                at=parse_ts(o.created_at),
                status=_EXPOSURE_STATUS.get(o.status, "pending"),
            )
        )
    attrs = case.attributes
    changed = attrs.get("bank_details_changed_at")
    flags = policies.CustomerFlags(
        blocked=bool(attrs.get("customer_blocked", False)),
        bank_details_changed_at=datetime.fromisoformat(changed)
        if isinstance(changed, str)
        else None,
    )
    return policies.DecisionContext(
        as_of=now,
        fx=fx_table(session, policy.base_currency),
        prior_actions=tuple(prior),
        customer=flags,
    )


def principal_for(actor: Actor, authorities: list[str] | None) -> policies.Principal:
    roles = set(authorities or [])
    if actor.role == "agent":
        roles.add("agent")
    return policies.Principal(
        id=actor.id,
        roles=frozenset(roles),
        kind="human" if actor.type.value == "human" else "service",
    )


# ---------------------------------------------------------------- rows


def _load(session: Session, action_id: str) -> tuple[ActionRow, Case, CaseIn]:
    row = session.get(ActionRow, action_id)
    if row is None:
        raise NotFound(f"action {action_id} not found")
    case_row = cases.get(session, row.case_id)
    return row, case_row, CaseIn.model_validate(case_row.payload)


def _bump(
    session: Session, row: ActionRow, expected_version: int | None = None, **values: Any
) -> None:
    """Guarded update: exactly one of two racing decisions wins; the other gets a 409."""
    if expected_version is not None and row.version != expected_version:
        raise Conflict(
            f"action {row.id} changed since version {expected_version} (now {row.version})",
            field="expected_version",
        )
    res = session.execute(
        update(ActionRow)
        .where(ActionRow.id == row.id, ActionRow.version == row.version)
        .values(version=row.version + 1, updated_at=now_ts(), **values)
        .execution_options(synchronize_session=False)
    )
    if res.rowcount != 1:  # type: ignore[attr-defined]
        raise Conflict(
            f"action {row.id} was changed by someone else; reload and retry", field="version"
        )
    session.refresh(row)


def propose_from_suggestion(
    session: Session, case_id: str, customer_id: str, proposed: list[ProposedAction], revision: int
) -> list[ActionRow]:
    """Store the advisor's proposals as ``proposed`` rows (not requested, not decided)."""
    out = []
    now = now_ts()
    for action in proposed:
        amount, currency = _money(action)
        row = ActionRow(
            id=new_id(),
            case_id=case_id,
            customer_id=customer_id,
            origin="suggestion",
            suggestion_revision=revision,
            action_type=action.type.value,
            body=action.model_dump(mode="json"),
            amount=amount,
            currency=currency,
            material=action.type in MATERIAL_ACTIONS,
            status=PROPOSED,
            proposed_by=audit.PIPELINE.id,
            created_at=now,
            updated_at=now,
            version=1,
            escalation_level=0,
        )
        session.add(row)
        out.append(row)
    session.flush()
    return out


def _decide(
    session: Session,
    row: ActionRow,
    case_row: Case,
    case: CaseIn,
    actor: Actor,
    policy: policies.PolicySet,
    settings: Settings,
) -> policies.Decision:
    """Ask the policy layer and move the row accordingly, in the caller's transaction."""
    req = to_request(row, case)
    try:
        decision = policies.evaluate(req, context(session, row, case, policy), policy)
    except policies.PolicyInputError as exc:
        raise ValidationFailed(
            f"the policy layer refused the action: {exc}", fields={"action": str(exc)}
        ) from exc
    base: dict[str, Any] = {
        "policy_version": decision.policy_version,
        "action_hash": decision.action_hash,
        "decision": _decision_json(decision),
    }
    if decision.outcome == policies.Outcome.forbidden:
        _bump(session, row, **base, status=FORBIDDEN, due_at=None)
    elif decision.outcome == policies.Outcome.auto_execute:
        _bump(session, row, **base, status=APPROVED, due_at=None)
        _release(session, row, case, settings, reason="auto_execute")
    else:
        assert decision.approval is not None
        _bump(
            session,
            row,
            **base,
            status=PENDING,
            due_at=to_ts(decision.approval.due_at),
            reminded_at=None,
        )
        _notify_approvers(session, settings, row, "approval.requested")
    audit.append(
        session,
        actor,
        "action.decided",
        {
            "action_id": row.id,
            "action_type": row.action_type,
            "outcome": decision.outcome.value,
            "reasons": [r.policy_id for r in decision.reasons],
            "policy_version": decision.policy_version,
            "action_hash": decision.action_hash,
            "decision_hash": decision.decision_hash,
        },
        case_id=row.case_id,
    )
    return decision


def _decision_json(d: policies.Decision) -> dict[str, Any]:
    out: dict[str, Any] = {
        "outcome": d.outcome.value,
        "reasons": [
            {"policy_id": r.policy_id, "explanation": r.explanation, "effect": r.effect}
            for r in d.reasons
        ],
        "policy_version": d.policy_version,
        "policy_set_id": d.policy_set_id,
        "decision_hash": d.decision_hash,
        "exposure": d.exposure.model_dump(mode="json"),
    }
    if d.approval is not None:
        a = d.approval
        out["approval"] = {
            "min_approvals": a.min_approvals,
            "eligible_roles": list(a.eligible_roles),
            "named_approvers": list(a.named_approvers),
            "role_mix": [
                {"policy_id": m.policy_id, "one_of_roles": list(m.one_of_roles)} for m in a.role_mix
            ],
            "quorum": [{"policy_id": r.policy_id, "explanation": r.explanation} for r in a.quorum],
            "sla_seconds": a.sla.total_seconds(),
            "due_at": to_ts(a.due_at),
        }
    return out


def _notify_approvers(
    session: Session, settings: Settings, row: ActionRow, event: str, **extra: Any
) -> None:
    """Tell the approvers (``approval_webhook_url``: a chat or mail relay) that an approval
    waits (``approval.requested``, again after an edit or a policy change), is due soon
    (``approval.reminder``), went to the next authority level (``approval.escalated``) or
    ran out (``approval.expired``), through the outbox in the caller's transaction. Nothing
    when no URL is set. The event id carries the action's version, so each state of an
    action is told once however often a sweep runs. Amounts go out as the action states
    them; no case text, only ids (the relay may be a chat channel)."""
    if not settings.approval_webhook_url:
        return
    decision = row.decision or {}
    approval = decision.get("approval") or {}
    fields: dict[str, Any] = {
        "action_id": row.id,
        "action_type": row.action_type,
        # as the action states it (the column is padded to four decimals)
        "amount": (row.body or {}).get("amount", None if row.amount is None else str(row.amount)),
        "currency": row.currency,
        "customer_id": row.customer_id,
        "requested_by": row.requested_by,
        "due_at": row.due_at,
        "escalation_level": row.escalation_level,
        "eligible_roles": approval.get("eligible_roles", []),
        "min_approvals": approval.get("min_approvals"),
        "reasons": [r.get("explanation") for r in decision.get("reasons", [])],
        "inbox_url": webhooks.console_link(settings, "approvals"),
    }
    webhooks.send(
        session,
        settings.approval_webhook_url,
        event,
        f"{event}:{row.id}:{row.version}",
        case_id=row.case_id,
        **(fields | extra),  # ``extra`` wins: an expiry says when it was due
    )


def _release(
    session: Session, row: ActionRow, case: CaseIn, settings: Settings, reason: str
) -> None:
    """Write the execution message to the outbox in the caller's transaction."""
    event_id = f"action.execute:{row.id}:{(row.action_hash or '')[:16]}"
    if settings.action_webhook_url:
        approvals = session.scalars(
            select(ActionApproval).where(
                ActionApproval.action_id == row.id,
                ActionApproval.action_hash == row.action_hash,
                ActionApproval.decision == "approved",
            )
        ).all()
        webhooks.send(
            session,
            settings.action_webhook_url,
            "action.execute",
            event_id,
            case_id=row.case_id,
            action_id=row.id,
            action=row.body,
            source={"system": case.source.system, "case_id": case.source.case_id},
            policy_version=row.policy_version,
            action_hash=row.action_hash,
            released_by=reason,
            approvals=[{"approver": a.approver_id, "at": a.created_at} for a in approvals],
        )
    audit.append(
        session,
        audit.SYSTEM,
        "action.released",
        {
            "action_id": row.id,
            "event_id": event_id,
            "reason": reason,
            "delivered_via": "webhook" if settings.action_webhook_url else "pull (GET /v1/actions)",
        },
        case_id=row.case_id,
    )


# ---------------------------------------------------------------- agent operations


def _check_case_open(session: Session, case_row: Case) -> None:
    """Refuse action changes on a case that is not open. The case row is re-read under a row
    lock (PostgreSQL; SQLite has one writer anyway) so that a concurrent resolve, which takes
    the same lock in :func:`transition_case`, cannot slip between this check and the commit
    and leave an action awaiting approval on a resolved case."""
    session.refresh(case_row, with_for_update=True)
    if case_row.status in (Status.received.value, Status.triaging.value, Status.resolved.value):
        raise Conflict(
            f"actions cannot change while the case is {case_row.status}", field="case.status"
        )


def request(
    session: Session,
    action_id: str,
    *,
    actor: Actor,
    policy: policies.PolicySet,
    settings: Settings,
    expected_version: int | None = None,
) -> ActionRow:
    """An agent accepts a proposed action: it is requested and decided by the policy layer."""
    row, case_row, case = _load(session, action_id)
    _check_case_open(session, case_row)
    if row.status != PROPOSED:
        raise Conflict(
            f"only proposed actions can be requested; this one is {row.status}", field="status"
        )
    _bump(
        session,
        row,
        expected_version,
        requested_by=actor.id,
        accepted_by=actor.id if row.origin == "suggestion" else None,
    )
    audit.append(
        session,
        actor,
        "action.requested",
        {"action_id": row.id, "action_type": row.action_type},
        case_id=row.case_id,
    )
    _decide(session, row, case_row, case, actor, policy, settings)
    return row


def create(
    session: Session,
    case_id: str,
    action: ProposedAction,
    *,
    actor: Actor,
    policy: policies.PolicySet,
    settings: Settings,
) -> ActionRow:
    """An agent proposes an action of their own; it is requested and decided at once."""
    case_row = cases.get(session, case_id)
    _check_case_open(session, case_row)
    case = CaseIn.model_validate(case_row.payload)
    amount, currency = _money(action)
    now = now_ts()
    row = ActionRow(
        id=new_id(),
        case_id=case_id,
        customer_id=case.references.customer.id,
        origin="agent",
        suggestion_revision=None,
        action_type=action.type.value,
        body=action.model_dump(mode="json"),
        amount=amount,
        currency=currency,
        material=action.type in MATERIAL_ACTIONS,
        status=PROPOSED,
        proposed_by=actor.id,
        requested_by=actor.id,
        created_at=now,
        updated_at=now,
        version=1,
        escalation_level=0,
    )
    session.add(row)
    session.flush()
    audit.append(
        session, actor, "action.created", {"action_id": row.id, "action": row.body}, case_id=case_id
    )
    _decide(session, row, case_row, case, actor, policy, settings)
    return row


def edit(
    session: Session,
    action_id: str,
    action: ProposedAction,
    *,
    actor: Actor,
    policy: policies.PolicySet,
    settings: Settings,
    expected_version: int | None = None,
) -> ActionRow:
    """Change an action. Its hash changes, so every earlier approval stops counting."""
    row, case_row, case = _load(session, action_id)
    _check_case_open(session, case_row)
    if row.status not in EDITABLE:
        raise Conflict(f"an action that is {row.status} cannot be edited", field="status")
    if action.type.value != row.action_type:
        raise ValidationFailed(
            "an edit cannot change the action type; cancel and create one",
            fields={"action.type": f"must stay {row.action_type}"},
        )
    amount, currency = _money(action)
    old_hash = row.action_hash
    was_proposed = row.status == PROPOSED
    _bump(
        session,
        row,
        expected_version,
        body=action.model_dump(mode="json"),
        amount=amount,
        currency=currency,
        last_edited_by=actor.id,
        requested_by=row.requested_by or actor.id,
    )
    audit.append(
        session,
        actor,
        "action.edited",
        {
            "action_id": row.id,
            "action": row.body,
            "previous_hash": old_hash,
            "approvals_voided": not was_proposed,
        },
        case_id=row.case_id,
    )
    if not was_proposed:
        _decide(session, row, case_row, case, actor, policy, settings)
    return row


def cancel(session: Session, action_id: str, *, actor: Actor, reason: str) -> ActionRow:
    row, _case_row, _case = _load(session, action_id)
    if row.status not in EDITABLE:
        raise Conflict(f"an action that is {row.status} cannot be cancelled", field="status")
    _cancel(session, row, actor, reason)
    return row


def _cancel(session: Session, row: ActionRow, actor: Actor, reason: str) -> None:
    _bump(session, row, status=CANCELLED, outcome_reason=reason)
    audit.append(
        session,
        actor,
        "action.cancelled",
        {"action_id": row.id, "reason": reason},
        case_id=row.case_id,
    )


NOT_TAKEN = "not taken: the case was resolved"


def transition_case(
    session: Session,
    case_id: str,
    target: Status,
    *,
    actor: Actor,
    reason: str | None = None,
    resolution: str | None = None,
    expected_version: int | None = None,
) -> Case:
    """A person moves a case (:func:`triage.cases.human_transition`); resolving it also settles
    its actions, in the same transaction.

    A resolved case is final, so resolving is refused (:class:`Conflict`, field ``actions``)
    while an action awaits approval: the approvers' decision would land on a closed case, and a
    rejection would leave it closed with a remedy nobody carries out. Withdraw the request or
    wait for the decision first. Suggested actions nobody requested (``proposed``) are
    cancelled as not taken, each with an ``action.cancelled`` event by the person resolving.
    Decided actions (approved, executed, rejected, ...) are left as they are.
    """
    open_actions: list[ActionRow] = []
    if target == Status.resolved:
        # the lock request/create/edit take in _check_case_open: no action becomes pending
        # between the check below and the commit
        session.refresh(cases.get(session, case_id), with_for_update=True)
        open_actions = list(
            session.scalars(
                select(ActionRow)
                .where(ActionRow.case_id == case_id, ActionRow.status.in_(OPEN))
                .order_by(ActionRow.id)
            )
        )
        waiting = [a for a in open_actions if a.status == PENDING]
        if waiting:
            names = ", ".join(f"{a.action_type} {a.id}" for a in waiting)
            raise Conflict(
                f"{len(waiting)} action(s) of this case await approval ({names}): wait for "
                "the approvers' decision or withdraw the request before resolving",
                field="actions",
            )
    row = cases.human_transition(
        session,
        case_id,
        target,
        actor=actor,
        reason=reason,
        resolution=resolution,
        expected_version=expected_version,
    )
    for action in open_actions:
        _cancel(session, action, actor, NOT_TAKEN)
    if target == Status.resolved:
        _notify_resolved(session, row)
    return row


def _notify_resolved(session: Session, row: Case) -> None:
    """Tell the system that submitted the case how it ended (``case.resolved`` to its
    ``callback_url``, if any), in the resolving transaction through the outbox: the
    resolution, who resolved it, the final routing and every action's outcome, so the source
    system can close its own exception (release a held invoice, say). A case resolves once,
    so the event id is the case's."""
    if not row.callback_url:
        return
    acts = session.scalars(
        select(ActionRow).where(ActionRow.case_id == row.id).order_by(ActionRow.id)
    ).all()
    webhooks.notify_submitter(
        session,
        row,
        "case.resolved",
        f"case.resolved:{row.id}",
        status=Status.resolved.value,
        resolution=row.resolution,
        resolved_at=row.resolved_at,
        resolved_by=row.assignee,
        queue=row.queue,
        category=row.category,
        priority=row.priority,
        actions=[
            {
                "action_id": a.id,
                "type": a.action_type,
                "status": a.status,
                "amount": None if a.amount is None else str(a.amount),
                "currency": a.currency,
            }
            for a in acts
        ],
    )


# ---------------------------------------------------------------- approver operations


def _approvals(session: Session, row: ActionRow) -> list[ActionApproval]:
    return list(
        session.scalars(
            select(ActionApproval).where(
                ActionApproval.action_id == row.id, ActionApproval.decision == "approved"
            )
        )
    )


def _policy_approvals(rows: list[ActionApproval]) -> list[policies.Approval]:
    return [
        policies.Approval(
            approver=policies.Principal(id=a.approver_id, roles=frozenset(a.approver_roles or [])),
            action_hash=a.action_hash,
            approved_at=parse_ts(a.created_at),
        )
        for a in rows
    ]


def approval_view(
    session: Session, row: ActionRow, approver: policies.Principal, policy: policies.PolicySet
) -> dict[str, Any]:
    """What an approver needs: may I approve (and if not, why), and the quorum progress."""
    _row, _case_row, case = _load(session, row.id)
    req = to_request(row, case)
    ctx = context(session, row, case, policy)
    existing = _policy_approvals(_approvals(session, row))
    check = policies.can_approve(approver, req, ctx, existing, policy)
    quorum = policies.quorum_status(req, ctx, existing, policy)
    return {
        "can_approve": check.allowed,
        "why_not": [str(r) for r in check.reasons] if not check.allowed else [],
        "quorum": {
            "valid_approvals": quorum.valid_approvals,
            "required_approvals": quorum.required_approvals,
            "counted_approvers": list(quorum.counted_approvers),
            "unmet": [str(r) for r in quorum.unmet],
        },
    }


@dataclass
class _Reviewed:
    row: ActionRow
    case: CaseIn
    req: policies.ActionRequest
    ctx: policies.DecisionContext
    approver: policies.Principal


def _review(
    session: Session,
    action_id: str,
    actor: Actor,
    authorities: list[str],
    action_hash: str,
    policy: policies.PolicySet,
    verb: str,
) -> _Reviewed:
    """What approving and rejecting share: the action is pending, it is the exact action the
    approver reviewed (same hash, else 409), and the policy lets this person decide on it
    (segregation of duties, authority; else 403 with the policy's reasons)."""
    row, _case_row, case = _load(session, action_id)
    if row.status != PENDING:
        raise Conflict(
            f"only actions pending approval can be {verb}; this one is {row.status}",
            field="status",
        )
    if action_hash != row.action_hash:
        raise Conflict(
            "the action changed since you loaded it; review it again",
            field="action_hash",
            current_hash=row.action_hash,
        )
    req = to_request(row, case)
    ctx = context(session, row, case, policy)
    approver = principal_for(actor, authorities)
    check = policies.can_approve(
        approver, req, ctx, _policy_approvals(_approvals(session, row)), policy
    )
    if not check.allowed:
        # The caller audits the refusal in its own transaction (this one rolls back).
        raise PermissionDenied(
            "; ".join(str(r) for r in check.reasons) or "not allowed",
            reasons=[
                {"policy_id": r.policy_id, "explanation": r.explanation} for r in check.reasons
            ],
        )
    return _Reviewed(row, case, req, ctx, approver)


def _record_decision(
    session: Session,
    row: ActionRow,
    actor: Actor,
    approver: policies.Principal,
    decision: str,
    reason: str | None,
) -> None:
    """One approver's decision, bound to the hash of the action as they saw it."""
    session.add(
        ActionApproval(
            action_id=row.id,
            approver_id=actor.id,
            approver_roles=sorted(approver.roles),
            decision=decision,
            reason=reason,
            action_hash=row.action_hash or "",
            created_at=now_ts(),
        )
    )
    session.flush()


def approve(
    session: Session,
    action_id: str,
    *,
    actor: Actor,
    authorities: list[str],
    action_hash: str,
    policy: policies.PolicySet,
    settings: Settings,
    reason: str | None = None,
) -> ActionRow:
    """Record one approval of the exact action the approver saw; release it when quorum is met.

    ``action_hash`` is the hash shown to the approver: if the action changed since, the approval
    is refused (409) instead of being applied to something the approver never saw.
    """
    r = _review(session, action_id, actor, authorities, action_hash, policy, "approved")
    row, case, req, ctx, approver = r.row, r.case, r.req, r.ctx, r.approver
    _bump(session, row)  # claims the row: a racing approval or rejection gets a 409
    _record_decision(session, row, actor, approver, "approved", reason)
    quorum = policies.quorum_status(req, ctx, _policy_approvals(_approvals(session, row)), policy)
    audit.append(
        session,
        actor,
        "action.approved",
        {
            "action_id": row.id,
            "action_hash": row.action_hash,
            "reason": reason,
            "valid_approvals": quorum.valid_approvals,
            "required_approvals": quorum.required_approvals,
            "released": quorum.satisfied,
        },
        case_id=row.case_id,
    )
    if quorum.satisfied:
        _bump(session, row, status=APPROVED, due_at=None)
        _release(session, row, case, settings, reason="quorum met")
    return row


def reject(
    session: Session,
    action_id: str,
    *,
    actor: Actor,
    authorities: list[str],
    action_hash: str,
    reason: str,
    policy: policies.PolicySet,
) -> ActionRow:
    """An eligible approver rejects the action (a reason is mandatory)."""
    if not reason or not reason.strip():
        raise ValidationFailed("a rejection needs a reason", fields={"reason": "required"})
    r = _review(session, action_id, actor, authorities, action_hash, policy, "rejected")
    row, approver = r.row, r.approver
    _bump(session, row, status=REJECTED, outcome_reason=reason, due_at=None)
    _record_decision(session, row, actor, approver, "rejected", reason)
    audit.append(
        session,
        actor,
        "action.rejected",
        {"action_id": row.id, "reason": reason},
        case_id=row.case_id,
    )
    return row


def audit_refusal(
    session: Session, action_id: str, actor: Actor, verb: str, exc: PermissionDenied
) -> None:
    """Record a refused approval or rejection (SoD, authority) on the audit trail."""
    row = session.get(ActionRow, action_id)
    audit.append(
        session,
        actor,
        f"action.{verb}_refused",
        {
            "action_id": action_id,
            "reason": exc.message,
            "reasons": [r.get("policy_id") for r in exc.details.get("reasons", [])],
        },
        case_id=row.case_id if row else None,
    )


def report_outcome(
    session: Session, action_id: str, *, actor: Actor, done: bool, reason: str | None
) -> ActionRow:
    """The orchestration layer reports execution: closes the loop on the action and the case."""
    row = session.get(ActionRow, action_id)
    if row is None:
        raise NotFound(f"action {action_id} not found")
    if row.status in (EXECUTED, FAILED):
        wanted = EXECUTED if done else FAILED
        if row.status == wanted:
            return row  # a retried report is a no-op
        raise Conflict(f"outcome already reported as {row.status}", field="status")
    if row.status != APPROVED:
        raise Conflict(
            f"only approved actions can be executed; this one is {row.status}", field="status"
        )
    if not done and not (reason and reason.strip()):
        raise ValidationFailed("a failed outcome needs a reason", fields={"reason": "required"})
    _bump(
        session,
        row,
        status=EXECUTED if done else FAILED,
        outcome_reason=reason,
        executed_at=now_ts(),
    )
    audit.append(
        session,
        actor,
        "action.executed" if done else "action.failed",
        {"action_id": row.id, "reason": reason},
        case_id=row.case_id,
    )
    return row


# ---------------------------------------------------------------- SLA timers


def sweep_sla(session: Session, settings: Settings, now: datetime | None = None) -> dict[str, int]:
    """Remind, escalate and expire pending approvals past their timers (audited, idempotent).

    - reminder once ``approval_reminder_fraction`` of the SLA has passed;
    - at the due time: escalate to the next authority level (``approval_escalation_roles``)
      with a fresh SLA, up to ``approval_max_escalations`` times;
    - after the last escalation's due time: expire.
    """
    now = now or utcnow()
    counts = {"reminded": 0, "escalated": 0, "expired": 0}
    rows = session.scalars(
        select(ActionRow).where(ActionRow.status == PENDING, ActionRow.due_at.is_not(None))
    ).all()
    for row in rows:
        assert row.due_at is not None
        due_ts = row.due_at  # expiry clears it; the notification still says when it was due
        due = parse_ts(row.due_at)
        sla = timedelta(
            seconds=float((row.decision or {}).get("approval", {}).get("sla_seconds", 86400))
        )
        if now >= due:
            if row.escalation_level >= settings.approval_max_escalations:
                _bump(
                    session, row, status=EXPIRED, outcome_reason="approval SLA expired", due_at=None
                )
                audit.append(
                    session,
                    audit.SYSTEM,
                    "action.expired",
                    {"action_id": row.id, "due_at": row.due_at},
                    case_id=row.case_id,
                )
                _notify_approvers(session, settings, row, "approval.expired", due_at=due_ts)
                counts["expired"] += 1
                continue
            ladder = settings.approval_escalation_roles
            level = row.escalation_level + 1
            to_roles = ladder[min(level, len(ladder)) - 1 :] if ladder else []
            _bump(
                session,
                row,
                escalation_level=level,
                due_at=to_ts(now + sla),
                reminded_at=None,
                escalated_to=to_roles,
            )
            audit.append(
                session,
                audit.SYSTEM,
                "action.escalated",
                {"action_id": row.id, "level": level, "to_roles": to_roles},
                case_id=row.case_id,
            )
            _notify_approvers(session, settings, row, "approval.escalated", to_roles=to_roles)
            counts["escalated"] += 1
        elif row.reminded_at is None and now >= due - sla * (
            1 - settings.approval_reminder_fraction
        ):
            _bump(session, row, reminded_at=to_ts(now))
            audit.append(
                session,
                audit.SYSTEM,
                "action.reminder",
                {"action_id": row.id, "due_at": row.due_at},
                case_id=row.case_id,
            )
            _notify_approvers(session, settings, row, "approval.reminder")
            counts["reminded"] += 1
    return counts


def recheck_open(
    session: Session, policy: policies.PolicySet, actor: Actor, settings: Settings
) -> dict[str, int]:
    """After a policy change, re-decide every open request with the batch evaluator.

    The action hash includes the policy version, so approvals given under the old policy stop
    counting; actions whose outcome changed are moved and audited.
    """
    rows = session.scalars(select(ActionRow).where(ActionRow.status == PENDING)).all()
    if not rows:
        return {"checked": 0, "changed": 0}
    items = []
    for row in rows:
        case = CaseIn.model_validate(cases.get(session, row.case_id).payload)
        items.append((to_request(row, case), context(session, row, case, policy)))
    decisions = policies.evaluate_many(items, policy)
    changed = 0
    for (req, _ctx), row, d in zip(items, rows, decisions, strict=True):
        new_status = {
            policies.Outcome.forbidden: FORBIDDEN,
            policies.Outcome.auto_execute: APPROVED,
        }.get(d.outcome, PENDING)
        if d.action_hash == row.action_hash and new_status == row.status:
            continue
        changed += 1
        due = to_ts(d.approval.due_at) if d.approval is not None else None
        _bump(
            session,
            row,
            action_hash=d.action_hash,
            policy_version=d.policy_version,
            decision=_decision_json(d),
            status=new_status,
            due_at=due,
        )
        audit.append(
            session,
            actor,
            "action.rechecked",
            {
                "action_id": row.id,
                "outcome": d.outcome.value,
                "policy_version": d.policy_version,
                "approvals_voided": True,
            },
            case_id=row.case_id,
        )
        if new_status == APPROVED:
            case = CaseIn.model_validate(cases.get(session, req.case_id).payload)
            _release(session, row, case, settings, reason="auto_execute after policy change")
        elif new_status == PENDING:  # approvals given so far no longer count: ask again
            _notify_approvers(session, settings, row, "approval.requested")
    return {"checked": len(rows), "changed": changed}


def list_actions(
    session: Session,
    *,
    status: str | None = None,
    case_id: str | None = None,
    customer_id: str | None = None,
    limit: int = 50,
    after: str | None = None,
) -> list[ActionRow]:
    """Actions in id order (oldest first), keyset-paginated after the id ``after``; every
    filter is part of the query, so a page is never cut short by a filter applied later."""
    stmt = cases.where_equal(
        select(ActionRow),
        (ActionRow.status, status),
        (ActionRow.case_id, case_id),
        (ActionRow.customer_id, customer_id),
    )
    if after:
        stmt = stmt.where(ActionRow.id > after)
    return list(session.scalars(stmt.order_by(ActionRow.id).limit(limit)))


def approvals_of(session: Session, action_id: str) -> list[ActionApproval]:
    return list(
        session.scalars(
            select(ActionApproval)
            .where(ActionApproval.action_id == action_id)
            .order_by(ActionApproval.id)
        )
    )


# ---------------------------------------------------------------- policy loading and preview

_POLICIES: dict[str, policies.PolicySet] = {}


def load_policy(settings: Settings) -> policies.PolicySet:
    """The active policy bundle, loaded once per process (PolicySet is immutable)."""
    key = str(settings.policy_dir or "default")
    if key not in _POLICIES:
        _POLICIES[key] = (
            policies.load_policy_set(settings.policy_dir)
            if settings.policy_dir
            else policies.load_default_policy()
        )
    return _POLICIES[key]


def record_policy_activation(
    session: Session, policy: policies.PolicySet, settings: Settings
) -> bool:
    """Audit a change of the active policy (id, version, digest) and re-check open approvals.

    Called at start-up; returns True when the policy differs from the last one recorded.
    """
    from triage.models import AuditEvent

    last = session.scalar(
        select(AuditEvent.payload)
        .where(AuditEvent.action == "policy.activated")
        .order_by(AuditEvent.seq.desc())
        .limit(1)
    )
    current = {"policy_set_id": policy.id, "version": policy.version, "digest": policy.digest}
    if last is not None and all(f'"{k}":"{v}"' in last for k, v in current.items()):
        return False
    audit.append(session, audit.SYSTEM, "policy.activated", current)
    result = recheck_open(session, policy, audit.SYSTEM, settings)
    audit.append(session, audit.SYSTEM, "policy.rechecked", result)
    return True


class CedarGate:
    """The pipeline's ``PolicyGate``: a preview of what the policy says about each proposal.

    The binding decision is taken when an agent requests the action, with the full context
    (exposure ledger, FX table, customer flags); this preview has the case facts only.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def evaluate(self, case: CaseIn, actions: list[ProposedAction]) -> list[Any]:
        return self.evaluate_batch([(case, actions)])[0]

    def evaluate_batch(
        self, items: Sequence[tuple[CaseIn, list[ProposedAction]]]
    ) -> list[list[Any]]:
        """Previews for several cases with one batched policy call (``policies.evaluate_many``).

        An action the policy layer cannot read gets ``needs_review`` with the reason, alone:
        the others are decided as usual.
        """
        from triage.pipeline import ActionDecision

        policy = load_policy(self.settings)
        as_of = utcnow()
        slots: list[tuple[int, int, str, Any]] = []  # case index, action index, type, request
        for ci, (case, actions) in enumerate(items):
            for ai, action in enumerate(actions):
                try:
                    req: Any = self._request(case, action)
                except (policies.PolicyInputError, ValidationError) as exc:
                    req = exc
                slots.append((ci, ai, action.type.value, req))
        ok = [r for *_, r in slots if not isinstance(r, Exception)]
        ctx = policies.DecisionContext(as_of=as_of)
        try:
            decided = iter(policies.evaluate_many([(r, ctx) for r in ok], policy))
        except policies.PolicyInputError:
            # One unreadable item fails the batch call: decide one by one to isolate it.
            singles: list[Any] = []
            for r in ok:
                try:
                    singles.append(policies.evaluate(r, ctx, policy))
                except policies.PolicyInputError as exc:
                    singles.append(exc)
            decided = iter(singles)
        out: list[list[Any]] = [[] for _ in items]
        for ci, ai, action_type, req in slots:
            got = req if isinstance(req, Exception) else next(decided)
            if isinstance(got, Exception):
                outcome = "needs_review"
                reasons = [{"policy_id": "input", "explanation": str(got)}]
            else:
                outcome = got.outcome.value
                reasons = [
                    {"policy_id": r.policy_id, "explanation": r.explanation} for r in got.reasons
                ]
            out[ci].append(ActionDecision(ai, action_type, outcome, reasons, policy.version))
        return out

    @staticmethod
    def _request(case: CaseIn, action: ProposedAction) -> policies.ActionRequest:
        amount, currency = _money(action)
        return policies.ActionRequest(
            action_type=action.type.value,
            arguments=_arguments(action),
            amount=amount,
            currency=currency,
            case_id=case.source.case_id,
            customer_id=case.references.customer.id,
            customer_tier=case.references.customer.tier.value,
            evidence_ids=tuple(action.evidence),
            origin="suggestion",
            requested_by=audit.PIPELINE.id,
            proposed_by=audit.PIPELINE.id,
        )
