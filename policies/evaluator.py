"""The decision function and the approval checks: pure, deterministic, no I/O.

``evaluate(action, context, policy) -> Decision``
    1. Python checks the action against the catalogue, converts its amount into the base
       currency with the dated FX table and sums the cumulative exposure (case, type, customer
       per day), then builds one Cedar ``ActionRequest`` entity.
    2. Cedar ``request``: a matching forbid makes the outcome ``forbidden``.
    3. Cedar ``auto_execute``: allowed means ``auto_execute``; a matching forbid (a materiality
       threshold, a currency rule, ...) means ``needs_approval``, and the forbids are the reasons.
    4. For ``needs_approval`` Cedar is asked, with probe principals, which authority rules apply
       (``approve`` for a user holding every role, and for each named approver) and which quorum
       rules apply (``release`` for an empty approval set). If nobody may approve, the outcome is
       ``forbidden`` (reason ``authority.no_eligible_approver``): an approval nobody can give is
       a prohibition, and saying so is clearer than an approval request that expires.

``can_approve`` asks Cedar ``approve`` for the real approver; ``quorum_status`` counts the valid
approvals in Python (distinct approvers, bound to the current action hash, each still passing
``approve``) and asks Cedar ``release`` whether they suffice.

Fail closed: a Cedar evaluation error raises ``PolicyEvaluationError`` (Cedar would otherwise
skip the erroring rule, and a skipped forbid permits too much); an amount that cannot be
converted raises ``FxRateUnavailable``; an action that does not fit the catalogue raises
``PolicyInputError``. Segregation of duties is also enforced by the engine itself, so that a
policy file that lost its SoD rules still cannot let a requester approve their own action.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import cedarpy

from policies import entities as ent
from policies.errors import PolicyEvaluationError, PolicyInputError
from policies.hashing import action_hash, sha256_hex
from policies.loader import ENGINE_REASONS, ActionSpec, PolicySet, Rule
from policies.model import (
    RESERVED_ID_PREFIX,
    ActionRequest,
    Approval,
    ApprovalCheck,
    ApprovalRequirement,
    Decision,
    DecisionContext,
    DiscountedApproval,
    Exposure,
    Outcome,
    Principal,
    QuorumStatus,
    Reason,
    RoleMix,
)
from policies.money import (
    ExposureFigures,
    ceil4,
    compute_exposure,
    days_between,
    format_amount,
    format_quantity,
    fx_rate,
    parse_decimal,
)

_SERVICE = ent.uid("Service", ent.SERVICE_ID)
_PROBE_USER = ent.uid("User", ent.PROBE_USER_ID)
_EMPTY_SET = ent.uid("ApprovalSet", ent.EMPTY_APPROVALS_ID)
_COLLECTED_SET = ent.uid("ApprovalSet", ent.COLLECTED_APPROVALS_ID)
_COMBINED = "decide"
"""The Cedar action of a combined request (any name: combined rules match every action)."""


# --------------------------------------------------------------------------------------------
# Preparation: catalogue check, FX, exposure, the Cedar entity
# --------------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Prepared:
    action: ActionRequest
    context: DecisionContext
    spec: ActionSpec
    figures: ExposureFigures
    quantity: Decimal | None
    entity: dict[str, Any]
    hash: str
    values: dict[str, str] = field(default_factory=dict)


def _check_arguments(action: ActionRequest, spec: ActionSpec) -> dict[str, Any]:
    args: dict[str, Any] = {}
    what = f"{action.action_type} argument"
    for name in action.arguments:
        if name not in spec.arguments:
            known = ", ".join(sorted(spec.arguments)) or "none"
            raise PolicyInputError(f"unknown {what} '{name}' (known: {known})")
    for name, arg in spec.arguments.items():
        if name not in action.arguments:
            if arg.required:
                raise PolicyInputError(f"missing required {what} '{name}'")
            continue
        value = action.arguments[name]
        if arg.type == "string":
            if not isinstance(value, str):
                raise PolicyInputError(f"{what} '{name}' must be a string, got {value!r}")
        elif arg.type == "boolean":
            if not isinstance(value, bool):
                raise PolicyInputError(f"{what} '{name}' must be true or false, got {value!r}")
        elif arg.type == "integer":
            value = parse_decimal(value, f"{what} '{name}'")
            if value != value.to_integral_value():
                raise PolicyInputError(f"{what} '{name}' must be a whole number, got {value}")
        else:
            value = parse_decimal(value, f"{what} '{name}'")
        if arg.choices and str(value) not in arg.choices:
            raise PolicyInputError(
                f"{what} '{name}' must be one of {', '.join(arg.choices)}, got {value!r}"
            )
        args[name] = value
    if spec.amount == "none" and (action.amount is not None or action.currency is not None):
        raise PolicyInputError(f"{action.action_type} carries no amount or currency")
    if spec.amount == "required" and (action.amount is None or action.currency is None):
        raise PolicyInputError(f"{action.action_type} needs an amount and a currency")
    if (action.amount is None) != (action.currency is None):
        raise PolicyInputError("amount and currency must be given together")
    return args


def _prepare(
    action: ActionRequest, context: DecisionContext, policy: PolicySet, resource_id: str
) -> _Prepared:
    spec = policy.actions.get(action.action_type)
    if spec is None:
        known = ", ".join(sorted(policy.actions))
        raise PolicyInputError(f"unknown action type '{action.action_type}' (known: {known})")
    args = _check_arguments(action, spec)
    base = policy.base_currency
    as_of_day = context.as_of.astimezone(policy.tz).date()
    max_age = policy.manifest.fx_max_age_days

    rates: dict[str, Decimal] = {}  # one table lookup per currency, not per ledger row

    def convert(amount: Decimal, currency: str) -> Decimal:
        rate = rates.get(currency)
        if rate is None:
            rate = rates[currency] = fx_rate(
                currency, base_currency=base, fx=context.fx, as_of=as_of_day, max_age_days=max_age
            )
        return ceil4(amount * rate)

    amount_base = Decimal(0)
    if action.amount is not None and action.currency is not None:
        amount_base = convert(action.amount, action.currency)

    def is_material(action_type: str) -> bool:
        other = policy.actions.get(action_type)
        return other is None or other.material

    figures = compute_exposure(
        action_type=action.action_type,
        action_id=action.action_id,
        case_id=action.case_id,
        customer_id=action.customer_id,
        amount_base=amount_base,
        material=spec.material,
        context=context,
        convert=convert,
        is_material=is_material,
        tz=policy.tz,
    )
    quantity = None
    if spec.quantity_argument and spec.quantity_argument in args:
        quantity = abs(args[spec.quantity_argument])
    changed = context.customer.bank_details_changed_at
    entity = ent.action_entity(
        resource_id,
        action_type=action.action_type,
        material=spec.material,
        amount_base=amount_base,
        currency=action.currency or "",
        quantity=quantity,
        case_id=action.case_id,
        origin=action.origin,
        customer_id=action.customer_id,
        tier=action.customer_tier,
        blocked=context.customer.blocked,
        bank_details_age_days=None if changed is None else days_between(changed, context.as_of),
        exposure=figures,
        requested_by=action.requested_by,
        proposed_by=action.proposed_by,
        last_edited_by=action.last_edited_by,
        accepted_by=action.accepted_by,
        money_as_long=policy.money_as_long,
    )
    return _Prepared(
        action, context, spec, figures, quantity, entity, action_hash(action, policy.version)
    )


# --------------------------------------------------------------------------------------------
# Cedar calls and reasons
# --------------------------------------------------------------------------------------------


def _entities(base: cedarpy.Entities, extra: Iterable[dict[str, Any]]) -> cedarpy.Entities:
    # The per-decision entities are built by entities.py, whose output the loader's smoke test
    # validated against the schema for every action type; re-validating each decision would
    # double the parsing cost without checking anything new.
    try:
        return base.with_added_json_str(json.dumps(list(extra)))
    except ValueError as exc:
        raise PolicyEvaluationError(f"Cedar refused the evaluator's entities: {exc}") from exc


def _authorize(
    requests: list[dict[str, Any]],
    entities: cedarpy.Entities,
    policy: PolicySet,
    types: Sequence[tuple[str, str]],
) -> list[Any]:
    """Evaluate requests in order; ``types[k]`` is the (action type, customer tier) of request
    k's resource.

    Each request goes to the rules of its own Cedar action, action type and tier (see
    ``PolicySet.sliced_policies``), one cedarpy call per group. Any Cedar error aborts the
    decision (fail closed)."""
    groups: dict[tuple[str, str, str], list[int]] = {}
    for k, req in enumerate(requests):
        groups.setdefault((req["action"]["id"], *types[k]), []).append(k)
    results: list[Any] = [None] * len(requests)
    for key, indexes in groups.items():
        if key[0] == _COMBINED:
            rules = policy.combined_policies[key[1:]]
        else:
            rules = policy.sliced_policies.get(key) or policy.stage_policies[key[0]]
        answers = cedarpy.is_authorized_batch([requests[k] for k in indexes], rules, entities)
        for k, res in zip(indexes, answers, strict=True):
            if res.diagnostics.errors:
                req = requests[k]
                raise PolicyEvaluationError(
                    f"Cedar error on {key[0]} for {req['principal']['id']}: "
                    + "; ".join(res.diagnostics.errors)
                )
            results[k] = res
    return results


def _slice_key(action: ActionRequest) -> tuple[str, str]:
    return action.action_type, action.customer_tier


def _matched(result: Any, policy: PolicySet) -> list[Rule]:
    """The rules that determined a Cedar result (permits if allowed, forbids if denied)."""
    ids = result.diagnostics.id_annotations_by_reason.values()
    rules = [policy.rules[i] for i in ids if i in policy.rules]
    return sorted(rules, key=lambda r: r.order)


def _money(value: Decimal | None, currency: str | None) -> str:
    return format_amount(value, currency or "") if value is not None else "(no amount)"


_PLACEHOLDERS: dict[str, Callable[[_Prepared, PolicySet], str]] = {
    "action": lambda p, _: p.spec.label,
    "action_type": lambda p, _: p.action.action_type,
    "amount": lambda p, _: _money(p.action.amount, p.action.currency),
    "amount_base": lambda p, pol: _money(p.figures.amount_base, pol.base_currency),
    "amount_and_base": lambda p, pol: (
        _money(p.action.amount, p.action.currency)
        if p.action.currency in (None, pol.base_currency)
        else f"{_money(p.action.amount, p.action.currency)} = "
        f"{_money(p.figures.amount_base, pol.base_currency)}"
    ),
    "currency": lambda p, _: p.action.currency or "",
    "base_currency": lambda _, pol: pol.base_currency,
    "tier": lambda p, _: p.action.customer_tier,
    "customer": lambda p, _: p.action.customer_id,
    "case": lambda p, _: p.action.case_id,
    "case_action_exposure": lambda p, pol: _money(p.figures.case_action, pol.base_currency),
    "case_all_exposure": lambda p, pol: _money(p.figures.case_all, pol.base_currency),
    "customer_day_exposure": lambda p, pol: _money(p.figures.customer_day, pol.base_currency),
    "quantity": lambda p, _: (
        format_quantity(p.quantity) if p.quantity is not None else "(no quantity)"
    ),
}


class _Placeholders(dict[str, str]):
    """Values for one explanation: ``extra`` first, then the action's placeholders, computed
    on first use and cached on the prepared action (most templates use two or three)."""

    def __init__(self, p: _Prepared, policy: PolicySet, extra: dict[str, str]) -> None:
        super().__init__(extra)
        self.p = p
        self.policy = policy

    def __missing__(self, key: str) -> str:
        cache = self.p.values
        if key not in cache:
            fn = _PLACEHOLDERS.get(key)
            cache[key] = fn(self.p, self.policy) if fn else f"{{{key}}}"
        return cache[key]


def _render(template: str, p: _Prepared, policy: PolicySet, **extra: str) -> str:
    return template.format_map(_Placeholders(p, policy, extra))


def _rule_reason(rule: Rule, p: _Prepared, policy: PolicySet, **extra: str) -> Reason:
    if rule.static_reason is not None:
        return rule.static_reason
    threshold = format_amount(rule.threshold) if rule.threshold is not None else "(no threshold)"
    text = _render(
        rule.explain,
        p,
        policy,
        threshold=threshold,
        min_approvals=str(rule.min_approvals or 1),
        one_of_roles=" or ".join(rule.one_of_roles) or "any role",
        **extra,
    )
    # model_construct: the fields are built right here from validated data.
    return Reason.model_construct(policy_id=rule.policy_id, explanation=text, effect=rule.effect)


def _engine_reason(policy_id: str, p: _Prepared, policy: PolicySet, **extra: str) -> Reason:
    return Reason.model_construct(
        policy_id=policy_id,
        explanation=_render(ENGINE_REASONS[policy_id], p, policy, **extra),
        effect="engine",
    )


def _with_decision_hash(decision: Decision, p: _Prepared) -> Decision:
    """Seal a decision with sha256 over its content and the inputs it was derived from.

    The action content enters through its canonical action hash (order- and trailing-zero-
    insensitive); the fields the hash leaves out (people, origin, tier) and the context facts
    enter as pydantic JSON, which is deterministic for equal values.
    """
    people = p.action.model_dump_json(
        include={
            "origin",
            "customer_tier",
            "requested_by",
            "proposed_by",
            "last_edited_by",
            "accepted_by",
        }
    )
    payload = "\n".join(
        (
            decision.model_dump_json(exclude={"decision_hash"}),
            p.hash,
            people,
            p.context.as_of.isoformat(),
            p.context.customer.model_dump_json(),
        )
    )
    return decision.model_copy(update={"decision_hash": sha256_hex(payload)})


# --------------------------------------------------------------------------------------------
# evaluate / evaluate_many
# --------------------------------------------------------------------------------------------


def evaluate(action: ActionRequest, context: DecisionContext, policy: PolicySet) -> Decision:
    """Decide one action: ``auto_execute``, ``needs_approval`` (who, how many, by when) or
    ``forbidden``, with the reasons. Pure and deterministic; see the module docstring."""
    return evaluate_many([(action, context)], policy)[0]


def evaluate_many(
    items: Sequence[tuple[ActionRequest, DecisionContext]], policy: PolicySet
) -> list[Decision]:
    """Decide many actions with a few batched Cedar calls (e.g. re-checking every open
    approval after a policy change). Same result as calling ``evaluate`` on each item, in
    order. An invalid item raises for the whole batch (``PolicyInputError`` names the item
    index).

    Cost per action: one entity parsed by Cedar, and one Cedar request when the policy allows
    combining the stages (policies/combined.py; the default policy does), else two for
    ``auto_execute``/``forbidden`` and four for ``needs_approval``; plus one request per named
    approver whose rules can apply to the action's type, for ``needs_approval``."""
    prepared: list[_Prepared] = []
    for i, (action, context) in enumerate(items):
        try:
            prepared.append(_prepare(action, context, policy, str(i)))
        except PolicyInputError as exc:
            if len(items) == 1:
                raise
            raise type(exc)(f"item {i}: {exc}") from exc
    if not prepared:
        return []
    keys = [_slice_key(p.action) for p in prepared]
    combine = bool(policy.combined_policies) and (
        policy.combined_slices_of is policy.sliced_policies
    )
    if combine:
        entities = _entities(policy.combined_base_handle, (p.entity for p in prepared))
        one = [ent.cedar_request(_PROBE_USER, _COMBINED, str(i)) for i in range(len(prepared))]
        stages = [_split_stages(r, policy) for r in _authorize(one, entities, policy, keys)]
        first = [(s["request"], s["auto_execute"]) for s in stages]
    else:
        entities = _entities(policy.base_handle, (p.entity for p in prepared))
        requests: list[dict[str, Any]] = []
        for i in range(len(prepared)):
            requests.append(ent.cedar_request(_SERVICE, "request", str(i)))
            requests.append(ent.cedar_request(_SERVICE, "auto_execute", str(i)))
        answers = _answers(
            _authorize(requests, entities, policy, [k for k in keys for _ in "ra"]), policy
        )
        first = list(zip(answers[::2], answers[1::2], strict=True))

    # Who may approve, which quorum applies: only for actions that need approval.
    pending = [i for i, (request, auto) in enumerate(first) if request.allowed and not auto.allowed]
    second: list[dict[str, Any]] = []
    second_keys: list[tuple[str, str]] = []
    spans: dict[int, tuple[int, tuple[str, ...]]] = {}
    for i in pending:
        rid, action_type = str(i), prepared[i].action.action_type
        names = policy.named_approvers_by_type.get(action_type, policy.named_approvers)
        spans[i] = (len(second), names)
        if not combine:
            second.append(ent.cedar_request(_PROBE_USER, "approve", rid))
            second.append(ent.cedar_request(_EMPTY_SET, "release", rid))
        second += [ent.cedar_request(ent.uid("User", n), "approve", rid) for n in names]
        second_keys += [keys[i]] * (len(second) - len(second_keys))
    probed = _answers(_authorize(second, entities, policy, second_keys), policy)

    decisions = []
    for i, p in enumerate(prepared):
        probes: _Probes | None = None
        if i in spans:
            start, names = spans[i]
            if combine:
                all_roles, empty_set = stages[i]["approve"], stages[i]["release"]
            else:
                all_roles, empty_set = probed[start], probed[start + 1]
                start += 2
            named = tuple(zip(names, probed[start : start + len(names)], strict=True))
            probes = _Probes(all_roles, empty_set, named)
        decisions.append(_decide(p, first[i][0], first[i][1], probes, policy))
    return decisions


