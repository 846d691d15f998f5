"""Reads behind the web console, and the process-intelligence figures for the dashboard.

Three groups:
- the agent queue (open cases ordered by priority, then resolution SLA; keyset-paginated),
  and the case page's extras (similar cases' resolutions, the case's actions and approvals);
- the auditor's views: per-suggestion provenance and the segregation-of-duties report;
- :func:`process_stats`: volumes, stage times, dwell times and rates over a date range.

Plus one write the console needs and the case service does not offer yet:
:func:`send_customer_message` (there is no mail server: sending records the final text as a
``case.message_sent`` audit event, which the orchestration layer or a mail relay can read).

Queries here stay on indexed columns where the tables are large (cases, audit_events); the
dashboard reads the audit trail only through the ``action`` and ``ts`` indexes, never scans it.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import Float, and_, case, cast, func, literal, literal_column, or_, select
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement

from triage import audit, cases
from triage.audit import Actor
from triage.common import to_ts
from triage.errors import Conflict, ValidationFailed
from triage.lifecycle import Status
from triage.models import ActionApproval, ActionRow, AuditEvent, Case, LabelFeedback
from triage.models import Suggestion as SuggestionRow

OPEN_FOR_AGENTS = (
    Status.awaiting_review.value,
    Status.in_review.value,
    Status.escalated.value,
    Status.failed.value,
)
MAX_MESSAGE = 5000

# ---------------------------------------------------------------- agent queue


@dataclass(frozen=True)
class QueueFilter:
    statuses: tuple[str, ...] = OPEN_FOR_AGENTS
    exception_type: str | None = None
    queue: str | None = None
    priority: str | None = None
    customer_id: str | None = None
    warehouse_id: str | None = None
    search: str | None = None
    """Exact match on case id, source case id, order, invoice, customer or carrier id."""
    sla_breached: bool = False


def _queue_cursor(row: Case) -> str:
    raw = json.dumps([row.priority, row.resolution_due_at, row.id])
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def _decode_queue_cursor(cursor: str) -> tuple[str, str, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        p, due, cid = json.loads(raw)
        return str(p), str(due), str(cid)
    except (ValueError, TypeError) as exc:
        raise ValidationFailed("malformed cursor", fields={"cursor": "not one we issued"}) from exc


def queue_page(
    session: Session, f: QueueFilter, *, limit: int, cursor: str | None = None
) -> tuple[list[Case], str | None]:
    """Open cases, most urgent first: priority (P1 first), then resolution due time, then id.

    Keyset pagination on that same triple, so page 200 costs what page 1 costs.
    """
    stmt = select(Case).where(Case.status.in_(f.statuses))
    for col, value in (
        (Case.exception_type, f.exception_type),
        (Case.queue, f.queue),
        (Case.priority, f.priority),
        (Case.customer_id, f.customer_id),
        (Case.warehouse_id, f.warehouse_id),
    ):
        if value:
            stmt = stmt.where(col == value)
    if f.sla_breached:
        stmt = stmt.where(or_(Case.triage_sla_breached, Case.resolution_sla_breached))
    if f.search:
        term = f.search.strip()
        stmt = stmt.where(
            or_(
                Case.id == term.upper(),
                Case.source_case_id == term,
                Case.order_id == term,
                Case.invoice_id == term,
                Case.customer_id == term,
                Case.carrier_id == term,
            )
        )
    if cursor:
        p, due, cid = _decode_queue_cursor(cursor)
        stmt = stmt.where(
            or_(
                Case.priority > p,
                and_(Case.priority == p, Case.resolution_due_at > due),
                and_(Case.priority == p, Case.resolution_due_at == due, Case.id > cid),
            )
        )
    rows = list(
        session.scalars(
            stmt.order_by(Case.priority, Case.resolution_due_at, Case.id).limit(limit + 1)
        )
    )
    nxt = None
    if len(rows) > limit:
        rows = rows[:limit]
        nxt = _queue_cursor(rows[-1])
    return rows, nxt


def queue_counts(session: Session) -> dict[str, int]:
    """Open cases per status (one grouped query on the status index)."""
    return dict(
        session.execute(
            select(Case.status, func.count())
            .where(Case.status.in_(OPEN_FOR_AGENTS))
            .group_by(Case.status)
        ).all()
    )


def case_actions(session: Session, case_id: str) -> list[ActionRow]:
    return list(
        session.scalars(
            select(ActionRow).where(ActionRow.case_id == case_id).order_by(ActionRow.created_at)
        )
    )


def approvals_by_action(session: Session, action_ids: list[str]) -> dict[str, list[ActionApproval]]:
    out: dict[str, list[ActionApproval]] = defaultdict(list)
    if not action_ids:
        return out
    for a in session.scalars(
        select(ActionApproval)
        .where(ActionApproval.action_id.in_(action_ids))
        .order_by(ActionApproval.id)
    ):
        out[a.action_id].append(a)
    return out


def similar_resolutions(session: Session, case_ids: list[str]) -> dict[str, Case]:
    """The stored cases behind a suggestion's similar-case ids (for their resolutions)."""
    if not case_ids:
        return {}
    return {c.id: c for c in session.scalars(select(Case).where(Case.id.in_(case_ids)))}


