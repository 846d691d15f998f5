"""Output contract: is a suggestion grounded in the case and in what was retrieved?

:func:`check_suggestion` is a pure function returning a list of :class:`Violation` (empty =
the suggestion may be stored). Rules:

1. ``routing.queue`` is ``None`` or one of the configured queues; ``escalate.to_queue`` too.
2. Every citation names a chunk retrieved for this case; so does every action ``evidence``
   entry that looks like a chunk id (``<doc>:<n>:<hash>``).
3. Action arguments: invoice, order, shipment, carrier, warehouse and customer ids and SKUs must
   be structured case facts (free-text mentions are not enough: free text is untrusted). Money
   must be in the case currency, must follow from the case (see ``retrieval.facts``) and may not
   exceed the dispute cap; reship/adjust quantities must follow from the line quantities.
4. Prose (summary, rationale, next steps, customer message): every id-like token, every amount
   written with a currency, every quantity written with a unit and every ISO date must be a case
   fact, a free-text mention, or (for ids) a retrieved document id.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from datetime import date
from decimal import Decimal

from contracts.case import CaseIn
from contracts.suggestion import (
    AdjustInventory,
    ContactCarrier,
    Escalate,
    IssueCreditNote,
    NotifyCustomer,
    Rebill,
    Refund,
    Reship,
    Suggestion,
    WriteOff,
)
from retrieval.facts import ID_PATTERN, CaseFacts, extract_facts, money, parse_decimal, qty

_CURRENCY_WORDS = r"(?:EUR|USD|GBP|CHF|SEK|NOK|DKK|PLN|CZK|JPY|CNY|[€$£])"
_NUM = r"\d[\d.,]*\d|\d"
_AMOUNT_BEFORE = re.compile(rf"{_CURRENCY_WORDS}\s?({_NUM})")
_AMOUNT_AFTER = re.compile(rf"({_NUM})\s?{_CURRENCY_WORDS}")
_QTY_UNITS = re.compile(
    rf"({_NUM})\s?(?:units?|pcs|pieces?|items?|cartons?|cases|boxes|pallets?|EA|kg|each)\b",
    re.IGNORECASE,
)
_ISO_DATE = re.compile(r"\b(\d{4})-(\d{2})-(\d{2})\b")
_CHUNK_ID = re.compile(r"^[^:\s]+:\d+:[0-9a-f]{6,}$")


@dataclass(frozen=True)
class Violation:
    code: str
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.code} at {self.path}: {self.message}"


def _doc_ids(chunk_ids: Iterable[str]) -> set[str]:
    return {c.split(":", 1)[0] for c in chunk_ids}


def check_suggestion(
    suggestion: Suggestion,
    case: CaseIn,
    *,
    retrieved_chunk_ids: Collection[str],
    queues: Collection[str],
    facts: CaseFacts | None = None,
) -> list[Violation]:
    """All contract violations of ``suggestion`` for ``case`` (see module docstring)."""
    f = facts or extract_facts(case)
    retrieved = set(retrieved_chunk_ids)
    doc_ids = _doc_ids(retrieved)
    out: list[Violation] = []

    if suggestion.routing.queue is not None and suggestion.routing.queue not in queues:
        out.append(Violation("queue_not_allowed", "routing.queue", f"{suggestion.routing.queue!r}"))
    for i, cit in enumerate(suggestion.citations):
        if cit.chunk_id not in retrieved:
            out.append(Violation("citation_not_retrieved", f"citations[{i}]", f"{cit.chunk_id!r}"))
    for i, action in enumerate(suggestion.proposed_actions):
        out.extend(_check_action(action, f"proposed_actions[{i}]", f, queues, retrieved))
    prose = [
        ("summary", suggestion.summary),
        ("routing.rationale", suggestion.routing.rationale),
        ("customer_message", suggestion.customer_message or ""),
    ]
    prose += [(f"next_steps[{i}]", s) for i, s in enumerate(suggestion.next_steps)]
    prose += [
        (f"proposed_actions[{i}].rationale", a.rationale)
        for i, a in enumerate(suggestion.proposed_actions)
    ]
    known = doc_ids | retrieved
    if suggestion.classifier is not None:
        known.add(suggestion.classifier.model_version)  # rationales may name the model
    for path, text in prose:
        out.extend(check_prose(text, path, f, known))
    return out


def _check_action(
    action: object,
    path: str,
    f: CaseFacts,
    queues: Collection[str],
    retrieved: set[str],
) -> list[Violation]:
    out: list[Violation] = []

    def need_id(field: str, value: str | None) -> None:
        if value is not None and value not in f.structured_ids:
            out.append(Violation("unknown_reference", f"{path}.{field}", f"{value!r}"))

    def need_money(amount: Decimal, currency: str | None) -> None:
        if f.currency is not None and currency is not None and currency != f.currency:
            out.append(
                Violation("wrong_currency", f"{path}.currency", f"{currency} != {f.currency}")
            )
        if not f.has_amount(amount):
            out.append(
                Violation("amount_not_grounded", f"{path}.amount", f"{amount} not derivable")
            )
        if f.dispute_cap is not None and money(amount) > f.dispute_cap:
            out.append(
                Violation("amount_exceeds_dispute", f"{path}.amount", f"{amount} > {f.dispute_cap}")
            )
        if f.dispute_cap is None:
            out.append(Violation("amount_not_grounded", f"{path}.amount", "case states no money"))

    def need_sku(value: str) -> None:
        if value not in f.skus:
            out.append(Violation("unknown_sku", f"{path}.sku", f"{value!r}"))

    evidence = getattr(action, "evidence", [])
    for j, ev in enumerate(evidence):
        if _CHUNK_ID.match(ev) and ev not in retrieved:
            out.append(Violation("citation_not_retrieved", f"{path}.evidence[{j}]", f"{ev!r}"))

    if isinstance(action, IssueCreditNote | Rebill):
        need_id("invoice_id", action.invoice_id)
        need_money(action.amount, action.currency)
    elif isinstance(action, WriteOff | Refund):
        need_id("invoice_id", action.invoice_id)
        if isinstance(action, Refund):
            need_id("order_id", action.order_id)
        need_money(action.amount, action.currency)
    elif isinstance(action, Reship):
        need_id("order_id", action.order_id)
        need_sku(action.sku)
        need_id("warehouse_id", action.warehouse_id)
        if action.quantity <= 0 or not f.has_quantity(action.quantity):
            out.append(Violation("quantity_not_grounded", f"{path}.quantity", f"{action.quantity}"))
    elif isinstance(action, AdjustInventory):
        need_id("warehouse_id", action.warehouse_id)
        need_sku(action.sku)
        if not f.has_quantity(action.quantity_delta):
            out.append(
                Violation(
                    "quantity_not_grounded", f"{path}.quantity_delta", f"{action.quantity_delta}"
                )
            )
        if action.value is not None:
            need_money(action.value, action.currency)
    elif isinstance(action, ContactCarrier):
        need_id("carrier_id", action.carrier_id)
        need_id("shipment_id", action.shipment_id)
    elif isinstance(action, NotifyCustomer):
        need_id("customer_id", action.customer_id)
    elif isinstance(action, Escalate) and action.to_queue not in queues:
        out.append(Violation("queue_not_allowed", f"{path}.to_queue", f"{action.to_queue!r}"))
    return out


def check_prose(text: str, path: str, f: CaseFacts, known_docs: set[str]) -> list[Violation]:
    if not text:
        return []
    out: list[Violation] = []
    allowed_ids = f.structured_ids | f.mentioned_ids | known_docs
    for token in ID_PATTERN.findall(text):
        if token not in allowed_ids and not any(token in d for d in known_docs):
            out.append(Violation("unknown_reference", path, f"{token!r}"))
    amounts = f.amounts | f.mentioned_numbers
    for pattern in (_AMOUNT_BEFORE, _AMOUNT_AFTER):
        for m in pattern.finditer(text):
            value = parse_decimal(m.group(1))
            if value is not None and money(value) not in amounts:
                out.append(Violation("amount_not_grounded", path, m.group(0)))
    for m in _QTY_UNITS.finditer(text):
        value = parse_decimal(m.group(1))
        if (
            value is not None
            and qty(value) not in f.quantities
            and money(value) not in f.mentioned_numbers
        ):
            out.append(Violation("quantity_not_grounded", path, m.group(0)))
    for m in _ISO_DATE.finditer(text):
        try:
            d = date(int(m.group(1)), int(m.group(2)), int(m.group(3)))
        except ValueError:
            out.append(Violation("date_not_grounded", path, m.group(0)))
            continue
        if d not in f.dates:
            out.append(Violation("date_not_grounded", path, m.group(0)))
    return out
