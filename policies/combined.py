"""One Cedar request per decision instead of four: every stage's rules evaluated together.

Why: ``evaluate`` asks Cedar four questions about each action (``request``, ``auto_execute``,
and for approvals the ``approve`` probe and the ``release`` probe). Each Cedar request has a
fixed cost of about 10 us in cedarpy (building the request, encoding and decoding the answer)
on top of evaluating the rules, which made the fixed costs alone about 40 us of a decision.

How: for each (action type, customer tier) slice, the loader builds one extra policy set in
which every rule of the four stages is turned into a ``permit`` with an unconstrained action
scope, keeping its ``@id``. Cedar then reports, for one request, *every* rule whose scope and
conditions hold (the satisfied permits of an allowed request are all listed), and the
evaluator (``_split_stages``) applies Cedar's own combination per stage: deny by default, any
satisfied ``forbid`` denies and is the reason, otherwise the satisfied ``permit``s allow and
are the reasons. That is exactly what four separate requests would have answered, provided each rule
sees the same principal as in its own stage. The request's principal is the approver probe
(``PROBE_USER_ID``, member of every role, ``kind`` "human", ``active``) extended with the
empty approval set's attributes (``count`` 0, ``roles`` []), and ``combinable`` only accepts
policies where that is indistinguishable from each stage's own principal:

- ``request`` / ``auto_execute`` rules: unconstrained principal scope, no ``principal`` in
  their conditions (their principal, the triage service, is then irrelevant);
- ``release`` rules: unconstrained principal scope, ``principal`` only read as
  ``principal.count`` or ``principal.roles``;
- ``approve`` rules: no ``principal has ...`` (the extra attributes would answer it);
- no rule mentions ``action`` in its conditions (the action scope is what gets dropped).

Any other policy keeps the four separate requests; the answers are the same either way.
A Cedar error in any rule aborts the decision, as it does with separate requests.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from policies import entities as ent

_PRINCIPAL = {"Var": "principal"}
_RELEASE_ATTRS = frozenset({"count", "roles"})


def _nodes(node: Any) -> Iterator[Any]:
    """Every EST node."""
    yield node
    children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else ()
    for child in children:
        yield from _nodes(child)


def _principal_uses(conditions: Any) -> tuple[int, list[tuple[str, str]]]:
    """How often a rule's conditions use ``principal``, and the ``(operator, attribute)`` of
    the uses of the form ``principal.attr`` (operator ".") and ``principal has attr``."""
    total = sum(node == _PRINCIPAL for node in _nodes(conditions))
    forms = []
    for node in _nodes(conditions):
        if isinstance(node, dict) and len(node) == 1:
            ((op, arg),) = node.items()
            if op in (".", "has") and isinstance(arg, dict) and arg.get("left") == _PRINCIPAL:
                forms.append((op, str(arg.get("attr"))))
    return total, forms


def combinable(est: dict[str, Any]) -> bool:
    """True when every rule sees the same answer-relevant principal in the combined request
    as in its own stage (see the module docstring for the conditions)."""
    for pol in est.get("staticPolicies", {}).values():
        stage = pol["action"]["entity"]["id"]
        conditions = pol.get("conditions", [])
        if any(node == {"Var": "action"} for node in _nodes(conditions)):
            return False
        total, forms = _principal_uses(conditions)
        unconstrained = pol.get("principal", {}).get("op") == "All"
        if stage in ("request", "auto_execute"):
            if not unconstrained or total:
                return False
        elif stage == "release":
            reads = [f for f in forms if f[0] == "." and f[1] in _RELEASE_ATTRS]
            if not unconstrained or len(reads) != total:
                return False
        elif stage == "approve":
            if any(op == "has" for op, _ in forms):
                return False
        else:
            return False
    return True


def combine(policies: Mapping[str, Any]) -> dict[str, Any]:
    """The static policies of a slice as one set: every rule a permit, any action."""
    out = {}
    for cedar_id, pol in policies.items():
        rule = copy.deepcopy(pol)
        rule["effect"] = "permit"
        rule["action"] = {"op": "All"}
        out[cedar_id] = rule
    return out


def probe_entities(base: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """The shared entities, with the approver probe also carrying the empty approval set's
    attributes (it is the principal of the combined request)."""
    out = []
    for e in base:
        if e["uid"] == ent.uid("User", ent.PROBE_USER_ID):
            e = copy.deepcopy(e)
            e["attrs"] |= {"count": 0, "roles": []}
        out.append(e)
    return out
