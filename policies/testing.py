"""Table-driven policy tests, in the spirit of ``opa test``.

A tests file (YAML, JSON or TOML) holds optional ``defaults`` and a list of ``cases``::

    defaults:
      action: {action_type: issue_credit_note, amount: "100", currency: EUR, ...}
      context: {as_of: "2025-06-02T10:00:00Z"}
    cases:
      - name: tier B credit note above 5,000 needs approval
        action: {amount: "12400"}              # deep-merged onto defaults.action
        expect: {outcome: needs_approval, rules: [billing.credit_note.tier_b]}

Each case's ``action`` and ``context`` are deep-merged onto the defaults (lists, and the
``arguments`` of an action, replace the default rather than merge). ``kind`` selects what is
checked:

- ``decision`` (default): ``evaluate``. ``expect`` may hold ``outcome``, ``rules`` (the exact set
  of reason policy ids), ``rules_include`` (a subset), ``min_approvals``, ``eligible_roles``,
  ``named_approvers``, ``sla`` (ISO 8601 duration), ``explanation_contains``.
- ``approval``: ``can_approve`` for ``approver`` with ``approvals`` already recorded.
  ``expect`` may hold ``allowed``, ``rules``, ``rules_include``.
- ``quorum``: ``quorum_status`` for ``approvals``. ``expect`` may hold ``satisfied``,
  ``valid_approvals``, ``required_approvals``, ``rules`` (ids of ``released_by`` when satisfied,
  of ``unmet`` otherwise), ``rules_include``.

``approvals`` entries are ``{approver: {id, roles}, approved_at: ..., bound_to: current|stale}``;
``current`` binds the approval to the case's action hash, ``stale`` to another one.
Any kind may instead expect an ``error`` (the error class name, e.g. ``FxRateUnavailable``).
"""

from __future__ import annotations

import copy
import importlib
import json
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from policies.errors import PolicyError
from policies.evaluator import can_approve, evaluate, quorum_status
from policies.hashing import action_hash
from policies.loader import PolicySet
from policies.model import ActionRequest, Approval, DecisionContext, Principal
from policies.money import parse_duration

_REPLACED_KEYS = frozenset({"arguments"})
_KINDS = ("decision", "approval", "quorum")
_EXPECT_KEYS = {
    "decision": {
        "outcome",
        "rules",
        "rules_include",
        "min_approvals",
        "eligible_roles",
        "named_approvers",
        "sla",
        "explanation_contains",
        "error",
    },
    "approval": {"allowed", "rules", "rules_include", "error"},
    "quorum": {
        "satisfied",
        "valid_approvals",
        "required_approvals",
        "rules",
        "rules_include",
        "error",
    },
}


class PolicyTestFileError(PolicyError):
    """The tests file itself is malformed (not a failing case)."""


@dataclass(frozen=True)
class CaseResult:
    name: str
    passed: bool
    failures: tuple[str, ...] = ()
    summary: str = ""
    """What the case produced, e.g. ``needs_approval [billing.credit_note.tier_b]``."""


@dataclass(frozen=True)
class TestReport:
    source: str
    results: tuple[CaseResult, ...] = field(default_factory=tuple)

    @property
    def passed(self) -> int:
        return sum(r.passed for r in self.results)

    @property
    def failed(self) -> int:
        return len(self.results) - self.passed

    @property
    def ok(self) -> bool:
        return self.failed == 0 and bool(self.results)


