"""A small simulated order-to-cash flow that raises realistic exception cases.

Customers (with tiers) place orders; orders are picked, shipped, delivered and invoiced; at each
step an exception can be injected at a configurable rate. Every emitted case carries the ground
truth a real operator's history would have after closing it (root-cause ``category``, the
``queue`` that resolved it, and the ``priority`` it deserved), so the simulator feeds the demo,
the tests, the classifier's default model and the load benchmarks.

Deterministic for a given seed.
"""

# ruff: noqa: E501  (realistic message templates read better unwrapped)
from __future__ import annotations

import csv
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from contracts.case import ExceptionType

DEFAULT_TYPE_WEIGHTS: dict[str, float] = {
    "shortage": 0.16,
    "partial_shipment": 0.10,
    "pricing_mismatch": 0.12,
    "damaged_goods": 0.12,
    "return_request": 0.10,
    "duplicate_invoice": 0.07,
    "failed_integration": 0.09,
    "carrier_delay": 0.14,
    "address_issue": 0.06,
    "other": 0.04,
}

# (root cause category, resolving queue, base urgency 1..4) per exception type.
ROOT_CAUSES: dict[str, list[tuple[str, str, int]]] = {
    "shortage": [
        ("pick_error", "warehouse_ops", 2),
        ("lost_in_transit", "transport", 2),
        ("stock_discrepancy", "warehouse_ops", 3),
    ],
    "partial_shipment": [("backorder", "warehouse_ops", 3), ("carrier_split", "transport", 4)],
    "pricing_mismatch": [
        ("price_master_data", "billing", 3),
        ("contract_discount_missing", "billing", 3),
    ],
    "damaged_goods": [
        ("transit_damage", "transport", 2),
        ("packaging_failure", "warehouse_ops", 3),
    ],
    "return_request": [
        ("customer_return", "returns", 4),
        ("wrong_item_shipped", "warehouse_ops", 3),
    ],
    "duplicate_invoice": [
        ("duplicate_billing", "billing", 3),
        ("integration_retry_duplicate", "integration_support", 2),
    ],
    "failed_integration": [
        ("mapping_error", "integration_support", 2),
        ("endpoint_down", "integration_support", 1),
    ],
    "carrier_delay": [("transit_delay", "transport", 3), ("customs_hold", "transport", 2)],
    "address_issue": [("address_data", "customer_service", 2)],
    "other": [("general_inquiry", "customer_service", 4)],
}

CUSTOMER_MESSAGES: dict[str, list[str]] = {
    "pick_error": [
        "We ordered {ordered} x {sku} on order {order} but the pallet only had {shipped}. The packing list says {ordered}.",
        "Delivery for {order} is short by {gap} units of {sku}. Your packing slip looks wrong.",
        "Hi, {gap} pieces of {sku} are missing from our delivery, the boxes were sealed. Please check your picking.",
    ],
    "lost_in_transit": [
        "Tracking for {shipment} says delivered but we only received part of it, {gap} cartons never arrived.",
        "The carrier dropped off fewer parcels than on the waybill for {shipment}. Where is the rest?",
    ],
    "stock_discrepancy": [
        "We were told {sku} was in stock but only {shipped} of {ordered} came. Is there a stock problem?",
    ],
    "backorder": [
        "Only part of order {order} arrived. When will the remaining {gap} x {sku} ship?",
        "We got a partial delivery for {order}; please confirm the backorder date for {sku}.",
    ],
    "carrier_split": [
        "Order {order} came in two deliveries and the second one is still not here, tracking {shipment}.",
    ],
    "price_master_data": [
        "Invoice {invoice} charges {inv_price} per unit for {sku} but our agreed price is {price}.",
        "The unit price on {invoice} does not match our price list, please correct and re-issue.",
    ],
    "contract_discount_missing": [
        "Our contract discount is missing on invoice {invoice}. We expect {price} per unit, not {inv_price}.",
        "You billed list price on {invoice}; our framework agreement gives us a discount.",
    ],
    "transit_damage": [
        "Several cartons from shipment {shipment} arrived crushed, {gap} units of {sku} are unusable. Photos attached.",
        "Goods arrived damaged, the pallet was broken and wet. Delivery {shipment}.",
    ],
    "packaging_failure": [
        "The items were poorly packed, {sku} arrived scratched and the inner packaging was missing.",
    ],
    "customer_return": [
        "We would like to return {gap} x {sku} from order {order}, they are not needed anymore. Please send a return label.",
        "Please arrange a pickup, we are returning part of order {order}.",
    ],
    "wrong_item_shipped": [
        "We received the wrong item instead of {sku} on order {order}. Please collect it and send the right one.",
    ],
    "duplicate_billing": [
        "We were invoiced twice for order {order}: {invoice} and an earlier invoice with the same amount.",
        "Invoice {invoice} looks like a duplicate of one we already paid.",
    ],
    "integration_retry_duplicate": [
        "We got two identical invoices for {order} a minute apart, both numbered differently.",
    ],
    "mapping_error": [""],
    "endpoint_down": [""],
    "transit_delay": [
        "Shipment {shipment} was due three days ago and tracking has not moved. Our line is waiting.",
        "Where is our delivery {shipment}? It is late and we have customers waiting.",
        "Order {order} still not delivered, the carrier gives no update.",
    ],
    "customs_hold": [
        "Shipment {shipment} has been held at customs for days, what documents are missing?",
    ],
    "address_data": [
        "The delivery for {order} went to our old warehouse address, please update to the new site.",
        "Carrier could not deliver {shipment}, the address on the label is incomplete.",
    ],
    "general_inquiry": [
        "Can you send us a copy of the delivery note for order {order}?",
        "Who is our account manager now? We have questions about order {order}.",
    ],
}

