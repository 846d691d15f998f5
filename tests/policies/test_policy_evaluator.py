"""Unit tests of the evaluator's Python side: FX, exposure, hashes, fail-closed behaviour."""

from __future__ import annotations

import dataclasses
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import cedarpy
import pytest

from policies import (
    ActionRequest,
    Approval,
    DecisionContext,
    ExposureItem,
    FxRate,
    FxRateUnavailable,
    FxTable,
    Outcome,
    PolicyEvaluationError,
    PolicyInputError,
    PolicySet,
    Principal,
    action_hash,
    can_approve,
    evaluate,
    evaluate_many,
    load_policy_set,
    quorum_status,
)
from policies.money import format_amount, parse_duration, to_base

AS_OF = datetime(2025, 6, 2, 10, 0, tzinfo=UTC)
CTX = DecisionContext(as_of=AS_OF)


def credit(amount: str = "12400", **kw: object) -> ActionRequest:
    base: dict[str, object] = {
        "action_id": "ACT-1",
        "action_type": "issue_credit_note",
        "arguments": {"invoice_id": "INV-1", "reason_code": "SHORTAGE"},
        "amount": Decimal(amount),
        "currency": "EUR",
        "case_id": "CASE-1",
        "customer_id": "CUST-1",
        "customer_tier": "B",
        "requested_by": "u-agent",
    }
    base.update(kw)
    return ActionRequest.model_validate(base)


# ------------------------------------------------------------------------------------ FX


def _fx(*rates: tuple[str, str, date]) -> FxTable:
    return FxTable(
        base_currency="EUR",
        rates=tuple(FxRate(currency=c, rate=Decimal(r), valid_from=d) for c, r, d in rates),
    )


def test_fx_uses_latest_rate_on_or_before_the_date_and_rounds_up() -> None:
    fx = _fx(
        ("USD", "0.90", date(2025, 5, 30)),
        ("USD", "0.92", date(2025, 6, 1)),
        ("USD", "0.99", date(2025, 6, 3)),  # future: ignored
    )
    got = to_base(
        Decimal("0.00001"),
        "USD",
        base_currency="EUR",
        fx=fx,
        as_of=date(2025, 6, 2),
        max_age_days=7,
    )
    assert got == Decimal("0.0001")  # 0.0000092 rounded *up* to Cedar's 4 places
    got = to_base(
        Decimal(1000), "USD", base_currency="EUR", fx=fx, as_of=date(2025, 6, 2), max_age_days=7
    )
    assert got == Decimal("920.0000")


def test_fx_refuses_stale_missing_and_foreign_base() -> None:
    fx = _fx(("USD", "0.92", date(2025, 5, 1)))

    def convert(currency: str, table: FxTable | None) -> Decimal:
        return to_base(
            Decimal(1),
            currency,
            base_currency="EUR",
            fx=table,
            as_of=date(2025, 6, 2),
            max_age_days=7,
        )

    with pytest.raises(FxRateUnavailable, match="32 days before 2025-06-02"):
        convert("USD", fx)
    with pytest.raises(FxRateUnavailable, match="no GBP->EUR rate"):
        convert("GBP", fx)
    with pytest.raises(FxRateUnavailable, match="none was given"):
        convert("GBP", None)
    usd_table = FxTable(base_currency="USD", rates=())
    with pytest.raises(FxRateUnavailable, match="converts into USD"):
        convert("GBP", usd_table)


def test_ledger_rows_in_other_currencies_are_converted() -> None:
    fx = _fx(("USD", "0.5", date(2025, 6, 1)))
    prior = ExposureItem(
        action_type="issue_credit_note",
        case_id="CASE-1",
        customer_id="CUST-1",
        amount=Decimal(9000),
        currency="USD",
        at=AS_OF,
    )
    ctx = DecisionContext(as_of=AS_OF, fx=fx, prior_actions=(prior,))
    d = evaluate(credit("500"), ctx, load_policy_set_cached())
    assert d.exposure.case_action == Decimal("5000.0000")  # 500 + 9000 * 0.5: not above 5,000
    assert d.outcome == Outcome.auto_execute