def load_tests_file(path: str | Path) -> dict[str, Any]:
    """Read a tests file; raises ``PolicyTestFileError`` naming the problem."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise PolicyTestFileError(f"{p}: cannot read ({exc.strerror or exc})") from exc
    try:
        if p.suffix == ".json":
            data = json.loads(text)
        elif p.suffix == ".toml":
            data = tomllib.loads(text)
        elif p.suffix in (".yaml", ".yml"):
            # Imported by name: PyYAML is only needed for YAML tests files and ships no stubs.
            yaml = importlib.import_module("yaml")
            data = yaml.safe_load(text)
        else:
            raise PolicyTestFileError(f"{p}: unsupported tests file type (use .yaml, .json, .toml)")
    except (ValueError, tomllib.TOMLDecodeError) as exc:
        raise PolicyTestFileError(f"{p}: cannot parse: {exc}") from exc
    except ImportError as exc:
        raise PolicyTestFileError(f"{p}: YAML tests need PyYAML installed ({exc})") from exc
    except Exception as exc:  # yaml.YAMLError has no common base with the others
        if type(exc).__module__.startswith("yaml"):
            raise PolicyTestFileError(f"{p}: cannot parse YAML: {exc}") from exc
        raise
    if not isinstance(data, dict) or not isinstance(data.get("cases"), list):
        raise PolicyTestFileError(f"{p}: expected a mapping with a 'cases' list")
    return data


def deep_merge(base: Any, override: Any) -> Any:
    """Merge ``override`` onto ``base``: mappings merge recursively, everything else replaces."""
    if not isinstance(base, Mapping) or not isinstance(override, Mapping):
        return copy.deepcopy(override)
    out = copy.deepcopy(dict(base))
    for k, v in override.items():
        out[k] = copy.deepcopy(v) if k in _REPLACED_KEYS else deep_merge(out.get(k), v)
    return out


def run_policy_tests(policy: PolicySet, path: str | Path) -> TestReport:
    """Run every case of the tests file against ``policy``; never raises for a failing case."""
    data = load_tests_file(path)
    defaults = data.get("defaults") or {}
    results = []
    for i, case in enumerate(data["cases"]):
        name = case.get("name") if isinstance(case, dict) else None
        name = name or f"case #{i + 1}"
        try:
            results.append(_run_case(policy, case, defaults, name))
        except (ValidationError, PolicyTestFileError, KeyError, TypeError, ValueError) as exc:
            results.append(CaseResult(name, False, (f"malformed case: {exc}",)))
    return TestReport(str(path), tuple(results))


def _run_case(
    policy: PolicySet, case: dict[str, Any], defaults: dict[str, Any], name: str
) -> CaseResult:
    kind = case.get("kind", "decision")
    if kind not in _KINDS:
        raise PolicyTestFileError(f"kind must be one of {', '.join(_KINDS)}")
    expect = case.get("expect")
    if not isinstance(expect, dict) or not expect:
        raise PolicyTestFileError("missing 'expect'")
    unknown = set(expect) - _EXPECT_KEYS[kind]
    if unknown:
        raise PolicyTestFileError(f"unknown expect keys for {kind}: {', '.join(sorted(unknown))}")
    action = ActionRequest.model_validate(
        deep_merge(defaults.get("action", {}), case.get("action", {}))
    )
    context = DecisionContext.model_validate(
        deep_merge(defaults.get("context", {}), case.get("context", {}))
    )
    current = action_hash(action, policy.version)
    approvals = [_approval(a, current, context) for a in case.get("approvals", [])]

    run: Callable[[], tuple[dict[str, Any], str]]
    if kind == "decision":

        def run() -> tuple[dict[str, Any], str]:
            d = evaluate(action, context, policy)
            a = d.approval
            actual: dict[str, Any] = {
                "outcome": d.outcome.value,
                "rules": [r.policy_id for r in d.reasons],
                "min_approvals": a.min_approvals if a else None,
                "eligible_roles": sorted(a.eligible_roles) if a else [],
                "named_approvers": sorted(a.named_approvers) if a else [],
                "sla": a.sla if a else None,
                "explanation": d.explain(),
            }
            return actual, f"{d.outcome.value} [{', '.join(actual['rules'])}]"

    elif kind == "approval":
        approver = Principal.model_validate(case.get("approver"))

        def run() -> tuple[dict[str, Any], str]:
            c = can_approve(approver, action, context, approvals, policy)
            ids = [r.policy_id for r in c.reasons]
            verdict = "allowed" if c.allowed else "refused"
            return {"allowed": c.allowed, "rules": ids}, f"{verdict} [{', '.join(ids)}]"

    else:

        def run() -> tuple[dict[str, Any], str]:
            q = quorum_status(action, context, approvals, policy)
            ids = [r.policy_id for r in (q.released_by if q.satisfied else q.unmet)]
            actual = {
                "satisfied": q.satisfied,
                "valid_approvals": q.valid_approvals,
                "required_approvals": q.required_approvals,
                "rules": ids,
            }
            verdict = "satisfied" if q.satisfied else "not satisfied"
            summary = f"{verdict} ({q.valid_approvals}/{q.required_approvals}) [{', '.join(ids)}]"
            return actual, summary

    try:
        actual, summary = run()
    except PolicyError as exc:
        if expect.get("error") == type(exc).__name__:
            return CaseResult(name, True, (), f"error {type(exc).__name__}")
        return CaseResult(name, False, (f"unexpected {type(exc).__name__}: {exc}",))
    if "error" in expect:
        return CaseResult(name, False, (f"expected {expect['error']}, got {summary}",), summary)
    return CaseResult(name, *_compare(expect, actual), summary)


def _approval(spec: dict[str, Any], current: str, context: DecisionContext) -> Approval:
    bound = spec.get("bound_to", "current")
    if bound not in ("current", "stale"):
        raise PolicyTestFileError("approvals[].bound_to must be 'current' or 'stale'")
    return Approval(
        approver=Principal.model_validate(spec["approver"]),
        action_hash=current if bound == "current" else "0" * 64,
        approved_at=spec.get("approved_at", context.as_of),
    )


def _compare(expect: dict[str, Any], actual: dict[str, Any]) -> tuple[bool, tuple[str, ...]]:
    failures: list[str] = []
    for key, want in expect.items():
        if key == "rules":
            got = set(actual["rules"])
            if got != set(want):
                failures.append(f"rules: expected {sorted(want)}, got {sorted(got)}")
        elif key == "rules_include":
            missing = set(want) - set(actual["rules"])
            if missing:
                failures.append(f"rules: missing {sorted(missing)}, got {sorted(actual['rules'])}")
        elif key in ("eligible_roles", "named_approvers"):
            if sorted(want) != actual[key]:
                failures.append(f"{key}: expected {sorted(want)}, got {actual[key]}")
        elif key == "sla":
            if actual["sla"] != parse_duration(want):
                failures.append(f"sla: expected {want}, got {actual['sla']}")
        elif key == "explanation_contains":
            if want not in actual["explanation"]:
                failures.append(f"explanation does not contain {want!r}:\n{actual['explanation']}")
        elif actual.get(key) != want:
            failures.append(f"{key}: expected {want!r}, got {actual.get(key)!r}")
    return not failures, tuple(failures)
