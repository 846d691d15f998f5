"""The triage pipeline: (encode →) classify → retrieve → advise → evaluate policy → store.

When the retriever offers ``encode_many``, each case is encoded once and the vector goes to
retrieval and, if the active model was trained on the same encoder's vectors (same
fingerprint), to the classifier as well.

Each stage sits behind a small Protocol so the rule-based stages here can be swapped for the
scikit-learn classifier, the Chroma retriever, the LLM advisor and the Cedar policy layer
without touching the flow. :func:`run_case` is idempotent per case:

1. *claim* (own transaction): ``received → triaging`` with a lease; only one worker wins;
2. *compute* (no transaction held): the stages, pure with respect to the database;
3. *store* (own transaction): suggestion row + case fields + ``triaging → awaiting_review`` +
   audit events + callback outbox row, only if this worker still holds the lease.

A crash anywhere before (3) commits leaves the case ``triaging`` with an expiring lease; the
worker's recovery sweep puts it back to ``received`` and it is triaged once after restart.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, Protocol

from sqlalchemy import select, update

from contracts.case import CaseIn, ExceptionType
from contracts.suggestion import (
    MATERIAL_ACTIONS,
    Citation,
    ClassifierView,
    Prediction,
    ProposedAction,
    Provenance,
    Routing,
    Suggestion,
)
from triage import actions, audit, cases, webhooks
from triage.common import error_text, now_ts, to_ts, utcnow
from triage.db import Database
from triage.lifecycle import Status
from triage.models import Case
from triage.models import Suggestion as SuggestionRow
from triage.settings import Settings

log = logging.getLogger("triage.pipeline")


# ---------------------------------------------------------------- stage interfaces


class Classifier(Protocol):
    """Predicts category, queue and priority; may abstain per target."""

    def classify(self, case: CaseIn) -> ClassifierView: ...


class Retriever(Protocol):
    """Finds knowledge passages and similar resolved cases for the case.

    The result is handed to the advisor as is: retriever and advisor come as a matched pair
    (the rule advisor ignores it; the retrieval package's advisor cites from it).
    """

    def retrieve(self, case: CaseIn, k: int) -> Any: ...


@dataclass(frozen=True)
class AdviceInput:
    case_id: str
    case: CaseIn
    classifier: ClassifierView
    retrieved: Any
    queues: list[str]


class Advisor(Protocol):
    """Produces a contract-checked suggestion for one case."""

    def advise(self, request: AdviceInput) -> Suggestion: ...


@dataclass(frozen=True)
class ActionDecision:
    """The policy layer's verdict on one proposed action."""

    action_index: int
    action_type: str
    outcome: str  # auto_execute | needs_approval | forbidden
    reasons: list[dict[str, str]]
    policy_version: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "action_index": self.action_index,
            "action_type": self.action_type,
            "outcome": self.outcome,
            "reasons": self.reasons,
            "policy_version": self.policy_version,
        }


class PolicyGate(Protocol):
    """Decides, for each proposed action, whether it may run, needs approval or is forbidden."""

    def evaluate(self, case: CaseIn, actions: list[ProposedAction]) -> list[ActionDecision]: ...


# ---------------------------------------------------------------- rule-based stages

QUEUE_BY_TYPE = {
    ExceptionType.shortage: "warehouse_ops",
    ExceptionType.partial_shipment: "warehouse_ops",
    ExceptionType.damaged_goods: "transport",
    ExceptionType.carrier_delay: "transport",
    ExceptionType.address_issue: "customer_service",
    ExceptionType.pricing_mismatch: "billing",
    ExceptionType.duplicate_invoice: "billing",
    ExceptionType.return_request: "returns",
    ExceptionType.failed_integration: "integration_support",
    ExceptionType.other: "customer_service",
}

CATEGORY_BY_TYPE = {
    ExceptionType.shortage: "fulfilment_error",
    ExceptionType.partial_shipment: "fulfilment_error",
    ExceptionType.damaged_goods: "transit_damage",
    ExceptionType.carrier_delay: "transit_delay",
    ExceptionType.address_issue: "master_data",
    ExceptionType.pricing_mismatch: "billing_error",
    ExceptionType.duplicate_invoice: "billing_error",
    ExceptionType.return_request: "customer_return",
    ExceptionType.failed_integration: "integration_failure",
    ExceptionType.other: "other",
}


