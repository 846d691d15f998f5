"""Realistic cases for every exception type (written for these tests)."""

from __future__ import annotations

import copy
from typing import Any

from contracts.case import CaseIn


def _base(**over: Any) -> dict[str, Any]:
    # The shortage case documented in the OpenAPI schema, so tests and docs cannot drift apart.
    data: dict[str, Any] = copy.deepcopy(CaseIn.model_config["json_schema_extra"]["examples"][0])
    data.update(over)
    return data


def make_case(exception_type: str = "shortage", **over: Any) -> CaseIn:
    """A valid case of ``exception_type`` with facts that make sense for it."""
    specific: dict[str, dict[str, Any]] = {
        "shortage": {},
        "partial_shipment": {
            "lines": [
                {
                    "sku": "SKU-200-RED",
                    "ordered_qty": "100",
                    "shipped_qty": "60",
                    "invoiced_qty": "100",
                    "unit_price": {"amount": "4.00", "currency": "EUR"},
                }
            ],
            "amount_in_dispute": {"amount": "160.00", "currency": "EUR"},
            "text": {"customer_message": "Only 60 of 100 arrived, the rest is on backorder?"},
        },
        "pricing_mismatch": {
            "lines": [
                {
                    "sku": "SKU-300-GRN",
                    "ordered_qty": "50",
                    "delivered_qty": "50",
                    "invoiced_qty": "50",
                    "unit_price": {"amount": "12.50", "currency": "EUR"},
                    "invoiced_unit_price": {"amount": "14.20", "currency": "EUR"},
                }
            ],
            "amount_in_dispute": {"amount": "85.00", "currency": "EUR"},
            "text": {"customer_message": "Invoice shows 14.20 per unit, agreed price is 12.50."},
        },
        "duplicate_invoice": {
            "attributes": {"duplicate_invoice_id": "INV-90212"},
            "amount_in_dispute": {"amount": "500.00", "currency": "EUR"},
            "lines": [
                {
                    "sku": "SKU-100-BLK",
                    "ordered_qty": "40",
                    "delivered_qty": "40",
                    "invoiced_qty": "40",
                    "unit_price": {"amount": "12.50", "currency": "EUR"},
                }
            ],
            "text": {"customer_message": "We were billed twice: INV-90211 and INV-90212."},
        },
        "damaged_goods": {
            "amount_in_dispute": {"amount": "125.00", "currency": "EUR"},
            "lines": [
                {
                    "sku": "SKU-100-BLK",
                    "ordered_qty": "40",
                    "shipped_qty": "40",
                    "delivered_qty": "40",
                    "invoiced_qty": "40",
                    "unit_price": {"amount": "12.50", "currency": "EUR"},
                }
            ],
            "text": {"customer_message": "10 units arrived crushed and wet. Photos attached."},
        },
        "carrier_delay": {
            "amount_in_dispute": None,
            "text": {"customer_message": "The truck did not arrive yesterday. Where is it?"},
        },
        "failed_integration": {
            "amount_in_dispute": None,
            "lines": [],
            "text": {"integration_error": "HTTP 503 from partner API, message id 88123 not acked."},
        },
        "address_issue": {
            "amount_in_dispute": None,
            "text": {"customer_message": "The carrier says the street number is missing."},
        },
        "return_request": {
            "amount_in_dispute": {"amount": "62.50", "currency": "EUR"},
            "lines": [
                {
                    "sku": "SKU-100-BLK",
                    "ordered_qty": "40",
                    "delivered_qty": "40",
                    "invoiced_qty": "40",
                    "unit_price": {"amount": "12.50", "currency": "EUR"},
                }
            ],
            "text": {"customer_message": "We want to return 5 unopened units."},
        },
        "other": {
            "amount_in_dispute": None,
            "text": {"customer_message": "Please call us about the order."},
        },
    }
    data = _base(exception_type=exception_type, **specific[exception_type])
    data.update(over)
    return CaseIn.model_validate(data)


EXCEPTION_TYPES = [
    "shortage",
    "partial_shipment",
    "pricing_mismatch",
    "duplicate_invoice",
    "damaged_goods",
    "carrier_delay",
    "failed_integration",
    "address_issue",
    "return_request",
    "other",
]
QUEUES = [
    "warehouse",
    "billing",
    "claims",
    "transport",
    "integration",
    "returns",
    "customer_service",
]