def case_events(session: Session, case_id: str, limit: int = 200) -> list[AuditEvent]:
    return audit.list_events(session, audit.AuditFilter(case_id=case_id), limit)


# ---------------------------------------------------------------- customer message


def send_customer_message(
    session: Session, case_id: str, text: str, *, actor: Actor, channel: str = "email"
) -> int:
    """Record the final customer message for a case; returns the audit sequence number.

    The payload keeps the final text, whether the agent changed the suggested draft, and both
    hashes, so an auditor can see exactly what was sent and how it differs from the draft.
    """
    text = (text or "").replace("\r\n", "\n").strip()
    if not text:
        raise ValidationFailed("the message is empty", fields={"message": "required"})
    if len(text) > MAX_MESSAGE:
        raise ValidationFailed(
            f"the message has {len(text)} characters; at most {MAX_MESSAGE}",
            fields={"message": f"at most {MAX_MESSAGE} characters"},
        )
    if channel not in ("email", "portal"):
        raise ValidationFailed("unknown channel", fields={"channel": "email or portal"})
    row = cases.get(session, case_id)
    if row.status in (Status.received.value, Status.triaging.value):
        raise Conflict(f"the case is still {row.status}; wait for triage", field="status")
    sugg = cases.current_suggestion(session, row)
    draft = (sugg.body.get("customer_message") if sugg else None) or ""
    return audit.append(
        session,
        actor,
        "case.message_sent",
        {
            "channel": channel,
            "text": text,
            "edited": text != draft.strip(),
            "draft_revision": row.suggestion_revision or None,
            "draft_sha256": hashlib.sha256(draft.encode()).hexdigest() if draft else None,
            "text_sha256": hashlib.sha256(text.encode()).hexdigest(),
            "to_customer": row.customer_id,
        },
        case_id=case_id,
    )


# ---------------------------------------------------------------- auditor views


@dataclass
class Provenance:
    """Everything an auditor needs to reproduce how one suggestion came about."""

    case_id: str
    revision: int
    created_at: str
    engine: str
    schema_version: str
    model_version: str | None
    classifier: dict[str, Any] | None
    provenance: dict[str, Any]
    citations: list[dict[str, Any]]
    policy_decisions: list[dict[str, Any]]
    events: list[dict[str, Any]] = field(default_factory=list)
    """Who decided what when: every audit event on the case (oldest first)."""


def provenance(session: Session, case_id: str, revision: int | None = None) -> list[Provenance]:
    """Provenance of every suggestion on a case (or one revision), newest first."""
    stmt = select(SuggestionRow).where(SuggestionRow.case_id == case_id)
    if revision is not None:
        stmt = stmt.where(SuggestionRow.revision == revision)
    rows = list(session.scalars(stmt.order_by(SuggestionRow.revision.desc())))
    events = [audit.event_dict(e) for e in case_events(session, case_id, 1000)]
    out = []
    for r in rows:
        body = r.body or {}
        out.append(
            Provenance(
                case_id=case_id,
                revision=r.revision,
                created_at=r.created_at,
                engine=r.engine,
                schema_version=r.schema_version,
                model_version=r.model_version,
                classifier=body.get("classifier"),
                provenance=body.get("provenance") or {},
                citations=body.get("citations") or [],
                policy_decisions=(r.decisions or {}).get("items", []),
                events=events,
            )
        )
    return out


