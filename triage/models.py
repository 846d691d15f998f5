"""SQLAlchemy 2 table models. Schema changes go through Alembic migrations in triage/migrations.

Timestamps that take part in hashing or cursors are stored as canonical UTC ISO-8601 text
(``2026-11-26T16:20:37.123456Z``): it sorts lexicographically, compares the same on SQLite and
PostgreSQL, and round-trips byte for byte, which the audit hash chain relies on.
"""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Date,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    Numeric,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

Ts = String(32)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON, Decimal: Numeric(18, 4)}


class Case(Base):
    __tablename__ = "cases"

    id: Mapped[str] = mapped_column(String(26), primary_key=True)
    source_system: Mapped[str] = mapped_column(String(128))
    source_case_id: Mapped[str] = mapped_column(String(128))
    idempotency_key: Mapped[str | None] = mapped_column(String(255), unique=True)
    request_hash: Mapped[str] = mapped_column(String(64))
    schema_version: Mapped[str] = mapped_column(String(16))
    exception_type: Mapped[str] = mapped_column(String(32))
    customer_id: Mapped[str] = mapped_column(String(128))
    customer_tier: Mapped[str] = mapped_column(String(1))
    warehouse_id: Mapped[str | None] = mapped_column(String(128))
    carrier_id: Mapped[str | None] = mapped_column(String(128))
    order_id: Mapped[str | None] = mapped_column(String(128))
    invoice_id: Mapped[str | None] = mapped_column(String(128))
    amount: Mapped[Decimal | None] = mapped_column(Numeric(18, 4))
    currency: Mapped[str | None] = mapped_column(String(3))
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    callback_url: Mapped[str | None] = mapped_column(Text)

    status: Mapped[str] = mapped_column(String(16))
    status_reason: Mapped[str | None] = mapped_column(Text)
    priority: Mapped[str] = mapped_column(String(2))
    category: Mapped[str | None] = mapped_column(String(64))
    queue: Mapped[str | None] = mapped_column(String(64))

    created_at: Mapped[str] = mapped_column(Ts)
    updated_at: Mapped[str] = mapped_column(Ts)
    occurred_at: Mapped[str] = mapped_column(Ts)
    triaged_at: Mapped[str | None] = mapped_column(Ts)
    resolved_at: Mapped[str | None] = mapped_column(Ts)
    triage_due_at: Mapped[str] = mapped_column(Ts)
    resolution_due_at: Mapped[str] = mapped_column(Ts)
    triage_sla_breached: Mapped[bool] = mapped_column(Boolean, default=False)
    resolution_sla_breached: Mapped[bool] = mapped_column(Boolean, default=False)
    resolution: Mapped[str | None] = mapped_column(Text)

    triage_attempts: Mapped[int] = mapped_column(Integer, default=0)
    lease_owner: Mapped[str | None] = mapped_column(String(64))
    lease_expires_at: Mapped[str | None] = mapped_column(Ts)
    suggestion_revision: Mapped[int] = mapped_column(Integer, default=0)
    model_version: Mapped[str | None] = mapped_column(String(64), index=True)
    # the current suggestion's classifier labels (None where it abstained): per-model
    # statistics aggregate these instead of reading every suggestion body
    predicted_category: Mapped[str | None] = mapped_column(String(64))
    predicted_queue: Mapped[str | None] = mapped_column(String(64))
    predicted_priority: Mapped[str | None] = mapped_column(String(64))
    abstain_reasons: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    injection_flags: Mapped[list[Any] | None] = mapped_column(JSON)
    indexed_at: Mapped[str | None] = mapped_column(Ts)
    submitted_by: Mapped[str | None] = mapped_column(String(64))
    # Who holds the case: the person who claimed it (in_review); cleared when it is released
    # or escalated (it waits for someone else); on a resolved case, the person who resolved it.
    assignee: Mapped[str | None] = mapped_column(String(128))
    version: Mapped[int] = mapped_column(Integer, default=1)

    __table_args__ = (
        UniqueConstraint("source_system", "source_case_id", name="uq_cases_source"),
        Index("ix_cases_created", "created_at", "id"),
        Index("ix_cases_status_created", "status", "created_at", "id"),
        Index("ix_cases_type_created", "exception_type", "created_at", "id"),
        Index("ix_cases_customer_created", "customer_id", "created_at", "id"),
        Index("ix_cases_warehouse_created", "warehouse_id", "created_at", "id"),
        Index("ix_cases_lease", "status", "lease_expires_at"),
        Index("ix_cases_to_index", "status", "indexed_at"),
        # the queue's per-holder counts (status = in_review, grouped: index-only) and its
        # held-by filter; the API's ?assignee= list, newest first
        Index("ix_cases_status_assignee", "status", "assignee"),
        Index("ix_cases_assignee_created", "assignee", "created_at", "id"),
    )