def _certain(target: str, label: str) -> Prediction:
    return Prediction(target=target, label=label, confidence=1.0, probabilities={label: 1.0})


class RuleClassifier:
    """Deterministic mapping from the case facts; the fallback when no trained model is active."""

    version = "rules-1"

    def classify(self, case: CaseIn) -> ClassifierView:
        return ClassifierView(
            model_version=self.version,
            category=_certain("category", CATEGORY_BY_TYPE[case.exception_type]),
            queue=_certain("queue", QUEUE_BY_TYPE[case.exception_type]),
            priority=_certain("priority", cases.rule_priority(case)),
        )

    @staticmethod
    def reasons(case: CaseIn) -> dict[str, list[str]]:
        """Per target, the rules behind :meth:`classify`'s answer (for explanations)."""
        kind = case.exception_type.value.replace("_", " ")
        category, queue = CATEGORY_BY_TYPE[case.exception_type], QUEUE_BY_TYPE[case.exception_type]
        return {
            "category": [f"{kind} cases are category {category} (fixed rule)"],
            "queue": [f"{kind} cases go to queue {queue} (fixed rule)"],
            "priority": cases.rule_priority_reasons(case),
        }


class NoRetriever:
    """Retrieves nothing: for tests and deployments without a knowledge base."""

    def retrieve(self, case: CaseIn, k: int) -> list[Citation]:
        return []


def disputed_amount(case: CaseIn) -> Decimal | None:
    """Money at stake: stated by the source, else derived from quantity and price gaps."""
    if case.amount_in_dispute is not None:
        return case.amount_in_dispute.amount
    total = Decimal(0)
    for line in case.lines:
        if line.unit_price is None:
            continue
        billed = line.invoiced_qty if line.invoiced_qty is not None else line.ordered_qty
        received = line.delivered_qty if line.delivered_qty is not None else line.shipped_qty
        if received is not None and billed > received:
            total += (billed - received) * line.unit_price.amount
        if line.invoiced_unit_price is not None and line.invoiced_qty is not None:
            diff = line.invoiced_unit_price.amount - line.unit_price.amount
            if diff > 0:
                total += diff * line.invoiced_qty
    return total if total > 0 else None


class RuleAdvisor:
    """Factual summary and rule-based actions from the case facts alone (no LLM)."""

    def advise(self, request: AdviceInput) -> Suggestion:
        case = request.case
        refs = case.references
        amount = disputed_amount(case)
        currency = case.currency
        facts = [
            f"{case.exception_type.value.replace('_', ' ').capitalize()} for customer "
            f"{refs.customer.name or refs.customer.id} (tier {refs.customer.tier.value})"
        ]
        for label, value in (
            ("order", refs.order_id),
            ("shipment", refs.shipment_id),
            ("invoice", refs.invoice_id),
            ("warehouse", refs.warehouse_id),
            ("carrier", refs.carrier_id),
        ):
            if value:
                facts.append(f"{label} {value}")
        summary = ", ".join(facts) + "."
        if amount is not None and currency:
            summary += f" Amount in dispute {amount:.2f} {currency}."
        queue = request.classifier.queue.label or QUEUE_BY_TYPE[case.exception_type]
        actions: list[Any] = []
        if (
            amount is not None
            and currency
            and refs.invoice_id
            and case.exception_type
            in (
                ExceptionType.shortage,
                ExceptionType.pricing_mismatch,
                ExceptionType.duplicate_invoice,
                ExceptionType.damaged_goods,
            )
        ):
            actions.append(
                {
                    "type": "issue_credit_note",
                    "invoice_id": refs.invoice_id,
                    "amount": str(amount),
                    "currency": currency,
                    "reason_code": case.exception_type.value,
                    "rationale": "credit the disputed amount stated on the case",
                }
            )
        if (
            case.exception_type in (ExceptionType.carrier_delay, ExceptionType.damaged_goods)
            and refs.carrier_id
        ):
            actions.append(
                {
                    "type": "contact_carrier",
                    "carrier_id": refs.carrier_id,
                    "shipment_id": refs.shipment_id,
                    "subject": f"{case.exception_type.value} on shipment "
                    f"{refs.shipment_id or 'unknown'}",
                }
            )
        if case.exception_type == ExceptionType.failed_integration:
            actions.append(
                {
                    "type": "escalate",
                    "to_queue": "integration_support",
                    "reason": "integration error needs a technical fix",
                }
            )
        return Suggestion.model_validate(
            {
                "summary": summary,
                "routing": Routing(
                    queue=queue,
                    rationale=f"{case.exception_type.value} cases go to {queue}",
                    confidence=request.classifier.queue.confidence,
                    source="rules",
                ).model_dump(),
                "category": request.classifier.category.label,
                "priority": request.classifier.priority.label,
                "proposed_actions": actions,
                "next_steps": [
                    f"Review the {case.exception_type.value.replace('_', ' ')} facts",
                    "Confirm the proposed actions",
                ],
                "customer_message": None,
                "citations": [],
                "classifier": request.classifier.model_dump(),
                "provenance": Provenance(
                    engine="offline", fallback_reason="rules only"
                ).model_dump(),
            }
        )