@dataclass(frozen=True)
class SodRow:
    action_id: str
    case_id: str
    action_type: str
    amount: Decimal | None
    currency: str | None
    status: str
    requested_by: str | None
    proposed_by: str | None
    last_edited_by: str | None
    accepted_by: str | None
    approvers: tuple[str, ...]
    overlap: tuple[str, ...]
    """People who both prepared (requested, proposed, edited, accepted) and approved the action:
    the policy layer refuses this, so any entry here is a finding."""


def sod_report(
    session: Session, since: str | None = None, until: str | None = None, limit: int = 500
) -> list[SodRow]:
    """Every released (approved, executed or failed) action with its preparers and approvers.

    Only approvals bound to the released hash count: those are what released the action.
    """
    stmt = select(ActionRow).where(
        ActionRow.status.in_(("approved", "executed", "failed")), ActionRow.material
    )
    if since:
        stmt = stmt.where(ActionRow.updated_at >= since)
    if until:
        stmt = stmt.where(ActionRow.updated_at < until)
    rows = list(session.scalars(stmt.order_by(ActionRow.updated_at.desc()).limit(limit)))
    approvals = approvals_by_action(session, [r.id for r in rows])
    out = []
    for r in rows:
        approvers = tuple(
            a.approver_id
            for a in approvals.get(r.id, [])
            if a.decision == "approved" and a.action_hash == r.action_hash
        )
        preparers = {r.requested_by, r.proposed_by, r.last_edited_by, r.accepted_by}
        out.append(
            SodRow(
                r.id,
                r.case_id,
                r.action_type,
                r.amount,
                r.currency,
                r.status,
                r.requested_by,
                r.proposed_by,
                r.last_edited_by,
                r.accepted_by,
                approvers,
                tuple(sorted(p for p in preparers & set(approvers) if p)),
            )
        )
    return out


# ---------------------------------------------------------------- process intelligence