@dataclass(frozen=True, slots=True)
class _Answer:
    """One Cedar stage's answer: allowed or not, and the rules that determined it (the
    satisfied permits if allowed, else the satisfied forbids), in policy file order."""

    allowed: bool
    rules: list[Rule]


def _answers(results: list[Any], policy: PolicySet) -> list[_Answer]:
    return [_Answer(r.allowed, _matched(r, policy)) for r in results]


def _split_stages(result: Any, policy: PolicySet) -> dict[str, _Answer]:
    """The four stages' answers from one combined request (policies/combined.py), where
    every rule is a permit so that Cedar lists every satisfied rule. Cedar's own combination,
    per stage: deny by default; a satisfied forbid denies and is the reason; otherwise the
    satisfied permits allow and are the reasons."""
    satisfied = _matched(result, policy) if result.allowed else []
    permits: dict[str, list[Rule]] = {stage: [] for stage in ent.CEDAR_ACTIONS}
    forbids: dict[str, list[Rule]] = {stage: [] for stage in ent.CEDAR_ACTIONS}
    for rule in satisfied:
        (forbids if rule.effect == "forbid" else permits)[rule.stage].append(rule)
    return {
        stage: _Answer(False, forbids[stage])
        if forbids[stage]
        else _Answer(bool(permits[stage]), permits[stage])
        for stage in ent.CEDAR_ACTIONS
    }