_CACHE: dict[str, PolicySet] = {}


def load_policy_set_cached() -> PolicySet:
    from policies import load_default_policy

    return _CACHE.setdefault("p", load_default_policy())


# ------------------------------------------------------------------------------------ exposure


def test_customer_day_uses_the_policy_time_zone(bundle_copy: Path) -> None:
    manifest = bundle_copy / "manifest.toml"
    manifest.write_text(manifest.read_text().replace('"UTC"', '"Europe/Amsterdam"'))
    amsterdam = load_policy_set(bundle_copy)
    utc = load_policy_set_cached()
    # 23:30 UTC on 1 June is 01:30 on 2 June in Amsterdam: the same calendar day there.
    late = ExposureItem(
        action_type="rebill",
        case_id="CASE-9",
        customer_id="CUST-1",
        amount=Decimal(18000),
        currency="EUR",
        at=datetime(2025, 6, 1, 23, 30, tzinfo=UTC),
    )
    ctx = DecisionContext(as_of=AS_OF, prior_actions=(late,))
    action = credit("3000")
    assert evaluate(action, ctx, utc).exposure.customer_day == Decimal(3000)
    in_amsterdam = evaluate(action, ctx, amsterdam)
    assert in_amsterdam.exposure.customer_day == Decimal(21000)
    assert [r.policy_id for r in in_amsterdam.reasons] == ["exposure.customer_day.tier_b"]


def test_non_material_ledger_rows_do_not_count_and_unknown_types_do(policy: PolicySet) -> None:
    rows = (
        ExposureItem(
            action_type="reship", case_id="CASE-1", customer_id="CUST-1",
            amount=Decimal(50000), currency="EUR", at=AS_OF,
        ),
        ExposureItem(
            action_type="legacy_goodwill", case_id="CASE-1", customer_id="CUST-1",
            amount=Decimal(700), currency="EUR", at=AS_OF,
        ),
    )  # fmt: skip
    d = evaluate(credit("100"), DecisionContext(as_of=AS_OF, prior_actions=rows), policy)
    assert d.exposure.case_all == Decimal(800)
    assert d.exposure.case_action == Decimal(100)


# ------------------------------------------------------------------------------------ hashes


def test_action_hash_covers_content_not_people_or_formatting() -> None:
    a = credit("12400", evidence_ids=("chunk-2", "chunk-1"))
    h = action_hash(a, "v1")
    same = [
        credit("12400.00", evidence_ids=("chunk-1", "chunk-2", "chunk-1")),
        credit(
            "12400",
            evidence_ids=("chunk-1", "chunk-2"),
            arguments={"reason_code": "SHORTAGE", "invoice_id": "INV-1"},
            requested_by="someone-else",
            accepted_by="u-x",
        ),
    ]
    for other in same:
        assert action_hash(other, "v1") == h
    different = [
        credit("12400.01", evidence_ids=("chunk-2", "chunk-1")),
        credit("12400", currency="USD", evidence_ids=("chunk-2", "chunk-1")),
        credit("12400", evidence_ids=("chunk-2",)),
        credit("12400", case_id="CASE-2", evidence_ids=("chunk-2", "chunk-1")),
        credit("12400", action_id="ACT-2", evidence_ids=("chunk-2", "chunk-1")),
        credit(
            "12400",
            evidence_ids=("chunk-2", "chunk-1"),
            arguments={"invoice_id": "INV-2", "reason_code": "SHORTAGE"},
        ),
    ]
    for other in different:
        assert action_hash(other, "v1") != h
    assert action_hash(a, "v2") != h


def test_action_hash_tells_numbers_from_strings() -> None:
    a = credit(arguments={"invoice_id": "5", "reason_code": "R"})
    b = credit(arguments={"invoice_id": 5, "reason_code": "R"})
    assert action_hash(a, "v") != action_hash(b, "v")


