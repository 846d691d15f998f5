"""Property-based tests (hypothesis) of the default policy's guarantees.

- No material action is auto-executed above a limit, however the amount is split into parts
  and in whatever currency (an independent oracle recomputes the limits from the documented
  table in docs/policies.md), and everything within every limit does run automatically.
- Segregation of duties always holds: whoever requested, proposed, last edited or accepted an
  action can never approve it, whatever roles they hold, and never counts towards a quorum.
- A satisfied quorum always has the required count and role mix of valid, distinct approvers,
  and does not depend on the order in which approvals arrive.
- What a decision says it needs (count, roles, mix) is exactly what releases the action.
- evaluate is deterministic, and evaluate_many agrees with evaluate.
"""

from __future__ import annotations

import itertools
import random
from datetime import UTC, date, datetime, timedelta
from decimal import ROUND_CEILING, Decimal

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from policies import (
    ActionRequest,
    Approval,
    DecisionContext,
    ExposureItem,
    FxRate,
    FxTable,
    Outcome,
    PolicySet,
    Principal,
    action_hash,
    can_approve,
    evaluate,
    evaluate_many,
    load_default_policy,
    quorum_status,
)

POLICY = load_default_policy()  # module level: hypothesis forbids function-scoped fixtures
AS_OF = datetime(2025, 6, 2, 10, 0, tzinfo=UTC)
RATES = {"EUR": Decimal(1), "USD": Decimal("0.92"), "GBP": Decimal("1.17")}
FX = FxTable(
    base_currency="EUR",
    rates=tuple(
        FxRate(currency=c, rate=r, valid_from=date(2025, 6, 1))
        for c, r in RATES.items()
        if c != "EUR"
    ),
)
# The documented auto-execution limits of the default policy (docs/policies.md), in EUR, on the
# cumulative amount of the same action type on the case. None: every amount needs approval.
TYPE_LIMITS: dict[tuple[str, str], Decimal | None] = {
    **{("issue_credit_note", t): Decimal(v) for t, v in (("A", 10000), ("B", 5000), ("C", 1000))},
    **{("write_off", t): Decimal(v) for t, v in (("A", 2500), ("B", 1000), ("C", 250))},
    **{("rebill", t): Decimal(10000) for t in "ABC"},
    ("refund", "A"): Decimal(2000),
    ("refund", "B"): Decimal(1000),
    ("refund", "C"): None,
    **{("adjust_inventory", t): Decimal(5000) for t in "ABC"},
}
CASE_LIMIT = Decimal(15000)
DAY_LIMITS = {"A": Decimal(50000), "B": Decimal(20000), "C": Decimal(5000)}
FOREIGN_LIMIT = Decimal(2500)
ARGS = {
    "issue_credit_note": {"invoice_id": "INV-1", "reason_code": "SHORTAGE"},
    "write_off": {"reason_code": "DAMAGED"},
    "rebill": {"invoice_id": "INV-1"},
    "refund": {"order_id": "ORD-1"},
    "adjust_inventory": {
        "warehouse_id": "WH",
        "sku": "SKU",
        "quantity_delta": Decimal(-3),
        "reason_code": "COUNT",
    },
}
ALL_ROLES = ["agent", "finance_approver", "inventory_manager", "finance_controller", "cfo"]
FAST = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _base(amount: Decimal, currency: str) -> Decimal:
    return (amount * RATES[currency]).quantize(Decimal("0.0001"), rounding=ROUND_CEILING)


SplitCase = tuple[ActionRequest, DecisionContext, dict[str, Decimal]]
money = st.decimals(min_value=Decimal("0.01"), max_value=Decimal(150000), places=2)
tiers = st.sampled_from("ABC")
currencies = st.sampled_from(sorted(RATES))
material_types = st.sampled_from(sorted(ARGS))