@dataclass(frozen=True, slots=True)
class _Probes:
    """Cedar's answers about who may approve an action and which quorum rules apply."""

    all_roles: _Answer
    empty_set: _Answer
    named: tuple[tuple[str, _Answer], ...]


def _decide(
    p: _Prepared, request: _Answer, auto: _Answer, probes: _Probes | None, policy: PolicySet
) -> Decision:
    approval: ApprovalRequirement | None = None
    outcome: Outcome
    if not request.allowed:
        outcome = Outcome.forbidden
        reasons = [_rule_reason(r, p, policy) for r in request.rules]
        reasons = reasons or [_engine_reason("request.no_permit", p, policy)]
    elif auto.allowed:
        outcome = Outcome.auto_execute
        reasons = [_rule_reason(r, p, policy) for r in auto.rules]
    else:
        assert probes is not None
        matched = auto.rules
        reasons = [_rule_reason(r, p, policy) for r in matched]
        reasons = reasons or [_engine_reason("auto_execute.no_permit", p, policy)]
        authority = list(probes.all_roles.rules) if probes.all_roles.allowed else []
        roles = sorted({r.role for r in authority if r.role})
        names = [n for n, res in probes.named if res.allowed]
        for n, res in probes.named:
            if res.allowed:
                authority += [r for r in res.rules if r.named_principal == n]
        if not roles and not names:
            outcome = Outcome.forbidden
            reasons.append(_engine_reason("authority.no_eligible_approver", p, policy))
        else:
            outcome = Outcome.needs_approval
            quorum = probes.empty_set.rules
            slas = [r.sla for r in matched if r.sla is not None]
            sla = min(slas) if slas else policy.manifest.default_sla
            approval = ApprovalRequirement.model_construct(
                min_approvals=max([1, *(r.min_approvals or 1 for r in quorum)]),
                eligible_roles=tuple(roles),
                named_approvers=tuple(names),
                role_mix=tuple(
                    RoleMix.model_construct(policy_id=r.policy_id, one_of_roles=r.one_of_roles)
                    for r in quorum
                    if r.one_of_roles
                ),
                authority=tuple(_rule_reason(r, p, policy) for r in sorted(authority, key=_order)),
                quorum=tuple(_rule_reason(r, p, policy, approvals="0") for r in quorum),
                sla=sla,
                due_at=p.context.as_of + sla,
            )
    f = p.figures
    # model_construct throughout: every field is computed right here from validated inputs,
    # and re-validating the nested models would cost more than the Cedar call.
    exposure = Exposure.model_construct(
        base_currency=policy.base_currency,
        amount_base=f.amount_base,
        case_action=f.case_action,
        case_all=f.case_all,
        customer_day=f.customer_day,
    )
    decision = Decision.model_construct(
        outcome=outcome,
        reasons=tuple(reasons),
        approval=approval,
        exposure=exposure,
        policy_set_id=policy.id,
        policy_version=policy.version,
        policy_digest=policy.digest,
        action_hash=p.hash,
        decision_hash="",
    )
    return _with_decision_hash(decision, p)


