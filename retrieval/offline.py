"""The offline engine: a grounded suggestion from rules and templates, no model, no network.

It is the default when no LLM is configured and the fallback whenever the LLM fails or breaks
the output contract. Contract (beyond :class:`~retrieval.advice.Advisor`):
- The summary is built from structured case facts only (never from free text, which is
  untrusted), at most 100 words.
- Routing: the classifier's queue when it did not abstain and the queue is configured;
  otherwise the rule queue for the exception type (``AdvisorConfig.rule_queues``), or None.
- Actions come from one rule per exception type (see ``_RULES``); amounts are computed from the
  case lines or the amount in dispute and capped by it; an action whose inputs are missing is
  not proposed (the next steps say what to check instead).
- The customer draft comes from ``prompts/offline_messages.toml``, filled with case facts and a
  quote from the best retrieved passage, which is cited.
- The result is checked by the output contract like any LLM answer; an action that still fails
  is dropped and the violation recorded (defensive: the rules are written not to fail).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from decimal import Decimal

from contracts.case import CaseIn, ExceptionType
from contracts.suggestion import (
    MAX_SUMMARY_WORDS,
    Citation,
    ContactCarrier,
    Escalate,
    IssueCreditNote,
    NotifyCustomer,
    ProposedAction,
    Provenance,
    Refund,
    Reship,
    Routing,
    Suggestion,
)
from retrieval.advice import AdviceRequest, AdvisorConfig, case_flags
from retrieval.contract import check_prose, check_suggestion
from retrieval.facts import CaseFacts, LineFacts, extract_facts, money
from retrieval.knowledge import Passage
from retrieval.prompts import MessageTemplates, load_message_templates

RESPONSE_TARGETS = {"A": "within 2 business hours", "B": "within 8 business hours"}
DEFAULT_RESPONSE_TARGET = "within 2 business days"


def fmt_qty(value: Decimal) -> str:
    return format(value.normalize(), "f")


def fmt_money(amount: Decimal, currency: str) -> str:
    return f"{currency} {money(amount):.2f}"


class _Draft:
    """Mutable working state while the rules build a suggestion."""

    def __init__(self) -> None:
        self.actions: list[ProposedAction] = []
        self.remedy: list[str] = []
        self.steps: list[str] = []


class OfflineAdvisor:
    """Rule-and-template advisor; cheap enough to run inline (thousands of cases/s)."""

    def __init__(
        self,
        config: AdvisorConfig | None = None,
        templates: MessageTemplates | None = None,
    ) -> None:
        self.config = config or AdvisorConfig()
        self.templates = templates or load_message_templates()

    async def advise(self, request: AdviceRequest) -> Suggestion:
        return self.suggest(request)

    def suggest(
        self,
        request: AdviceRequest,
        *,
        fallback_reason: str | None = None,
        prior_violations: list[str] | None = None,
        repair_attempted: bool = False,
        llm_provenance: Provenance | None = None,
    ) -> Suggestion:
        """Build and check the offline suggestion; ``fallback_reason`` etc. record why the
        offline engine answered instead of the LLM."""
        case = request.case
        facts = extract_facts(case)
        evidence_passage = self._pick_passage(request.passages, facts)
        draft = _Draft()
        rule = _RULES.get(case.exception_type, _rule_other)
        rule(self, case, facts, request, draft)

        routing = self._routing(request)
        citations = self._citations(request.passages, evidence_passage)
        for action in draft.actions:
            action.evidence = [c.chunk_id for c in citations[:1]] + action.evidence
        message, steps = self._message(case, facts, draft, evidence_passage)
        suggestion = Suggestion(
            summary=self._summary(case, facts),
            routing=routing,
            category=request.classifier.category.label if request.classifier else None,
            priority=request.classifier.priority.label if request.classifier else None,
            proposed_actions=draft.actions,
            next_steps=(draft.steps + steps)[:20],
            customer_message=message,
            citations=citations,
            similar_cases=request.similar_contract(),
            classifier=request.classifier,
            injection_flags=[str(f) for f in case_flags(case)],
            provenance=Provenance(
                engine="offline",
                fallback_reason=fallback_reason,
                prompt_id=self.templates.id,
                prompt_version=self.templates.version,
                prompt_sha256=self.templates.sha256,
                llm_model=llm_provenance.llm_model if llm_provenance else None,
                prompt_tokens=llm_provenance.prompt_tokens if llm_provenance else None,
                completion_tokens=llm_provenance.completion_tokens if llm_provenance else None,
                latency_ms=llm_provenance.latency_ms if llm_provenance else None,
                contract_violations=list(prior_violations or []),
                repair_attempted=repair_attempted,
                retrieved_chunk_ids=request.retrieved_chunk_ids,
            ),
        )
        return self._enforce(suggestion, request, facts)

    # -- pieces ----------------------------------------------------------------------------
    def _enforce(self, s: Suggestion, request: AdviceRequest, facts: CaseFacts) -> Suggestion:
        violations = check_suggestion(
            s,
            request.case,
            retrieved_chunk_ids=request.retrieved_chunk_ids,
            queues=request.queues,
            facts=facts,
        )
        if not violations:
            return s
        bad = {
            int(m.group(1))
            for v in violations
            if (m := re.match(r"proposed_actions\[(\d+)]", v.path))
        }
        kept = [a for i, a in enumerate(s.proposed_actions) if i not in bad]
        data = s.model_copy(
            update={
                "proposed_actions": kept,
                "provenance": s.provenance.model_copy(
                    update={
                        "contract_violations": s.provenance.contract_violations
                        + [f"offline:{v}" for v in violations]
                    }
                ),
            }
        )
        if any(not v.path.startswith("proposed_actions") for v in violations):
            # Prose that fails the contract is replaced by the minimal factual text.
            data = data.model_copy(
                update={
                    "customer_message": None,
                    "summary": f"{request.case.exception_type.value.replace('_', ' ')} case "
                    "needs manual review.",
                    "routing": Routing(queue=data.routing.queue, rationale="see classifier"),
                }
            )
        return data

    def _routing(self, request: AdviceRequest) -> Routing:
        cv = request.classifier
        if cv is not None and not cv.queue.abstained and cv.queue.label in request.queues:
            return Routing(
                queue=cv.queue.label,
                rationale=f"Classifier {cv.model_version} predicts queue {cv.queue.label} "
                f"with calibrated confidence {cv.queue.confidence:.2f}.",
                confidence=cv.queue.confidence,
                source="classifier",
            )
        etype = request.case.exception_type.value
        rule_queue = self.config.rule_queues.get(etype)
        why = (
            f"classifier abstained ({cv.queue.abstain_reason or 'no reason given'})"
            if cv is not None and cv.queue.abstained
            else "no classifier view"
            if cv is None
            else f"classifier queue {cv.queue.label!r} is not configured"
        )
        if rule_queue in request.queues:
            return Routing(
                queue=rule_queue,
                rationale=f"Rule for {etype.replace('_', ' ')} cases; {why}.",
                source="rules",
            )
        return Routing(
            queue=None,
            rationale=f"No configured queue for {etype.replace('_', ' ')} cases; {why}.",
            source="rules",
        )

    def _pick_passage(self, passages: list[Passage], facts: CaseFacts) -> Passage | None:
        """The passage to quote: best chunk of the document with the highest summed score
        among the retrieved chunks (one stray chunk of an unrelated document does not win),
        skipping quotes that would not pass the contract."""
        doc_score: dict[str, float] = {}
        for p in passages:
            doc_score[p.doc_id] = doc_score.get(p.doc_id, 0.0) + max(p.score, 0.0)
        ranked = sorted(passages, key=lambda p: (-doc_score[p.doc_id], -p.score))
        for p in ranked:
            quote = _quote(p.text)
            if quote and not check_prose(quote, "quote", facts, {p.doc_id, p.chunk_id}):
                return p
        return None

    def _citations(self, passages: list[Passage], best: Passage | None) -> list[Citation]:
        chosen = [best] if best else []
        chosen += [p for p in passages if p is not best]
        return [p.citation() for p in chosen[: self.config.max_citations]]

    def _summary(self, case: CaseIn, facts: CaseFacts) -> str:
        refs = case.references
        who = refs.customer.name or "Customer"
        docs = ", ".join(
            f"{label} {value}"
            for label, value in (
                ("order", refs.order_id),
                ("shipment", refs.shipment_id),
                ("invoice", refs.invoice_id),
            )
            if value
        )
        kind = case.exception_type.value.replace("_", " ")
        article = "an" if kind[0] in "aeiou" else "a"
        parts = [
            f"Tier {refs.customer.tier.value} customer {who} ({refs.customer.id}) has {article} "
            f"{kind} case" + (f" on {docs}." if docs else ".")
        ]
        for lf in facts.lines[:3]:
            parts.append(_line_text(lf) + ".")
        if len(facts.lines) > 3:
            parts.append(f"{len(facts.lines) - 3} more lines.")
        if case.amount_in_dispute is not None:
            parts.append(
                "Amount in dispute "
                + fmt_money(case.amount_in_dispute.amount, case.amount_in_dispute.currency)
                + "."
            )
        if refs.carrier_id:
            parts.append(f"Carrier {refs.carrier_id}.")
        words = " ".join(parts).split()
        if len(words) > MAX_SUMMARY_WORDS:
            words = [*words[: MAX_SUMMARY_WORDS - 1], "..."]
        return " ".join(words)

    def _message(
        self, case: CaseIn, facts: CaseFacts, draft: _Draft, passage: Passage | None
    ) -> tuple[str, list[str]]:
        refs = case.references
        policy_line = ""
        if passage is not None:
            policy_line = f'Our procedure ({passage.title}) says: "{_quote(passage.text)}"'
        lines_text = "; ".join(_line_text(lf) for lf in facts.lines[:5]) or "see the case details"
        return self.templates.render(
            case.exception_type.value,
            customer_name=refs.customer.name or "customer",
            order_ref=f"order {refs.order_id}" if refs.order_id else "your order",
            invoice_ref=f"invoice {refs.invoice_id}" if refs.invoice_id else "your invoice",
            shipment_ref=refs.shipment_id or "",
            lines_text=lines_text,
            remedy=" ".join(draft.remedy) or "We are reviewing the case.",
            policy_line=policy_line,
            response_target=RESPONSE_TARGETS.get(refs.customer.tier.value, DEFAULT_RESPONSE_TARGET),
        )


def _quote(text: str, limit: int = 220) -> str:
    flat = re.sub(r"\s+", " ", re.sub(r"(?m)^\s*([-*]|\d+\.)\s+", "", text)).strip()
    sentences = re.split(r"(?<=[.!?])\s+", flat)
    out = ""
    for s in sentences:
        if len(out) + len(s) + 1 > limit:
            break
        out = f"{out} {s}".strip()
    return out or flat[:limit].rsplit(" ", 1)[0]


def _line_text(lf: LineFacts) -> str:
    parts = [f"{lf.sku}: ordered {fmt_qty(lf.ordered)}"]
    if lf.received is not None:
        parts.append(f"received {fmt_qty(lf.received)}")
    if lf.invoiced is not None:
        parts.append(f"invoiced {fmt_qty(lf.invoiced)}")
    return ", ".join(parts)


# -- rules per exception type ---------------------------------------------------------------
Rule = Callable[[OfflineAdvisor, CaseIn, CaseFacts, AdviceRequest, _Draft], None]


def _cap(amount: Decimal, facts: CaseFacts) -> Decimal | None:
    """The amount if it is within the dispute cap, else None (never silently lowered: a
    lowered amount would not follow from the case)."""
    if amount <= 0:
        return None
    if facts.dispute_cap is not None and money(amount) > facts.dispute_cap:
        return None
    return money(amount)


def _notify(case: CaseIn, draft: _Draft, why: str) -> None:
    draft.actions.append(NotifyCustomer(customer_id=case.references.customer.id, rationale=why))


def _carrier(case: CaseIn, draft: _Draft, subject: str) -> bool:
    refs = case.references
    if not refs.carrier_id:
        draft.steps.append("Identify the carrier of the shipment; it is not on the case.")
        return False
    draft.actions.append(
        ContactCarrier(
            carrier_id=refs.carrier_id,
            shipment_id=refs.shipment_id,
            subject=subject[:200],
            rationale="Carrier must be informed within the contractual notice period.",
        )
    )
    return True


def _credit(
    case: CaseIn,
    facts: CaseFacts,
    draft: _Draft,
    amount: Decimal,
    reason: str,
    why: str,
    invoice_id: str | None = None,
) -> bool:
    invoice = invoice_id or case.references.invoice_id
    capped = _cap(amount, facts)
    if invoice is None or facts.currency is None or capped is None:
        if capped is None and amount > 0:
            draft.steps.append(
                f"The computed credit ({fmt_money(amount, facts.currency or 'EUR')}) exceeds the "
                "amount in dispute: reconcile before crediting."
                if facts.currency
                else "Reconcile the amounts before crediting."
            )
        return False
    draft.actions.append(
        IssueCreditNote(
            invoice_id=invoice,
            amount=capped,
            currency=facts.currency,
            reason_code=reason,
            rationale=why,
        )
    )
    draft.remedy.append(
        f"We propose a credit note of {fmt_money(capped, facts.currency)} against invoice "
        f"{invoice}, subject to approval."
    )
    return True


def _short_lines(facts: CaseFacts) -> list[LineFacts]:
    return [lf for lf in facts.lines if lf.missing > 0]


def _rule_shortage(
    adv: OfflineAdvisor, case: CaseIn, facts: CaseFacts, req: AdviceRequest, draft: _Draft
) -> None:
    short = _short_lines(facts)
    if not short:
        draft.steps.append("No line shows fewer units received than ordered: verify the claim.")
        _notify(case, draft, "Acknowledge the claim while quantities are verified.")
        return
    if case.references.order_id:
        for lf in short:
            draft.actions.append(
                Reship(
                    order_id=case.references.order_id,
                    sku=lf.sku,
                    quantity=lf.missing,
                    warehouse_id=case.references.warehouse_id,
                    rationale="Shortage SOP: reship the missing quantity when stock is available.",
                )
            )
            draft.remedy.append(
                f"We are arranging a reshipment of the missing {fmt_qty(lf.missing)} units of "
                f"{lf.sku}."
            )
    value = sum((lf.missing * (lf.price or 0) for lf in short), Decimal(0))
    if value > 0 and facts.currency:
        alt = (
            f"If stock is not available, issue a credit note of {fmt_money(value, facts.currency)}"
            f" for the missing quantity instead."
        )
        if not case.references.order_id:
            _credit(case, facts, draft, value, "SHORTAGE", "Missing quantity x invoiced price.")
        elif _cap(value, facts) is not None and case.references.invoice_id:
            draft.steps.append(alt)
    _notify(case, draft, "Tell the customer the remedy and its timing.")


def _rule_partial(
    adv: OfflineAdvisor, case: CaseIn, facts: CaseFacts, req: AdviceRequest, draft: _Draft
) -> None:
    over = [
        lf
        for lf in facts.lines
        if lf.invoiced is not None and lf.received is not None and lf.invoiced > lf.received
    ]
    value = sum(
        ((lf.invoiced or Decimal(0)) - (lf.received or Decimal(0))) * (lf.price or 0) for lf in over
    )
    if over and value > 0:
        _credit(
            case,
            facts,
            draft,
            Decimal(value),
            "SHORTAGE",
            "Partial shipment invoiced in full: credit the unshipped quantity.",
        )
    else:
        draft.remedy.append("The open quantity is on backorder and has not been invoiced.")
    _notify(case, draft, "Tell the customer the backorder quantity and the expected date.")


def _rule_pricing(
    adv: OfflineAdvisor, case: CaseIn, facts: CaseFacts, req: AdviceRequest, draft: _Draft
) -> None:
    over = sum(
        (lf.overcharge_per_unit * (lf.invoiced or lf.ordered) for lf in facts.lines), Decimal(0)
    )
    under = any(
        lf.invoiced_price is not None
        and lf.unit_price is not None
        and lf.invoiced_price < lf.unit_price
        for lf in facts.lines
    )
    if over > 0:
        _credit(case, facts, draft, over, "PRICE", "Invoiced unit price above the agreed price.")
    elif under:
        queue = adv.config.rule_queues.get("pricing_mismatch")
        if queue in req.queues:
            draft.actions.append(
                Escalate(
                    to_queue=str(queue),
                    reason="Undercharge: a rebill needs the account manager's approval.",
                )
            )
        draft.remedy.append("We are checking the invoiced prices with your account manager.")
    else:
        draft.steps.append("No line shows an invoiced price different from the agreed price.")
        draft.remedy.append("We are checking the prices against your agreement.")
    _notify(case, draft, "Confirm the agreed and invoiced prices to the customer.")


def _rule_duplicate(
    adv: OfflineAdvisor, case: CaseIn, facts: CaseFacts, req: AdviceRequest, draft: _Draft
) -> None:
    dup_id = next(
        (
            v
            for k, v in case.attributes.items()
            if isinstance(v, str) and "duplicate" in k.lower() and "invoice" in k.lower()
        ),
        None,
    )
    amount: Decimal | None = None
    if case.amount_in_dispute is not None:
        amount = case.amount_in_dispute.amount
    elif facts.lines and all(lf.price is not None for lf in facts.lines):
        amount = sum(
            ((lf.price or Decimal(0)) * (lf.invoiced or lf.ordered) for lf in facts.lines),
            Decimal(0),
        )
    if amount is not None:
        _credit(
            case,
            facts,
            draft,
            amount,
            "DUPLICATE",
            "Duplicate invoice: cancel it with a credit note for its full amount.",
            invoice_id=dup_id,
        )
    else:
        draft.steps.append("The duplicate's amount is not on the case: get it from billing.")
    _notify(case, draft, "Confirm which invoice stays valid.")


def _rule_damaged(
    adv: OfflineAdvisor, case: CaseIn, facts: CaseFacts, req: AdviceRequest, draft: _Draft
) -> None:
    _carrier(case, draft, f"Damage claim for shipment {case.references.shipment_id or ''}".strip())
    if case.amount_in_dispute is not None:
        _credit(
            case,
            facts,
            draft,
            case.amount_in_dispute.amount,
            "DAMAGE",
            "Damaged quantity x invoiced price, as stated in dispute.",
        )
    elif _short_lines(facts) and case.references.order_id:
        for lf in _short_lines(facts):
            draft.actions.append(
                Reship(
                    order_id=case.references.order_id,
                    sku=lf.sku,
                    quantity=lf.missing,
                    warehouse_id=case.references.warehouse_id,
                    rationale="Damaged goods SOP: reship the damaged quantity.",
                )
            )
            draft.remedy.append(
                f"We can reship {fmt_qty(lf.missing)} units of {lf.sku} once the damage is "
                "confirmed."
            )
    else:
        draft.steps.append("Ask for the damaged quantity per SKU before proposing a remedy.")
    _notify(case, draft, "Request evidence and state the remedy offered.")


def _rule_carrier_delay(
    adv: OfflineAdvisor, case: CaseIn, facts: CaseFacts, req: AdviceRequest, draft: _Draft
) -> None:
    _carrier(case, draft, f"New ETA for delayed shipment {case.references.shipment_id or ''}")
    draft.remedy.append("We have asked the carrier for a new delivery time.")
    _notify(case, draft, "Proactive delay notice to the customer.")


def _rule_integration(
    adv: OfflineAdvisor, case: CaseIn, facts: CaseFacts, req: AdviceRequest, draft: _Draft
) -> None:
    queue = adv.config.integration_queue
    if queue not in req.queues:
        queue = adv.config.rule_queues.get("failed_integration", queue)
    if queue in req.queues:
        draft.actions.append(
            Escalate(
                to_queue=queue,
                reason="Failed integration: integration support analyses the error log.",
            )
        )
    else:
        draft.steps.append("Escalate to integration support (no integration queue configured).")
    _notify(case, draft, "Tell the customer that a technical issue delays their order.")


def _rule_address(
    adv: OfflineAdvisor, case: CaseIn, facts: CaseFacts, req: AdviceRequest, draft: _Draft
) -> None:
    _notify(case, draft, "Ask the customer to confirm the correct delivery address.")
    if case.references.carrier_id and case.references.shipment_id:
        _carrier(case, draft, f"Address correction for shipment {case.references.shipment_id}")
    draft.remedy.append(
        "Please confirm the complete delivery address; we will verify it by calling back the "
        "phone number on file."
    )


def _rule_return(
    adv: OfflineAdvisor, case: CaseIn, facts: CaseFacts, req: AdviceRequest, draft: _Draft
) -> None:
    amount: Decimal | None = None
    if case.amount_in_dispute is not None:
        amount = case.amount_in_dispute.amount
    elif len(facts.lines) == 1 and facts.lines[0].price is not None:
        lf = facts.lines[0]
        amount = (lf.price or Decimal(0)) * (lf.invoiced or lf.ordered)
    capped = _cap(amount, facts) if amount is not None else None
    if capped is not None and facts.currency:
        draft.actions.append(
            Refund(
                amount=capped,
                currency=facts.currency,
                invoice_id=case.references.invoice_id,
                order_id=case.references.order_id,
                rationale="Returns policy: refund only after receipt and inspection.",
            )
        )
        draft.remedy.append(
            f"Once the goods are received and inspected, a refund of up to "
            f"{fmt_money(capped, facts.currency)} will be processed."
        )
    else:
        draft.steps.append("Determine the returned quantity and value before any refund.")
    draft.steps.append("Refund only after the warehouse confirms receipt and inspection.")
    _notify(case, draft, "Send the RMA number and return instructions.")


def _rule_other(
    adv: OfflineAdvisor, case: CaseIn, facts: CaseFacts, req: AdviceRequest, draft: _Draft
) -> None:
    draft.steps.append("No rule covers this exception type: review manually.")


_RULES: dict[ExceptionType, Rule] = {
    ExceptionType.shortage: _rule_shortage,
    ExceptionType.partial_shipment: _rule_partial,
    ExceptionType.pricing_mismatch: _rule_pricing,
    ExceptionType.duplicate_invoice: _rule_duplicate,
    ExceptionType.damaged_goods: _rule_damaged,
    ExceptionType.carrier_delay: _rule_carrier_delay,
    ExceptionType.failed_integration: _rule_integration,
    ExceptionType.address_issue: _rule_address,
    ExceptionType.return_request: _rule_return,
    ExceptionType.other: _rule_other,
}
