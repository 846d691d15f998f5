"""Case facts: every id, amount, quantity and date that a suggestion may mention.

Contract:
- ``structured_ids`` come from the typed fields of the case (references, SKUs, source ids and
  string values of ``attributes`` whose key names a document); actions may only use these.
- ``mentioned_ids`` are id-like tokens found in the free text; prose (summary, draft) may repeat
  them, actions may not (free text is untrusted and can plant ids).
- ``amounts`` holds the stated amounts and every amount that follows from the lines: unit and
  invoiced prices, line values per quantity field, quantity gaps times either price, price
  differences times the invoiced or delivered quantity, and sums of those over lines.
- ``quantities`` holds the stated quantities, gaps between any two of them, and their sums.
- ``mentioned_numbers`` are numbers found in the free text: prose may repeat them, actions may
  not use them.
- ``dispute_cap`` is the most an action may move: the amount in dispute if stated, otherwise
  the largest amount that follows from the lines.
- Comparison is on Decimal rounded to cents (amounts) or to 6 places (quantities).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import date
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from itertools import combinations

from contracts.case import CaseIn, LineItem

ID_PATTERN = re.compile(r"\b[A-Z][A-Z0-9]{1,9}(?:-[A-Z0-9]{1,12}){1,4}\b")
# A number standing alone (not part of an id such as A-12-3 or SO-778812).
_FREE_NUMBER = re.compile(r"(?<![\w-])(?:\d[\d.,]*\d|\d)(?![\w-])")
_CENT = Decimal("0.01")
_QTY = Decimal("0.000001")
_DOC_KEYS = ("invoice", "order", "shipment", "sku", "tracking", "purchase", "credit", "po")


def money(value: Decimal) -> Decimal:
    return value.quantize(_CENT, rounding=ROUND_HALF_UP)


def qty(value: Decimal) -> Decimal:
    return value.quantize(_QTY, rounding=ROUND_HALF_UP).normalize()


def parse_decimal(text: str) -> Decimal | None:
    """'1,250.50' / '1250,50' / '1.250,50' -> Decimal; None when it is not a number."""
    s = text.strip().replace(" ", "").replace("\u00a0", "")
    if "," in s and "." in s:
        s = (
            s.replace(",", "")
            if s.rfind(".") > s.rfind(",")
            else s.replace(".", "").replace(",", ".")
        )
    elif "," in s:
        head, _, tail = s.rpartition(",")
        s = f"{head.replace(',', '')}.{tail}" if len(tail) in (1, 2) else s.replace(",", "")
    try:
        return Decimal(s)
    except InvalidOperation:
        return None


def _line_quantities(line: LineItem) -> list[Decimal]:
    return [
        q
        for q in (
            line.ordered_qty,
            line.picked_qty,
            line.shipped_qty,
            line.delivered_qty,
            line.invoiced_qty,
        )
        if q is not None
    ]


@dataclass
class LineFacts:
    """Derived numbers of one line, used by the offline engine's rules."""

    sku: str
    ordered: Decimal
    received: Decimal | None
    invoiced: Decimal | None
    unit_price: Decimal | None
    invoiced_price: Decimal | None

    @property
    def missing(self) -> Decimal:
        """Ordered (or invoiced, if higher) minus received; 0 when nothing is known missing."""
        if self.received is None:
            return Decimal(0)
        billed = max(self.ordered, self.invoiced or Decimal(0))
        return max(Decimal(0), billed - self.received)

    @property
    def price(self) -> Decimal | None:
        """Price to value a quantity at: the invoiced price (what the customer paid) first."""
        return self.invoiced_price if self.invoiced_price is not None else self.unit_price

    @property
    def overcharge_per_unit(self) -> Decimal:
        if self.invoiced_price is None or self.unit_price is None:
            return Decimal(0)
        return max(Decimal(0), self.invoiced_price - self.unit_price)


@dataclass
class CaseFacts:
    structured_ids: set[str] = field(default_factory=set)
    mentioned_ids: set[str] = field(default_factory=set)
    skus: set[str] = field(default_factory=set)
    amounts: set[Decimal] = field(default_factory=set)
    quantities: set[Decimal] = field(default_factory=set)
    mentioned_numbers: set[Decimal] = field(default_factory=set)
    dates: set[date] = field(default_factory=set)
    currency: str | None = None
    dispute_cap: Decimal | None = None
    lines: list[LineFacts] = field(default_factory=list)

    def has_amount(self, value: Decimal) -> bool:
        return money(value) in self.amounts

    def has_quantity(self, value: Decimal) -> bool:
        return qty(abs(value)) in self.quantities or value == 0


