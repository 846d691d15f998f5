"""Builders for the Cedar entities and requests the evaluator sends (see schema.cedarschema).

Requests use the structured ``{"type", "id"}`` form for principals and resources: it accepts
any id (no Cedar escaping issues with user-supplied ids) and is measurably faster for cedarpy
to read than the ``Type::"id"`` string form.
"""

from __future__ import annotations

from collections.abc import Iterable
from decimal import Decimal
from typing import Any

from policies.money import ExposureFigures, cedar_decimal, cedar_long

SERVICE_ID = "triage"
PROBE_USER_ID = "__probe_all_roles__"
"""A synthetic approver holding every role: asking Cedar whether it may approve an action
returns, as the satisfied permits, every authority rule that applies to the action."""
EMPTY_APPROVALS_ID = "__no_approvals__"
"""A synthetic empty approval set: asking Cedar whether it releases an action returns, as the
matched forbids, every quorum rule that applies to the action."""
COLLECTED_APPROVALS_ID = "__collected_approvals__"

CEDAR_ACTIONS = ("request", "auto_execute", "approve", "release")

MONEY_PATHS = (
    ("amount",),
    ("quantity",),
    ("exposure", "case_action"),
    ("exposure", "case_all"),
    ("exposure", "customer_day"),
)
"""The ``decimal`` attributes of ``ActionRequest`` (as attribute paths from the resource): sent
as ``decimal`` values, or as integer ten-thousandths when the policy set's money comparisons
were rewritten to ``Long`` (``PolicySet.money_as_long``, see policies/integer_money.py)."""

Json = dict[str, Any]


def uid(entity_type: str, entity_id: str) -> dict[str, str]:
    return {"type": entity_type, "id": entity_id}


def cedar_request(principal: dict[str, str], action: str, resource_id: str) -> Json:
    return {
        "principal": principal,
        "action": {"type": "Action", "id": action},
        "resource": {"type": "ActionRequest", "id": resource_id},
    }


def _ref(user_id: str) -> Json:
    return {"__entity": uid("User", user_id)}


def user_entity(user_id: str, roles: Iterable[str], *, kind: str, active: bool) -> Json:
    return {
        "uid": uid("User", user_id),
        "attrs": {"kind": kind, "active": active},
        "parents": [uid("Role", r) for r in sorted(roles)],
    }


def approval_set_entity(set_id: str, count: int, roles: Iterable[str]) -> Json:
    return {
        "uid": uid("ApprovalSet", set_id),
        "attrs": {"count": count, "roles": sorted(roles)},
        "parents": [],
    }


def base_entities(roles: Iterable[str], named_approvers: Iterable[str]) -> list[Json]:
    """Entities shared by every request: roles, the service, the probes, named approvers."""
    role_list = sorted(roles)
    out: list[Json] = [{"uid": uid("Role", r), "attrs": {}, "parents": []} for r in role_list]
    out.append({"uid": uid("Service", SERVICE_ID), "attrs": {}, "parents": []})
    out.append(user_entity(PROBE_USER_ID, role_list, kind="human", active=True))
    out.append(approval_set_entity(EMPTY_APPROVALS_ID, 0, []))
    # Named approvers are probed as themselves (their roles are unknown here, so none).
    out += [user_entity(n, [], kind="human", active=True) for n in sorted(named_approvers)]
    return out


def action_entity(
    resource_id: str,
    *,
    action_type: str,
    material: bool,
    amount_base: Decimal,
    currency: str,
    quantity: Decimal | None,
    case_id: str,
    origin: str,
    customer_id: str,
    tier: str,
    blocked: bool,
    bank_details_age_days: int | None,
    exposure: ExposureFigures,
    requested_by: str,
    proposed_by: str | None,
    last_edited_by: str | None,
    accepted_by: str | None,
    money_as_long: bool = False,
) -> Json:
    money: Any = cedar_long if money_as_long else cedar_decimal
    customer: Json = {"id": customer_id, "tier": tier, "blocked": blocked}
    if bank_details_age_days is not None:
        customer["bank_details_age_days"] = bank_details_age_days
    attrs: Json = {
        "type": action_type,
        "material": material,
        "amount": money(amount_base, "amount"),
        "currency": currency,
        "case_id": case_id,
        "origin": origin,
        "customer": customer,
        "exposure": {
            "case_action": money(exposure.case_action, "case exposure"),
            "case_all": money(exposure.case_all, "case exposure"),
            "customer_day": money(exposure.customer_day, "daily customer exposure"),
        },
        "requested_by": _ref(requested_by),
    }
    if quantity is not None:
        attrs["quantity"] = money(quantity, "quantity")
    for key, who in (
        ("proposed_by", proposed_by),
        ("last_edited_by", last_edited_by),
        ("accepted_by", accepted_by),
    ):
        if who is not None:
            attrs[key] = _ref(who)
    return {"uid": uid("ActionRequest", resource_id), "attrs": attrs, "parents": []}