OPERATOR_NOTES: dict[str, list[str]] = {
    "pick_error": [
        "Pick confirmation shows {shipped} picked at location A-{loc}. Recount requested.",
        "Picker scanned wrong bin; cycle count pending.",
    ],
    "lost_in_transit": ["POD signed for fewer pieces; claim with {carrier} may be needed."],
    "stock_discrepancy": [
        "System stock {ordered}, physical count {shipped}. Inventory adjustment pending."
    ],
    "backorder": ["Replenishment PO expected next week."],
    "carrier_split": ["{carrier} split consignment at hub."],
    "price_master_data": ["Price list updated on the 1st, ERP master data not synced."],
    "contract_discount_missing": [
        "Customer on framework contract, discount condition missing in ERP."
    ],
    "transit_damage": ["Damage noted on POD by driver. File claim with {carrier}."],
    "packaging_failure": ["Packing station used wrong carton size."],
    "customer_return": ["Return within 30 days of delivery."],
    "wrong_item_shipped": ["Label swap at packing station suspected."],
    "duplicate_billing": ["Two invoices posted for the same delivery."],
    "integration_retry_duplicate": ["EDI resend created a second invoice."],
    "mapping_error": ["Order stuck in orchestration queue."],
    "endpoint_down": ["All messages to {carrier} failing since this morning."],
    "transit_delay": ["{carrier} reports network delays."],
    "customs_hold": ["Commercial invoice missing HS codes."],
    "address_data": ["Customer master has two ship-to addresses."],
    "general_inquiry": [""],
}

INTEGRATION_ERRORS: dict[str, list[str]] = {
    "mapping_error": [
        "EDI 856 rejected: segment REF*CN missing for shipment {shipment}",
        "Mapping error: unknown unit of measure 'CT' for SKU {sku} in order {order}",
        "ValidationError: field 'ship_to.postal_code' is required (order {order})",
    ],
    "endpoint_down": [
        "HTTP 503 Service Unavailable from {carrier} booking API after 5 retries",
        "Connection timed out to finance posting endpoint (invoice {invoice})",
    ],
    "integration_retry_duplicate": ["Idempotency key missing on EDI 810 resend for {invoice}"],
}

