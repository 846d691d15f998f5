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
import bisect
import hashlib
import json
import math
import sys
from array import array
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    String,
    and_,
    case,
    cast,
    delete,
    func,
    insert,
    literal_column,
    or_,
    select,
)
from sqlalchemy.dialects.postgresql import TIMESTAMP
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement

from triage import audit, cases
from triage.audit import Actor
from triage.auth import Role
from triage.common import now_ts, to_ts
from triage.db import Database
from triage.errors import Conflict, ValidationFailed
from triage.lifecycle import Status
from triage.models import (
    ActionApproval,
    ActionRow,
    AuditEvent,
    AuditHead,
    Case,
    DashboardCaseFacts,
    DashboardDay,
    DashboardRollupState,
    LabelFeedback,
)
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
    """Exact match on case id, source case id, order, invoice or customer id (all indexed)."""
    sla_breached: bool = False
    assignee: str | None = None
    """Cases this person holds."""
    unassigned: bool = False
    """Cases nobody holds (not claimed, or released / escalated since)."""


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
    # SQLite: coalesce() keeps the planner off the status indexes. Walking ix_cases_queue_order
    # in order and skipping closed cases is what makes page 1 (and page n) cost ~1 ms at 100k
    # cases; SQLite would otherwise take the status index and sort every open case. PostgreSQL
    # makes that choice itself from its statistics, and coalesce() would only blind them.
    status_col: Any = Case.status
    if session.get_bind().dialect.name == "sqlite":
        status_col = func.coalesce(Case.status, "")
    stmt = cases.where_equal(
        select(Case).where(status_col.in_(f.statuses)),
        (Case.exception_type, f.exception_type),
        (Case.queue, f.queue),
        (Case.priority, f.priority),
        (Case.customer_id, f.customer_id),
        (Case.warehouse_id, f.warehouse_id),
        (Case.assignee, f.assignee),
    )
    if f.sla_breached:
        stmt = stmt.where(or_(Case.triage_sla_breached, Case.resolution_sla_breached))
    if f.unassigned and not f.assignee:
        stmt = stmt.where(Case.assignee.is_(None))
    if f.search:
        term = f.search.strip()
        stmt = stmt.where(
            or_(
                Case.id == term.upper(),
                Case.source_case_id == term,
                Case.order_id == term,
                Case.invoice_id == term,
                Case.customer_id == term,
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
    # One person's open cases are a few hundred at most: find them through the holder indexes
    # and sort them. Ordering by the bare column lets the planner walk ix_cases_queue_order
    # instead and skip every other case (PostgreSQL, 100k cases: 69 ms against 5 ms), so the
    # priority is wrapped in coalesce() (it is never NULL: same order) to rule that plan out.
    priority_key: Any = func.coalesce(Case.priority, "") if f.assignee else Case.priority
    rows = list(
        session.scalars(
            stmt.order_by(priority_key, Case.resolution_due_at, Case.id).limit(limit + 1)
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


def holder_counts(session: Session) -> list[tuple[str, int]]:
    """Cases in review per holder, most first (who is working how many cases)."""
    rows = session.execute(
        select(Case.assignee, func.count())
        .where(Case.status == Status.in_review.value, Case.assignee.is_not(None))
        .group_by(Case.assignee)
    ).all()
    return sorted(((str(a), int(n)) for a, n in rows), key=lambda r: (-r[1], r[0]))


# who reads everyone's team figures (leads, auditors); agents and approvers read their own row
TEAM_VIEWERS = (Role.admin, Role.auditor)
# what each person did, counted from the audit trail: action -> column
TEAM_ACTIONS = {
    "case.resolved": "resolved",
    "case.escalated": "escalated",
    "case.assigned": "assigned",
    "case.overridden": "overrides",
    "action.requested": "requested",
    "action.approved": "approvals",
    "action.rejected": "rejections",
    "case.message_sent": "messages",
    "case.note_added": "notes",
}


@dataclass
class TeamRow:
    """One person's work: what they hold now, and what they did in the date range."""

    person: str
    holding: int = 0
    holding_breached: int = 0
    """of the cases they hold, how many are past their resolution due time"""
    done: dict[str, int] = field(default_factory=dict)
    """``TEAM_ACTIONS`` column -> events by them in the range"""
    resolve_time: Durations | None = None
    """intake -> resolution of the cases they resolved in the range (seconds)"""


def team_figures(session: Session, r: DateRange, *, person: str | None = None) -> list[TeamRow]:
    """Per-person figures for a team lead: cases held now (and how many are late), and, in
    ``r``, cases resolved (with the median intake-to-resolution time), escalated, assigned to
    someone, routing overrides, actions requested, approvals and rejections given, customer
    messages and work notes.

    Only people count (``actor_type`` human): the pipeline and integrations are not a team.
    ``person`` restricts the rows to one person (what a non-admin sees of their own work).
    Reads the trail through its ``(action, ts)`` index and the cases through
    ``(status, assignee)``; sorted by person."""
    rows: dict[str, TeamRow] = {}

    def row(name: str) -> TeamRow:
        return rows.setdefault(name, TeamRow(name))

    held = (
        select(
            Case.assignee,
            func.count(),
            func.sum(case((Case.resolution_sla_breached, 1), else_=0)),
        )
        .where(Case.status == Status.in_review.value, Case.assignee.is_not(None))
        .group_by(Case.assignee)
    )
    if person is not None:
        held = held.where(Case.assignee == person)
    for name, n, late in session.execute(held).all():
        entry = row(str(name))
        entry.holding, entry.holding_breached = _i(n), _i(late)

    in_range = (
        AuditEvent.ts >= r.start,
        AuditEvent.ts < r.end,
        AuditEvent.actor_type == audit.ActorType.human.value,
    )
    who = () if person is None else (AuditEvent.actor_id == person,)
    counted = (
        select(AuditEvent.actor_id, AuditEvent.action, func.count())
        .where(AuditEvent.action.in_(tuple(TEAM_ACTIONS)), *in_range, *who)
        .group_by(AuditEvent.actor_id, AuditEvent.action)
    )
    for name, action, n in session.execute(counted).all():
        row(str(name)).done[TEAM_ACTIONS[action]] = _i(n)

    dialect = session.get_bind().dialect.name
    spans: dict[str, list[float]] = defaultdict(list)
    resolved = (
        select(AuditEvent.actor_id, _seconds(dialect, Case.created_at, AuditEvent.ts))
        .join(Case, Case.id == AuditEvent.case_id)
        .where(AuditEvent.action == "case.resolved", *in_range, *who)
    )
    for name, secs in session.execute(resolved).all():
        if secs is not None:
            spans[str(name)].append(_f(secs))
    for name, values in spans.items():
        row(name).resolve_time = Durations.of(values)
    return [rows[k] for k in sorted(rows)]


def visible_team(session: Session, r: DateRange, viewer: Actor) -> tuple[list[TeamRow], bool]:
    """The team figures ``viewer`` may read, and whether they are the whole team's: everyone's
    for :data:`TEAM_VIEWERS`, otherwise the viewer's own row only."""
    whole = viewer.role in TEAM_VIEWERS
    return team_figures(session, r, person=None if whole else viewer.id), whole


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
    text = cases.person_text(text, "message", "message", MAX_MESSAGE)
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


FIRST_DAY = datetime(1970, 1, 1, tzinfo=UTC)
LAST_DAY = datetime(9999, 12, 31, tzinfo=UTC)
"""Bounds of a dashboard date range (``to`` is exclusive here, so 9999-12-30 is the last day)."""


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
        except (ValueError, OverflowError) as exc:  # 9999-12-31 has no next day
            raise ValidationFailed(
                "dates must be YYYY-MM-DD", fields={"from": "YYYY-MM-DD", "to": "YYYY-MM-DD"}
            ) from exc
        for name, day in (("from", s), ("to", e)):
            # timestamps are text ordered as text: four-digit years only (and nothing before
            # the epoch, which no case can date from)
            if not FIRST_DAY <= day <= LAST_DAY:
                raise ValidationFailed(
                    f"{name} must be a day from 1970-01-01 to 9999-12-30",
                    fields={name: "1970-01-01 to 9999-12-30"},
                )
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
    def of(cls, values: Iterable[float]) -> Durations:
        vals = sorted(values)
        vals = vals[bisect.bisect_left(vals, 0.0) :]  # negative spans (clock skew) are dropped
        if not vals:
            return cls(0, None, None, None)

        def q(p: float) -> float:
            return vals[min(len(vals) - 1, int(p * (len(vals) - 1) + 0.5))]

        # fsum: exactly rounded, so the mean does not depend on the order days are merged in
        return cls(len(vals), q(0.5), q(0.9), math.fsum(vals) / len(vals))


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
        return func.extract("epoch", cast(end, _TIMESTAMPTZ) - cast(start, _TIMESTAMPTZ))
    return (func.julianday(end) - func.julianday(start)) * literal_column("86400.0")


_TIMESTAMPTZ = TIMESTAMP(timezone=True)
# Expressions built once: SQLAlchemy memoises a statement's cache key per type *instance*, and
# building new ones per query cost ~10 ms per statement in type introspection (measured).
_ABSTAIN_TEXT = cast(Case.abstain_reasons, String())
# ISO 8601 with an offset: julianday() and timestamptz both honour the offset.
_SHIPPED = Case.payload["milestones"]["shipped_at"].as_string()
_INVOICED = Case.payload["milestones"]["invoiced_at"].as_string()
_SECONDS = {
    d: (
        _seconds(d, Case.created_at, Case.triaged_at),
        _seconds(d, Case.created_at, Case.resolved_at),
        _seconds(d, _SHIPPED, _INVOICED),
    )
    for d in ("sqlite", "postgresql")
}


DECISION_ACTIONS = (
    "case.in_review",
    "case.overridden",
    "case.resolved",
    "case.escalated",
    "action.requested",
    "action.created",
    "case.message_sent",
)
"""Audit actions that count as a person's decision on a case (for time to first decision)."""
CLOSING_ACTIONS = ("action.approved", "action.rejected")
TIME_KEYS = (
    "intake_to_triage",
    "intake_to_decision",
    "intake_to_resolution",
    "shipment_to_invoice",
    "approval_dwell",
)
CHUNK = 500


def _chunks(items: list[str], n: int = CHUNK) -> list[list[str]]:
    return [items[i : i + n] for i in range(0, len(items), n)]


def case_facts(
    session: Session, *, r: DateRange | None = None, ids: list[str] | None = None
) -> dict[str, dict[str, Any]]:
    """What the dashboard needs to know about each case received in ``r`` (or each of
    ``ids``): one small JSON-able dict per case, everything that can change after receipt
    included (status, flags, durations, first decision, overridden, touched by a person).

    Keys: ``d`` day received, ``t`` exception type, ``w`` warehouse, ``c`` carrier, ``u``
    customer, ``p`` priority, ``r`` resolved, ``tb``/``rb`` triage/resolution SLA breached,
    ``a`` abstained targets, ``tt``/``tr``/``td``/``ts`` seconds from intake to triage,
    resolution and first human decision, and shipment to invoice (None when unknown), ``o``
    overridden (has a reviewer label), ``x`` touched by a person (label, agent-created or
    edited action, edited customer message).
    """
    dialect = session.get_bind().dialect.name
    # Core execution on the session's connection: these are column reads, and the ORM's
    # per-row processing cost as much as the queries (measured).
    conn = session.connection()
    to_triage, to_resolution, ship_to_invoice = _SECONDS[
        "postgresql" if dialect == "postgresql" else "sqlite"
    ]
    # literal arguments: bound parameters would differ between SELECT and GROUP BY on PostgreSQL
    day = func.substr(Case.created_at, literal_column("1"), literal_column("10"))
    cols = select(
        Case.id,
        day,
        Case.exception_type,
        Case.warehouse_id,
        Case.carrier_id,
        Case.customer_id,
        Case.status,
        Case.priority,
        Case.triage_sla_breached,
        Case.resolution_sla_breached,
        # raw JSON text: most cases did not abstain, so most rows need no JSON parsing
        _ABSTAIN_TEXT,
        Case.created_at,
        to_triage,
        to_resolution,
        ship_to_invoice,
    )
    rows: list[Any]
    if r is not None:
        rows = list(conn.execute(cols.where(Case.created_at >= r.start, Case.created_at < r.end)))
    else:
        rows = []
        for chunk in _chunks(sorted(set(ids or ()))):
            rows.extend(conn.execute(cols.where(Case.id.in_(chunk))).all())
    out: dict[str, dict[str, Any]] = {}
    created_of: dict[str, str] = {}
    for (
        cid,
        d,
        etype,
        wh,
        carrier,
        customer,
        status,
        prio,
        tb,
        rb,
        raw,
        created,
        tt,
        tr,
        ts,
    ) in rows:
        abstained = sorted(json.loads(raw)) if raw and raw != "null" else []
        created_of[cid] = created
        out[cid] = {
            "d": d,
            "t": etype,
            "w": wh or "(none)",
            "c": carrier or "(none)",
            "u": customer,
            "p": prio,
            "r": status == Status.resolved.value,
            "tb": bool(tb),
            "rb": bool(rb),
            "a": abstained,
            "tt": None if tt is None else _f(tt),
            "tr": None if tr is None else _f(tr),
            "ts": None if ts is None else _f(ts),
            "td": None,
            "o": False,
            "x": False,
        }
    # Per-case facts from the audit trail, the labels and the actions (case_id indexes).
    message = case((AuditEvent.action == "case.message_sent", AuditEvent.payload), else_=None)
    first: dict[str, str] = {}
    for chunk in _chunks(list(out)):
        for row in conn.execute(
            select(AuditEvent.case_id, AuditEvent.actor_type, AuditEvent.ts, message).where(
                AuditEvent.case_id.in_(chunk), AuditEvent.action.in_(DECISION_ACTIONS)
            )
        ).all():
            cid, actor_type, at, payload = str(row[0]), row[1], str(row[2]), row[3]
            if actor_type == "human" and (cid not in first or at < first[cid]):
                first[cid] = at
            if payload is not None and json.loads(payload).get("edited"):
                out[cid]["x"] = True
        for cid in conn.scalars(
            select(LabelFeedback.case_id).where(LabelFeedback.case_id.in_(chunk))
        ):
            out[cid]["o"] = out[cid]["x"] = True
        for cid in conn.scalars(
            select(ActionRow.case_id).where(
                ActionRow.case_id.in_(chunk),
                or_(ActionRow.origin == "agent", ActionRow.last_edited_by.is_not(None)),
            )
        ):
            out[cid]["x"] = True
    for cid, at in first.items():
        out[cid]["td"] = (_parse(at) - _parse(created_of[cid])).total_seconds()
    return out


def aggregate(facts: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """The case-keyed part of a partial, from case facts (see :func:`case_facts`)."""
    volume: dict[str, dict[str, int]] = defaultdict(dict)
    wh: Counter[str] = Counter()
    carrier: Counter[str] = Counter()
    customer: Counter[str] = Counter()
    abstained: Counter[str] = Counter()
    breaches: dict[str, dict[str, int]] = {}
    n = triaged = any_abstained = resolved = overridden = touchless = 0
    times: dict[str, list[float]] = {k: [] for k in TIME_KEYS}
    for f in facts:
        n += 1
        by_type = volume[f["d"]]
        by_type[f["t"]] = by_type.get(f["t"], 0) + 1
        wh[f["w"]] += 1
        carrier[f["c"]] += 1
        customer[f["u"]] += 1
        b = breaches.setdefault(f["p"], {"triage": 0, "resolution": 0})
        b["triage"] += f["tb"]
        b["resolution"] += f["rb"]
        if f["a"]:
            any_abstained += 1
            abstained.update(f["a"])
        if f["tt"] is not None:
            triaged += 1
            times["intake_to_triage"].append(f["tt"])
        if f["tr"] is not None:
            times["intake_to_resolution"].append(f["tr"])
        if f["td"] is not None:
            times["intake_to_decision"].append(f["td"])
        if f["ts"] is not None:
            times["shipment_to_invoice"].append(f["ts"])
        resolved += f["r"]
        overridden += f["o"]
        touchless += f["r"] and not f["x"]
    return {
        "cases": n,
        "volume": dict(volume),
        "warehouse": dict(wh),
        "carrier": dict(carrier),
        "customer": dict(customer),
        "breaches": breaches,
        "triaged": triaged,
        "abstained": dict(abstained),
        "any_abstained": any_abstained,
        "resolved": resolved,
        "overridden": overridden,
        "touchless": touchless,
        # sorted runs: merging days then sorts in near-linear time (timsort merges runs)
        "times": {k: sorted(v) for k, v in times.items()},
    }


def event_part(session: Session, r: DateRange) -> dict[str, Any]:
    """The event- and action-keyed part of a partial: approval dwell (releases and rejections
    in ``r``), suggestions by engine and fallbacks (events in ``r``), and released credits and
    write-offs (actions created in ``r``)."""
    conn = session.connection()
    # Approval dwell: each from the latest decision that asked for approval of that action.
    closes: list[tuple[str, str, str]] = []
    for action, case_id, at, body in conn.execute(
        select(AuditEvent.action, AuditEvent.case_id, AuditEvent.ts, AuditEvent.payload).where(
            AuditEvent.action.in_(CLOSING_ACTIONS),
            AuditEvent.ts >= r.start,
            AuditEvent.ts < r.end,
        )
    ).all():
        p = json.loads(body)
        aid = p.get("action_id")
        if case_id and aid and (action == "action.rejected" or p.get("released")):
            closes.append((aid, case_id, at))
    asked: dict[str, list[str]] = defaultdict(list)
    for chunk in _chunks(sorted({cid for _a, cid, _t in closes})):
        for at, body in conn.execute(
            select(AuditEvent.ts, AuditEvent.payload).where(
                AuditEvent.case_id.in_(chunk), AuditEvent.action == "action.decided"
            )
        ).all():
            p = json.loads(body)
            if p.get("outcome") == "needs_approval" and p.get("action_id"):
                asked[p["action_id"]].append(at)
    dwell = []
    for aid, _cid, closed_at in closes:
        before = [t for t in asked.get(aid, ()) if t <= closed_at]
        if before:
            dwell.append((_parse(closed_at) - _parse(max(before))).total_seconds())

    engine_llm = AuditEvent.payload.contains('"engine":"llm"')
    no_fallback = AuditEvent.payload.contains('"fallback_reason":null')
    total, llm_n, fallback_n = conn.execute(
        select(
            func.count(),
            func.sum(case((engine_llm, 1), else_=0)),
            func.sum(case((no_fallback, 0), else_=1)),
        ).where(
            AuditEvent.action == "suggestion.created",
            AuditEvent.ts >= r.start,
            AuditEvent.ts < r.end,
        )
    ).one()

    cause = func.coalesce(Case.category, Case.exception_type)
    money = [
        [str(c), str(t), str(cur), str(Decimal(amt or 0)), _i(n)]
        for c, t, cur, amt, n in conn.execute(
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
        ).all()
    ]
    return {
        "approval_dwell": sorted(dwell),
        "llm": {"total": _i(total), "llm": _i(llm_n), "fallback": _i(fallback_n)},
        "money": money,
    }


def _combine(cases_part: dict[str, Any], events: dict[str, Any]) -> dict[str, Any]:
    times = {**cases_part["times"], "approval_dwell": events["approval_dwell"]}
    return {**cases_part, "times": times, "llm": events["llm"], "money": events["money"]}


def partial(session: Session, r: DateRange) -> dict[str, Any]:
    """The dashboard's figures for ``r`` in mergeable form: counters, exact sorted duration
    lists and sums, JSON-serialisable. :func:`merge` of the partials of adjacent ranges equals
    the partial of their union, which is what lets a day's partial be stored and reused.

    What belongs to a range (each figure is keyed by one timestamp, so days partition it):
    - cases *received* in it (``created_at``): volumes, stage times, overrides, touchless,
      coverage and SLA breaches, whatever happened to those cases since;
    - ``suggestion.created`` events *in* it: engines and LLM fallbacks;
    - approvals that released an action, and rejections, *in* it: approval dwell, measured
      from the latest ``action.decided`` (needs approval) event before them;
    - credit notes and write-offs *created* in it and now approved or executed.
    """
    return _combine(aggregate(case_facts(session, r=r).values()), event_part(session, r))


def merge(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """Combine partials of disjoint ranges (see :func:`partial`)."""
    out: dict[str, Any] = {
        "cases": 0,
        "volume": {},
        "warehouse": Counter(),
        "carrier": Counter(),
        "customer": Counter(),
        "breaches": {},
        "triaged": 0,
        "abstained": Counter(),
        "any_abstained": 0,
        "resolved": 0,
        "overridden": 0,
        "touchless": 0,
        "times": {k: array("d") for k in TIME_KEYS},
        "llm": Counter(),
        "money": {},
    }
    for p in parts:
        for k in ("cases", "triaged", "any_abstained", "resolved", "overridden", "touchless"):
            out[k] += p[k]
        for d, by_type in p["volume"].items():
            target = out["volume"].setdefault(d, {})
            for t, n in by_type.items():
                target[t] = target.get(t, 0) + n
        for k in ("warehouse", "carrier", "customer", "abstained", "llm"):
            out[k].update(p[k])
        for prio, b in p["breaches"].items():
            target = out["breaches"].setdefault(prio, {"triage": 0, "resolution": 0})
            target["triage"] += b["triage"]
            target["resolution"] += b["resolution"]
        for k in TIME_KEYS:
            out["times"][k].extend(p["times"][k])
        for c, t, cur, amt, n in p["money"]:
            prev = out["money"].get((c, t, cur), (Decimal(0), 0))
            out["money"][(c, t, cur)] = (prev[0] + Decimal(amt), prev[1] + n)
    return out


def _top(counts: dict[str, int], n: int = 8) -> list[tuple[str, int]]:
    return sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:n]


def finish(r: DateRange, m: dict[str, Any]) -> ProcessStats:
    """The figures the page shows, from a merged partial."""
    triaged: int = m["triaged"]
    coverage: dict[str, float | None]
    if triaged:
        coverage = {
            t: 1 - m["abstained"].get(t, 0) / triaged for t in ("category", "queue", "priority")
        }
        coverage["all"] = 1 - m["any_abstained"] / triaged
    else:
        coverage = {"category": None, "queue": None, "priority": None, "all": None}
    llm_total, llm_n = m["llm"].get("total", 0), m["llm"].get("llm", 0)
    llm = {k: v for k, v in {"offline": llm_total - llm_n, "llm": llm_n}.items() if v}
    llm["fallback"] = m["llm"].get("fallback", 0)
    money = sorted(
        ((c, t, cur, amt, n) for (c, t, cur), (amt, n) in m["money"].items()),
        key=lambda row: (-row[3], row[0], row[1], row[2]),
    )
    times = m["times"]
    return ProcessStats(
        range=r,
        cases=m["cases"],
        volume_by_day={d: dict(sorted(v.items())) for d, v in sorted(m["volume"].items())},
        by_warehouse=_top(m["warehouse"]),
        by_carrier=_top(m["carrier"]),
        by_customer=_top(m["customer"]),
        stage_times={k: Durations.of(times[k]) for k in TIME_KEYS if k != "approval_dwell"},
        approval_dwell=Durations.of(times["approval_dwell"]),
        override_rate=m["overridden"] / triaged if triaged else None,
        overridden=m["overridden"],
        triaged=triaged,
        touchless_rate=m["touchless"] / m["resolved"] if m["resolved"] else None,
        resolved=m["resolved"],
        touchless=m["touchless"],
        coverage=coverage,
        llm=llm,
        sla_breaches=dict(sorted(m["breaches"].items())),
        money_by_cause=money,
    )


def process_stats(session: Session, r: DateRange) -> ProcessStats:
    """All dashboard figures for ``r``, computed directly from the tables (no roll-ups).

    The reference for :func:`rollup_stats`, which must give the same figures."""
    return finish(r, merge([partial(session, r)]))


# ---------------------------------------------------------------- daily roll-ups

ROLLUP_FORMAT = 3
"""Bump when :func:`partial`'s output changes: stored days of another format are rebuilt."""


def day_range(day: str) -> DateRange:
    """The UTC day ``YYYY-MM-DD`` as a half-open range."""
    s = datetime.strptime(day, "%Y-%m-%d").replace(tzinfo=UTC)
    return DateRange(to_ts(s), to_ts(s + timedelta(days=1)))


@dataclass
class RollupRun:
    """What one :func:`rollup_stats` call did (for the bench and the tests)."""

    reused: int = 0
    computed: int = 0
    """Days built from scratch (never rolled up) or re-aggregated (dirty)."""
    dirty: int = 0
    touched_cases: int = 0
    stored: int = 0
    raced: bool = False


def rollup_stats(
    db: Database, r: DateRange, *, today: str | None = None, run: RollupRun | None = None
) -> ProcessStats:
    """The dashboard figures for ``r`` from daily roll-ups, refreshed incrementally.

    Stored: each rolled-up day's partial (``dashboard_days``) and the facts of its cases
    (``dashboard_case_facts``), current as of the audit sequence number in
    ``dashboard_rollup_state``. The audit trail is the change feed: every change to a case,
    its actions, labels or messages is appended in the same transaction with the case id, and
    sequence order is commit order (appends are serialised). A refresh reads the events since
    the watermark; the facts of the cases they name are recomputed, and a stored day is
    re-aggregated (from its stored facts plus the fresh ones, and its events) when an event
    happened on it, one of its cases changed, or an action created on it changed. Days of the
    range never rolled up are built whole. Closed days nothing touched are never recomputed.
    Days after ``today`` (UTC) are computed but not stored.

    Reads run in a read session; the refresh is written in one short write transaction, and
    only if no other refresh moved the watermark meanwhile (a loser's figures are still
    returned: they are correct as of its own read).
    """
    run = run if run is not None else RollupRun()
    today = today or now_ts()[:10]
    days = r.days
    in_range = set(days)
    parts: dict[str, dict[str, Any]] = {}
    new_days: dict[str, tuple[dict[str, Any], dict[str, dict[str, Any]]]] = {}
    redone: dict[str, dict[str, Any]] = {}
    with db.read() as s:
        conn = s.connection()
        state = s.get(DashboardRollupState, 1)
        seen = (state.through_seq, state.format) if state else None
        head = s.scalar(select(AuditHead.seq).where(AuditHead.id == 1)) or 0
        valid = state is not None and state.format == ROLLUP_FORMAT
        have: set[str] = set(conn.scalars(select(DashboardDay.day))) if valid else set()
        event_days: set[str] = set()
        touched: set[str] = set()
        if state is not None and valid and head > state.through_seq:
            for cid, ts in conn.execute(
                select(AuditEvent.case_id, AuditEvent.ts).where(
                    AuditEvent.seq > state.through_seq, AuditEvent.seq <= head
                )
            ).all():
                event_days.add(ts[:10])
                if cid:
                    touched.add(cid)
        # Facts matter only for rolled-up days; other days are built whole when viewed.
        fresh = {
            cid: f
            for cid, f in (case_facts(s, ids=sorted(touched)) if touched else {}).items()
            if f["d"] in have
        }
        action_days: set[str] = set()
        for chunk in _chunks(sorted(touched)):
            action_days.update(
                c[:10]
                for c in conn.scalars(
                    select(ActionRow.created_at).where(ActionRow.case_id.in_(chunk))
                )
            )
        dirty = (event_days | action_days | {f["d"] for f in fresh.values()}) & have
        run.dirty, run.touched_cases = len(dirty), len(fresh)

        for d in days:
            if d not in have:
                facts = case_facts(s, r=day_range(d))
                p = _combine(aggregate(facts.values()), event_part(s, day_range(d)))
                parts[d] = p
                run.computed += 1
                if d <= today:
                    new_days[d] = (p, facts)
        # Dirty stored days, in the range or not (the watermark moves past their events).
        for d in sorted(dirty):
            stored = {
                cid: json.loads(raw)
                for cid, raw in conn.execute(
                    select(DashboardCaseFacts.case_id, DashboardCaseFacts.facts).where(
                        DashboardCaseFacts.day == d
                    )
                ).all()
            }
            stored.update((cid, f) for cid, f in fresh.items() if f["d"] == d)
            redone[d] = _combine(aggregate(stored.values()), event_part(s, day_range(d)))
            run.computed += 1
            if d in in_range:
                parts[d] = redone[d]
        for chunk in _chunks([d for d in days if d not in parts]):
            for d, raw in conn.execute(
                select(DashboardDay.day, DashboardDay.stats).where(DashboardDay.day.in_(chunk))
            ).all():
                parts[d] = _decode(raw)
                run.reused += 1
    if valid and seen is not None and seen[0] == head and not new_days and not redone:
        # nothing new: no write transaction (SQLite's write lock is shared with intake)
        return finish(r, merge([parts[d] for d in days]))
    try:
        with db.write() as s:
            st = s.get(DashboardRollupState, 1, with_for_update=True)
            if ((st.through_seq, st.format) if st else None) != seen:
                run.raced = True
            else:
                if not valid:
                    s.execute(delete(DashboardDay))
                    s.execute(delete(DashboardCaseFacts))
                facts_rows = dict(fresh)
                for _p, facts in new_days.values():
                    facts_rows.update(facts)
                for chunk in _chunks(sorted(facts_rows)):
                    s.execute(
                        delete(DashboardCaseFacts).where(DashboardCaseFacts.case_id.in_(chunk))
                    )
                for chunk in _chunks(sorted(facts_rows), 5000):
                    s.connection().execute(  # Core executemany: no per-row ORM bookkeeping
                        insert(DashboardCaseFacts),
                        [
                            {
                                "case_id": cid,
                                "day": facts_rows[cid]["d"],
                                "facts": json.dumps(facts_rows[cid], separators=(",", ":")),
                            }
                            for cid in chunk
                        ],
                    )
                day_rows = {**redone, **{d: p for d, (p, _f) in new_days.items()}}
                for chunk in _chunks(sorted(day_rows)):
                    s.execute(delete(DashboardDay).where(DashboardDay.day.in_(chunk)))
                now = now_ts()
                s.add_all(
                    DashboardDay(day=d, stats=_encode(p), computed_at=now)
                    for d, p in day_rows.items()
                )
                run.stored = len(day_rows)
                if st is None:
                    s.add(
                        DashboardRollupState(
                            id=1, through_seq=head, format=ROLLUP_FORMAT, updated_at=now
                        )
                    )
                else:
                    st.through_seq, st.format, st.updated_at = head, ROLLUP_FORMAT, now
    except IntegrityError:
        # PostgreSQL: two first-ever refreshes both inserted the state row (the migration
        # seeds it, so only after it was deleted); the other one's rows stand.
        run.raced, run.stored = True, 0
    return finish(r, merge([parts[d] for d in days]))


def _encode(p: dict[str, Any]) -> str:
    """A partial as stored: JSON, with the duration lists as base64 little-endian doubles
    (exact, and decoded at C speed: as JSON numbers they were most of a 30-day read)."""
    times = {}
    for k, v in p["times"].items():
        a = array("d", v)
        if sys.byteorder == "big":  # pragma: no cover - stored little-endian everywhere
            a.byteswap()
        times[k] = base64.b64encode(a.tobytes()).decode()
    return json.dumps({**p, "times": times}, separators=(",", ":"))


def _decode(raw: str) -> dict[str, Any]:
    p: dict[str, Any] = json.loads(raw)
    for k, v in p["times"].items():
        a = array("d")
        a.frombytes(base64.b64decode(v))
        if sys.byteorder == "big":  # pragma: no cover
            a.byteswap()
        p["times"][k] = a
    return p


def _i(v: Any) -> int:
    return int(v or 0)


def _f(v: Any) -> float:
    return float(v)


def _parse(ts: str) -> datetime:
    """Canonical timestamp text (naive UTC); fromisoformat is ~10x faster than strptime."""
    return datetime.fromisoformat(ts[:-1] if ts.endswith("Z") else ts)


def refresh_recent(db: Database, days: int = 30) -> None:
    """Bring the roll-ups of the last ``days`` up to date (the workers' housekeeping calls
    this), so a page view finds them built: a day never rolled up costs its first viewer
    60-140 ms."""
    rollup_stats(db, DateRange.last_days(days))
