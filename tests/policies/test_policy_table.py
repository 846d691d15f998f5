"""The shipped table-driven tests, run through the same runner as ``triage policy test``."""

from __future__ import annotations

from pathlib import Path

import yaml

from policies import PolicySet
from policies.testing import load_tests_file, run_policy_tests

# Baseline permits never appear as a reason of their own: ``request.allowed`` is what every
# non-forbidden case passes through (covered by all of them).
BASELINE_RULES = {"request.allowed"}


def test_default_policy_table_passes(policy: PolicySet) -> None:
    assert policy.tests_path is not None
    report = run_policy_tests(policy, policy.tests_path)
    failures = [(r.name, r.failures) for r in report.results if not r.passed]
    assert failures == []
    assert report.ok
    assert len(report.results) >= 25


def test_every_rule_is_expected_by_some_case(policy: PolicySet) -> None:
    assert policy.tests_path is not None
    data = load_tests_file(policy.tests_path)
    expected: set[str] = set()
    for case in data["cases"]:
        expect = case["expect"]
        expected |= set(expect.get("rules", [])) | set(expect.get("rules_include", []))
    uncovered = set(policy.rules) - expected - BASELINE_RULES
    assert uncovered == set()


def _write(tmp_path: Path, cases: list[dict], defaults: dict | None = None) -> Path:
    path = tmp_path / "cases.yaml"
    path.write_text(yaml.safe_dump({"defaults": defaults or {}, "cases": cases}))
    return path


BASE_ACTION = {
    "action_type": "issue_credit_note",
    "arguments": {"invoice_id": "INV-1", "reason_code": "SHORTAGE"},
    "amount": "12400",
    "currency": "EUR",
    "case_id": "C-1",
    "customer_id": "CU-1",
    "customer_tier": "B",
    "requested_by": "u-1",
}
BASE = {"action": BASE_ACTION, "context": {"as_of": "2025-06-02T10:00:00Z"}}


def test_runner_reports_a_wrong_expectation(policy: PolicySet, tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        [
            {"name": "right", "expect": {"outcome": "needs_approval"}},
            {
                "name": "wrong",
                "expect": {"outcome": "auto_execute", "rules": ["billing.credit_note.tier_a"]},
            },
        ],
        BASE,
    )
    report = run_policy_tests(policy, path)
    assert [r.passed for r in report.results] == [True, False]
    assert not report.ok
    wrong = report.results[1]
    assert any("outcome: expected 'auto_execute'" in f for f in wrong.failures)
    assert any("billing.credit_note.tier_b" in f for f in wrong.failures)


def test_runner_reports_malformed_cases_without_stopping(policy: PolicySet, tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        [
            {"name": "no expect"},
            {"name": "bad amount", "action": {"amount": "lots"}, "expect": {"outcome": "x"}},
            {"name": "typo in expect", "expect": {"outcom": "auto_execute"}},
            {"name": "fine", "expect": {"outcome": "needs_approval"}},
        ],
        BASE,
    )
    report = run_policy_tests(policy, path)
    assert [r.passed for r in report.results] == [False, False, False, True]
    assert "missing 'expect'" in report.results[0].failures[0]
    assert "amount" in report.results[1].failures[0]
    assert "outcom" in report.results[2].failures[0]


def test_expected_error_that_does_not_happen_fails(policy: PolicySet, tmp_path: Path) -> None:
    path = _write(tmp_path, [{"name": "e", "expect": {"error": "FxRateUnavailable"}}], BASE)
    (result,) = run_policy_tests(policy, path).results
    assert not result.passed
    assert "expected FxRateUnavailable" in result.failures[0]


def test_json_and_toml_tests_files(policy: PolicySet, tmp_path: Path) -> None:
    import json

    case = {"name": "j", "expect": {"outcome": "needs_approval"}}
    jpath = tmp_path / "t.json"
    jpath.write_text(json.dumps({"defaults": BASE, "cases": [case]}))
    assert run_policy_tests(policy, jpath).ok
    tpath = tmp_path / "t.toml"
    tpath.write_text(
        '[defaults.action]\naction_type = "escalate"\ncase_id = "C"\ncustomer_id = "CU"\n'
        'customer_tier = "A"\nrequested_by = "u"\n'
        '[defaults.action.arguments]\nto_queue = "finance"\nreason = "r"\n'
        '[defaults.context]\nas_of = "2025-06-02T10:00:00Z"\n'
        '[[cases]]\nname = "t"\n[cases.expect]\noutcome = "auto_execute"\n'
    )
    assert run_policy_tests(policy, tpath).ok