@dataclass(frozen=True)
class DateRange:
    """Half-open ``[start, end)`` in canonical timestamp text."""

    start: str
    end: str

    @classmethod
    def last_days(cls, days: int, now: datetime | None = None) -> DateRange:
        now = now or datetime.now(UTC)
        end = (now + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
        return cls(to_ts(end - timedelta(days=days)), to_ts(end))

    @classmethod
    def from_dates(cls, start: str, end: str) -> DateRange:
        """From ``YYYY-MM-DD`` dates, both inclusive (the end day counts in full)."""
        try:
            s = datetime.strptime(start, "%Y-%m-%d").replace(tzinfo=UTC)
            e = datetime.strptime(end, "%Y-%m-%d").replace(tzinfo=UTC) + timedelta(days=1)
        except ValueError as exc:
            raise ValidationFailed(
                "dates must be YYYY-MM-DD", fields={"from": "YYYY-MM-DD", "to": "YYYY-MM-DD"}
            ) from exc
        if e <= s:
            raise ValidationFailed("the range ends before it starts", fields={"to": "after from"})
        if e - s > timedelta(days=731):
            raise ValidationFailed("at most two years at a time", fields={"from": "range"})
        return cls(to_ts(s), to_ts(e))

    @property
    def days(self) -> list[str]:
        s = datetime.strptime(self.start[:10], "%Y-%m-%d")
        e = datetime.strptime(self.end[:10], "%Y-%m-%d")
        return [(s + timedelta(days=i)).strftime("%Y-%m-%d") for i in range((e - s).days)]


@dataclass
class Durations:
    """Seconds: count, median, 90th percentile and mean (None when there is no data)."""

    n: int
    p50: float | None
    p90: float | None
    mean: float | None

    @classmethod
    def of(cls, values: list[float]) -> Durations:
        vals = sorted(v for v in values if v is not None and v >= 0)
        if not vals:
            return cls(0, None, None, None)

        def q(p: float) -> float:
            return vals[min(len(vals) - 1, int(p * (len(vals) - 1) + 0.5))]

        return cls(len(vals), q(0.5), q(0.9), sum(vals) / len(vals))


@dataclass
class ProcessStats:
    range: DateRange
    cases: int
    volume_by_day: dict[str, dict[str, int]]
    """day -> exception type -> cases received."""
    by_warehouse: list[tuple[str, int]]
    by_carrier: list[tuple[str, int]]
    by_customer: list[tuple[str, int]]
    stage_times: dict[str, Durations]
    """intake->triage, intake->first human decision, intake->resolution, shipment->invoice."""
    approval_dwell: Durations
    override_rate: float | None
    overridden: int
    triaged: int
    touchless_rate: float | None
    resolved: int
    touchless: int
    coverage: dict[str, float | None]
    """Share of triaged cases where the classifier answered (did not abstain), per target."""
    llm: dict[str, int]
    """suggestions by engine and how many of them were fallbacks."""
    sla_breaches: dict[str, dict[str, int]]
    """priority -> {"triage": n, "resolution": n}."""
    money_by_cause: list[tuple[str, str, str, Decimal, int]]
    """(root cause, action type, currency, total amount, count) for released credits and
    write-offs."""


def _seconds(db_dialect: str, start: Any, end: Any) -> ColumnElement[Any]:
    """``end - start`` in seconds for canonical timestamp text, on SQLite or PostgreSQL."""
    if db_dialect == "postgresql":
        return func.extract(
            "epoch",
            cast(end, _timestamptz()) - cast(start, _timestamptz()),
        )
    return (func.julianday(end) - func.julianday(start)) * literal(86400.0, Float)


def _timestamptz() -> Any:
    from sqlalchemy.dialects.postgresql import TIMESTAMP

    return TIMESTAMP(timezone=True)


def _top(session: Session, col: Any, r: DateRange, n: int = 8) -> list[tuple[str, int]]:
    rows = session.execute(
        select(col, func.count())
        .where(Case.created_at >= r.start, Case.created_at < r.end)
        .group_by(col)
        .order_by(func.count().desc())
        .limit(n)
    ).all()
    return [("(none)" if k is None else str(k), _i(v)) for k, v in rows]


DECISION_ACTIONS = (
    "case.in_review",
    "case.overridden",
    "case.resolved",
    "case.escalated",
    "action.requested",
    "action.created",
    "case.message_sent",
)


def process_stats(session: Session, r: DateRange) -> ProcessStats:
    """All dashboard figures for cases received in ``r`` (approvals: requested in ``r``)."""
    dialect = session.get_bind().dialect.name
    in_range = and_(Case.created_at >= r.start, Case.created_at < r.end)

    volume: dict[str, dict[str, int]] = defaultdict(dict)
    total = 0
    # literal arguments: bound parameters would differ between SELECT and GROUP BY on PostgreSQL
    day = func.substr(Case.created_at, literal_column("1"), literal_column("10"))
    for d, etype, n in session.execute(
        select(day, Case.exception_type, func.count())
        .where(in_range)
        .group_by(day, Case.exception_type)
    ).all():
        volume[str(d)][str(etype)] = _i(n)
        total += _i(n)

    # Stage times, computed in SQL (no per-row timestamp parsing in Python).
    to_triage = [
        _f(v)
        for (v,) in session.execute(
            select(_seconds(dialect, Case.created_at, Case.triaged_at)).where(
                in_range, Case.triaged_at.is_not(None)
            )
        ).all()
    ]
    to_resolution = [
        _f(v)
        for (v,) in session.execute(
            select(_seconds(dialect, Case.created_at, Case.resolved_at)).where(
                in_range, Case.resolved_at.is_not(None)
            )
        ).all()
    ]
    # First human decision per case: from the audit trail, through the action index.
    first_human = (
        select(AuditEvent.case_id, func.min(AuditEvent.ts).label("first_ts"))
        .where(
            AuditEvent.action.in_(DECISION_ACTIONS),
            AuditEvent.actor_type == "human",
            AuditEvent.ts >= r.start,
            AuditEvent.case_id.is_not(None),
        )
        .group_by(AuditEvent.case_id)
        .subquery()
    )
    to_decision = [
        _f(v)
        for (v,) in session.execute(
            select(_seconds(dialect, Case.created_at, first_human.c.first_ts))
            .join(first_human, first_human.c.case_id == Case.id)
            .where(in_range)
        ).all()
    ]
    ship_invoice = _ship_to_invoice(session, dialect, in_range)

    # Approval dwell: from the decision that asked for approval to the approval that released
    # the action (or the rejection), for actions decided in the range.
    decided: dict[str, str] = {}
    closed: dict[str, str] = {}
    for action, ts, payload in session.execute(
        select(AuditEvent.action, AuditEvent.ts, AuditEvent.payload).where(
            AuditEvent.action.in_(("action.decided", "action.approved", "action.rejected")),
            AuditEvent.ts >= r.start,
            AuditEvent.ts < r.end,
        )
    ).all():
        p = json.loads(payload)
        aid = p.get("action_id")
        if not aid:
            continue
        if action == "action.decided":
            if p.get("outcome") == "needs_approval":
                decided[aid] = ts
        elif action == "action.rejected" or p.get("released"):
            closed[aid] = ts
    dwell = [
        (_parse(closed[a]) - _parse(decided[a])).total_seconds() for a in closed if a in decided
    ]

    triaged = int(
        session.scalar(
            select(func.count()).select_from(Case).where(in_range, Case.triaged_at.is_not(None))
        )
        or 0
    )
    overridden = int(
        session.scalar(
            select(func.count(func.distinct(LabelFeedback.case_id)))
            .join(Case, Case.id == LabelFeedback.case_id)
            .where(in_range)
        )
        or 0
    )
    resolved_rows = session.execute(
        select(Case.id).where(in_range, Case.status == Status.resolved.value)
    ).all()
    resolved_ids = {cid for (cid,) in resolved_rows}
    touched = _touched(session, r, in_range)
    touchless = len(resolved_ids - touched)

    coverage = _coverage(session, in_range, triaged)

    llm: Counter[str] = Counter()
    for engine, n in session.execute(
        select(SuggestionRow.engine, func.count())
        .join(Case, Case.id == SuggestionRow.case_id)
        .where(in_range)
        .group_by(SuggestionRow.engine)
    ).all():
        llm[engine] += n
    fallback = session.scalar(
        select(func.count())
        .select_from(AuditEvent)
        .where(
            AuditEvent.action == "suggestion.created",
            AuditEvent.ts >= r.start,
            AuditEvent.ts < r.end,
            ~AuditEvent.payload.contains('"fallback_reason":null'),
        )
    )
    llm["fallback"] = int(fallback or 0)

    breaches: dict[str, dict[str, int]] = {}
    for prio, t, res in session.execute(
        select(
            Case.priority,
            func.sum(case((Case.triage_sla_breached, 1), else_=0)),
            func.sum(case((Case.resolution_sla_breached, 1), else_=0)),
        )
        .where(in_range)
        .group_by(Case.priority)
        .order_by(Case.priority)
    ).all():
        breaches[str(prio)] = {"triage": _i(t or 0), "resolution": _i(res or 0)}

    cause = func.coalesce(Case.category, Case.exception_type)
    money = [
        (str(c), str(t), str(cur), Decimal(amt or 0), int(n))
        for c, t, cur, amt, n in session.execute(
            select(
                cause,
                ActionRow.action_type,
                ActionRow.currency,
                func.sum(ActionRow.amount),
                func.count(),
            )
            .join(Case, Case.id == ActionRow.case_id)
            .where(
                ActionRow.action_type.in_(("issue_credit_note", "write_off")),
                ActionRow.status.in_(("approved", "executed")),
                ActionRow.created_at >= r.start,
                ActionRow.created_at < r.end,
            )
            .group_by(cause, ActionRow.action_type, ActionRow.currency)
            .order_by(func.sum(ActionRow.amount).desc())
        ).all()
    ]

    return ProcessStats(
        range=r,
        cases=total,
        volume_by_day=dict(volume),
        by_warehouse=_top(session, Case.warehouse_id, r),
        by_carrier=_top(session, Case.carrier_id, r),
        by_customer=_top(session, Case.customer_id, r),
        stage_times={
            "intake_to_triage": Durations.of(to_triage),
            "intake_to_decision": Durations.of(to_decision),
            "intake_to_resolution": Durations.of(to_resolution),
            "shipment_to_invoice": Durations.of(ship_invoice),
        },
        approval_dwell=Durations.of(dwell),
        override_rate=overridden / triaged if triaged else None,
        overridden=overridden,
        triaged=triaged,
        touchless_rate=touchless / len(resolved_ids) if resolved_ids else None,
        resolved=len(resolved_ids),
        touchless=touchless,
        coverage=coverage,
        llm=dict(llm),
        sla_breaches=breaches,
        money_by_cause=money,
    )


def _i(v: Any) -> int:
    return int(v or 0)


def _f(v: Any) -> float:
    return float(v)


def _parse(ts: str) -> datetime:
    return datetime.strptime(ts, "%Y-%m-%dT%H:%M:%S.%fZ")


def _ship_to_invoice(session: Session, dialect: str, in_range: Any) -> list[float]:
    """Shipment-to-invoice dwell, for cases whose milestones carry both timestamps."""
    shipped = Case.payload["milestones"]["shipped_at"].as_string()
    invoiced = Case.payload["milestones"]["invoiced_at"].as_string()
    out = []
    for s, i in session.execute(
        select(shipped, invoiced).where(in_range, shipped.is_not(None), invoiced.is_not(None))
    ).all():
        try:
            a = datetime.fromisoformat(str(s))
            b = datetime.fromisoformat(str(i))
        except (TypeError, ValueError):
            continue
        out.append((b - a).total_seconds())
    return out


def _touched(session: Session, r: DateRange, in_range: Any) -> set[str]:
    """Cases in range that a person changed: an override, an action they created or edited, or
    a customer message they rewrote before sending."""
    touched = {
        cid
        for (cid,) in session.execute(
            select(LabelFeedback.case_id)
            .join(Case, Case.id == LabelFeedback.case_id)
            .where(in_range)
        ).all()
    }
    touched |= {
        cid
        for (cid,) in session.execute(
            select(ActionRow.case_id)
            .join(Case, Case.id == ActionRow.case_id)
            .where(
                in_range, or_(ActionRow.origin == "agent", ActionRow.last_edited_by.is_not(None))
            )
        ).all()
    }
    for cid, payload in session.execute(
        select(AuditEvent.case_id, AuditEvent.payload).where(
            AuditEvent.action == "case.message_sent", AuditEvent.ts >= r.start
        )
    ).all():
        if cid and json.loads(payload).get("edited"):
            touched.add(cid)
    return touched


def _coverage(session: Session, in_range: Any, triaged: int) -> dict[str, float | None]:
    """Share of triaged cases where the classifier gave an answer, per target."""
    if not triaged:
        return {"category": None, "queue": None, "priority": None, "all": None}
    abstained: Counter[str] = Counter()
    any_abstained = 0
    for (reasons,) in session.execute(
        select(Case.abstain_reasons).where(
            in_range, Case.triaged_at.is_not(None), Case.abstain_reasons.is_not(None)
        )
    ).all():
        if not isinstance(reasons, dict) or not reasons:
            continue
        any_abstained += 1
        for target in reasons:
            abstained[target] += 1
    out: dict[str, float | None] = {
        t: 1 - abstained[t] / triaged for t in ("category", "queue", "priority")
    }
    out["all"] = 1 - any_abstained / triaged
    return out
