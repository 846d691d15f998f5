"""Case slice: intake (single and batch, idempotent), reads, listing, lifecycle and SLA.

Services never commit; the caller owns the transaction. Every state change is written together
with its audit event in the caller's transaction, so both land or neither does.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from pydantic import ValidationError
from sqlalchemy import Select, and_, func, or_, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value

from contracts.case import CaseIn, CustomerTier, ExceptionType
from triage import audit, webhooks
from triage.audit import Actor
from triage.auth import Role
from triage.common import canonical_json, new_id, now_ts, parse_ts, to_ts, utcnow
from triage.errors import (
    IdempotencyConflict,
    InvalidTransition,
    NotFound,
    PermissionDenied,
    ValidationFailed,
)
from triage.lifecycle import Status, allowed
from triage.models import ApiKey, AuditEvent, Case, ConsoleUser
from triage.models import Suggestion as SuggestionRow
from triage.settings import Settings

# Provisional priority before the classifier has run: by exception type, bumped one level
# for tier-A customers and for large amounts. The pipeline replaces it with the prediction.
_BASE_PRIORITY = {
    ExceptionType.failed_integration: 2,
    ExceptionType.shortage: 2,
    ExceptionType.damaged_goods: 2,
    ExceptionType.address_issue: 2,
    ExceptionType.duplicate_invoice: 3,
    ExceptionType.pricing_mismatch: 3,
    ExceptionType.carrier_delay: 3,
    ExceptionType.partial_shipment: 3,
    ExceptionType.return_request: 4,
    ExceptionType.other: 4,
}
LARGE_AMOUNT = Decimal("10000")


def rule_priority(case: CaseIn) -> str:
    """The rule-based priority (the fallback when no trained model is active)."""
    return _rule_priority(case)[0]


def rule_priority_reasons(case: CaseIn) -> list[str]:
    """Why :func:`rule_priority` says what it says: one line per rule that applied."""
    return _rule_priority(case)[1]


def _rule_priority(case: CaseIn) -> tuple[str, list[str]]:
    level = _BASE_PRIORITY[case.exception_type]
    reasons = [f"{case.exception_type.value.replace('_', ' ')} cases start at P{level}"]
    if case.references.customer.tier == CustomerTier.A:
        level -= 1
        reasons.append("tier A customer: one level higher")
    if case.amount_in_dispute is not None and case.amount_in_dispute.amount >= LARGE_AMOUNT:
        level -= 1
        reasons.append(f"amount in dispute of {LARGE_AMOUNT:,} or more: one level higher")
    return f"P{max(1, level)}", reasons


def request_hash(case: CaseIn) -> str:
    """SHA-256 of the case's canonical JSON: equal payloads hash equal whatever their key order."""
    return hashlib.sha256(canonical_json(case.model_dump(mode="json")).encode()).hexdigest()


def sla_due(settings: Settings, created: datetime, priority: str) -> tuple[str, str]:
    triage_h = settings.sla_triage_hours[priority]
    resolve_h = settings.sla_resolution_hours[priority]
    return to_ts(created + timedelta(hours=triage_h)), to_ts(created + timedelta(hours=resolve_h))


@dataclass(frozen=True)
class CaseRef:
    id: str
    status: str


@dataclass(frozen=True)
class IntakeResult:
    case: CaseRef
    replayed: bool


def _scoped_key(actor: Actor, key: str | None) -> str | None:
    # Idempotency keys are scoped to the caller so two integrations cannot collide by accident.
    return None if key is None else f"{actor.id}:{key}"


_EXISTING_COLS = (Case.id, Case.status, Case.request_hash, Case.idempotency_key)


def _existing(session: Session, case: CaseIn, scoped_key: str | None) -> Any:
    """The stored case this submission repeats, if any (one indexed query).

    A match on the Idempotency-Key wins over a match on the source ids.
    """
    by_source = and_(
        Case.source_system == case.source.system, Case.source_case_id == case.source.case_id
    )
    cond = by_source if scoped_key is None else or_(Case.idempotency_key == scoped_key, by_source)
    rows = session.execute(select(*_EXISTING_COLS).where(cond).limit(2)).all()
    if not rows:
        return None
    return next((r for r in rows if scoped_key and r.idempotency_key == scoped_key), rows[0])