class Suggestion(Base):
    """One stored, contract-checked suggestion per (case, revision); the latest is current."""

    __tablename__ = "suggestions"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    case_id: Mapped[str] = mapped_column(ForeignKey("cases.id"), index=True)
    revision: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[str] = mapped_column(Ts)
    engine: Mapped[str] = mapped_column(String(16))
    schema_version: Mapped[str] = mapped_column(String(16))
    model_version: Mapped[str | None] = mapped_column(String(64))
    body: Mapped[dict[str, Any]] = mapped_column(JSON)
    decisions: Mapped[dict[str, Any]] = mapped_column(JSON)

    __table_args__ = (UniqueConstraint("case_id", "revision", name="uq_suggestions_case_rev"),)


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(26), primary_key=True)
    name: Mapped[str] = mapped_column(String(128))
    role: Mapped[str] = mapped_column(String(16))
    prefix: Mapped[str] = mapped_column(String(16))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[str] = mapped_column(Ts)
    created_by: Mapped[str | None] = mapped_column(String(128))
    revoked_at: Mapped[str | None] = mapped_column(Ts)
    authorities: Mapped[list[Any] | None] = mapped_column(JSON)


class AuditEvent(Base):
    """Append-only, hash-chained. Never updated or deleted (PostgreSQL refuses it by trigger)."""

    __tablename__ = "audit_events"

    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    ts: Mapped[str] = mapped_column(Ts, index=True)
    actor_type: Mapped[str] = mapped_column(String(16))
    actor_id: Mapped[str] = mapped_column(String(128))
    actor_role: Mapped[str | None] = mapped_column(String(32))
    case_id: Mapped[str | None] = mapped_column(String(26), index=True)
    action: Mapped[str] = mapped_column(String(64), index=True)
    payload: Mapped[str] = mapped_column(Text)
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))

    __table_args__ = (Index("ix_audit_actor", "actor_id", "seq"),)


class AuditHead(Base):
    """The chain head (last sequence and hash): lets verify detect truncation of the tail."""

    __tablename__ = "audit_head"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger)
    hash: Mapped[str] = mapped_column(String(64))


class OutboxMessage(Base):
    """A webhook to deliver, written in the same transaction as the event it reports."""

    __tablename__ = "outbox"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    event_id: Mapped[str] = mapped_column(String(128), unique=True)
    kind: Mapped[str] = mapped_column(String(64))
    case_id: Mapped[str | None] = mapped_column(String(26), index=True)
    target_url: Mapped[str] = mapped_column(Text)
    body: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[str] = mapped_column(Ts)
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[str] = mapped_column(Ts)
    delivered_at: Mapped[str | None] = mapped_column(Ts)

    __table_args__ = (Index("ix_outbox_due", "status", "next_attempt_at"),)


class LabelFeedback(Base):
    """A reviewer's final value for one target of one case: training data for retraining."""

    __tablename__ = "label_feedback"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    case_id: Mapped[str] = mapped_column(ForeignKey("cases.id"), index=True)
    target: Mapped[str] = mapped_column(String(32))
    predicted: Mapped[str | None] = mapped_column(String(64))
    final: Mapped[str] = mapped_column(String(64))
    model_version: Mapped[str | None] = mapped_column(String(64), index=True)
    actor_id: Mapped[str] = mapped_column(String(128))
    reason: Mapped[str] = mapped_column(Text)
    created_at: Mapped[str] = mapped_column(Ts)