# How an operator closed each root cause: the resolution text a real history would hold, so that
# similar-case retrieval has something to show (the demo resolves its history cases with these).
RESOLUTIONS: dict[str, list[str]] = {
    "pick_error": [
        "Recount confirmed {gap} x {sku} short-picked on {order}; the missing units were reshipped the next day and the bin scan at location A-{loc} corrected. No credit note needed.",
        "Pick error confirmed from the pick confirmation; reshipped {gap} x {sku} by express at our cost.",
    ],
    "lost_in_transit": [
        "{carrier} confirmed {gap} cartons of {shipment} missing after the hub scan; units reshipped and a loss claim filed with {carrier}.",
    ],
    "stock_discrepancy": [
        "Cycle count confirmed the stock of {sku} was overstated by {gap} units; inventory adjusted (approved) and a credit note issued for the missing quantity.",
    ],
    "backorder": [
        "Remaining {gap} x {sku} of {order} shipped from the replenishment PO; customer given the backorder date, invoice split accordingly.",
    ],
    "carrier_split": [
        "{carrier} had split {shipment} at the hub; the second part was traced and delivered two days later. No cost to the customer.",
    ],
    "price_master_data": [
        "Price list for {sku} in the ERP was out of date; master data corrected and {invoice} re-billed at the agreed {price} per unit.",
    ],
    "contract_discount_missing": [
        "Framework-contract discount condition added to the customer in the ERP; credit note issued for the difference on {invoice}.",
    ],
    "transit_damage": [
        "Damage confirmed on the POD; {gap} x {sku} replaced from stock and a damage claim filed with {carrier} with the photos.",
    ],
    "packaging_failure": [
        "Wrong carton size at the packing station; damaged {sku} replaced and the packing instruction for the SKU updated.",
    ],
    "customer_return": [
        "Return label sent for {gap} x {sku}; refund issued after the goods were received and inspected.",
    ],
    "wrong_item_shipped": [
        "Label swap at packing confirmed; wrong item collected, correct {sku} shipped, no charge to the customer.",
    ],
    "duplicate_billing": [
        "Second invoice for {order} cancelled with a credit note; {invoice} stands and was paid.",
    ],
    "integration_retry_duplicate": [
        "Duplicate from the EDI 810 resend cancelled with a credit note; idempotency key added to the resend job.",
    ],
    "mapping_error": [
        "Mapping for {order} corrected in the orchestration layer and the message replayed successfully.",
    ],
    "endpoint_down": [
        "{carrier} endpoint recovered after the outage; queued messages replayed, nothing lost.",
    ],
    "transit_delay": [
        "{carrier} confirmed a network delay; {shipment} delivered two days late, customer informed of the new ETA.",
    ],
    "customs_hold": [
        "HS codes added to the commercial invoice; customs released {shipment} the next day.",
    ],
    "address_data": [
        "Ship-to address corrected in the customer master; {shipment} redelivered to the new site.",
    ],
    "general_inquiry": [
        "Delivery note for {order} sent to the customer and the account manager's contact shared.",
    ],
}

URGENT_SUFFIX = [
    " This is urgent, our production line is stopped.",
    " Please treat as urgent.",
    " We need this resolved today.",
]

WAREHOUSES = ["WH-RTM-1", "WH-HAM-2", "WH-LYS-1", "WH-MAD-3", "WH-MIL-1"]
CARRIERS = ["DHL", "DBSCHENKER", "DSV", "KUEHNE", "GLS", "UPS"]
SKUS = [f"SKU-{n:04d}" for n in range(100, 160)]
COMPANY_WORDS = [
    "Nordhaven",
    "Alpine",
    "Baltic",
    "Rhein",
    "Atlas",
    "Meridian",
    "Harbor",
    "Summit",
    "Iberia",
    "Lumen",
    "Vesta",
    "Orion",
]
COMPANY_KINDS = ["Retail", "Foods", "Industrial", "Pharma", "Electronics", "Home", "Auto Parts"]


@dataclass
class SimConfig:
    seed: int = 42
    customers: int = 60
    exception_rate: float = 0.2
    type_weights: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_TYPE_WEIGHTS))
    currency: str = "EUR"
    source_system: str = "o2c-sim"
    start: datetime = field(default_factory=lambda: datetime(2026, 10, 1, 8, 0, tzinfo=UTC))
    real_messages: dict[str, list[str]] = field(default_factory=dict)
    """Real customer messages per root cause (see :func:`bitext_messages`)."""
    real_message_rate: float = 0.35
    """Share of cases whose customer message is a real one when one is available."""