class ThresholdPolicy:
    """Material actions need approval, others run automatically (until the Cedar policy lands)."""

    version = "threshold-1"

    def evaluate(self, case: CaseIn, actions: list[ProposedAction]) -> list[ActionDecision]:
        out = []
        for i, action in enumerate(actions):
            material = action.type in MATERIAL_ACTIONS
            out.append(
                ActionDecision(
                    i,
                    action.type.value,
                    "needs_approval" if material else "auto_execute",
                    [
                        {
                            "policy_id": "material_actions_need_approval"
                            if material
                            else "non_material",
                            "explanation": f"{action.type.value} is "
                            f"{'a material' if material else 'a non-material'} action",
                        }
                    ],
                    self.version,
                )
            )
        return out


@dataclass
class Pipeline:
    """The four stages; any of them may be replaced independently."""

    classifier: Classifier = field(default_factory=RuleClassifier)
    retriever: Retriever = field(default_factory=NoRetriever)
    advisor: Advisor = field(default_factory=RuleAdvisor)
    policy: PolicyGate = field(default_factory=ThresholdPolicy)
    k: int = 5


# ---------------------------------------------------------------- the per-case flow


class AdvisorUnavailable(Exception):
    """Raised by an advisor stage when the case should wait for its engine to come back
    (``llm_unavailable=wait``): the case returns to the queue after
    ``llm_wait_retry_seconds`` and such retries never make it fail for good."""


@dataclass(frozen=True)
class Outcome:
    case_id: str
    status: str  # triaged | skipped | retry | failed | lease_lost
    detail: str | None = None


CrashHook = Callable[[str], None]


def _noop(_stage: str) -> None:
    return None


def claim(db: Database, case_id: str, worker_id: str, settings: Settings) -> bool:
    """``received → triaging`` with a lease for this worker; False if someone else has it."""
    return claim_many(db, [case_id], worker_id, settings) == [case_id]


def claim_many(
    db: Database, case_ids: Sequence[str], worker_id: str, settings: Settings
) -> list[str]:
    """Claim every case of ``case_ids`` still in ``received``, in one transaction.

    Returns the claimed ids in the order given; the others were taken by another worker (or
    are no longer waiting). One ``case.triaging`` audit event per claimed case.
    """
    if not case_ids:
        return []
    now = utcnow()
    with db.write() as s:
        got = dict(
            s.execute(
                update(Case)
                .where(Case.id.in_(list(case_ids)), Case.status == Status.received.value)
                .values(
                    status=Status.triaging.value,
                    lease_owner=worker_id,
                    lease_expires_at=to_ts(now + timedelta(seconds=settings.lease_seconds)),
                    triage_attempts=Case.triage_attempts + 1,
                    updated_at=to_ts(now),
                    version=Case.version + 1,
                )
                .returning(Case.id, Case.triage_attempts)
                .execution_options(synchronize_session=False)
            )
            .tuples()
            .all()
        )
        claimed = [cid for cid in case_ids if cid in got]
        for cid in claimed:
            audit.append(
                s,
                audit.PIPELINE,
                "case.triaging",
                {"from": "received", "to": "triaging", "worker": worker_id, "attempt": got[cid]},
                case_id=cid,
            )
    return claimed