@st.composite
def split_actions(draw: st.DrawFn) -> SplitCase:
    """A material action whose total is split into 1-4 parts on one case (earlier parts in the
    ledger, in random states), plus unrelated ledger noise; returns the oracle's figures."""
    action_type = draw(material_types)
    tier = draw(tiers)
    currency = draw(currencies)
    total = draw(money)
    k = draw(st.integers(1, 4))
    cuts = sorted(draw(st.lists(money.filter(lambda x: x < total), min_size=k - 1, max_size=k - 1)))
    bounds = [Decimal(0), *cuts, total]
    parts = [b - a for a, b in itertools.pairwise(bounds) if b - a > 0] or [total]
    statuses = draw(
        st.lists(
            st.sampled_from(["pending", "approved", "executed", "rejected", "cancelled"]),
            min_size=len(parts) - 1,
            max_size=len(parts) - 1,
        )
    )
    ledger = [
        ExposureItem(
            action_id=f"P{i}",
            action_type=action_type,
            case_id="CASE-1",
            customer_id="CUST-1",
            amount=amount,
            currency=currency,
            at=AS_OF - timedelta(hours=i + 1),
            status=status,
        )
        for i, (amount, status) in enumerate(zip(parts[:-1], statuses, strict=True))
    ]
    # Noise: other cases of the same customer today or yesterday, other customers.
    noise = draw(
        st.lists(
            st.tuples(
                st.sampled_from(["CASE-2", "CASE-3"]),
                st.sampled_from(["CUST-1", "CUST-2"]),
                money,
                st.integers(0, 30),
            ),
            max_size=3,
        )
    )
    for j, (case, cust, amount, hours_ago) in enumerate(noise):
        ledger.append(
            ExposureItem(
                action_id=f"N{j}",
                action_type="rebill",
                case_id=case,
                customer_id=cust,
                amount=amount,
                currency="EUR",
                at=AS_OF - timedelta(hours=hours_ago),
                status="executed",
            )
        )
    draw(st.randoms(use_true_random=False)).shuffle(ledger)
    action = ActionRequest(
        action_id="ACT-1",
        action_type=action_type,
        arguments=ARGS[action_type],
        amount=parts[-1],
        currency=currency,
        case_id="CASE-1",
        customer_id="CUST-1",
        customer_tier=tier,
        requested_by="u-agent",
    )
    counted = {"pending", "approved", "executed"}
    own = _base(parts[-1], currency)
    same_type = own + sum(
        (
            _base(x.amount, x.currency)
            for x in ledger
            if x.case_id == "CASE-1" and x.status in counted
        ),
        Decimal(0),
    )
    today = AS_OF.date()
    day = own + sum(
        (
            _base(x.amount, x.currency)
            for x in ledger
            if x.customer_id == "CUST-1" and x.at.date() == today and x.status in counted
        ),
        Decimal(0),
    )
    figures = {"own": own, "case_action": same_type, "case_all": same_type, "day": day}
    context = DecisionContext(as_of=AS_OF, fx=FX, prior_actions=tuple(ledger))
    return action, context, figures


def _within_limits(action: ActionRequest, f: dict[str, Decimal]) -> bool:
    limit = TYPE_LIMITS[(action.action_type, action.customer_tier)]
    if limit is None or f["case_action"] > limit:
        return False
    if f["case_all"] > CASE_LIMIT or f["day"] > DAY_LIMITS[action.customer_tier]:
        return False
    return not (action.currency != "EUR" and f["own"] > FOREIGN_LIMIT)


@FAST
@given(split_actions())
def test_no_material_action_runs_automatically_above_a_limit(case: SplitCase) -> None:
    action, context, figures = case
    decision = evaluate(action, context, POLICY)
    assert decision.exposure.case_action == figures["case_action"]
    assert decision.exposure.customer_day == figures["day"]
    if _within_limits(action, figures):
        assert decision.outcome == Outcome.auto_execute, decision.explain()
    else:
        assert decision.outcome != Outcome.auto_execute, decision.explain()


@FAST
@given(split_actions(), st.randoms(use_true_random=False))
def test_evaluate_is_deterministic_and_order_insensitive(
    case: SplitCase, rnd: random.Random
) -> None:
    action, context, _ = case
    first = evaluate(action, context, POLICY)
    assert evaluate(action, context, POLICY) == first
    ledger = list(context.prior_actions)
    rnd.shuffle(ledger)
    args = list(action.arguments.items())
    rnd.shuffle(args)
    again = evaluate(
        action.model_copy(update={"arguments": dict(args)}),
        context.model_copy(update={"prior_actions": tuple(ledger)}),
        POLICY,
    )
    assert again == first
    assert again.decision_hash == first.decision_hash


@settings(max_examples=25, deadline=None)
@given(st.lists(split_actions(), min_size=1, max_size=6))
def test_evaluate_many_agrees_with_evaluate(cases: list[SplitCase]) -> None:
    items = [(a, c) for a, c, _ in cases]
    assert evaluate_many(items, POLICY) == [evaluate(a, c, POLICY) for a, c in items]


people = st.sampled_from(["u-agent", "u-proposer", "u-editor", "u-accepter"])
role_sets = st.frozensets(st.sampled_from(ALL_ROLES))