class ActionRow(Base):
    """A proposed or requested action on a case, and where it stands with the policy layer."""

    __tablename__ = "actions"

    id: Mapped[str] = mapped_column(String(26), primary_key=True)
    case_id: Mapped[str] = mapped_column(ForeignKey("cases.id"), index=True)
    customer_id: Mapped[str] = mapped_column(String(128))
    origin: Mapped[str] = mapped_column(String(16))
    suggestion_revision: Mapped[int | None] = mapped_column(Integer)
    action_type: Mapped[str] = mapped_column(String(32))
    body: Mapped[dict[str, Any]] = mapped_column(JSON)
    amount: Mapped[Decimal | None] = mapped_column(Numeric(18, 4))
    currency: Mapped[str | None] = mapped_column(String(3))
    material: Mapped[bool] = mapped_column(Boolean)
    status: Mapped[str] = mapped_column(String(20))
    requested_by: Mapped[str | None] = mapped_column(String(128))
    proposed_by: Mapped[str | None] = mapped_column(String(128))
    last_edited_by: Mapped[str | None] = mapped_column(String(128))
    accepted_by: Mapped[str | None] = mapped_column(String(128))
    policy_version: Mapped[str | None] = mapped_column(String(64))
    action_hash: Mapped[str | None] = mapped_column(String(64))
    decision: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    due_at: Mapped[str | None] = mapped_column(Ts)
    reminded_at: Mapped[str | None] = mapped_column(Ts)
    escalation_level: Mapped[int] = mapped_column(Integer, default=0)
    escalated_to: Mapped[list[Any] | None] = mapped_column(JSON)
    outcome_reason: Mapped[str | None] = mapped_column(Text)
    executed_at: Mapped[str | None] = mapped_column(Ts)
    created_at: Mapped[str] = mapped_column(Ts)
    updated_at: Mapped[str] = mapped_column(Ts)
    version: Mapped[int] = mapped_column(Integer, default=1)

    __table_args__ = (
        Index("ix_actions_status_due", "status", "due_at"),
        Index("ix_actions_customer_created", "customer_id", "created_at"),
    )


class ActionApproval(Base):
    """One approver's decision on one action, bound to the action hash they saw."""

    __tablename__ = "action_approvals"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    action_id: Mapped[str] = mapped_column(ForeignKey("actions.id"), index=True)
    approver_id: Mapped[str] = mapped_column(String(128))
    approver_roles: Mapped[list[Any] | None] = mapped_column(JSON)
    decision: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str | None] = mapped_column(Text)
    action_hash: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[str] = mapped_column(Ts)

    __table_args__ = (
        UniqueConstraint("action_id", "approver_id", "action_hash", name="uq_approval_once"),
    )


class FxRateRow(Base):
    """Dated FX rates into the policy's base currency (``rate`` base units per unit)."""

    __tablename__ = "fx_rates"

    currency: Mapped[str] = mapped_column(String(3), primary_key=True)
    valid_from: Mapped[date] = mapped_column(Date, primary_key=True)
    rate: Mapped[Decimal] = mapped_column(Numeric(18, 8))
    created_by: Mapped[str | None] = mapped_column(String(128))


# ---------------------------------------------------------------- web console (issue 6)
# Console accounts and sessions, the indexes the console's queue relies on, and the dashboard's
# daily roll-ups. Kept in one block; the services live in triage/users.py and
# triage/dashboard.py.

# The agent queue walks (priority, resolution_due_at, id) in order; search is an exact match on
# these ids (migration 0005).
Index("ix_cases_queue_order", Case.priority, Case.resolution_due_at, Case.id)
Index("ix_cases_source_case_id", Case.source_case_id)
Index("ix_cases_order_id", Case.order_id)
Index("ix_cases_invoice_id", Case.invoice_id)
# The dashboard's per-day reads of the audit trail (migration 0006): events of some kinds in a
# time range (suggestions, approvals), and given kinds of events of given cases (decisions).
# They make the single-column action and case_id indexes redundant (both are prefixes).
Index("ix_audit_action_ts", AuditEvent.action, AuditEvent.ts)
Index("ix_audit_case_action", AuditEvent.case_id, AuditEvent.action)