def _order(rule: Rule) -> int:
    return rule.order


# --------------------------------------------------------------------------------------------
# Approvals
# --------------------------------------------------------------------------------------------


def _check_principal(principal: Principal) -> None:
    if principal.id.startswith(RESERVED_ID_PREFIX):
        raise PolicyInputError(f"user ids starting with '{RESERVED_ID_PREFIX}' are reserved")


def _involved(action: ActionRequest) -> set[str]:
    people = {action.requested_by, action.proposed_by, action.last_edited_by, action.accepted_by}
    return {x for x in people if x is not None}


def _approver_entity(principal: Principal, policy: PolicySet) -> dict[str, Any]:
    roles = principal.roles & set(policy.manifest.roles)  # unknown roles grant nothing
    return ent.user_entity(principal.id, roles, kind=principal.kind, active=principal.active)


def _judge_approver(
    principal: Principal,
    result: Any,
    probe: Any,
    p: _Prepared,
    policy: PolicySet,
) -> tuple[bool, list[Reason]]:
    """Interpret Cedar's ``approve`` answer for one approver (plus the engine's SoD guard)."""
    extra = {
        "approver": principal.id,
        "approver_roles": ", ".join(sorted(principal.roles)) or "none",
    }
    if result.allowed:
        if principal.id in _involved(p.action):
            return False, [_engine_reason("sod.engine_guard", p, policy, **extra)]
        return True, [_rule_reason(r, p, policy, **extra) for r in _matched(result, policy)]
    forbids = _matched(result, policy)
    if forbids:
        return False, [_rule_reason(r, p, policy, **extra) for r in forbids]
    eligible = sorted({r.role for r in _matched(probe, policy) if r.role}) if probe.allowed else []
    eligible_text = ", ".join(eligible) or "none"
    return False, [
        _engine_reason("authority.insufficient", p, policy, eligible=eligible_text, **extra)
    ]


