"""Stable hashes: the action hash approvals are bound to, and canonical JSON for digests.

Contract of ``action_hash``: sha256 (hex) over a canonical JSON document of the action's
identity and content (action id, type, arguments, amount, currency, case, customer, evidence
ids) and the policy version. It does not depend on who requested, proposed, edited or accepted
the action (people are judged by ``can_approve``, not by the hash), on argument order, on the
order or duplicates of evidence ids, or on trailing zeros of numbers (``12400`` and
``12400.00`` hash alike; the string ``"12400"`` does not equal the number). Any change to the
content, or a new policy version, changes the hash, which voids earlier approvals.
The format is versioned (``"v": 1``) so a future change cannot collide with old hashes.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any

from policies.model import ActionRequest

ACTION_HASH_FORMAT = 1


def canonical_decimal(value: Decimal) -> str:
    """A decimal as a fixed-point string without trailing zeros (``-0`` becomes ``0``)."""
    if value == 0:
        return "0"
    return format(value.normalize(), "f")


def _canonical(value: Any) -> Any:
    # Numbers are tagged so that the string "5" and the number 5 never hash alike, while
    # int 5, Decimal("5") and Decimal("5.00") do.
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int | Decimal):
        return {"$num": canonical_decimal(Decimal(value))}
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, timedelta):
        return {"$seconds": int(value.total_seconds())}
    if isinstance(value, Mapping):
        return {str(k): _canonical(v) for k, v in value.items()}
    if isinstance(value, Sequence | frozenset | set):
        items = [_canonical(v) for v in value]
        if isinstance(value, frozenset | set):
            items.sort(key=lambda x: json.dumps(x, sort_keys=True))
        return items
    if hasattr(value, "value") and isinstance(value.value, str):  # enums
        return value.value
    raise TypeError(f"cannot hash a value of type {type(value).__name__}")


def canonical_json(value: Any) -> str:
    """Deterministic JSON: sorted keys, no whitespace, numbers tagged as canonical strings."""
    return json.dumps(_canonical(value), sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def sha256_hex(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def action_hash(action: ActionRequest, policy_version: str) -> str:
    """The hash approvals are bound to; see the module docstring for what it covers."""
    doc = {
        "v": ACTION_HASH_FORMAT,
        "action_id": action.action_id,
        "action_type": action.action_type,
        "arguments": {k: _canonical(v) for k, v in action.arguments.items()},
        "amount": None if action.amount is None else {"$num": canonical_decimal(action.amount)},
        "currency": action.currency,
        "case_id": action.case_id,
        "customer_id": action.customer_id,
        "evidence_ids": sorted(set(action.evidence_ids)),
        "policy_version": policy_version,
    }
    # Same bytes as canonical_json(doc), without walking the already-canonical parts again.
    return sha256_hex(json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False))