@dataclass
class _Work:
    """One claimed case on its way through the stages of a batch."""

    case_id: str
    case: CaseIn | None = None
    vector: Any = None
    view: ClassifierView | None = None
    retrieved: Any = None
    suggestion: Suggestion | None = None
    decisions: list[ActionDecision] = field(default_factory=list)
    error: Exception | None = None


def run_case(
    db: Database,
    case_id: str,
    pipeline: Pipeline,
    settings: Settings,
    *,
    worker_id: str,
    crash_hook: CrashHook = _noop,
) -> Outcome:
    """Triage one case end to end (see module docstring for the idempotency contract)."""
    return run_batch(db, [case_id], pipeline, settings, worker_id=worker_id, crash_hook=crash_hook)[
        0
    ]


def run_batch(
    db: Database,
    case_ids: Sequence[str],
    pipeline: Pipeline,
    settings: Settings,
    *,
    worker_id: str,
    crash_hook: CrashHook = _noop,
) -> list[Outcome]:
    """Triage several cases with the per-case contract of :func:`run_case`, paying the fixed
    costs once per batch: one claim transaction, one payload read, one classifier call, one
    encoder pass and one Chroma query per collection (stages that offer ``*_many``), advice
    calls overlapped when the advisor offers ``advise_many``, and one store transaction.

    A failure is confined to its case: a batch stage that raises is retried case by case, a
    case whose stage raises is recorded as a failure (retry with backoff, or failed for good),
    and if the batch store transaction fails, each case is stored in its own transaction.
    Returns one :class:`Outcome` per requested id, in order.
    """
    claimed = claim_many(db, case_ids, worker_id, settings)
    taken = set(claimed)
    outcomes: dict[str, Outcome] = {
        cid: Outcome(cid, "skipped", "not in received state or claimed by another worker")
        for cid in case_ids
        if cid not in taken
    }
    if not claimed:
        return [outcomes[cid] for cid in case_ids]
    started = time.perf_counter()
    stage_ms: dict[str, float] = {}
    works = [_Work(cid) for cid in claimed]
    try:
        with db.read() as s:
            payloads: dict[str, Any] = dict(
                s.execute(select(Case.id, Case.payload).where(Case.id.in_(claimed))).tuples().all()
            )
        for w in works:
            try:
                w.case = CaseIn.model_validate(payloads[w.case_id])
            except Exception as exc:  # a stored payload the current contract refuses
                w.error = exc
        clf = pipeline.classifier
        ret, k = pipeline.retriever, pipeline.k
        # Encode each case once; the vector serves retrieval and, when the active model was
        # trained on the same encoder's vectors, classification.
        encode = getattr(ret, "encode_many", None)
        if callable(encode):
            _run_stage(
                works,
                stage_ms,
                "encode",
                _case_of,
                lambda cases: list(encode(cases)),
                lambda case: encode([case])[0],
                "vector",
            )
        crash_hook("classify")
        clf_many = _many(clf, "classify_many")
        share = callable(encode) and clf_many is not None and _shares_vectors(clf, ret)
        _run_stage(
            works,
            stage_ms,
            "classify",
            _case_and_vector,
            *_vector_calls(clf_many, clf.classify, share),
            "view",
        )
        crash_hook("retrieve")
        ret_many = _many(ret, "retrieve_many", k)
        _run_stage(
            works,
            stage_ms,
            "retrieve",
            _case_and_vector,
            *_vector_calls(
                ret_many,
                lambda case: ret.retrieve(case, k),
                callable(encode) and ret_many is not None,
            ),
            "retrieved",
        )
        crash_hook("advise")
        adv = pipeline.advisor
        # advise_many overlaps LLM calls; its slots already hold per-case exceptions
        _run_stage(
            works,
            stage_ms,
            "advise",
            _advice_input(settings),
            _many(adv, "advise_many"),
            adv.advise,
            "suggestion",
        )
        crash_hook("policy")
        gate = pipeline.policy
        _run_stage(
            works,
            stage_ms,
            "policy",
            _policy_input,
            _many(gate, "evaluate_batch"),
            lambda item: gate.evaluate(*item),
            "decisions",
        )
        crash_hook("store")
    except Exception as exc:  # the batch machinery itself failed: every case retries later
        log.exception("triage batch of %d cases failed", len(works))
        for w in works:
            w.error = w.error or exc
    for w in works:
        if w.error is not None:
            log.error("triage of case %s failed: %r", w.case_id, w.error)
            outcomes[w.case_id] = _record_failure(db, w.case_id, worker_id, settings, w.error)
    done = _live(works)
    elapsed_ms = (time.perf_counter() - started) * 1000
    if done:
        try:
            with db.write() as s, audit.deferred(s):
                for w in done:
                    outcomes[w.case_id] = _store_in(s, w, worker_id, settings, elapsed_ms, stage_ms)
        except Exception:
            log.exception("batch store failed; storing the %d cases one by one", len(done))
            for w in done:
                try:
                    with db.write() as s:
                        outcomes[w.case_id] = _store_in(
                            s, w, worker_id, settings, elapsed_ms, stage_ms
                        )
                except Exception as exc:
                    outcomes[w.case_id] = _record_failure(db, w.case_id, worker_id, settings, exc)
    return [outcomes[cid] for cid in case_ids]


def _live(works: list[_Work]) -> list[_Work]:
    return [w for w in works if w.error is None]


def _case_of(w: _Work) -> CaseIn:
    assert w.case is not None
    return w.case


def _batched(
    name: str,
    inputs: Sequence[Any],
    many: Callable[[Sequence[Any]], Any] | None,
    one: Callable[[Any], Any],
) -> list[Any]:
    """One result per input, each the stage's answer or the exception that input raised.

    One call to ``many`` when the stage offers it and there is more than one input; if it
    raises or answers the wrong number of results, the inputs are run one at a time, so an
    error stays with its case.
    """
    if many is not None and len(inputs) > 1:
        try:
            results = list(many(inputs))
            if len(results) == len(inputs):
                return results
        except Exception:
            log.exception("%s batch failed; retrying case by case", name)
    return each(one, inputs)


def each(one: Callable[[Any], Any], inputs: Sequence[Any]) -> list[Any]:
    """``one`` over every input; each slot holds the answer or the exception that input
    raised, so an error stays with its case."""
    out: list[Any] = []
    for item in inputs:
        try:
            out.append(one(item))
        except Exception as exc:
            out.append(exc)
    return out


def _run_stage(
    works: list[_Work],
    stage_ms: dict[str, float],
    name: str,
    inputs: Callable[[_Work], Any],
    many: Callable[[Sequence[Any]], Any] | None,
    one: Callable[[Any], Any],
    attr: str,
) -> None:
    """Run one stage over the live cases of a batch and keep each answer on its case."""
    t = time.perf_counter()
    live = _live(works)
    for w, res in zip(live, _batched(name, [inputs(w) for w in live], many, one), strict=True):
        if isinstance(res, BaseException):
            w.error = res if isinstance(res, Exception) else RuntimeError(repr(res))
        else:
            setattr(w, attr, res)
    stage_ms[name] = (time.perf_counter() - t) * 1000


def _case_and_vector(w: _Work) -> tuple[CaseIn, Any]:
    assert w.case is not None
    return (w.case, w.vector)


def _vector_calls(
    many: Callable[..., Any] | None, one: Callable[[CaseIn], Any], share: bool
) -> tuple[Callable[[Sequence[Any]], Any] | None, Callable[[Any], Any]]:
    """The batch and single calls of a stage over ``(case, vector)`` items.

    With ``share`` the items' vectors go to ``many`` as ``vectors=`` (a single item goes
    through ``many`` too, so it keeps its vector); otherwise the vectors are not passed.
    """
    if share:
        assert many is not None

        def batch(items: Sequence[tuple[CaseIn, Any]]) -> Any:
            import numpy as np

            return many([c for c, _ in items], vectors=np.vstack([v for _, v in items]))

        return batch, lambda item: batch([item])[0]
    plain = None if many is None else (lambda items: many([c for c, _ in items]))
    return plain, lambda item: one(item[0])


def _shares_vectors(classifier: Any, retriever: Any) -> bool:
    """True when the classifier takes vectors from the retriever's encoder (same fingerprint)."""
    wanted = getattr(classifier, "vector_fingerprint", None)
    wanted = wanted() if callable(wanted) else wanted
    have = getattr(retriever, "encoder_fingerprint", None)
    return wanted is not None and wanted == have