def can_approve(
    approver: Principal,
    action: ActionRequest,
    context: DecisionContext,
    existing_approvals: Sequence[Approval],
    policy: PolicySet,
) -> ApprovalCheck:
    """May ``approver`` approve ``action`` now? Refused (with every reason found) when the action
    is forbidden, the approver already approved this version of it, segregation of duties is
    violated, the approver is not an active person, or their authority does not cover the case
    exposure. Approvals bound to another action hash are ignored for the duplicate check."""
    _check_principal(approver)
    p = _prepare(action, context, policy, "0")
    entities = _entities(
        policy.approver_base_handle, [p.entity, _approver_entity(approver, policy)]
    )
    request, result, probe = _authorize(
        [
            ent.cedar_request(_SERVICE, "request", "0"),
            ent.cedar_request(ent.uid("User", approver.id), "approve", "0"),
            ent.cedar_request(_PROBE_USER, "approve", "0"),
        ],
        entities,
        policy,
        [_slice_key(action)] * 3,
    )
    extra = {"approver": approver.id}
    reasons: list[Reason] = []
    allowed = True
    if not request.allowed:
        allowed = False
        reasons.append(_engine_reason("approval.action_forbidden", p, policy, **extra))
        reasons += [_rule_reason(r, p, policy) for r in _matched(request, policy)]
    if any(a.approver.id == approver.id and a.action_hash == p.hash for a in existing_approvals):
        allowed = False
        reasons.append(_engine_reason("approval.duplicate", p, policy, **extra))
    ok, judged = _judge_approver(approver, result, probe, p, policy)
    # A permit is only a reason when nothing refused the approval.
    if ok and allowed:
        reasons += judged
    elif not ok:
        allowed = False
        reasons += judged
    return ApprovalCheck(allowed=allowed, approver_id=approver.id, reasons=tuple(reasons))


