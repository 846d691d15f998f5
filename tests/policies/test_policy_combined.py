"""One combined Cedar request per action decides exactly like one request per stage.

policies/combined.py turns every rule into a permit so that Cedar lists every satisfied rule,
and the evaluator re-applies Cedar's combination per stage. These tests compare it with the
stage-by-stage path on random actions and check the conditions under which it is used.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import cedarpy
import pytest

from policies import PolicySet, evaluate_many
from policies.combined import combinable
from tests.policies.test_policy_batch import random_items


def _est(text: str) -> dict[str, Any]:
    return json.loads(cedarpy.policies_to_json_str(text))  # type: ignore[no-any-return]


def test_default_policy_is_combined(policy: PolicySet) -> None:
    assert policy.combined_policies
    assert policy.combined_slices_of is policy.sliced_policies


@pytest.mark.parametrize("seed", [11, 12])
def test_combined_and_stage_by_stage_decide_alike(policy: PolicySet, seed: int) -> None:
    staged = dataclasses.replace(policy, combined_policies={})
    items = random_items(seed, 500)
    assert evaluate_many(items, policy) == evaluate_many(items, staged)


def test_replacing_the_stage_rules_disables_the_combined_sets(policy: PolicySet) -> None:
    # A copy with other slices must not keep answering from the combined sets built for the
    # original ones (tests and tools swap stages this way).
    nobody = dataclasses.replace(policy, sliced_policies={})
    assert nobody.combined_slices_of is not nobody.sliced_policies


@pytest.mark.parametrize(
    ("rule", "ok"),
    [
        ('permit (principal, action == Action::"request", resource);', True),
        (
            'forbid (principal, action == Action::"release", resource) '
            'when { principal.count < 2 && principal.roles.contains("cfo") };',
            True,
        ),
        (
            'forbid (principal, action == Action::"approve", resource) '
            "when { resource.requested_by == principal && !principal.active };",
            True,
        ),
        # The service principal matters: a request rule that reads or scopes it.
        (
            'permit (principal == Service::"triage", action == Action::"request", resource);',
            False,
        ),
        (
            'forbid (principal, action == Action::"auto_execute", resource) '
            "when { principal is Service };",
            False,
        ),
        # A release rule that looks at more than the count and roles of the approval set.
        (
            'forbid (principal, action == Action::"release", resource) '
            'when { principal == ApprovalSet::"x" };',
            False,
        ),
        # "has" on the approver would see the approval-set attributes of the combined probe.
        (
            'forbid (principal, action == Action::"approve", resource) '
            "when { principal has count };",
            False,
        ),
        # Conditions on the action itself.
        (
            'permit (principal, action == Action::"request", resource) '
            'when { action == Action::"request" };',
            False,
        ),
    ],
)
def test_combinable_only_when_each_rule_sees_its_own_principal(rule: str, ok: bool) -> None:
    assert combinable(_est(rule)) is ok