def _replay_or_conflict(
    existing: Any, digest: str, scoped_key: str | None, case: CaseIn
) -> IntakeResult:
    if existing.request_hash == digest:
        return IntakeResult(CaseRef(existing.id, existing.status), replayed=True)
    if scoped_key is not None and existing.idempotency_key == scoped_key:
        raise IdempotencyConflict(
            "Idempotency-Key was already used for a different payload",
            field="Idempotency-Key",
            existing_case_id=existing.id,
        )
    raise IdempotencyConflict(
        f"source case ({case.source.system}, {case.source.case_id}) was already submitted "
        "with different content",
        field="source.case_id",
        existing_case_id=existing.id,
    )


# RETURNING tells "inserted" from "skipped" reliably on both engines (rowcount does not).
# Built once: constructing the statement per request showed up in profiles.
_INSERT_CASE = {
    "postgresql": pg_insert(Case).on_conflict_do_nothing().returning(Case.id),
    "sqlite": sqlite_insert(Case).on_conflict_do_nothing().returning(Case.id),
}


def _insert_ignoring_duplicates(session: Session) -> Any:
    return _INSERT_CASE[session.get_bind().dialect.name]


def submit(
    session: Session,
    case: CaseIn,
    *,
    actor: Actor,
    settings: Settings,
    idempotency_key: str | None = None,
) -> IntakeResult:
    """Store a new case (status ``received``) with its audit event, or return the original.

    Replays (same Idempotency-Key or same source ids, same payload) return the stored case with
    ``replayed=True``; the same key or source ids with a different payload raise
    :class:`IdempotencyConflict`. If a concurrent identical submission wins the insert race,
    the unique constraints raise ``IntegrityError``: retry in a fresh transaction (see
    :func:`triage.intake.submit_one`) and the retry resolves to a replay or a conflict.
    """
    dumped = case.model_dump(mode="json")
    digest = hashlib.sha256(canonical_json(dumped).encode()).hexdigest()
    scoped = _scoped_key(actor, idempotency_key)
    created = utcnow()
    priority = rule_priority(case)
    triage_due, resolution_due = sla_due(settings, created, priority)
    refs = case.references
    case_id = new_id()
    # Insert first and let the unique constraints answer "seen before?": the common case (a new
    # case) costs one statement. ON CONFLICT DO NOTHING (SQLite and PostgreSQL) also settles
    # two identical submissions racing each other without an error. Core, not the ORM: its
    # unit of work costs more than the whole INSERT on this path.
    result = session.connection().execute(
        _insert_ignoring_duplicates(session),
        {
            "id": case_id,
            "source_system": case.source.system,
            "source_case_id": case.source.case_id,
            "idempotency_key": scoped,
            "request_hash": digest,
            "schema_version": case.schema_version,
            "exception_type": case.exception_type.value,
            "customer_id": refs.customer.id,
            "customer_tier": refs.customer.tier.value,
            "warehouse_id": refs.warehouse_id,
            "carrier_id": refs.carrier_id,
            "order_id": refs.order_id,
            "invoice_id": refs.invoice_id,
            "amount": case.amount_in_dispute.amount if case.amount_in_dispute else None,
            "currency": case.currency,
            "payload": dumped,
            "callback_url": str(case.callback_url) if case.callback_url else None,
            "status": Status.received.value,
            "priority": priority,
            "created_at": to_ts(created),
            "updated_at": to_ts(created),
            "occurred_at": to_ts(case.occurred_at),
            "triage_due_at": triage_due,
            "resolution_due_at": resolution_due,
            "triage_sla_breached": False,
            "resolution_sla_breached": False,
            "triage_attempts": 0,
            "suggestion_revision": 0,
            "submitted_by": actor.id,
            "version": 1,
        },
    )
    if result.first() is None:
        existing = _existing(session, case, scoped)
        if existing is None:  # pragma: no cover - a constraint fired but no row matches
            raise IdempotencyConflict("the case conflicts with a stored case", field="source")
        return _replay_or_conflict(existing, digest, scoped, case)
    audit.append(
        session,
        actor,
        "case.received",
        {
            "source_system": case.source.system,
            "source_case_id": case.source.case_id,
            "exception_type": case.exception_type.value,
            "request_hash": digest,
            "priority": priority,
        },
        case_id=case_id,
    )
    return IntakeResult(CaseRef(case_id, Status.received.value), replayed=False)


