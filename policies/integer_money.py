"""Evaluate the money comparisons of a policy on integers, exactly as Cedar's ``decimal`` would.

Why: finance reads and writes thresholds as ``decimal("5000.00")``, and the schema types every
amount as ``decimal``; but Cedar parses each ``decimal`` entity value through its extension
function at run time, which was about 40 % of the cost of parsing an action entity (about 26 of
60 us), and each ``decimal("...")`` literal is parsed again on every evaluation. A Cedar
``decimal`` *is* a 64-bit integer counting ten-thousandths (4 decimal places, range
+-922337203685477.5807), so the same comparisons on ``Long`` values scaled by 10,000 give the
same answer for every value: same order, same equality, same range. Nothing is rounded:
the evaluator already rounds every amount up to 4 places before either encoding.

Contract of ``money_as_long(est)``: given the JSON form (EST) of a policy set that passed schema
validation, return the same policies with every comparison of money (``a.lessThan(b)``,
``lessThanOrEqual``, ``greaterThan``, ``greaterThanOrEqual``, whose operands are each a money
attribute of the resource or a ``decimal("...")`` literal) rewritten to ``<``, ``<=``, ``>``,
``>=`` on ``Long`` values, and literals scaled by 10,000. If any money attribute or ``decimal``
literal appears anywhere else (an ``==``, a set, an ``if``, the ``exposure`` record as a whole,
a non-literal ``decimal(...)`` call), it returns ``None`` and the caller keeps the ``decimal``
encoding: correctness never depends on the rewrite covering a policy. The policy files, the
schema and load-time validation are unchanged; only what Cedar evaluates at run time differs.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable
from decimal import Decimal
from typing import Any

SCALE = 10_000
"""Cedar ``decimal`` has 4 decimal places: an amount is ``SCALE`` times its decimal value."""

_OPERATORS = {
    "lessThan": "<",
    "lessThanOrEqual": "<=",
    "greaterThan": ">",
    "greaterThanOrEqual": ">=",
}
_CEDAR_DECIMAL_LITERAL = re.compile(r"^-?[0-9]+\.[0-9]{1,4}$")
_LONG_MIN, _LONG_MAX = -(2**63), 2**63 - 1


class _NotCompilable(Exception):
    pass


def _attr_path(node: Any) -> tuple[str, ...] | None:
    """``resource.a.b`` as ``("a", "b")``; None for anything that is not such a path."""
    names: list[str] = []
    while isinstance(node, dict) and set(node) == {"."}:
        names.append(node["."]["attr"])
        node = node["."]["left"]
    if node == {"Var": "resource"} and names:
        return tuple(reversed(names))
    return None


def money_as_long(est: dict[str, Any], money_paths: Iterable[tuple[str, ...]]) -> Any:
    """The EST with money comparisons on ``Long`` (see the module docstring), or None."""
    paths = frozenset(money_paths)
    prefixes = {p[:k] for p in paths for k in range(1, len(p))}

    def operand(node: Any) -> Any:
        if _attr_path(node) in paths:
            return node
        call = node.get("decimal") if isinstance(node, dict) and len(node) == 1 else None
        if isinstance(call, list) and len(call) == 1 and isinstance(call[0], dict):
            text = call[0].get("Value")
            if isinstance(text, str) and _CEDAR_DECIMAL_LITERAL.match(text):
                value = Decimal(text).scaleb(4)
                if value == value.to_integral_value() and _LONG_MIN <= value <= _LONG_MAX:
                    return {"Value": int(value)}
        raise _NotCompilable

    def walk(node: Any) -> Any:
        if isinstance(node, list):
            return [walk(v) for v in node]
        if not isinstance(node, dict):
            return node
        if len(node) == 1:
            ((key, args),) = node.items()
            if key in _OPERATORS and isinstance(args, list) and len(args) == 2:
                left, right = operand(args[0]), operand(args[1])
                return {_OPERATORS[key]: {"left": left, "right": right}}
            if key == "decimal":
                raise _NotCompilable  # a decimal outside a money comparison
        path = _attr_path(node)
        if path is not None and (path in paths or path in prefixes):
            raise _NotCompilable  # a money value (or its record) used in another way
        return {k: walk(v) for k, v in node.items()}

    out = copy.deepcopy(est)
    try:
        for pol in out.get("staticPolicies", {}).values():
            pol["conditions"] = walk(pol.get("conditions", []))
    except _NotCompilable:
        return None
    return out