@FAST
@given(split_actions(), people, role_sets, st.booleans())
def test_segregation_of_duties_always_holds(
    case: SplitCase, person: str, roles: frozenset[str], suggested: bool
) -> None:
    action, context, _ = case
    action = action.model_copy(
        update={
            "proposed_by": "u-proposer",
            "last_edited_by": "u-editor",
            "accepted_by": "u-accepter",
            "origin": "suggestion" if suggested else "agent",
        }
    )
    approver = Principal(id=person, roles=roles)
    check = can_approve(approver, action, context, [], POLICY)
    assert not check.allowed
    assert any(r.policy_id.startswith("sod.") for r in check.reasons) or not roles
    h = action_hash(action, POLICY.version)
    status = quorum_status(
        action, context, [Approval(approver=approver, action_hash=h, approved_at=AS_OF)], POLICY
    )
    assert person not in status.counted_approvers
    assert not status.satisfied


APPROVER_IDS = ["u-1", "u-2", "u-3", "u-4", "u-agent", "u-treasury-lead"]
approver_profiles = st.fixed_dictionaries(
    {
        who: st.builds(
            Principal,
            id=st.just(who),
            roles=role_sets,
            kind=st.sampled_from(["human", "human", "human", "service"]),
            active=st.sampled_from([True, True, True, False]),
        )
        for who in APPROVER_IDS
    }
)


@st.composite
def approval_scenarios(draw: st.DrawFn) -> tuple[ActionRequest, list[Approval]]:
    action_type = draw(st.sampled_from(["issue_credit_note", "refund", "write_off"]))
    amount = draw(st.decimals(min_value=Decimal(1), max_value=Decimal(400000), places=2))
    action = ActionRequest(
        action_type=action_type,
        arguments=ARGS[action_type],
        amount=amount,
        currency="EUR",
        case_id="CASE-1",
        customer_id="CUST-1",
        customer_tier=draw(tiers),
        requested_by="u-agent",
    )
    h = action_hash(action, POLICY.version)
    profiles = draw(approver_profiles)  # one profile per person: the same id, the same roles
    approvals = [
        Approval(
            approver=profiles[who],
            action_hash=h if draw(st.integers(0, 5)) else "f" * 64,
            approved_at=AS_OF + timedelta(minutes=draw(st.integers(0, 3))),
        )
        for who in draw(st.lists(st.sampled_from(APPROVER_IDS), max_size=5))
    ]
    return action, approvals


@FAST
@given(approval_scenarios(), st.randoms(use_true_random=False))
def test_quorum_needs_count_and_mix_of_valid_distinct_approvers(
    scenario: tuple[ActionRequest, list[Approval]], rnd: random.Random
) -> None:
    action, approvals = scenario
    context = DecisionContext(as_of=AS_OF)
    status = quorum_status(action, context, approvals, POLICY)
    counted = status.counted_approvers
    assert len(set(counted)) == len(counted) == status.valid_approvals
    assert "u-agent" not in counted
    by_id = {a.approver.id: a.approver for a in approvals}
    for who in counted:  # each counted approver passes can_approve on their own
        assert can_approve(by_id[who], action, context, [], POLICY).allowed
    if status.satisfied:
        assert status.valid_approvals >= status.required_approvals >= 1
        if action.amount is not None and action.amount > 50000:
            assert status.valid_approvals >= 2
            assert {"finance_controller", "cfo"} & set(status.roles_present)
        if action.action_type == "refund" and action.amount is not None and action.amount > 25000:
            assert status.valid_approvals >= 2
    shuffled = list(approvals)
    rnd.shuffle(shuffled)
    assert quorum_status(action, context, shuffled, POLICY) == status


@FAST
@given(split_actions())
def test_decision_requirement_is_exactly_what_releases(case: SplitCase) -> None:
    action, context, _ = case
    decision = evaluate(action, context, POLICY)
    if decision.outcome != Outcome.needs_approval:
        return
    req = decision.approval
    assert req is not None and req.eligible_roles
    mix = set(req.eligible_roles)
    for m in req.role_mix:
        mix &= set(m.one_of_roles)
    approvers = []
    for i in range(req.min_approvals):
        role = sorted(mix)[0] if i == 0 and req.role_mix else req.eligible_roles[-1]
        approvers.append(Principal(id=f"u-approver-{i}", roles=frozenset({role})))
    h = decision.action_hash
    approvals = [Approval(approver=p, action_hash=h, approved_at=AS_OF) for p in approvers]
    assert quorum_status(action, context, approvals, POLICY).satisfied
    assert not quorum_status(action, context, approvals[:-1], POLICY).satisfied


def test_policy_fixture_matches_module_policy(policy: PolicySet) -> None:
    assert policy.digest == POLICY.digest