@dataclass
class BatchItemResult:
    index: int
    outcome: str  # created | replayed | invalid | conflict
    case: CaseRef | None = None
    errors: list[dict[str, Any]] = field(default_factory=list)


def field_errors(exc: ValidationError, prefix: Sequence[str | int] = ()) -> list[dict[str, Any]]:
    """Pydantic errors as ``{"field": "lines[0].ordered_qty", "problem": "..."}`` items."""
    out = []
    for err in exc.errors(include_url=False):
        loc = [*prefix, *err["loc"]]
        out.append({"field": format_loc(loc), "problem": err["msg"], "type": err["type"]})
    return out


def format_loc(loc: Sequence[str | int]) -> str:
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += ("." if text else "") + str(part)
    return text


def submit_batch(
    session: Session,
    items: Sequence[Any],
    *,
    actor: Actor,
    settings: Settings,
    idempotency_key: str | None = None,
) -> list[BatchItemResult]:
    """Validate and store each item independently; invalid items are reported, never stored.

    Each valid item goes through :func:`submit` inside its own savepoint, so one conflicting
    item cannot undo the others. With an ``Idempotency-Key`` header, item *i* uses ``key:i``.
    """
    if len(items) > settings.max_batch_items:
        raise ValidationFailed(
            f"a batch holds at most {settings.max_batch_items} items; got {len(items)}",
            fields={"items": f"at most {settings.max_batch_items} items"},
        )
    results: list[BatchItemResult] = []
    for i, raw in enumerate(items):
        try:
            case = CaseIn.model_validate(raw)
        except ValidationError as exc:
            results.append(BatchItemResult(i, "invalid", errors=field_errors(exc)))
            continue
        key = f"{idempotency_key}:{i}" if idempotency_key else None
        try:
            try:
                with session.begin_nested():
                    res = submit(session, case, actor=actor, settings=settings, idempotency_key=key)
            except IntegrityError:
                # A concurrent identical submission committed first: resolve against it.
                existing = _existing(session, case, _scoped_key(actor, key))
                if existing is None:
                    raise
                res = _replay_or_conflict(
                    existing, request_hash(case), _scoped_key(actor, key), case
                )
        except IdempotencyConflict as exc:
            results.append(
                BatchItemResult(
                    i,
                    "conflict",
                    errors=[
                        {
                            "field": exc.details.get("field"),
                            "problem": exc.message,
                            "existing_case_id": exc.details.get("existing_case_id"),
                        }
                    ],
                )
            )
            continue
        results.append(BatchItemResult(i, "replayed" if res.replayed else "created", res.case))
    created = sum(1 for r in results if r.outcome == "created")
    audit.append(
        session,
        actor,
        "case.batch_received",
        {
            "items": len(items),
            "created": created,
            "replayed": sum(1 for r in results if r.outcome == "replayed"),
            "invalid": sum(1 for r in results if r.outcome == "invalid"),
            "conflict": sum(1 for r in results if r.outcome == "conflict"),
        },
    )
    return results


def get(session: Session, case_id: str) -> Case:
    row = session.get(Case, case_id)
    if row is None:
        raise NotFound(f"case {case_id} not found")
    return row


