"""The ``triage policy`` sub-app, driven through typer's test runner."""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from typer.testing import CliRunner

from cli.policy import policy_app

runner = CliRunner()


def test_validate_ok_and_invalid(bundle_copy: Path) -> None:
    ok = runner.invoke(policy_app, ["validate", str(bundle_copy)])
    assert ok.exit_code == 0, ok.output
    assert ok.output.startswith("OK default ")
    cedar = bundle_copy / "policy.cedar"
    cedar.write_text(cedar.read_text().replace('@id("sod.requester")', '@id("sod.proposer")'))
    bad = runner.invoke(policy_app, ["validate", str(bundle_copy)])
    assert bad.exit_code == 1
    assert "[sod.proposer]: duplicate @id" in bad.output


def test_validate_a_cedar_file(bundle_copy: Path) -> None:
    result = runner.invoke(policy_app, ["validate", str(bundle_copy / "policy.cedar")])
    assert result.exit_code == 0, result.output


def test_policy_test_passes_and_fails(bundle_copy: Path, tmp_path: Path) -> None:
    ok = runner.invoke(policy_app, ["test", str(bundle_copy), "-v"])
    assert ok.exit_code == 0, ok.output
    assert "PASS  small tier B credit note runs automatically" in ok.output
    data = yaml.safe_load((bundle_copy / "tests.yaml").read_text())
    data["cases"][1]["expect"]["outcome"] = "auto_execute"
    broken = tmp_path / "broken.yaml"
    broken.write_text(yaml.safe_dump(data))
    bad = runner.invoke(policy_app, ["test", str(bundle_copy), str(broken)])
    assert bad.exit_code == 1
    assert f"FAIL  {data['cases'][1]['name']}" in bad.output
    assert "outcome: expected 'auto_execute', got 'needs_approval'" in bad.output
    assert "FAIL: " in bad.output.splitlines()[-1]


def test_policy_test_unreadable_file(bundle_copy: Path, tmp_path: Path) -> None:
    result = runner.invoke(policy_app, ["test", str(bundle_copy), str(tmp_path / "none.yaml")])
    assert result.exit_code == 2


def test_explain_with_flags() -> None:
    result = runner.invoke(
        policy_app,
        [
            "explain", "--type", "issue_credit_note", "--amount", "12400", "--currency", "EUR",
            "--tier", "B", "--arg", "invoice_id=INV-1", "--arg", "reason_code=SHORTAGE",
            "--as-of", "2025-06-02T10:00:00Z",
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "outcome: needs_approval" in result.output
    assert (
        "credit notes on this case total 12,400 EUR (this one 12,400 EUR), above the 5,000 EUR "
        "threshold for tier B customers (policy billing.credit_note.tier_b)" in result.output
    )


def test_explain_from_json_file(tmp_path: Path) -> None:
    doc = {
        "action": {
            "action_type": "refund",
            "amount": "100",
            "currency": "EUR",
            "case_id": "C-1",
            "customer_id": "CU-1",
            "customer_tier": "A",
            "requested_by": "u-1",
        },
        "context": {
            "as_of": "2025-06-02T10:00:00Z",
            "customer": {"bank_details_changed_at": "2025-06-01T10:00:00Z"},
        },
    }
    path = tmp_path / "a.json"
    path.write_text(json.dumps(doc))
    result = runner.invoke(policy_app, ["explain", "--input", str(path), "--json"])
    assert result.exit_code == 0, result.output
    decision = json.loads(result.output)
    assert decision["outcome"] == "forbidden"
    assert decision["reasons"][0]["policy_id"] == "forbid.refund.bank_details_changed"


def test_explain_bad_input_exits_2() -> None:
    args = ["explain", "--type", "issue_credit_note", "--amount", "5"]
    args += ["--arg", "invoice_id=I", "--arg", "reason_code=R"]
    result = runner.invoke(policy_app, args)
    assert result.exit_code == 2  # credit note without currency
    assert "needs an amount and a currency" in result.output


def test_explain_with_fx_flag() -> None:
    args = ["explain", "--type", "refund", "--amount", "3000", "--currency", "USD"]
    args += ["--tier", "A", "--fx", "USD=0.92", "--as-of", "2025-06-02T10:00:00Z"]
    result = runner.invoke(policy_app, args)
    assert result.exit_code == 0, result.output
    assert "refund 3,000 USD (2,760 EUR) is in a foreign currency" in result.output
