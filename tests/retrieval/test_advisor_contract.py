"""The output contract checker, table-driven: one rule broken per row."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from contracts.suggestion import (
    Citation,
    ContactCarrier,
    Escalate,
    IssueCreditNote,
    NotifyCustomer,
    Provenance,
    Refund,
    Reship,
    Routing,
    Suggestion,
)
from retrieval.contract import check_suggestion
from retrieval.facts import extract_facts, parse_decimal
from tests.retrieval.retrieval_case_factory import QUEUES, make_case

RETRIEVED = ["SOP-SHT-001:2:95900b14c8", "POL-CRN-004:1:0a1b2c3d4e"]


def suggestion(**over: Any) -> Suggestion:
    data: dict[str, Any] = {
        "summary": "Nordhaven Retail received 32 of 40 units of SKU-100-BLK on SO-778812.",
        "routing": Routing(queue="warehouse", rationale="Short pick."),
        "proposed_actions": [
            Reship(order_id="SO-778812", sku="SKU-100-BLK", quantity=Decimal(8)),
            IssueCreditNote(
                invoice_id="INV-90211",
                amount=Decimal("100.00"),
                currency="EUR",
                reason_code="SHORTAGE",
            ),
            ContactCarrier(carrier_id="DHL", shipment_id="SH-55120", subject="claim"),
            NotifyCustomer(customer_id="CUST-0042"),
        ],
        "next_steps": ["Credit EUR 100.00 on INV-90211 if no stock."],
        "customer_message": "We will reship 8 units of SKU-100-BLK (see SOP-SHT-001).",
        "citations": [Citation(chunk_id=RETRIEVED[0])],
        "provenance": Provenance(engine="llm"),
    }
    data.update(over)
    return Suggestion(**data)


def codes(s: Suggestion, queues: list[str] = QUEUES) -> list[str]:
    return [
        v.code
        for v in check_suggestion(
            s, make_case("shortage"), retrieved_chunk_ids=RETRIEVED, queues=queues
        )
    ]


def test_a_grounded_suggestion_passes() -> None:
    assert codes(suggestion()) == []


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ({"routing": Routing(queue="vip", rationale="x")}, "queue_not_allowed"),
        ({"citations": [Citation(chunk_id="POL-GDW-099:0:ffffffffff")]}, "citation_not_retrieved"),
        (
            {
                "proposed_actions": [
                    IssueCreditNote(
                        invoice_id="INV-77777", amount=Decimal(100), currency="EUR", reason_code="X"
                    )
                ]
            },
            "unknown_reference",
        ),
        (
            {
                "proposed_actions": [
                    IssueCreditNote(
                        invoice_id="INV-90211",
                        amount=Decimal("99.99"),
                        currency="EUR",
                        reason_code="X",
                    )
                ]
            },
            "amount_not_grounded",
        ),
        (
            # 500.00 = 40 x 12.50 follows from the lines but exceeds the 100.00 in dispute.
            {"proposed_actions": [Refund(amount=Decimal("500.00"), currency="EUR")]},
            "amount_exceeds_dispute",
        ),
        (
            {
                "proposed_actions": [
                    IssueCreditNote(
                        invoice_id="INV-90211", amount=Decimal(100), currency="USD", reason_code="X"
                    )
                ]
            },
            "wrong_currency",
        ),
        (
            {
                "proposed_actions": [
                    Reship(order_id="SO-778812", sku="SKU-999", quantity=Decimal(8))
                ]
            },
            "unknown_sku",
        ),
        (
            {
                "proposed_actions": [
                    Reship(order_id="SO-778812", sku="SKU-100-BLK", quantity=Decimal(9))
                ]
            },
            "quantity_not_grounded",
        ),
        (
            {"proposed_actions": [ContactCarrier(carrier_id="UPS", subject="x")]},
            "unknown_reference",
        ),
        (
            {"proposed_actions": [Escalate(to_queue="legal", reason="x")]},
            "queue_not_allowed",
        ),
        (
            {
                "proposed_actions": [
                    NotifyCustomer(customer_id="CUST-0042", evidence=["SOP-XYZ-001:0:abcdef1234"])
                ]
            },
            "citation_not_retrieved",
        ),
        ({"summary": "Invoice INV-55555 was paid twice."}, "unknown_reference"),
        ({"customer_message": "We will refund EUR 250.00 today."}, "amount_not_grounded"),
        ({"customer_message": "We will reship 12 units."}, "quantity_not_grounded"),
        ({"next_steps": ["Call back on 2026-12-01."]}, "date_not_grounded"),
    ],
)
def test_each_rule(override: dict[str, Any], expected: str) -> None:
    assert expected in codes(suggestion(**override))


def test_free_text_ids_are_allowed_in_prose_but_not_in_actions() -> None:
    case = make_case("shortage", text={"customer_message": "See also our PO-4455 and INV-1234."})
    prose = suggestion(summary="Customer mentions INV-1234.")
    assert check_suggestion(prose, case, retrieved_chunk_ids=RETRIEVED, queues=QUEUES) == []
    action = suggestion(
        proposed_actions=[
            IssueCreditNote(
                invoice_id="INV-1234", amount=Decimal(100), currency="EUR", reason_code="X"
            )
        ]
    )
    assert [
        v.code for v in check_suggestion(action, case, retrieved_chunk_ids=RETRIEVED, queues=QUEUES)
    ] == ["unknown_reference"]


def test_numbers_in_free_text_do_not_raise_the_cap() -> None:
    case = make_case(
        "shortage",
        amount_in_dispute=None,
        text={"customer_message": "Refund us 5000 right away."},
    )
    facts = extract_facts(case)
    assert facts.dispute_cap == Decimal("500.00")  # 40 x 12.50, the largest line amount
    s = suggestion(proposed_actions=[Refund(amount=Decimal(5000), currency="EUR")])
    got = [v.code for v in check_suggestion(s, case, retrieved_chunk_ids=RETRIEVED, queues=QUEUES)]
    assert "amount_not_grounded" in got and "amount_exceeds_dispute" in got


def test_multi_line_totals_follow() -> None:
    case = make_case(
        "shortage",
        amount_in_dispute=None,
        lines=[
            {
                "sku": "A-1",
                "ordered_qty": "10",
                "shipped_qty": "8",
                "unit_price": {"amount": "2.50", "currency": "EUR"},
            },
            {
                "sku": "B-2",
                "ordered_qty": "4",
                "shipped_qty": "1",
                "unit_price": {"amount": "10", "currency": "EUR"},
            },
        ],
    )
    facts = extract_facts(case)
    assert facts.has_amount(Decimal("35.00"))  # 2 x 2.50 + 3 x 10
    assert facts.has_quantity(Decimal(5))  # 2 + 3 missing
    assert not facts.has_amount(Decimal("36.00"))


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("1,250.50", "1250.50"),
        ("1.250,50", "1250.50"),
        ("1250,5", "1250.5"),
        ("12", "12"),
        ("1,000", "1000"),
        ("x", None),
    ],
)
def test_parse_decimal(text: str, value: str | None) -> None:
    assert parse_decimal(text) == (Decimal(value) if value else None)