def quorum_status(
    action: ActionRequest,
    context: DecisionContext,
    approvals: Sequence[Approval],
    policy: PolicySet,
) -> QuorumStatus:
    """Do the approvals collected so far release ``action``?

    Counts each approver once (the earliest approval wins, ties broken by a total order on the
    approval, so the result does not depend on the order given), ignores approvals bound to
    another action hash, and re-checks every approver against the current authority matrix and
    segregation of duties; then asks Cedar ``release`` with the count and the roles of the
    counted approvers.
    """
    p = _prepare(action, context, policy, "0")
    # A total order (not just time and id): the same person may appear twice at the same
    # instant with different roles (a role change), and the result must not depend on the
    # order the caller listed the approvals in.
    ordered = sorted(
        approvals,
        key=lambda a: (
            a.approved_at,
            a.approver.id,
            a.action_hash,
            sorted(a.approver.roles),
            a.approver.kind,
            a.approver.active,
        ),
    )
    discounted: list[DiscountedApproval] = []
    candidates: list[Principal] = []
    seen: set[str] = set()
    for a in ordered:
        _check_principal(a.approver)
        extra = {"approver": a.approver.id}
        if a.action_hash != p.hash:
            reason = _engine_reason("approval.stale", p, policy, **extra)
        elif a.approver.id in seen:
            reason = _engine_reason("approval.duplicate", p, policy, **extra)
        else:
            seen.add(a.approver.id)
            candidates.append(a.approver)
            continue
        discounted.append(DiscountedApproval(approver_id=a.approver.id, reasons=(reason,)))

    entities = _entities(
        policy.approver_base_handle, [p.entity, *(_approver_entity(c, policy) for c in candidates)]
    )
    first = [
        ent.cedar_request(_SERVICE, "request", "0"),
        ent.cedar_request(_PROBE_USER, "approve", "0"),
    ]
    first += [ent.cedar_request(ent.uid("User", c.id), "approve", "0") for c in candidates]
    request, probe, *checks = _authorize(first, entities, policy, [_slice_key(action)] * len(first))

    counted: list[Principal] = []
    for c, res in zip(candidates, checks, strict=True):
        ok, reasons = _judge_approver(c, res, probe, p, policy)
        if not request.allowed:  # as in can_approve: nobody validly approves a forbidden action
            ok = False
            reasons = [_engine_reason("approval.action_forbidden", p, policy, approver=c.id)]
        if ok:
            counted.append(c)
        else:
            discounted.append(DiscountedApproval(approver_id=c.id, reasons=tuple(reasons)))
    known_roles = set(policy.manifest.roles)
    roles = sorted({r for c in counted for r in c.roles & known_roles})
    collected = ent.approval_set_entity(ent.COLLECTED_APPROVALS_ID, len(counted), roles)
    with_set = _entities(entities, [collected])
    release, empty = _authorize(
        [
            ent.cedar_request(_COLLECTED_SET, "release", "0"),
            ent.cedar_request(_EMPTY_SET, "release", "0"),
        ],
        with_set,
        policy,
        [_slice_key(action)] * 2,
    )
    count = str(len(counted))
    applicable = _matched(empty, policy)
    unmet: list[Reason] = []
    if not request.allowed:
        unmet.append(_engine_reason("approval.action_forbidden", p, policy))
    if not release.allowed:
        unmet += [_rule_reason(r, p, policy, approvals=count) for r in _matched(release, policy)]
        if not counted:
            unmet.append(_engine_reason("quorum.no_approval", p, policy))
    return QuorumStatus(
        satisfied=request.allowed and release.allowed,
        valid_approvals=len(counted),
        required_approvals=max([1, *(r.min_approvals or 1 for r in applicable)]),
        counted_approvers=tuple(c.id for c in counted),
        roles_present=tuple(roles),
        discounted=tuple(discounted),
        unmet=tuple(unmet),
        released_by=tuple(_rule_reason(r, p, policy) for r in _matched(release, policy))
        if release.allowed and request.allowed
        else (),
        requirement=tuple(_rule_reason(r, p, policy, approvals=count) for r in applicable),
    )
