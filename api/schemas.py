"""HTTP response models (the request models are the canonical contracts in contracts/)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from triage.lifecycle import Status


class ErrorField(BaseModel):
    field: str | None
    problem: str


class ErrorDetail(BaseModel):
    code: str
    message: str
    fields: list[ErrorField] = Field(default_factory=list)


class ErrorResponse(BaseModel):
    error: ErrorDetail


class IntakeResponse(BaseModel):
    case_id: str
    status: Status
    status_url: str
    replayed: bool = Field(description="True when this request repeated an earlier submission.")


class BatchItem(BaseModel):
    index: int
    outcome: Literal["created", "replayed", "invalid", "conflict"]
    case_id: str | None = None
    status_url: str | None = None
    errors: list[dict[str, Any]] = Field(default_factory=list)


class BatchResponse(BaseModel):
    created: int
    replayed: int
    invalid: int
    conflict: int
    items: list[BatchItem]


class SLAView(BaseModel):
    triage_due_at: str
    resolution_due_at: str
    triage_breached: bool
    resolution_breached: bool


class CaseSummary(BaseModel):
    id: str
    status: Status
    status_reason: str | None
    source_system: str
    source_case_id: str
    exception_type: str
    customer_id: str
    customer_tier: str
    warehouse_id: str | None
    priority: str
    category: str | None
    queue: str | None
    created_at: str
    updated_at: str
    triaged_at: str | None
    resolved_at: str | None
    assignee: str | None = Field(
        default=None,
        description="Who holds the case: the person who claimed it (in_review), cleared when "
        "it is released or escalated; on a resolved case, who resolved it.",
    )
    sla: SLAView
    model_version: str | None = None
    abstain_reasons: dict[str, str] | None = Field(
        default=None, description="Targets the classifier abstained on, with the reason."
    )
    version: int


class CaseDetail(CaseSummary):
    case: dict[str, Any]
    suggestion: dict[str, Any] | None = None
    policy_decisions: list[dict[str, Any]] = Field(default_factory=list)
    triage_attempts: int
    resolution: str | None


class CasePage(BaseModel):
    items: list[CaseSummary]
    next_cursor: str | None = Field(description="Pass as ?cursor= to get the next page.")


class TransitionRequest(BaseModel):
    model_config = {"extra": "forbid"}

    to: Status
    reason: str | None = Field(default=None, max_length=2000)
    resolution: str | None = Field(
        default=None, max_length=5000, description="Required when moving to resolved."
    )
    expected_version: int | None = Field(default=None, ge=1)


class AssignRequest(BaseModel):
    model_config = {"extra": "forbid"}

    assignee: str = Field(
        min_length=1,
        max_length=128,
        description="Who gets the case: an enabled agent or admin (see GET /v1/cases/assignees).",
    )
    reason: str | None = Field(default=None, max_length=2000)
    expected_version: int | None = Field(default=None, ge=1)


class AssigneeList(BaseModel):
    items: list[str] = Field(description="Agents and admins a case can be assigned to, sorted.")


class KeyCreate(BaseModel):
    model_config = {"extra": "forbid"}

    name: str = Field(min_length=1, max_length=128)
    role: str
    authorities: list[str] = Field(
        default_factory=list,
        max_length=10,
        description=("Policy roles for approvals, e.g. finance_approver, finance_controller, cfo."),
    )


class KeyCreated(BaseModel):
    id: str
    name: str
    role: str
    key: str = Field(description="Shown once; store it now.")
    created_at: str


class KeyInfo(BaseModel):
    id: str
    name: str
    role: str
    prefix: str
    created_at: str
    created_by: str | None
    revoked_at: str | None
    authorities: list[str] | None = None


class AuditEventOut(BaseModel):
    seq: int
    ts: str
    actor_type: str
    actor_id: str
    actor_role: str | None
    case_id: str | None
    action: str
    payload: dict[str, Any]
    prev_hash: str
    hash: str


class AuditPage(BaseModel):
    items: list[AuditEventOut]
    next_cursor: str | None


class UnfinishedChange(BaseModel):
    seq: int
    ts: str
    action: str
    actor_id: str


class VerifyResponse(BaseModel):
    intact: bool
    events: int
    head_seq: int
    head_hash: str
    first_bad_seq: int | None
    problem: str | None
    unfinished: list[UnfinishedChange] = Field(
        default_factory=list,
        description="Long changes (knowledge ingests, re-indexes) whose start event has no "
        "outcome event: still running, or their process stopped. They do not break the chain.",
    )


class OutboxOut(BaseModel):
    id: int
    event_id: str
    kind: str
    case_id: str | None
    target_url: str
    status: str
    attempts: int
    next_attempt_at: str
    last_error: str | None
    created_at: str
    delivered_at: str | None


class OutboxPage(BaseModel):
    items: list[OutboxOut]
    next_cursor: str | None


class NoteIn(BaseModel):
    model_config = {"extra": "forbid"}

    text: str = Field(
        min_length=1,
        max_length=5000,
        description="An internal work note: never sent to the customer, never editable.",
    )


class NoteOut(BaseModel):
    seq: int = Field(description="The note's audit sequence number.")
    at: str
    author: str
    author_role: str | None
    text: str


class NotePage(BaseModel):
    items: list[NoteOut]
    next_cursor: str | None = Field(description="Pass as ?cursor= to get the next page.")
