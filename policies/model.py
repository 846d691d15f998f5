"""Input and output types of the policy layer.

These are the policy layer's own types: ``policies`` imports nothing else of ours, so the caller
(triage/) maps its case, suggestion and approval rows onto them. All models are immutable
pydantic models that refuse unknown fields, so a typo in a test file or an API payload is an
error, not a silently ignored key.

Contract:
- Money is ``Decimal`` with an ISO 4217 currency code, never float; amounts are non-negative.
- Every datetime carries a timezone (naive datetimes are refused).
- ``DecisionContext.as_of`` is the decision's clock: the evaluator never reads the system clock,
  so the same inputs always give the same decision and the same ``decision_hash``.
- ``ExposureItem`` rows are the earlier actions that count towards cumulative exposure; the
  evaluator adds the action being decided itself, and skips a ledger row with the same
  ``action_id`` so that re-evaluating an edited action never counts it twice.
"""

from __future__ import annotations

import enum
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Annotated, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints

Identifier = Annotated[
    str, StringConstraints(min_length=1, max_length=200, pattern=r"^[^\x00-\x1f\x7f]+$")
]
"""A non-empty id without control characters (user ids, case ids, customer ids, ...)."""

CurrencyCode = Annotated[str, StringConstraints(pattern=r"^[A-Z]{3}$")]
"""An ISO 4217 alphabetic code in upper case (the FX table decides which ones are usable)."""

Tier = Literal["A", "B", "C"]
Origin = Literal["suggestion", "agent", "integration"]
ArgumentValue = bool | int | Decimal | str
"""An action argument. Numbers are Decimal or int; the action catalogue fixes each argument's
type and the evaluator converts numeric strings for ``decimal``/``integer`` arguments."""

RESERVED_ID_PREFIX = "__"
"""User ids starting with this prefix are reserved for the evaluator's probe principals."""


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


# --------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------


class ActionRequest(_Frozen):
    """One proposed action to decide on.

    ``requested_by`` asked for it (agent or integration user), ``proposed_by`` drafted it (e.g.
    the advisor's service id, or an agent), ``last_edited_by`` changed it last and
    ``accepted_by`` is the agent who accepted the advisor's suggestion. None of them may
    approve it (segregation of duties).
    """

    action_id: Identifier | None = Field(
        default=None, description="Stable id of the action across edits; part of the hash."
    )
    action_type: Identifier
    arguments: dict[str, ArgumentValue] = Field(default_factory=dict)
    amount: Annotated[Decimal, Field(ge=0)] | None = None
    currency: CurrencyCode | None = None
    case_id: Identifier
    customer_id: Identifier
    customer_tier: Tier
    evidence_ids: tuple[Identifier, ...] = ()
    origin: Origin = "agent"
    requested_by: Identifier
    proposed_by: Identifier | None = None
    last_edited_by: Identifier | None = None
    accepted_by: Identifier | None = None


class FxRate(_Frozen):
    """``rate`` units of the base currency buy one unit of ``currency``, from ``valid_from``."""

    currency: CurrencyCode
    rate: Annotated[Decimal, Field(gt=0)]
    valid_from: date


class FxTable(_Frozen):
    """Dated FX rates into ``base_currency``; for each currency the latest rate on or before
    the as-of date applies, and a rate older than the policy's ``fx_max_age_days`` is refused."""

    base_currency: CurrencyCode
    rates: tuple[FxRate, ...] = ()


ExposureStatus = Literal[
    "pending", "approved", "executed", "rejected", "cancelled", "expired", "failed"
]
COUNTED_STATUSES: frozenset[str] = frozenset({"pending", "approved", "executed"})
"""Ledger rows in these states count towards exposure: money that is, or may soon be, gone."""


class ExposureItem(_Frozen):
    """An earlier action on the same case or for the same customer (the exposure ledger)."""

    action_id: Identifier | None = None
    action_type: Identifier
    case_id: Identifier
    customer_id: Identifier
    amount: Annotated[Decimal, Field(ge=0)]
    currency: CurrencyCode
    at: AwareDatetime
    status: ExposureStatus = "pending"


class CustomerFlags(_Frozen):
    """Facts about the customer that policies may forbid on."""

    blocked: bool = False
    bank_details_changed_at: AwareDatetime | None = None


