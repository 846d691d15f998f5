"""Helpers shared by the tests (plain functions; fixtures live in conftest.py)."""

from __future__ import annotations

import json
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


def chat_completion(
    draft: dict[str, Any],
    *,
    model: str = "m",
    completion_id: str = "x",
    prompt_tokens: int = 10,
    completion_tokens: int = 5,
) -> dict[str, Any]:
    """An OpenAI chat-completions response whose message content is ``draft`` as JSON: what
    stub LLM endpoints in tests and benchmarks answer."""
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": 0,
        "model": model,
        "choices": [
            {
                "index": 0,
                "finish_reason": "stop",
                "message": {"role": "assistant", "content": json.dumps(draft)},
            }
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }
