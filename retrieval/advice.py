"""What an advisor gets and what every advisor promises.

Contract of :class:`Advisor` implementations (offline engine and LLM advisor):
- ``await advise(request)`` returns a :class:`~contracts.suggestion.Suggestion` that passed
  :func:`retrieval.contract.check_suggestion` for ``request``; it never returns unchecked model
  output and never raises for a model failure (the LLM advisor falls back to the offline engine
  and records why in ``provenance``).
- ``suggestion.injection_flags`` lists instructions detected in the case's free text.
- Nothing in a suggestion is executed: it is advice for the policy layer and people.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field

from contracts.case import CaseIn
from contracts.suggestion import ClassifierView, SimilarCase, Suggestion
from retrieval.cases import SimilarCaseHit
from retrieval.injection import Flag, detect_injection
from retrieval.knowledge import Passage

DEFAULT_RULE_QUEUES: dict[str, str] = {
    "shortage": "warehouse",
    "partial_shipment": "warehouse",
    "pricing_mismatch": "billing",
    "duplicate_invoice": "billing",
    "damaged_goods": "claims",
    "carrier_delay": "transport",
    "address_issue": "transport",
    "failed_integration": "integration",
    "return_request": "returns",
    "other": "customer_service",
}
"""Rule routing by exception type, used when the classifier abstains. Deployments override it
(``AdvisorConfig.rule_queues``); a mapped queue outside the configured set routes to None."""


class AdvisorConfig(BaseModel):
    """Settings shared by both engines."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    rule_queues: dict[str, str] = Field(default_factory=lambda: dict(DEFAULT_RULE_QUEUES))
    integration_queue: str = "integration"
    max_citations: int = Field(default=3, ge=1, le=20)


class AdviceRequest(BaseModel):
    """Everything the advisor may use for one case (passages and cases already retrieved)."""

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)

    case: CaseIn
    case_id: str
    classifier: ClassifierView | None = None
    passages: list[Passage] = Field(default_factory=list)
    similar_cases: list[SimilarCaseHit | SimilarCase] = Field(default_factory=list)
    queues: list[str]

    @property
    def retrieved_chunk_ids(self) -> list[str]:
        return [p.chunk_id for p in self.passages]

    def similar_contract(self) -> list[SimilarCase]:
        out = []
        for s in self.similar_cases[:10]:
            out.append(s.to_contract() if isinstance(s, SimilarCaseHit) else s)
        return out


@runtime_checkable
class Advisor(Protocol):
    async def advise(self, request: AdviceRequest) -> Suggestion: ...


def case_flags(case: CaseIn) -> list[Flag]:
    """Injection flags over every free-text field of the case."""
    flags: list[Flag] = []
    flags += detect_injection(case.title, "title")
    flags += detect_injection(case.text.customer_message, "customer_message")
    flags += detect_injection(case.text.operator_notes, "operator_notes")
    flags += detect_injection(case.text.integration_error, "integration_error")
    return flags


def query_text(case: CaseIn) -> str:
    """The text used to search the knowledge base and similar cases for a case.

    The exception type leads because it names the procedure; then the headline and the free
    text. Ids and numbers are masked by the encoder itself.
    """
    parts = [case.exception_type.value.replace("_", " ")]
    parts += [
        t
        for t in (
            case.title,
            case.text.customer_message,
            case.text.operator_notes,
            case.text.integration_error,
        )
        if t
    ]
    return "\n".join(parts)
