"""Helpers shared by the tests (plain functions; fixtures live in conftest.py)."""

from __future__ import annotations

from typing import Any


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def sample_case(n: int = 1, **overrides: Any) -> dict[str, Any]:
    """A valid canonical case payload; ``n`` makes the source id unique."""
    case: dict[str, Any] = {
        "schema_version": "1.0",
        "source": {"system": "wms-test", "kind": "wms", "case_id": f"EX-{n:05d}"},
        "exception_type": "shortage",
        "references": {
            "customer": {"id": "CUST-1", "name": "Nordhaven Retail", "tier": "B"},
            "order_id": "SO-1",
            "shipment_id": "SH-1",
            "invoice_id": "INV-1",
            "warehouse_id": "WH-1",
            "carrier_id": "DHL",
        },
        "lines": [
            {
                "sku": "SKU-1",
                "ordered_qty": "40",
                "shipped_qty": "32",
                "invoiced_qty": "40",
                "unit_price": {"amount": "12.50", "currency": "EUR"},
            }
        ],
        "amount_in_dispute": {"amount": "100.00", "currency": "EUR"},
        "text": {"customer_message": "We got 32 instead of 40 units."},
        "occurred_at": "2026-11-20T09:15:00+01:00",
    }
    case.update(overrides)
    return case