def _many(stage: Any, method: str, *extra: Any) -> Callable[..., Any] | None:
    """The stage's optional batch method, with any extra arguments bound (keywords, such as
    ``vectors=``, pass through)."""
    fn = getattr(stage, method, None)
    return None if not callable(fn) else (lambda items, **kw: fn(items, *extra, **kw))


def _advice_input(settings: Settings) -> Callable[[_Work], AdviceInput]:
    def build(w: _Work) -> AdviceInput:
        assert w.case is not None
        assert w.view is not None
        return AdviceInput(w.case_id, w.case, w.view, w.retrieved, settings.queues)

    return build


def _policy_input(w: _Work) -> tuple[CaseIn, list[ProposedAction]]:
    assert w.case is not None
    assert w.suggestion is not None
    return (w.case, list(w.suggestion.proposed_actions))


def _store_in(
    s: Any,
    w: _Work,
    worker_id: str,
    settings: Settings,
    elapsed_ms: float,
    stage_ms: dict[str, float] | None = None,
) -> Outcome:
    """The store step for one computed case, inside the caller's write transaction."""
    case_id, case, suggestion, decisions = w.case_id, w.case, w.suggestion, w.decisions
    assert case is not None
    assert suggestion is not None
    row = s.get(Case, case_id)
    if row is None or row.status != Status.triaging.value or row.lease_owner != worker_id:
        # Our lease expired and another worker took over: storing would duplicate work.
        return Outcome(case_id, "lease_lost")
    revision = row.suggestion_revision + 1
    body = suggestion.model_dump(mode="json")
    model_version = suggestion.classifier.model_version if suggestion.classifier else None
    s.add(
        SuggestionRow(
            case_id=case_id,
            revision=revision,
            created_at=now_ts(),
            engine=suggestion.provenance.engine,
            schema_version=suggestion.schema_version,
            model_version=model_version,
            body=body,
            decisions={"items": [d.as_dict() for d in decisions]},
        )
    )
    row.suggestion_revision = revision
    _apply_classification(s, row, suggestion, settings)
    actions.propose_from_suggestion(
        s, case_id, row.customer_id, list(suggestion.proposed_actions), revision
    )
    row.triaged_at = now_ts()
    row.lease_owner = None
    row.lease_expires_at = None
    s.flush()
    audit.append(
        s,
        audit.PIPELINE,
        "suggestion.created",
        {
            "revision": revision,
            "engine": suggestion.provenance.engine,
            "fallback_reason": suggestion.provenance.fallback_reason,
            "model_version": model_version,
            "category": suggestion.category,
            "queue": suggestion.routing.queue,
            "priority": suggestion.priority,
            "abstained": [p.target for p in _predictions(suggestion) if p.abstained],
            "actions": [a.type.value for a in suggestion.proposed_actions],
            "citations": [c.chunk_id for c in suggestion.citations],
            "elapsed_ms": round(elapsed_ms, 2),
            "stage_ms": {k: round(v, 2) for k, v in (stage_ms or {}).items()},
            # LLM use (None/False when no LLM was involved): for /metrics and cost reports
            "llm_model": suggestion.provenance.llm_model,
            "repair_attempted": suggestion.provenance.repair_attempted,
            "prompt_tokens": suggestion.provenance.prompt_tokens,
            "completion_tokens": suggestion.provenance.completion_tokens,
        },
        case_id=case_id,
    )
    if suggestion.injection_flags:
        # Instructions hidden in case text are data, never commands: flag and audit them.
        row.injection_flags = list(suggestion.injection_flags)
        audit.append(
            s,
            audit.PIPELINE,
            "case.injection_flagged",
            {"flags": list(suggestion.injection_flags)},
            case_id=case_id,
        )
    for d in decisions:
        audit.append(s, audit.SYSTEM, "policy.evaluated", d.as_dict(), case_id=case_id)
    cases.transition(
        s,
        case_id,
        Status.awaiting_review,
        actor=audit.PIPELINE,
        by_system=True,
        reason="triage complete",
    )
    webhooks.notify_submitter(
        s,
        row,
        "case.triaged",
        f"case.triaged:{case_id}:{revision}",
        status=Status.awaiting_review.value,
        queue=suggestion.routing.queue,
        category=suggestion.category,
        priority=row.priority,
        summary=suggestion.summary,
    )
    return Outcome(case_id, "triaged")


