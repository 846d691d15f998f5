"""Money compared as integer ten-thousandths decides exactly like Cedar's ``decimal``.

The loader rewrites money comparisons to ``Long`` for speed (policies/integer_money.py); these
tests check that the rewrite changes no decision, that it only applies to the plain comparison
form, and that a policy outside that form still loads and decides with ``decimal`` values.
"""

from __future__ import annotations

import dataclasses
import json
from decimal import Decimal
from pathlib import Path

import cedarpy

from policies import DecisionContext, Outcome, PolicySet, evaluate, evaluate_many, load_policy_set
from policies import entities as ent
from policies.integer_money import money_as_long
from policies.loader import _slice_by_type, _split_by_stage
from tests.policies.test_policy_batch import random_items


def _decimal_form(policy: PolicySet) -> PolicySet:
    est = json.loads(cedarpy.policies_to_json_str(policy.policy_text))
    return dataclasses.replace(
        policy,
        money_as_long=False,
        stage_policies=_split_by_stage(est),
        sliced_policies=_slice_by_type(est, policy.actions),
    )


def test_default_policy_runs_on_integer_money(policy: PolicySet) -> None:
    assert policy.money_as_long
    assert "decimal(" not in str(policy.stage_policies["auto_execute"])
    assert "decimal(" in str(policy.cedar_policies)  # the file as written is untouched


def test_integer_and_decimal_money_decide_alike(policy: PolicySet) -> None:
    items = random_items(77, 600)
    as_decimal = _decimal_form(policy)
    assert evaluate_many(items, policy) == evaluate_many(items, as_decimal)


def test_rewrite_scales_literals_and_maps_each_comparison() -> None:
    text = (
        "permit (principal, action, resource) when {\n"
        '  resource.amount.greaterThan(decimal("5000.00")) &&\n'
        '  decimal("0.0001").lessThanOrEqual(resource.exposure.case_all) &&\n'
        '  resource.quantity.lessThan(decimal("-1.5")) &&\n'
        "  resource.exposure.customer_day.greaterThanOrEqual(resource.amount)\n"
        "};"
    )
    est = money_as_long(json.loads(cedarpy.policies_to_json_str(text)), ent.MONEY_PATHS)
    assert est is not None
    rendered = str(cedarpy.PolicySet.from_json_str(json.dumps(est)))
    assert "(resource.amount) > 50000000" in rendered
    assert "1 <= ((resource.exposure).case_all)" in rendered
    assert "(resource.quantity) < (-15000)" in rendered
    assert "((resource.exposure).customer_day) >= (resource.amount)" in rendered


def test_other_uses_of_money_keep_cedar_decimal() -> None:
    for condition in (
        'resource.amount == decimal("100.00")',
        '[decimal("1.0")].contains(resource.amount)',
        "resource.exposure has case_all",
        '(if resource.material then resource.amount else decimal("0.0")).lessThan(decimal("1.0"))',
    ):
        text = f"permit (principal, action, resource) when {{ {condition} }};"
        est = json.loads(cedarpy.policies_to_json_str(text))
        assert money_as_long(est, ent.MONEY_PATHS) is None, condition


def test_a_policy_outside_the_plain_form_still_loads_and_decides(
    bundle_copy: Path, policy: PolicySet
) -> None:
    extra = (
        '\n@id("billing.credit_note.exact_test_amount")\n'
        '@explain("credit notes of exactly {threshold} {base_currency} are test bookings")\n'
        'forbid (principal, action == Action::"request", resource)\n'
        '  when { resource.amount == decimal("4242.00") };\n'
    )
    path = bundle_copy / "policy.cedar"
    path.write_text(path.read_text(encoding="utf-8") + extra, encoding="utf-8")
    custom = load_policy_set(bundle_copy)
    assert not custom.money_as_long
    action, context = random_items(3, 1)[0]
    test_booking = action.model_copy(
        update={
            "action_type": "issue_credit_note",
            "arguments": {"invoice_id": "INV-1", "reason_code": "X"},
            "amount": Decimal(4242),
            "currency": "EUR",
        }
    )
    clean = DecisionContext(as_of=context.as_of, fx=context.fx)
    decision = evaluate(test_booking, clean, custom)
    assert decision.outcome == Outcome.forbidden
    assert [r.policy_id for r in decision.reasons] == ["billing.credit_note.exact_test_amount"]
    items = random_items(8, 200)
    assert evaluate_many(items, custom) == evaluate_many(items, _decimal_form(custom))
