"""The triage suggestion: what the pipeline proposes to the service agent for one case.

A suggestion is advice, never an action: proposed actions only run after the policy layer and,
where required, human approvers said so. Stored with ``schema_version`` so old rows stay readable.

Contract:
- ``summary`` holds at most 100 words.
- ``routing.queue`` is one of the configured queues, or ``None`` when the classifier abstained
  and the advisor had nothing better grounded.
- Every id in ``citations`` names a chunk that was retrieved for this case.
- Money in actions is Decimal with an ISO 4217 currency.
"""

from __future__ import annotations

import enum
from decimal import Decimal
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from contracts.case import CurrencyCode, Identifier

SUGGESTION_SCHEMA_VERSION = "1.0"
MAX_SUMMARY_WORDS = 100


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Prediction(_Model):
    """One classifier output for one target (category, queue or priority)."""

    target: str
    label: str | None = Field(description="Predicted label, or None when the model abstained.")
    confidence: float = Field(ge=0, le=1, description="Calibrated probability of the top label.")
    runner_up: str | None = None
    runner_up_confidence: float | None = None
    abstained: bool = False
    abstain_reason: str | None = None
    probabilities: dict[str, float] = Field(default_factory=dict)


class ClassifierView(_Model):
    """What the classifier said, kept beside the advisor's own routing for comparison."""

    model_version: str
    category: Prediction
    queue: Prediction
    priority: Prediction


class Evidence(_Model):
    """One piece of evidence in an :class:`Explanation`: a word, phrase or field of the case."""

    kind: Literal["word", "phrase", "field", "number", "meaning"] = Field(
        description="word: a word of the case text (its word and spelling features together); "
        "phrase: a two-word sequence; field: a structured field's value; number: a numeric "
        "field; meaning: the text's embedding vector as a whole."
    )
    feature: str = Field(description="The word or phrase, the field name, or the encoder.")
    value: str | None = Field(default=None, description="The field's value on this case.")
    weight: float = Field(
        description="Log-odds this evidence adds for `label` over `versus` (negative: it "
        "pulls towards `versus`)."
    )


class Explanation(_Model):
    """Why the model ranked ``label`` first for one target: an exact additive breakdown.

    ``log_odds`` = ln(P(label) / P(versus)) under the calibrated probabilities, and
    ``log_odds == baseline + sum(e.weight for e in evidence) + other`` (up to rounding): the
    model is linear in its features, so nothing here is an approximation.
    """

    target: str
    label: str = Field(description="The top-ranked label (also when the prediction abstained).")
    probability: float = Field(ge=0, le=1)
    versus: str = Field(description="The runner-up label the evidence is weighed against.")
    versus_probability: float = Field(ge=0, le=1)
    log_odds: float
    baseline: float = Field(
        description="What the labels' intercepts give before any evidence (label frequency)."
    )
    evidence: list[Evidence] = Field(description="Strongest evidence first, by |weight|.")
    other: float = Field(description="Sum of the weights of the evidence not listed.")


class CaseExplanation(_Model):
    """Why the classifier behind a case's current suggestion answered as it did."""

    case_id: str
    model_version: str = Field(description="The model (or `rules-1`) that classified the case.")
    source: Literal["model", "rules"]
    targets: dict[str, Explanation] = Field(
        default_factory=dict,
        description="Per target the model predicts: the top label's evidence against the "
        "runner-up, recomputed from the stored case with that model version.",
    )
    reproduced: dict[str, bool] = Field(
        default_factory=dict,
        description="Per explained target: whether the recomputation gives the stored "
        "probabilities (false means the stored answer did not come from this model and input).",
    )
    rules: dict[str, list[str]] = Field(
        default_factory=dict,
        description="Per target answered by the fixed rules: the rules that applied.",
    )


class Routing(_Model):
    queue: str | None
    rationale: str = Field(max_length=1000)
    confidence: float | None = Field(default=None, ge=0, le=1)
    source: Literal["classifier", "advisor", "rules"] = "classifier"


class ActionType(enum.StrEnum):
    issue_credit_note = "issue_credit_note"
    write_off = "write_off"
    adjust_inventory = "adjust_inventory"
    rebill = "rebill"
    refund = "refund"
    reship = "reship"
    contact_carrier = "contact_carrier"
    notify_customer = "notify_customer"
    escalate = "escalate"


MATERIAL_ACTIONS: frozenset[ActionType] = frozenset(
    {
        ActionType.issue_credit_note,
        ActionType.write_off,
        ActionType.adjust_inventory,
        ActionType.rebill,
        ActionType.refund,
    }
)
"""Actions that move money or stock: these always go through the policy layer."""


Amount = Annotated[Decimal, Field(ge=0, max_digits=18, decimal_places=4)]
Qty = Annotated[Decimal, Field(max_digits=18, decimal_places=6)]


class _Action(_Model):
    rationale: str = Field(default="", max_length=1000)
    evidence: list[Identifier] = Field(
        default_factory=list,
        max_length=20,
        description="Chunk ids or case fields that justify the action.",
    )


class IssueCreditNote(_Action):
    type: Literal[ActionType.issue_credit_note] = ActionType.issue_credit_note
    invoice_id: Identifier
    amount: Amount
    currency: CurrencyCode
    reason_code: str = Field(max_length=64)