class DecisionContext(_Frozen):
    """Everything besides the action that a decision depends on."""

    as_of: AwareDatetime
    fx: FxTable | None = None
    prior_actions: tuple[ExposureItem, ...] = ()
    customer: CustomerFlags = CustomerFlags()


class Principal(_Frozen):
    """A would-be approver: a user id, the roles held, and whether it is a person."""

    id: Identifier
    roles: frozenset[str] = frozenset()
    kind: Literal["human", "service"] = "human"
    active: bool = True


class Approval(_Frozen):
    """An approval already recorded, bound to the action hash the approver saw."""

    approver: Principal
    action_hash: str
    approved_at: AwareDatetime


# --------------------------------------------------------------------------------------------
# Outputs
# --------------------------------------------------------------------------------------------


class Outcome(enum.StrEnum):
    auto_execute = "auto_execute"
    needs_approval = "needs_approval"
    forbidden = "forbidden"


class Reason(_Frozen):
    """One rule that determined a result, with its rendered explanation.

    ``effect`` is the Cedar effect of the rule, or ``"engine"`` for checks made by the
    evaluator itself (duplicate approval, stale hash, no eligible approver, ...).
    """

    policy_id: str
    explanation: str
    effect: Literal["permit", "forbid", "engine"]

    def __str__(self) -> str:
        return f"{self.explanation} (policy {self.policy_id})"


class Exposure(_Frozen):
    """The converted amount and cumulative exposure figures the decision was based on."""

    base_currency: str
    amount_base: Decimal
    case_action: Decimal
    case_all: Decimal
    customer_day: Decimal


class RoleMix(_Frozen):
    """A quorum rule's role requirement: at least one approver holds one of these roles."""

    policy_id: str
    one_of_roles: tuple[str, ...]


class ApprovalRequirement(_Frozen):
    """Who must approve, how many, and by when.

    ``eligible_roles`` and ``named_approvers`` come from asking Cedar's authority matrix;
    ``min_approvals`` and ``role_mix`` from the quorum rules that apply (their annotations; the
    rule bodies are the gate checked by ``quorum_status``).
    """

    min_approvals: int
    eligible_roles: tuple[str, ...]
    named_approvers: tuple[str, ...]
    role_mix: tuple[RoleMix, ...]
    authority: tuple[Reason, ...]
    quorum: tuple[Reason, ...]
    sla: timedelta
    due_at: datetime


class Decision(_Frozen):
    """The policy decision for one action."""

    outcome: Outcome
    reasons: tuple[Reason, ...]
    approval: ApprovalRequirement | None = None
    exposure: Exposure
    policy_set_id: str
    policy_version: str
    policy_digest: str
    action_hash: str
    decision_hash: str

    def explain(self) -> str:
        """A multi-line, human-readable account of the decision."""
        lines = [
            f"outcome: {self.outcome.value} (policy {self.policy_set_id} {self.policy_version})"
        ]
        lines += [f"  - {r}" for r in self.reasons]
        if self.approval is not None:
            a = self.approval
            who = ", ".join([*a.eligible_roles, *(f"user {n}" for n in a.named_approvers)])
            lines.append(
                f"approval: {a.min_approvals} approver(s) from: {who}; due {a.due_at.isoformat()}"
            )
            lines += [f"  - {r}" for r in a.quorum]
        return "\n".join(lines)


class ApprovalCheck(_Frozen):
    """Whether one principal may approve one action now, and why (not)."""

    allowed: bool
    approver_id: str
    reasons: tuple[Reason, ...]


class DiscountedApproval(_Frozen):
    """An approval that does not count towards the quorum, and why."""

    approver_id: str
    reasons: tuple[Reason, ...]


class QuorumStatus(_Frozen):
    """Whether the approvals collected so far release the action."""

    satisfied: bool
    valid_approvals: int
    required_approvals: int
    counted_approvers: tuple[str, ...]
    roles_present: tuple[str, ...]
    discounted: tuple[DiscountedApproval, ...]
    unmet: tuple[Reason, ...]
    """Quorum rules (or the engine) still blocking release; empty when satisfied."""
    released_by: tuple[Reason, ...]
    """The release permits that matched when satisfied; empty otherwise."""
    requirement: tuple[Reason, ...]
    """Every quorum rule that applies to this action, met or not."""