def test_decision_records_policy_and_hashes(policy: PolicySet) -> None:
    d = evaluate(credit(), CTX, policy)
    assert d.policy_version == policy.version
    assert d.policy_digest == policy.digest
    assert d.action_hash == action_hash(credit(), policy.version)
    later = evaluate(credit(), DecisionContext(as_of=AS_OF + timedelta(seconds=1)), policy)
    assert later.decision_hash != d.decision_hash
    assert later.approval is not None and d.approval is not None
    assert later.approval.due_at - d.approval.due_at == timedelta(seconds=1)


# ------------------------------------------------------------------------------------ inputs


@pytest.mark.parametrize(
    ("update", "message"),
    [
        ({"action_type": "pay_bonus"}, "unknown action type 'pay_bonus'"),
        ({"arguments": {"invoice_id": "I"}}, "missing required issue_credit_note argument"),
        ({"arguments": {"invoice_id": "I", "reason_code": "R", "x": "y"}}, "unknown"),
        ({"arguments": {"invoice_id": 7, "reason_code": "R"}}, "must be a string"),
        ({"currency": None}, "needs an amount and a currency"),
    ],
)
def test_invalid_actions_are_refused(policy: PolicySet, update: dict, message: str) -> None:
    action = credit().model_copy(update=update)
    with pytest.raises(PolicyInputError, match=message):
        evaluate(action, CTX, policy)


def test_argument_types_and_choices(policy: PolicySet) -> None:
    notify = ActionRequest(
        action_type="notify_customer",
        arguments={"customer_id": "CUST-1", "channel": "fax"},
        case_id="C",
        customer_id="CUST-1",
        customer_tier="A",
        requested_by="u",
    )
    with pytest.raises(PolicyInputError, match="must be one of email, portal, phone"):
        evaluate(notify, CTX, policy)
    reship = ActionRequest(
        action_type="reship",
        arguments={"order_id": "O", "sku": "S", "quantity": "a dozen"},
        case_id="C",
        customer_id="CUST-1",
        customer_tier="A",
        requested_by="u",
    )
    with pytest.raises(PolicyInputError, match="must be a number"):
        evaluate(reship, CTX, policy)
    with pytest.raises(PolicyInputError, match="carries no amount"):
        evaluate(
            reship.model_copy(
                update={
                    "arguments": {"order_id": "O", "sku": "S", "quantity": 2},
                    "amount": 1,
                    "currency": "EUR",
                }
            ),
            CTX,
            policy,
        )


def test_evaluate_many_names_the_bad_item(policy: PolicySet) -> None:
    good = (credit(), CTX)
    bad = (credit(action_type="pay_bonus"), CTX)
    with pytest.raises(PolicyInputError, match=r"^item 1: unknown action type"):
        evaluate_many([good, bad], policy)
    assert evaluate_many([], policy) == []


def test_reserved_user_ids_are_refused(policy: PolicySet) -> None:
    with pytest.raises(PolicyInputError, match="reserved"):
        can_approve(
            Principal(id="__probe_all_roles__", roles=frozenset({"cfo"})), credit(), CTX, [], policy
        )


def test_amount_beyond_cedar_decimal_range_is_refused(policy: PolicySet) -> None:
    with pytest.raises(PolicyInputError, match="outside the range"):
        evaluate(credit("1000000000000000"), CTX, policy)


# ------------------------------------------------------------------------------------ fail closed


def _with_stage(policy: PolicySet, stage: str, text: str) -> PolicySet:
    stages = dict(policy.stage_policies)
    stages[stage] = cedarpy.PolicySet.from_str(text)
    # Drop the per-type slices so that every request reaches the replaced stage.
    return dataclasses.replace(policy, stage_policies=stages, sliced_policies={})


def test_a_cedar_evaluation_error_aborts_the_decision(policy: PolicySet) -> None:
    # An unvalidated rule that errors at run time (attribute of an entity that does not
    # exist): Cedar would skip this forbid and allow; the evaluator must refuse to decide.
    broken = _with_stage(
        policy,
        "auto_execute",
        '@id("auto.all") permit (principal, action == Action::"auto_execute", resource);\n'
        '@id("broken.rule") forbid (principal, action == Action::"auto_execute", resource)\n'
        'when { resource.requested_by.kind == "human" };',
    )
    with pytest.raises(PolicyEvaluationError, match="auto_execute"):
        evaluate(credit("100"), CTX, broken)