class WriteOff(_Action):
    type: Literal[ActionType.write_off] = ActionType.write_off
    amount: Amount
    currency: CurrencyCode
    invoice_id: Identifier | None = None
    reason_code: str = Field(max_length=64)


class AdjustInventory(_Action):
    type: Literal[ActionType.adjust_inventory] = ActionType.adjust_inventory
    warehouse_id: Identifier
    sku: Identifier
    quantity_delta: Qty
    value: Amount | None = None
    currency: CurrencyCode | None = None
    reason_code: str = Field(max_length=64)


class Rebill(_Action):
    type: Literal[ActionType.rebill] = ActionType.rebill
    invoice_id: Identifier
    amount: Amount
    currency: CurrencyCode


class Refund(_Action):
    type: Literal[ActionType.refund] = ActionType.refund
    amount: Amount
    currency: CurrencyCode
    invoice_id: Identifier | None = None
    order_id: Identifier | None = None


class Reship(_Action):
    type: Literal[ActionType.reship] = ActionType.reship
    order_id: Identifier
    sku: Identifier
    quantity: Qty
    warehouse_id: Identifier | None = None


class ContactCarrier(_Action):
    type: Literal[ActionType.contact_carrier] = ActionType.contact_carrier
    carrier_id: Identifier
    shipment_id: Identifier | None = None
    subject: str = Field(max_length=200)


class NotifyCustomer(_Action):
    type: Literal[ActionType.notify_customer] = ActionType.notify_customer
    customer_id: Identifier
    channel: Literal["email", "portal", "phone"] = "email"


class Escalate(_Action):
    type: Literal[ActionType.escalate] = ActionType.escalate
    to_queue: str = Field(max_length=64)
    reason: str = Field(max_length=500)


ProposedAction = Annotated[
    IssueCreditNote
    | WriteOff
    | AdjustInventory
    | Rebill
    | Refund
    | Reship
    | ContactCarrier
    | NotifyCustomer
    | Escalate,
    Field(discriminator="type"),
]


class Citation(_Model):
    chunk_id: str
    document_id: str | None = None
    title: str | None = None
    chunk_hash: str | None = None
    quote: str | None = Field(default=None, max_length=1000)


class SimilarCase(_Model):
    case_id: str
    score: float
    exception_type: str | None = None
    resolution: str | None = None


class Provenance(_Model):
    """How the suggestion was produced: enough for an auditor to reproduce the decision path."""

    engine: Literal["llm", "offline"]
    fallback_reason: str | None = None
    prompt_id: str | None = None
    prompt_version: str | None = None
    prompt_sha256: str | None = None
    llm_model: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    latency_ms: float | None = None
    contract_violations: list[str] = Field(default_factory=list)
    repair_attempted: bool = False
    retrieved_chunk_ids: list[str] = Field(default_factory=list)


class Suggestion(_Model):
    """Everything the agent sees as the machine's proposal for one case."""

    schema_version: str = SUGGESTION_SCHEMA_VERSION
    summary: str = Field(max_length=1500)
    routing: Routing
    category: str | None = None
    priority: str | None = None
    proposed_actions: list[ProposedAction] = Field(default_factory=list, max_length=20)
    next_steps: list[str] = Field(default_factory=list, max_length=20)
    customer_message: str | None = Field(default=None, max_length=5000)
    citations: list[Citation] = Field(default_factory=list, max_length=20)
    similar_cases: list[SimilarCase] = Field(default_factory=list, max_length=10)
    classifier: ClassifierView | None = None
    injection_flags: list[str] = Field(default_factory=list)
    provenance: Provenance

    @field_validator("summary")
    @classmethod
    def _summary_words(cls, value: str) -> str:
        words = value.split()
        if len(words) > MAX_SUMMARY_WORDS:
            raise ValueError(f"summary has {len(words)} words; at most {MAX_SUMMARY_WORDS}")
        return value


class ProfileItem(_Model):
    """Evidence that recurred across the cases a model gave one label (:class:`LabelProfile`)."""

    kind: Literal["word", "phrase", "field", "number", "meaning"]
    feature: str
    value: str | None = Field(default=None, description="The field's value (fields only).")
    weight: float = Field(
        description="Log-odds it added for the label over each case's runner-up, summed over "
        "the cases it appeared in."
    )
    mean_weight: float = Field(description="`weight` per case it appeared in.")
    cases: int = Field(ge=1, description="Cases given the label in which it appeared.")


class LabelProfile(_Model):
    """What a model relied on when it ranked ``label`` first, over recent cases."""

    label: str
    cases: int = Field(ge=1, description="Recent cases where the label was ranked first.")
    abstained: int = Field(ge=0, description="Of those, cases where the model abstained.")
    mean_probability: float = Field(ge=0, le=1)
    evidence: list[ProfileItem] = Field(
        description="Strongest first: the evidence that added the most log-odds in total."
    )


class ModelProfile(_Model):
    """A model version's global view: per target and label, the evidence it relied on most,
    aggregated from exact per-case explanations of the cases it classified."""

    model_version: str
    cases: int = Field(ge=0, description="Recent cases read (classified by this version).")
    targets: dict[str, list[LabelProfile]] = Field(
        default_factory=dict, description="Per target, labels by number of cases."
    )
