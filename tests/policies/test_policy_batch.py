"""Batch and single evaluation agree, on a large randomly generated set of actions.

``evaluate_many`` shares one Cedar entity parse and a few batched Cedar calls between all its
items (that is where its throughput comes from); this test checks that the sharing never leaks
one item's facts into another's decision: every decision, reason, requirement and hash is the
same as when each action is evaluated alone, whatever the mix of types, tiers, currencies,
people, ledgers and outcomes in the batch, and whatever the batch's order.
"""

from __future__ import annotations

import random
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest

from policies import (
    ActionRequest,
    CustomerFlags,
    DecisionContext,
    ExposureItem,
    FxRate,
    FxTable,
    Outcome,
    PolicySet,
    evaluate,
    evaluate_many,
)

AS_OF = datetime(2025, 6, 2, 10, 0, tzinfo=UTC)
FX = FxTable(
    base_currency="EUR",
    rates=(
        FxRate(currency="USD", rate=Decimal("0.92"), valid_from=date(2025, 6, 1)),
        FxRate(currency="GBP", rate=Decimal("1.17"), valid_from=date(2025, 5, 30)),
        FxRate(currency="TRY", rate=Decimal("0.0271"), valid_from=date(2025, 6, 2)),
    ),
)
CURRENCIES = ["EUR", "EUR", "EUR", "USD", "GBP", "TRY"]
PEOPLE = ["u-agent-1", "u-agent-2", "u-fa", "u-fc", "u-cfo", "u-treasury-lead", "svc-advisor"]
MATERIAL = ["issue_credit_note", "write_off", "rebill", "refund", "adjust_inventory"]


def _amount(rng: random.Random) -> Decimal:
    # Spread over every threshold of the default policy (250 .. 250,000), with exact hits on
    # round numbers and sub-cent values so boundaries and rounding are exercised.
    pick = rng.random()
    if pick < 0.15:
        return Decimal(rng.choice([250, 1000, 2000, 2500, 5000, 10000, 15000, 25000, 50000]))
    if pick < 0.25:
        return Decimal(rng.randint(1, 10**9)) / Decimal(10**4)
    exponent = rng.uniform(0, 5.6)
    return (Decimal(10) ** Decimal(str(round(exponent, 3)))).quantize(Decimal("0.01"))


def _arguments(rng: random.Random, action_type: str) -> dict[str, bool | int | Decimal | str]:
    match action_type:
        case "issue_credit_note":
            return {"invoice_id": f"INV-{rng.randint(1, 9)}", "reason_code": "SHORTAGE"}
        case "write_off":
            return {"reason_code": "DAMAGED"}
        case "rebill":
            return {"invoice_id": "INV-1"}
        case "refund":
            return {"order_id": f"ORD-{rng.randint(1, 9)}"}
        case "adjust_inventory":
            return {
                "warehouse_id": "WH-1",
                "sku": "SKU-1",
                "quantity_delta": Decimal(rng.randint(-900, 900)),
                "reason_code": "COUNT",
            }
        case "reship":
            return {"order_id": "ORD-1", "sku": "SKU-1", "quantity": Decimal(rng.randint(1, 900))}
        case "contact_carrier":
            return {"carrier_id": "DHL", "subject": "late delivery"}
        case "notify_customer":
            return {"customer_id": "CUST-1", "channel": rng.choice(["email", "portal", "phone"])}
        case _:
            return {"to_queue": "finance", "reason": "needs a human"}


def random_item(rng: random.Random, i: int) -> tuple[ActionRequest, DecisionContext]:
    """One valid action with its context: any type, tier, currency, origin and people, a
    ledger of earlier actions in any state, and now and then a blocked customer or a recent
    change of bank details."""
    action_type = rng.choice(
        [*MATERIAL, *MATERIAL, "reship", "contact_carrier", "notify_customer", "escalate"]
    )
    amount = currency = None
    if action_type in MATERIAL and not (action_type == "adjust_inventory" and rng.random() < 0.3):
        amount, currency = _amount(rng), rng.choice(CURRENCIES)
    case_id = f"CASE-{rng.randint(1, 6)}"
    customer_id = f"CUST-{rng.randint(1, 4)}"
    origin = rng.choice(["agent", "agent", "suggestion", "integration"])
    accepted = rng.choice([None, *PEOPLE]) if origin == "suggestion" else None
    action = ActionRequest(
        action_id=f"ACT-{i}" if rng.random() < 0.9 else None,
        action_type=action_type,
        arguments=_arguments(rng, action_type),
        amount=amount,
        currency=currency,
        case_id=case_id,
        customer_id=customer_id,
        customer_tier=rng.choice("ABC"),
        evidence_ids=tuple(f"EV-{rng.randint(1, 5)}" for _ in range(rng.randint(0, 3))),
        origin=origin,
        requested_by=rng.choice(PEOPLE),
        proposed_by="svc-advisor" if origin == "suggestion" else rng.choice([None, *PEOPLE]),
        last_edited_by=rng.choice([None, None, *PEOPLE]),
        accepted_by=accepted,
    )
    ledger = tuple(
        ExposureItem(
            action_id=f"ACT-{rng.randint(0, 2 * i + 1)}",
            action_type=rng.choice([*MATERIAL, "reship", "legacy_type"]),
            case_id=rng.choice([case_id, case_id, f"CASE-{rng.randint(1, 6)}"]),
            customer_id=rng.choice([customer_id, f"CUST-{rng.randint(1, 4)}"]),
            amount=_amount(rng),
            currency=rng.choice(CURRENCIES),
            at=AS_OF - timedelta(hours=rng.randint(0, 60)),
            status=rng.choice(["pending", "approved", "executed", "rejected", "expired"]),
        )
        for _ in range(rng.randint(0, 12))
    )
    changed = AS_OF - timedelta(days=rng.randint(0, 90)) if rng.random() < 0.15 else None
    context = DecisionContext(
        as_of=AS_OF,
        fx=FX,
        prior_actions=ledger,
        customer=CustomerFlags(blocked=rng.random() < 0.05, bank_details_changed_at=changed),
    )
    return action, context


def random_items(seed: int, n: int) -> list[tuple[ActionRequest, DecisionContext]]:
    rng = random.Random(seed)
    return [random_item(rng, i) for i in range(n)]


@pytest.mark.parametrize("seed", [5, 2025])
def test_batch_and_single_evaluation_agree_on_600_random_actions(
    policy: PolicySet, seed: int
) -> None:
    items = random_items(seed, 600)
    singles = [evaluate(action, context, policy) for action, context in items]
    # The generator must reach every outcome, or the comparison proves little.
    assert {d.outcome for d in singles} == set(Outcome)
    assert sum(d.approval is not None and d.approval.min_approvals == 2 for d in singles) > 10
    assert evaluate_many(items, policy) == singles
    # Order and batch boundaries do not matter either.
    order = list(range(len(items)))
    random.Random(seed).shuffle(order)
    shuffled = evaluate_many([items[k] for k in order], policy)
    assert [shuffled[order.index(k)] for k in range(len(items))] == singles
    chunks = [evaluate_many(items[k : k + 7], policy) for k in range(0, len(items), 7)]
    assert [d for chunk in chunks for d in chunk] == singles