class ConsoleUser(Base):
    """A person who signs in to the web console."""

    __tablename__ = "console_users"

    id: Mapped[str] = mapped_column(String(26), primary_key=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    role: Mapped[str] = mapped_column(String(16))
    authorities: Mapped[list[Any] | None] = mapped_column()
    created_at: Mapped[str] = mapped_column(Ts)
    created_by: Mapped[str | None] = mapped_column(String(128))
    password_changed_at: Mapped[str] = mapped_column(Ts)
    last_sign_in_at: Mapped[str | None] = mapped_column(Ts)
    disabled_at: Mapped[str | None] = mapped_column(Ts)


class ConsoleSession(Base):
    """One signed-in browser. The primary key is the SHA-256 of the token the browser holds."""

    __tablename__ = "console_sessions"

    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("console_users.id"))
    created_at: Mapped[str] = mapped_column(Ts)
    expires_at: Mapped[str] = mapped_column(Ts)
    revoked_at: Mapped[str | None] = mapped_column(Ts)

    __table_args__ = (Index("ix_console_sessions_user", "user_id", "expires_at"),)


class DashboardDay(Base):
    """The dashboard's figures for one UTC day, in mergeable form (counters, exact duration
    lists, sums): see ``triage.dashboard.day_partial``. A derived cache: deleting rows only
    costs a recompute."""

    __tablename__ = "dashboard_days"

    day: Mapped[str] = mapped_column(String(10), primary_key=True)
    stats: Mapped[str] = mapped_column(Text)
    computed_at: Mapped[str] = mapped_column(Ts)


class DashboardCaseFacts(Base):
    """Per case, what the dashboard's case figures need (``triage.dashboard.case_facts``), for
    the cases of the days in ``dashboard_days``: a change to a case recomputes its facts, and
    its day is re-aggregated from the stored facts instead of re-read from the trail."""

    __tablename__ = "dashboard_case_facts"

    case_id: Mapped[str] = mapped_column(String(26), primary_key=True)
    day: Mapped[str] = mapped_column(String(10), index=True)
    facts: Mapped[str] = mapped_column(Text)


class DashboardRollupState(Base):
    """One row: the audit sequence number the roll-ups are current to, and their format."""

    __tablename__ = "dashboard_rollup_state"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    through_seq: Mapped[int] = mapped_column(BigInteger)
    format: Mapped[int] = mapped_column(Integer)
    updated_at: Mapped[str] = mapped_column(Ts)


class ModelJobRow(Base):
    """A model job (training, retraining, background evaluation): its state while it runs and
    its outcome after (``triage.model_jobs``). The partial unique index lets at most one job
    of a kind be ``running`` in the whole deployment."""

    __tablename__ = "model_jobs"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16))
    started_by: Mapped[str] = mapped_column(String(128))
    started_at: Mapped[str] = mapped_column(Ts)
    runner: Mapped[str] = mapped_column(String(128))
    heartbeat_at: Mapped[str] = mapped_column(Ts)
    progress: Mapped[str | None] = mapped_column(String(500))
    progress_at: Mapped[str | None] = mapped_column(Ts)
    finished_at: Mapped[str | None] = mapped_column(Ts)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    error: Mapped[str | None] = mapped_column(Text)
    cancel_requested_by: Mapped[str | None] = mapped_column(String(128))
    cancel_requested_at: Mapped[str | None] = mapped_column(Ts)

    __table_args__ = (
        Index("ix_model_jobs_kind_id", "kind", "id"),
        Index(
            "uq_model_jobs_running",
            "kind",
            unique=True,
            sqlite_where=text("status = 'running'"),
            postgresql_where=text("status = 'running'"),
        ),
    )
