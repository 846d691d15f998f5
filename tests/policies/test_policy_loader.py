"""Loading and validating policy bundles: broken files must give messages that name the file,
the rule and the problem."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from policies import PolicyLoadError, PolicySet, load_policy_set


def _edit(path: Path, old: str, new: str, count: int = 1) -> None:
    text = path.read_text()
    assert old in text, f"fixture drift: {old!r} not in {path.name}"
    path.write_text(text.replace(old, new, count))


def _problems(bundle: Path) -> list[str]:
    with pytest.raises(PolicyLoadError) as info:
        load_policy_set(bundle)
    assert str(bundle) in str(info.value)
    return info.value.problems


def test_default_bundle_loads(policy: PolicySet) -> None:
    assert policy.id == "default"
    assert re.fullmatch(r"[0-9a-f]{64}", policy.digest)
    assert len(policy.rules) >= 35
    assert policy.named_approvers == ("u-treasury-lead",)
    assert policy.rules["billing.credit_note.tier_b"].threshold == 5000


def test_digest_changes_with_any_policy_file(bundle_copy: Path, policy: PolicySet) -> None:
    assert load_policy_set(bundle_copy).digest == policy.digest
    _edit(bundle_copy / "actions.toml", 'label = "credit note"', 'label = "credit memo"')
    assert load_policy_set(bundle_copy).digest != policy.digest


def test_unknown_attribute_names_rule_and_attribute(bundle_copy: Path) -> None:
    credit_b = 'resource.exposure.case_action.greaterThan(decimal("5000.00"))'
    _edit(
        bundle_copy / "policy.cedar",
        f'resource.customer.tier == "B" &&\n  {credit_b}',
        f'resource.customer.tierr == "B" &&\n  {credit_b}',
    )
    problems = _problems(bundle_copy)
    assert any(
        p.startswith("policy.cedar [billing.credit_note.tier_b]") and "tierr" in p for p in problems
    )


def test_type_error_is_a_load_error_not_a_skipped_rule(bundle_copy: Path) -> None:
    # `>` on decimals is a type error in Cedar; at run time Cedar would skip this forbid.
    _edit(
        bundle_copy / "policy.cedar",
        'resource.exposure.case_action.greaterThan(decimal("5000.00"))',
        'resource.exposure.case_action > decimal("5000.00")',
    )
    problems = _problems(bundle_copy)
    assert any("[billing.credit_note.tier_b]" in p and "decimal" in p for p in problems)


def test_syntax_error_names_the_file(bundle_copy: Path) -> None:
    _edit(
        bundle_copy / "policy.cedar",
        'permit (principal, action == Action::"request", resource);',
        "permit (principal, action ==, resource);",
    )
    problems = _problems(bundle_copy)
    assert len(problems) == 1
    assert problems[0].startswith("policy.cedar: invalid Cedar policy syntax")


def test_annotation_problems_are_all_reported(bundle_copy: Path) -> None:
    cedar = bundle_copy / "policy.cedar"
    _edit(cedar, '@id("billing.write_off.tier_c")', '@id("billing.write_off.tier_b")')
    _edit(cedar, '@explain("re-bills on', '@explian("re-bills on')
    _edit(cedar, '@id("fx.volatile_currency")', '@id("FX Volatile")')
    _edit(
        cedar,
        'threshold for tier A customers")\n@sla("PT8H")',
        'threshold for tier A {customer_name}")\n@sla("8 hours")',
    )
    problems = _problems(bundle_copy)
    text = "\n".join(problems)
    assert "[billing.write_off.tier_b]: duplicate @id" in text
    assert "[billing.rebill.limit]: unknown annotation @explian" in text
    assert "[billing.rebill.limit]: missing @explain" in text
    assert "[FX Volatile]: @id must be dotted lower-case words" in text
    assert "[payments.refund.tier_a]: @explain uses unknown placeholder {customer_name}" in text
    assert "[payments.refund.tier_a]: @sla: '8 hours' is not an ISO 8601 duration" in text


def test_missing_id_and_threshold_without_literal(bundle_copy: Path) -> None:
    cedar = bundle_copy / "policy.cedar"
    _edit(cedar, '@id("auto.non_material")\n', "")
    _edit(
        cedar,
        "the CFO role may approve any action of any amount",
        "the CFO may approve up to {threshold}",
    )
    problems = _problems(bundle_copy)
    assert any("missing @id" in p for p in problems)
    assert any(
        "[authority.cfo]: @explain uses {threshold} but the rule has 0 decimal literals" in p
        for p in problems
    )


def test_unknown_role_and_unconstrained_action(bundle_copy: Path) -> None:
    cedar = bundle_copy / "policy.cedar"
    _edit(cedar, 'principal in Role::"cfo"', 'principal in Role::"chief"')
    _edit(
        cedar,
        'forbid (principal, action == Action::"approve", resource)\n'
        'when { principal.kind != "human" };',
        "forbid (principal, action, resource)\nwhen { false };",
    )
    problems = _problems(bundle_copy)
    assert any(
        '[authority.cfo]: Role::"chief" is not listed in manifest roles' in p for p in problems
    )
    assert any("[approval.human_only]: scope must name exactly one action" in p for p in problems)


def test_quorum_annotations_are_checked(bundle_copy: Path) -> None:
    cedar = bundle_copy / "policy.cedar"
    _edit(
        cedar, '@one_of_roles("finance_controller,cfo")', '@one_of_roles("finance_controler,cfo")'
    )
    _edit(
        cedar,
        '@min_approvals("2")\nforbid (principal, action == Action::"release", resource)\n'
        'when\n{\n  resource.type == "refund"',
        '@min_approvals("two")\nforbid (principal, action == Action::"release", resource)\n'
        'when\n{\n  resource.type == "refund"',
    )
    problems = _problems(bundle_copy)
    assert any("unknown role 'finance_controler'" in p for p in problems)
    assert any(
        "[quorum.refund_dual_above_25k]: @min_approvals must be a positive integer" in p
        for p in problems
    )


def test_manifest_problems(bundle_copy: Path) -> None:
    manifest = bundle_copy / "manifest.toml"
    _edit(manifest, 'base_currency = "EUR"', 'base_currency = "euro"')
    _edit(manifest, 'day_timezone = "UTC"', 'day_timezone = "Mars/Olympus"')
    _edit(manifest, 'version = "2025.06.1"', 'versoin = "2025.06.1"')
    problems = _problems(bundle_copy)
    text = "\n".join(problems)
    assert "manifest.toml: base_currency 'euro' is not an ISO 4217 code" in text
    assert "manifest.toml: day_timezone 'Mars/Olympus' is not a known IANA time zone" in text
    assert "manifest.toml: unknown key 'versoin'" in text
    assert "manifest.toml: 'version' must be a non-empty string" in text


def test_manifest_toml_syntax_and_missing_files(bundle_copy: Path, tmp_path: Path) -> None:
    (bundle_copy / "manifest.toml").write_text("id = 'x\n")
    assert _problems(bundle_copy)[0].startswith("manifest.toml: invalid TOML")
    with pytest.raises(PolicyLoadError, match="not a directory"):
        load_policy_set(tmp_path / "nowhere")


def test_schema_problems(bundle_copy: Path) -> None:
    _edit(bundle_copy / "schema.cedarschema", "count: Long,", "count: Lnog,")
    problems = _problems(bundle_copy)
    assert problems[0].startswith("schema.cedarschema: invalid Cedar schema")
    assert "Lnog" in problems[0]


def test_schema_that_refuses_evaluator_entities(bundle_copy: Path) -> None:
    # The policy does not read `origin`, so it validates, but the evaluator sends it.
    _edit(bundle_copy / "schema.cedarschema", "  origin: String,", "  origin: Long,")
    _edit(bundle_copy / "policy.cedar", 'resource.origin == "suggestion" && ', "")
    problems = _problems(bundle_copy)
    assert any("does not accept" in p and "schema.cedarschema" in p for p in problems)


def test_action_catalogue_problems(bundle_copy: Path) -> None:
    actions = bundle_copy / "actions.toml"
    _edit(
        actions,
        'invoice_id = { type = "string", required = true }',
        'invoice_id = { type = "text", required = true }',
    )
    _edit(
        actions,
        'material = false\namount = "none"\nquantity_argument = "quantity"',
        'material = "no"\namount = "none"\nquantity_argument = "qty"',
    )
    problems = _problems(bundle_copy)
    text = "\n".join(problems)
    assert "actions.toml [actions.issue_credit_note] argument 'invoice_id': type must be" in text
    assert "actions.toml [actions.reship]: 'material' must be true or false" in text
    assert (
        "actions.toml [actions.reship]: quantity_argument 'qty' must name a numeric argument"
        in text
    )


def test_validate_a_draft_cedar_file_against_the_bundle(bundle_copy: Path, tmp_path: Path) -> None:
    draft = tmp_path / "draft.cedar"
    draft.write_text((bundle_copy / "policy.cedar").read_text().replace("25000.00", "30000.00"))
    policy = load_policy_set(bundle_copy, policy_file=draft)
    assert policy.rules["authority.finance_approver"].threshold == 30000