def _received(line: LineItem) -> Decimal | None:
    for q in (line.delivered_qty, line.shipped_qty, line.picked_qty):
        if q is not None:
            return q
    return None


def extract_facts(case: CaseIn) -> CaseFacts:
    """All facts of ``case`` (see module docstring)."""
    facts = CaseFacts(currency=case.currency)
    refs = case.references
    for value in (
        refs.customer.id,
        refs.order_id,
        refs.shipment_id,
        refs.invoice_id,
        refs.warehouse_id,
        refs.carrier_id,
        refs.tracking_number,
        refs.purchase_order,
        case.source.case_id,
        case.source.event_id,
    ):
        if value:
            facts.structured_ids.add(value)
    for key, value in case.attributes.items():
        if isinstance(value, str) and any(k in key.lower() for k in _DOC_KEYS):
            facts.structured_ids.add(value)
        elif isinstance(value, list) and any(k in key.lower() for k in _DOC_KEYS):
            facts.structured_ids.update(v for v in value if isinstance(v, str))
    free_texts = (
        refs.customer.name,
        *(line.description for line in case.lines),
        case.title,
        case.text.customer_message,
        case.text.operator_notes,
        case.text.integration_error,
    )
    for text in free_texts:
        if text:
            facts.mentioned_ids.update(ID_PATTERN.findall(text))
            for m in _FREE_NUMBER.finditer(text):
                parsed = parse_decimal(m.group(0))
                if parsed is not None:
                    facts.mentioned_numbers.add(money(parsed))

    per_line_amounts: list[list[Decimal]] = []
    for line in case.lines:
        facts.skus.add(line.sku)
        facts.structured_ids.add(line.sku)
        quantities = _line_quantities(line)
        up = line.unit_price.amount if line.unit_price else None
        ip = line.invoiced_unit_price.amount if line.invoiced_unit_price else None
        gaps = {abs(a - b) for a, b in combinations(quantities, 2)}
        facts.quantities.update(qty(q) for q in quantities)
        facts.quantities.update(qty(g) for g in gaps)
        line_amounts: list[Decimal] = []
        for price in (p for p in (up, ip) if p is not None):
            line_amounts.append(price)
            line_amounts.extend(price * q for q in quantities)
            line_amounts.extend(price * g for g in gaps)
        if up is not None and ip is not None:
            diff = abs(ip - up)
            line_amounts.append(diff)
            line_amounts.extend(diff * q for q in quantities)
        facts.amounts.update(money(a) for a in line_amounts)
        per_line_amounts.append(line_amounts)
        facts.lines.append(
            LineFacts(
                sku=line.sku,
                ordered=line.ordered_qty,
                received=_received(line),
                invoiced=line.invoiced_qty,
                unit_price=up,
                invoiced_price=ip,
            )
        )
    totals: list[Decimal] = []
    if len(case.lines) > 1:
        # Sums over lines of the same derivation (e.g. the shortage value across all lines).
        totals.append(sum((lf.missing * (lf.price or 0) for lf in facts.lines), Decimal(0)))
        totals.append(
            sum(
                (lf.overcharge_per_unit * (lf.invoiced or lf.ordered) for lf in facts.lines),
                Decimal(0),
            )
        )
        facts.quantities.add(qty(sum((lf.missing for lf in facts.lines), Decimal(0))))
        for attr in ("ordered_qty", "invoiced_qty", "shipped_qty", "delivered_qty"):
            vals = [getattr(line, attr) for line in case.lines]
            if all(v is not None for v in vals):
                facts.quantities.add(qty(sum(vals, Decimal(0))))
        inv_total = Decimal(0)
        for line in case.lines:
            billed_price = line.invoiced_unit_price or line.unit_price
            if billed_price is None:
                break
            inv_total += billed_price.amount * (line.invoiced_qty or line.ordered_qty)
        else:
            totals.append(inv_total)
    facts.amounts.update(money(t) for t in totals)
    if case.amount_in_dispute is not None:
        facts.amounts.add(money(case.amount_in_dispute.amount))
        facts.dispute_cap = money(case.amount_in_dispute.amount)
    else:
        derived = [a for amounts in per_line_amounts for a in amounts] + totals
        facts.dispute_cap = money(max(derived)) if derived else None
    facts.dates.add(case.occurred_at.date())
    for ts in (
        case.milestones.ordered_at,
        case.milestones.shipped_at,
        case.milestones.delivered_at,
        case.milestones.invoiced_at,
    ):
        if ts is not None:
            facts.dates.add(ts.date())
    return facts