def _apply_classification(s: Any, row: Case, suggestion: Suggestion, settings: Settings) -> None:
    """The case's routing fields hold the classifier's answer, or nothing where it abstained
    (with the reason kept on the case); the advisor's own routing stays in the suggestion."""
    view = suggestion.classifier
    if view is None:
        row.category = suggestion.category
        row.queue = suggestion.routing.queue
        row.predicted_category = row.predicted_queue = row.predicted_priority = None
        return
    row.model_version = view.model_version
    preds = (view.category, view.queue, view.priority)
    # what the classifier said, kept beside the (overridable) routing fields for model_stats
    row.predicted_category = view.category.label
    row.predicted_queue = view.queue.label
    row.predicted_priority = view.priority.label
    reasons = {p.target: p.abstain_reason or "abstained" for p in preds if p.abstained}
    row.abstain_reasons = reasons or None
    row.category = None if view.category.abstained else view.category.label
    row.queue = None if view.queue.abstained else view.queue.label
    if not view.priority.abstained and view.priority.label:
        cases.reprioritise(s, row, view.priority.label, settings)


def _predictions(s: Suggestion) -> list[Prediction]:
    if s.classifier is None:
        return []
    return [s.classifier.category, s.classifier.queue, s.classifier.priority]


def _record_failure(
    db: Database, case_id: str, worker_id: str, settings: Settings, exc: Exception
) -> Outcome:
    reason = error_text(exc)
    with db.write() as s:
        row = s.get(Case, case_id)
        if row is None or row.status != Status.triaging.value or row.lease_owner != worker_id:
            return Outcome(case_id, "lease_lost")
        wait = isinstance(exc, AdvisorUnavailable)
        final = not wait and row.triage_attempts >= settings.max_triage_attempts
        target = Status.failed if final else Status.received
        backoff = settings.llm_wait_retry_seconds if wait else min(300, 2**row.triage_attempts)
        cases.transition(
            s,
            case_id,
            target,
            actor=audit.PIPELINE,
            by_system=True,
            reason=reason,
            extra={"attempt": row.triage_attempts},
            mutate=lambda r: _clear_lease(r, None if final else backoff),
        )
    return Outcome(case_id, "failed" if final else "retry", reason)


def _clear_lease(row: Case, not_before_seconds: float | None) -> None:
    row.lease_owner = None
    # For a case back in `received`, lease_expires_at doubles as "not before" (retry backoff).
    row.lease_expires_at = (
        None
        if not_before_seconds is None
        else to_ts(datetime.now(UTC) + timedelta(seconds=not_before_seconds))
    )


def recover_expired_leases(db: Database, *, now: str | None = None) -> list[str]:
    """Put cases whose triage lease expired (crashed or stuck worker) back to ``received``."""
    now = now or now_ts()
    with db.write() as s:
        stale = s.scalars(
            select(Case.id)
            .where(Case.status == Status.triaging.value, Case.lease_expires_at < now)
            .limit(500)
        ).all()
        for case_id in stale:
            cases.transition(
                s,
                case_id,
                Status.received,
                actor=audit.SYSTEM,
                by_system=True,
                reason="triage lease expired; will retry",
                mutate=lambda r: _clear_lease(r, None),
            )
    return list(stale)


def next_due(db: Database, limit: int = 20) -> list[str]:
    """Cases ready for triage, most urgent first."""
    now = now_ts()
    with db.read() as s:
        return list(
            s.scalars(
                select(Case.id)
                .where(Case.status == Status.received.value)
                .where((Case.lease_expires_at.is_(None)) | (Case.lease_expires_at < now))
                .order_by(Case.priority, Case.created_at)
                .limit(limit)
            )
        )


__all__ = [
    "ActionDecision",
    "AdviceInput",
    "Advisor",
    "AdvisorUnavailable",
    "Classifier",
    "Outcome",
    "Pipeline",
    "PolicyGate",
    "Retriever",
    "next_due",
    "recover_expired_leases",
    "run_case",
]