@dataclass(frozen=True)
class CaseFilter:
    status: str | None = None
    exception_type: str | None = None
    customer_id: str | None = None
    warehouse_id: str | None = None
    created_from: str | None = None
    created_to: str | None = None
    assignee: str | None = None
    queue: str | None = None
    priority: str | None = None
    category: str | None = None


def encode_cursor(created_at: str, case_id: str) -> str:
    return base64.urlsafe_b64encode(json.dumps([created_at, case_id]).encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[str, str]:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        created_at, case_id = json.loads(base64.urlsafe_b64decode(padded.encode()))
        parse_ts(created_at)
        return str(created_at), str(case_id)
    except (ValueError, TypeError) as exc:
        raise ValidationFailed(
            "malformed cursor", fields={"cursor": "not a cursor we issued"}
        ) from exc


def where_equal(stmt: Select[Any], *filters: tuple[Any, str | None]) -> Select[Any]:
    """``stmt`` narrowed to rows whose column equals the value, for each ``(column, value)``
    whose value is given (None or empty: no filter)."""
    for column, value in filters:
        if value:
            stmt = stmt.where(column == value)
    return stmt


def list_cases(
    session: Session, f: CaseFilter, *, limit: int, cursor: str | None = None
) -> tuple[list[Case], str | None]:
    """Newest first, keyset-paginated on (created_at, id); returns the rows and the next cursor."""
    stmt = where_equal(
        select(Case),
        (Case.status, f.status),
        (Case.exception_type, f.exception_type),
        (Case.customer_id, f.customer_id),
        (Case.warehouse_id, f.warehouse_id),
        (Case.assignee, f.assignee),
        (Case.queue, f.queue),
        (Case.priority, f.priority),
        (Case.category, f.category),
    )
    if f.created_from:
        stmt = stmt.where(Case.created_at >= f.created_from)
    if f.created_to:
        stmt = stmt.where(Case.created_at < f.created_to)
    if cursor:
        c_at, c_id = decode_cursor(cursor)
        stmt = stmt.where(
            or_(Case.created_at < c_at, and_(Case.created_at == c_at, Case.id < c_id))
        )
    rows = list(
        session.scalars(stmt.order_by(Case.created_at.desc(), Case.id.desc()).limit(limit + 1))
    )
    next_cursor = None
    if len(rows) > limit:
        rows = rows[:limit]
        next_cursor = encode_cursor(rows[-1].created_at, rows[-1].id)
    return rows, next_cursor


def _check_version(row: Case, expected_version: int | None) -> None:
    """``InvalidTransition`` (field ``expected_version``) when the caller saw another version."""
    if expected_version is not None and row.version != expected_version:
        raise InvalidTransition(
            f"case {row.id} changed since version {expected_version} (now {row.version})",
            field="expected_version",
            current_version=row.version,
        )


def _guarded_update(session: Session, row: Case, values: dict[str, Any]) -> None:
    """Write ``values`` (which must bump ``version``) only if the row is still at the version
    loaded, so of two racing writers one loses with ``InvalidTransition``."""
    res = session.execute(
        update(Case)
        .where(Case.id == row.id, Case.version == row.version)
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    if res.rowcount != 1:  # type: ignore[attr-defined]
        raise InvalidTransition(f"case {row.id} was changed concurrently; retry", field="status")
    # The guarded UPDATE wrote exactly ``values`` (autoflush sent any pending change first):
    # record them as the loaded state instead of paying a SELECT to refresh the row.
    for key, value in values.items():
        set_committed_value(row, key, value)


def transition(
    session: Session,
    case_id: str,
    target: Status,
    *,
    actor: Actor,
    by_system: bool,
    reason: str | None = None,
    expected_version: int | None = None,
    extra: dict[str, Any] | None = None,
    mutate: Callable[[Case], None] | None = None,
) -> Case:
    """Move a case to ``target`` if the state machine allows it; audit it in the same transaction.

    The UPDATE is guarded by the row's version, so two racing transitions cannot both win: the
    loser gets :class:`InvalidTransition`.
    """
    row = get(session, case_id)
    current = Status(row.status)
    _check_version(row, expected_version)
    if target not in allowed(current, by_system=by_system):
        options = sorted(s.value for s in allowed(current, by_system=by_system))
        raise InvalidTransition(
            f"cannot move case from {current.value} to {target.value}; "
            f"allowed: {', '.join(options) or 'none'}",
            field="status",
            current=current.value,
            allowed=options,
        )
    now = now_ts()
    values: dict[str, Any] = {
        "status": target.value,
        "status_reason": reason,
        "updated_at": now,
        "version": row.version + 1,
    }
    if target == Status.resolved:
        values["resolved_at"] = now
    _guarded_update(session, row, values)
    if mutate is not None:
        mutate(row)
    audit.append(
        session,
        actor,
        f"case.{target.value}",
        {"from": current.value, "to": target.value, "reason": reason, **(extra or {})},
        case_id=case_id,
    )
    return row


def failed_cases(session: Session, limit: int = 100) -> list[Case]:
    """Cases the pipeline gave up on (``failed``), most recent first: the embedded engine's
    dead letters, re-driven by moving them back to ``received``."""
    return list(
        session.scalars(
            select(Case)
            .where(Case.status == Status.failed.value)
            .order_by(Case.updated_at.desc())
            .limit(limit)
        )
    )


def flag_sla_breaches(
    session: Session,
    *,
    now: str | None = None,
    limit: int = 1000,
    settings: Settings | None = None,
) -> int:
    """Flag (once) and audit every open case past its triage or resolution due time; with
    ``settings`` naming a ``team_webhook_url``, each breach is also queued for the team's
    relay (``case.sla_breached``, once per case and kind, like the flag)."""
    now = now or now_ts()
    flagged = 0
    pre_triage = (Status.received.value, Status.triaging.value)
    late_triage = session.scalars(
        select(Case)
        .where(Case.status.in_(pre_triage), Case.triage_due_at < now, ~Case.triage_sla_breached)
        .limit(limit)
    ).all()
    for row in late_triage:
        if not _flag_once(session, row, Case.triage_sla_breached):
            continue
        audit.append(
            session,
            audit.SYSTEM,
            "case.sla_breached",
            {"kind": "triage", "due_at": row.triage_due_at, "priority": row.priority},
            case_id=row.id,
        )
        _notify_breach(session, settings, row, "triage", row.triage_due_at)
        flagged += 1
    late_resolution = session.scalars(
        select(Case)
        .where(
            Case.status != Status.resolved.value,
            Case.resolution_due_at < now,
            ~Case.resolution_sla_breached,
        )
        .limit(limit)
    ).all()
    for row in late_resolution:
        if not _flag_once(session, row, Case.resolution_sla_breached):
            continue
        audit.append(
            session,
            audit.SYSTEM,
            "case.sla_breached",
            {"kind": "resolution", "due_at": row.resolution_due_at, "priority": row.priority},
            case_id=row.id,
        )
        _notify_breach(session, settings, row, "resolution", row.resolution_due_at)
        flagged += 1
    return flagged


def _notify_breach(
    session: Session, settings: Settings | None, row: Case, kind: str, due_at: str
) -> None:
    event = "case.sla_breached"
    webhooks.notify_team(
        session, settings, row, event, f"{event}:{row.id}:{kind}", kind=kind, due_at=due_at
    )


def _flag_once(session: Session, row: Case, column: Any) -> bool:
    """Set a breach flag only if nobody has: two sweepers (several worker processes on
    PostgreSQL) read the same unflagged rows, but the guarded UPDATE lets one of them win, so
    each breach is audited once."""
    res = session.execute(
        update(Case)
        .where(Case.id == row.id, ~column)
        .values({column.key: True})
        .execution_options(synchronize_session=False)
    )
    set_committed_value(row, column.key, True)
    return bool(res.rowcount == 1)  # type: ignore[attr-defined]


def reprioritise(session: Session, row: Case, priority: str, settings: Settings) -> None:
    """Set a new priority and re-derive SLA due times from the original intake time."""
    if priority == row.priority or priority not in settings.sla_triage_hours:
        return
    triage_due, resolution_due = sla_due(settings, parse_ts(row.created_at), priority)
    row.priority = priority
    row.triage_due_at = triage_due
    row.resolution_due_at = resolution_due


def current_suggestion(session: Session, row: Case) -> SuggestionRow | None:
    if row.suggestion_revision == 0:
        return None
    return session.scalar(
        select(SuggestionRow).where(
            SuggestionRow.case_id == row.id, SuggestionRow.revision == row.suggestion_revision
        )
    )


def human_transition(
    session: Session,
    case_id: str,
    target: Status,
    *,
    actor: Actor,
    reason: str | None = None,
    resolution: str | None = None,
    expected_version: int | None = None,
) -> Case:
    """A person moves a case: claim, release, resolve (needs a resolution), escalate, retry.
    Claiming (to in_review) makes the actor the case's ``assignee``; releasing, escalating or
    retrying clears it; resolving records the resolver there.

    Callers outside this module resolve through :func:`triage.actions.transition_case`, which
    also settles the case's actions (this module sits below the actions layer).
    """
    if target == Status.resolved and not (resolution and resolution.strip()):
        raise ValidationFailed(
            "resolving a case needs a resolution text",
            fields={"resolution": "required when moving to resolved"},
        )
    if target == Status.escalated and not (reason and reason.strip()):
        raise ValidationFailed(
            "escalating a case needs a reason", fields={"reason": "required when escalating"}
        )

    def apply(row: Case) -> None:
        # the claimant holds the case until they release or escalate it; a resolved case
        # keeps who resolved it
        row.assignee = actor.id if target in (Status.in_review, Status.resolved) else None
        if target == Status.resolved:
            row.resolution = resolution
        if target == Status.received:  # an admin/agent retry of a failed case starts afresh
            row.triage_attempts = 0
            row.lease_expires_at = None

    extra = {"resolution": resolution} if target == Status.resolved else None
    return transition(
        session,
        case_id,
        target,
        actor=actor,
        by_system=False,
        reason=reason,
        expected_version=expected_version,
        extra=extra,
        mutate=apply,
    )


# ---------------------------------------------------------------- assignment

ASSIGNABLE = frozenset({Status.awaiting_review, Status.in_review, Status.escalated})
"""Statuses in which a case can be given to someone: triaged and not yet resolved."""
CASE_WORKER_ROLES = (Role.agent.value, Role.admin.value)
"""Roles that can hold a case (the roles that may claim, resolve and escalate one)."""
ASSIGN_ACTION = "case.assigned"


def case_workers(session: Session) -> list[str]:
    """Everyone a case can be assigned to, sorted: enabled console users and unrevoked API
    keys whose role can work cases (agents and admins). The names are the actor ids the
    audit trail and ``Case.assignee`` use."""
    users = session.scalars(
        select(ConsoleUser.username).where(
            ConsoleUser.role.in_(CASE_WORKER_ROLES), ConsoleUser.disabled_at.is_(None)
        )
    )
    keys = session.scalars(
        select(ApiKey.name).where(ApiKey.role.in_(CASE_WORKER_ROLES), ApiKey.revoked_at.is_(None))
    )
    return sorted(set(users) | set(keys))


def _can_hold(session: Session, name: str) -> bool:
    """Whether ``name`` is in :func:`case_workers` (two indexed lookups, not the whole list)."""
    user = select(ConsoleUser.id).where(
        ConsoleUser.username == name,
        ConsoleUser.role.in_(CASE_WORKER_ROLES),
        ConsoleUser.disabled_at.is_(None),
    )
    key = select(ApiKey.id).where(
        ApiKey.name == name, ApiKey.role.in_(CASE_WORKER_ROLES), ApiKey.revoked_at.is_(None)
    )
    return session.scalar(user.limit(1)) is not None or session.scalar(key.limit(1)) is not None


def may_assign(actor: Actor, status: str, holder: str | None) -> bool:
    """The rule :func:`assign` enforces, for showing its forms and tick boxes: a triaged,
    unresolved case that nobody holds or ``actor`` holds, or any such case for an admin."""
    return Status(status) in ASSIGNABLE and (
        actor.role == Role.admin.value or holder in (None, actor.id)
    )


def assign(
    session: Session,
    case_id: str,
    assignee: str,
    *,
    actor: Actor,
    reason: str | None = None,
    expected_version: int | None = None,
    settings: Settings | None = None,
) -> Case:
    """Give a case to a colleague: a lead dispatching the queue, or an agent handing a case
    over before a shift ends. The assignee holds it exactly as if they had claimed it.

    Contract:
    - ``assignee`` must be in :func:`case_workers` (``ValidationFailed``, field ``assignee``).
    - Only triaged, unresolved cases (:data:`ASSIGNABLE`); anything else is
      ``InvalidTransition`` (field ``status``). An unclaimed or escalated case moves to
      ``in_review`` (audited as ``case.in_review`` by the assigner, like a claim).
    - Admins may reassign any case; an agent may assign a case nobody holds or one they hold.
      Taking another agent's case away is for them or an admin (``PermissionDenied``), so two
      agents cannot silently pull a case back and forth.
    - ``expected_version`` guards against a change made since the caller looked
      (``InvalidTransition``, field ``expected_version``); a concurrent change loses the same way.
    - Every assignment writes ``case.assigned`` (``from``, ``to``, ``reason``) in the caller's
      transaction, and with ``settings`` naming a ``team_webhook_url`` queues the same news
      for the team's relay (the assignee hears of it). Assigning a case to its current holder
      changes and writes nothing.
    """
    assignee = (assignee or "").strip()
    reason = (reason or "").strip() or None
    if not assignee:
        raise ValidationFailed("say who gets the case", fields={"assignee": "required"})
    row = get(session, case_id)
    _check_version(row, expected_version)
    status = Status(row.status)
    if status not in ASSIGNABLE:
        raise InvalidTransition(
            f"a {status.value} case cannot be assigned; only "
            + ", ".join(sorted(s.value for s in ASSIGNABLE))
            + " cases can",
            field="status",
            current=status.value,
        )
    if not may_assign(actor, row.status, row.assignee):
        raise PermissionDenied(
            f"{row.assignee} holds case {case_id}: only they or an admin can hand it over"
        )
    if not _can_hold(session, assignee):
        raise ValidationFailed(
            f"{assignee} cannot hold cases",
            fields={"assignee": "not an enabled agent or admin"},
        )
    previous = row.assignee
    if previous == assignee and status == Status.in_review:
        return row

    def hold(r: Case) -> None:
        r.assignee = assignee

    if status == Status.in_review:  # a change of holder only: no lifecycle step
        _guarded_update(
            session, row, {"assignee": assignee, "updated_at": now_ts(), "version": row.version + 1}
        )
    else:
        row = transition(
            session,
            case_id,
            Status.in_review,
            actor=actor,
            by_system=False,
            reason=reason,
            mutate=hold,
        )
    audit.append(
        session,
        actor,
        ASSIGN_ACTION,
        {"from": previous, "to": assignee, "reason": reason},
        case_id=case_id,
    )
    webhooks.notify_team(
        session,
        settings,
        row,
        ASSIGN_ACTION,
        f"{ASSIGN_ACTION}:{case_id}:{row.version}",
        assigned_by=actor.id,
        previous_assignee=previous,
        reason=reason,
    )
    return row


def last_assignment(session: Session, row: Case) -> AuditEvent | None:
    """The ``case.assigned`` event that gave the current holder the case, or None when they
    claimed it themselves or nobody holds it in review (the case page says who handed it on).
    One indexed read: the latest claim or assignment event of the case."""
    if row.status != Status.in_review.value or row.assignee is None:
        return None
    e = session.scalar(
        select(AuditEvent)
        .where(
            AuditEvent.case_id == row.id,
            AuditEvent.action.in_((ASSIGN_ACTION, f"case.{Status.in_review.value}")),
        )
        .order_by(AuditEvent.seq.desc())
        .limit(1)
    )
    if e is None or e.action != ASSIGN_ACTION:
        return None
    return e if json.loads(e.payload).get("to") == row.assignee else None


# ---------------------------------------------------------------- work notes

MAX_NOTE = 5000
NOTE_ACTION = "case.note_added"


def person_text(text: str | None, what: str, field: str, max_chars: int) -> str:
    """Text a person wrote for the record (a note, a customer message): line ends made
    ``\n``, outer blanks stripped; ``ValidationFailed`` on ``field`` when nothing is left or
    more than ``max_chars`` characters are."""
    text = (text or "").replace("\r\n", "\n").strip()
    if not text:
        raise ValidationFailed(f"the {what} is empty", fields={field: "required"})
    if len(text) > max_chars:
        raise ValidationFailed(
            f"the {what} has {len(text)} characters; at most {max_chars}",
            fields={field: f"at most {max_chars} characters"},
        )
    return text


def add_note(session: Session, case_id: str, text: str, *, actor: Actor) -> int:
    """Add an internal work note to a case (what was checked, who was called, what is awaited:
    the hand-over a colleague reads before taking the case over). Notes are never sent to the
    customer. Stored as a ``case.note_added`` audit event, so a note can be neither edited nor
    deleted and is tamper-evident like every other record; returns its sequence number.
    Any status, resolved included (a late finding belongs with the case).
    Raises ``NotFound`` for an unknown case, ``ValidationFailed`` (field ``text``) for an empty
    note or one over :data:`MAX_NOTE` characters."""
    text = person_text(text, "note", "text", MAX_NOTE)
    get(session, case_id)  # NotFound before anything is written
    return audit.append(session, actor, NOTE_ACTION, {"text": text}, case_id=case_id)


def notes(
    session: Session, case_id: str, *, after_seq: int | None = None, limit: int = 100
) -> list[AuditEvent]:
    """A case's work notes, oldest first: at most ``limit`` of them after sequence number
    ``after_seq`` (keyset pages). ``NotFound`` for an unknown case."""
    get(session, case_id)
    return audit.list_events(
        session,
        audit.AuditFilter(case_id=case_id, action=NOTE_ACTION, after_seq=after_seq),
        limit=limit,
    )


def latest_notes_by_case(
    session: Session, case_ids: Sequence[str], n: int
) -> dict[str, list[AuditEvent]]:
    """Each case's ``n`` latest work notes, oldest first, for a page of cases in one query
    (the approver inbox shows a few per card); cases without notes are absent."""
    if not case_ids:
        return {}
    ranked = (
        select(
            AuditEvent.seq,
            func.row_number()
            .over(partition_by=AuditEvent.case_id, order_by=AuditEvent.seq.desc())
            .label("rank"),
        )
        .where(AuditEvent.case_id.in_(set(case_ids)), AuditEvent.action == NOTE_ACTION)
        .subquery()
    )
    rows = session.scalars(
        select(AuditEvent)
        .join(ranked, ranked.c.seq == AuditEvent.seq)
        .where(ranked.c.rank <= n)
        .order_by(AuditEvent.seq)
    ).all()
    out: dict[str, list[AuditEvent]] = {}
    for e in rows:
        out.setdefault(str(e.case_id), []).append(e)
    return out


def latest_notes(session: Session, case_id: str, n: int) -> list[AuditEvent]:
    """A case's ``n`` latest work notes, oldest first."""
    rows = session.scalars(
        select(AuditEvent)
        .where(AuditEvent.case_id == case_id, AuditEvent.action == NOTE_ACTION)
        .order_by(AuditEvent.seq.desc())
        .limit(n)
    ).all()
    return list(reversed(rows))