def test_engine_enforces_segregation_of_duties_even_without_sod_rules(policy: PolicySet) -> None:
    lax = _with_stage(
        policy,
        "approve",
        '@id("authority.all") permit (principal, action == Action::"approve", resource);',
    )
    requester = Principal(id="u-agent", roles=frozenset({"cfo"}))
    check = can_approve(requester, credit(), CTX, [], lax)
    assert not check.allowed
    assert [r.policy_id for r in check.reasons] == ["sod.engine_guard"]
    h = action_hash(credit(), policy.version)
    status = quorum_status(
        credit(), CTX, [Approval(approver=requester, action_hash=h, approved_at=AS_OF)], lax
    )
    assert not status.satisfied
    assert status.valid_approvals == 0


def test_type_slices_decide_exactly_like_the_whole_stage(policy: PolicySet) -> None:
    from policies.testing import run_policy_tests

    assert policy.tests_path is not None
    unsliced = dataclasses.replace(policy, sliced_policies={})
    sliced_report = run_policy_tests(policy, policy.tests_path)
    unsliced_report = run_policy_tests(unsliced, policy.tests_path)
    assert unsliced_report.ok
    assert [r.summary for r in unsliced_report.results] == [
        r.summary for r in sliced_report.results
    ]


def test_nobody_may_approve_means_forbidden(policy: PolicySet) -> None:
    nobody = _with_stage(policy, "approve", "")
    d = evaluate(credit(), CTX, nobody)
    assert d.outcome == Outcome.forbidden
    assert [r.policy_id for r in d.reasons] == [
        "billing.credit_note.tier_b",
        "authority.no_eligible_approver",
    ]


def test_quorum_is_independent_of_approval_order_with_role_changes(policy: PolicySet) -> None:
    # The same person twice at the same instant with different roles (a role change).
    big = credit("60000")
    h = action_hash(big, policy.version)
    a1 = Approval(
        approver=Principal(id="u-1", roles=frozenset({"finance_approver"})),
        action_hash=h,
        approved_at=AS_OF,
    )
    a2 = Approval(
        approver=Principal(id="u-1", roles=frozenset({"cfo"})), action_hash=h, approved_at=AS_OF
    )
    fc = Approval(
        approver=Principal(id="u-2", roles=frozenset({"finance_controller"})),
        action_hash=h,
        approved_at=AS_OF,
    )
    assert quorum_status(big, CTX, [a1, a2, fc], policy) == quorum_status(
        big, CTX, [fc, a2, a1], policy
    )


# ------------------------------------------------------------------------------------ helpers


def test_format_amount_and_duration() -> None:
    assert format_amount(Decimal(12400), "EUR") == "12,400 EUR"
    assert format_amount(Decimal("1234.5"), "USD") == "1,234.50 USD"
    assert parse_duration("P1DT4H30M") == timedelta(days=1, hours=4, minutes=30)
    for bad in ("PT", "P1W", "24h", "PT0H", "P1M"):
        with pytest.raises(ValueError, match="duration"):
            parse_duration(bad)


def test_ids_with_quotes_and_unicode_are_data_not_syntax(policy: PolicySet) -> None:
    # Ids go to Cedar in structured form, never spliced into policy or request text.
    sneaky = 'u-1" || true || "'
    action = credit(
        requested_by=sneaky, case_id='CASE "42" ∑', customer_id="客户-1", proposed_by="ü-bot"
    )
    d = evaluate(action, CTX, policy)
    assert d.outcome == Outcome.needs_approval
    check = can_approve(Principal(id=sneaky, roles=frozenset({"cfo"})), action, CTX, [], policy)
    assert not check.allowed
    assert [r.policy_id for r in check.reasons] == ["sod.requester"]
    other = can_approve(Principal(id="u-1", roles=frozenset({"cfo"})), action, CTX, [], policy)
    assert other.allowed