# Bitext intents whose messages fit a root cause of ours (real wording, not templates).
BITEXT_INTENTS: dict[str, tuple[str, ...]] = {
    "transit_delay": ("track_order", "delivery_period"),
    "customs_hold": ("delivery_period",),
    "address_data": ("change_shipping_address", "set_up_shipping_address"),
    "customer_return": ("get_refund", "check_refund_policy", "track_refund"),
    "general_inquiry": ("contact_customer_service", "contact_human_agent", "delivery_options"),
    "price_master_data": ("check_invoice",),
    "contract_discount_missing": ("check_invoice",),
    "duplicate_billing": ("get_invoice", "payment_issue"),
    "pick_error": ("complaint",),
    "transit_damage": ("complaint",),
}


def bitext_messages(path: Path) -> dict[str, list[str]]:
    """Real customer messages from the Bitext sample (CSV with ``text`` and ``intent``), grouped
    by the root causes in :data:`BITEXT_INTENTS`."""
    by_intent: dict[str, list[str]] = {}
    with path.open(encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            by_intent.setdefault(row["intent"], []).append(row["text"])
    return {
        cause: [t for intent in intents for t in by_intent.get(intent, [])]
        for cause, intents in BITEXT_INTENTS.items()
    }


@dataclass
class SimulatedCase:
    case: dict[str, Any]
    labels: dict[str, str]
    resolution: str = ""
    """How an operator closed it (:data:`RESOLUTIONS`), for loaders that build a history."""

    def as_record(self) -> dict[str, Any]:
        return {"case": self.case, "labels": self.labels}


def parse_rates(text: str) -> dict[str, float]:
    """``"shortage=0.3,carrier_delay=0.2"`` → weights; unknown types are refused."""
    out: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, _, value = part.partition("=")
        if name not in DEFAULT_TYPE_WEIGHTS:
            raise ValueError(f"unknown exception type {name!r}")
        out[name] = float(value)
        if out[name] < 0:
            raise ValueError(f"rate for {name} must be >= 0")
    return out


class Simulator:
    """Generates orders and the exception cases they raise."""

    def __init__(self, config: SimConfig | None = None) -> None:
        self.config = config or SimConfig()
        self.rng = random.Random(self.config.seed)
        self.customers = [self._customer(i) for i in range(self.config.customers)]
        self.orders_seen = 0

    def _customer(self, i: int) -> dict[str, Any]:
        tier = self.rng.choices(["A", "B", "C"], weights=[0.15, 0.35, 0.5])[0]
        name = f"{self.rng.choice(COMPANY_WORDS)} {self.rng.choice(COMPANY_KINDS)}"
        return {
            "id": f"CUST-{i:04d}",
            "name": name,
            "tier": tier,
            "country": self.rng.choice(["NL", "DE", "FR", "ES", "IT", "BE", "PL"]),
        }

    def cases(self, count: int) -> Iterator[SimulatedCase]:
        """Run the flow until ``count`` exception cases have been raised."""
        emitted = 0
        types = list(self.config.type_weights)
        weights = [self.config.type_weights[t] for t in types]
        if not any(weights):
            raise ValueError("at least one exception type needs a positive rate")
        while emitted < count:
            self.orders_seen += 1
            if self.rng.random() >= self.config.exception_rate:
                continue  # this order flowed through cleanly
            etype = self.rng.choices(types, weights=weights)[0]
            yield self._case(emitted, etype)
            emitted += 1

    def _case(self, n: int, etype: str) -> SimulatedCase:
        rng = self.rng
        cust = rng.choice(self.customers)
        category, queue, urgency = rng.choice(ROOT_CAUSES[etype])
        order = f"SO-{700000 + self.orders_seen}"
        shipment = f"SH-{500000 + self.orders_seen}"
        invoice = f"INV-{900000 + self.orders_seen}"
        sku = rng.choice(SKUS)
        warehouse = rng.choice(WAREHOUSES)
        carrier = rng.choice(CARRIERS)
        ordered = rng.choice([10, 12, 20, 24, 40, 48, 50, 100, 120, 200, 500])
        price = Decimal(rng.choice([3.5, 7.9, 12.5, 19.99, 45.0, 120.0, 310.0, 899.0])).quantize(
            Decimal("0.01")
        )
        shipped, invoiced, inv_price = ordered, ordered, price
        if etype in ("shortage", "partial_shipment", "damaged_goods", "return_request"):
            shipped = max(0, ordered - rng.randint(1, max(1, ordered // 3)))
        if etype == "pricing_mismatch":
            inv_price = (price * Decimal(rng.choice(["1.05", "1.10", "1.18", "1.25"]))).quantize(
                Decimal("0.01")
            )
        gap = ordered - shipped if shipped != ordered else rng.randint(1, max(1, ordered // 4))
        if etype == "pricing_mismatch":
            amount: Decimal | None = (inv_price - price) * invoiced
        elif etype == "duplicate_invoice":
            amount = price * invoiced
        elif etype in ("shortage", "damaged_goods", "partial_shipment", "return_request"):
            amount = price * gap
        else:
            amount = None
        occurred = self.config.start + timedelta(minutes=37 * self.orders_seen + rng.randint(0, 30))
        ship_t = occurred - timedelta(days=rng.randint(1, 5))
        fmt = {
            "order": order,
            "shipment": shipment,
            "invoice": invoice,
            "sku": sku,
            "ordered": ordered,
            "shipped": shipped,
            "gap": gap,
            "price": f"{price}",
            "inv_price": f"{inv_price}",
            "carrier": carrier,
            "loc": rng.randint(1, 40),
        }
        message = rng.choice(CUSTOMER_MESSAGES[category]).format(**fmt) or None
        real = self.config.real_messages.get(category)
        if real and rng.random() < self.config.real_message_rate:
            message = rng.choice(real)
        priority_level = urgency
        if cust["tier"] == "A":
            priority_level -= 1
        if amount is not None and amount >= 5000:
            priority_level -= 1
        if message and rng.random() < 0.12:
            message += rng.choice(URGENT_SUFFIX)
            priority_level -= 1
        priority = f"P{min(4, max(1, priority_level))}"
        notes = rng.choice(OPERATOR_NOTES[category]).format(**fmt) or None
        errors = INTEGRATION_ERRORS.get(category)
        line: dict[str, Any] = {
            "sku": sku,
            "ordered_qty": str(ordered),
            "picked_qty": str(shipped),
            "shipped_qty": str(shipped),
            "invoiced_qty": str(invoiced),
            "unit_price": {"amount": str(price), "currency": self.config.currency},
        }
        if inv_price != price:
            line["invoiced_unit_price"] = {
                "amount": str(inv_price),
                "currency": self.config.currency,
            }
        case: dict[str, Any] = {
            "schema_version": "1.0",
            "source": {
                "system": self.config.source_system,
                "kind": _kind(etype),
                "case_id": f"EX-{self.config.seed}-{n:07d}",
            },
            "exception_type": etype,
            "title": f"{etype.replace('_', ' ')} on {order}",
            "references": {
                "customer": cust,
                "order_id": order,
                "shipment_id": shipment,
                "invoice_id": invoice,
                "warehouse_id": warehouse,
                "carrier_id": carrier,
            },
            "lines": [line],
            "text": {
                k: v
                for k, v in {
                    "customer_message": message,
                    "operator_notes": notes,
                    "integration_error": rng.choice(errors).format(**fmt) if errors else None,
                }.items()
                if v
            },
            "occurred_at": occurred.isoformat(),
            "milestones": {
                "ordered_at": (ship_t - timedelta(days=2)).isoformat(),
                "shipped_at": ship_t.isoformat(),
                "invoiced_at": (ship_t + timedelta(hours=rng.randint(1, 72))).isoformat(),
            },
        }
        if amount is not None:
            case["amount_in_dispute"] = {
                "amount": str(amount.quantize(Decimal("0.01"))),
                "currency": self.config.currency,
            }
        # picked by the case number, not the generator, so that adding it kept every seed's cases
        templates = RESOLUTIONS[category]
        resolution = templates[n % len(templates)].format(**fmt)
        return SimulatedCase(
            case, {"category": category, "queue": queue, "priority": priority}, resolution
        )


def _kind(etype: str) -> str:
    return {
        ExceptionType.failed_integration.value: "orchestrator",
        ExceptionType.pricing_mismatch.value: "finance",
        ExceptionType.duplicate_invoice.value: "finance",
        ExceptionType.carrier_delay.value: "tms",
        ExceptionType.damaged_goods.value: "tms",
        ExceptionType.shortage.value: "wms",
        ExceptionType.partial_shipment.value: "wms",
    }.get(etype, "erp")
