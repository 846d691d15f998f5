"""Retraining from feedback: the not-worse rule both ways, and the registry decision."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest

from classifiers.case_model import CaseModel
from classifiers.registry import ModelRegistry
from classifiers.retraining import merge_feedback, not_worse, retrain
from tests.classifiers.conftest import synthetic_cases


def _m(f1: float, oracle: float, realized: float | None = 0.97) -> dict[str, Any]:
    return {
        "macro_f1": f1,
        "oracle_coverage": oracle,
        "realized_precision": realized,
        "target_precision": 0.95,
    }


@pytest.mark.parametrize(
    ("cand", "act", "ok"),
    [
        (_m(0.90, 0.80), _m(0.90, 0.80), True),  # equal is not worse
        (_m(0.897, 0.81), _m(0.90, 0.80), True),  # F1 within tolerance 0.005
        (_m(0.89, 0.90), _m(0.90, 0.80), False),  # F1 lower by more than the tolerance
        (_m(0.95, 0.79), _m(0.90, 0.80), False),  # better F1 but less coverage at precision
        (_m(0.95, 0.90, 0.90), _m(0.90, 0.80), False),  # its thresholds miss the precision
        (_m(0.95, 0.90, None), _m(0.90, 0.80), True),  # abstains everywhere: nothing wrong filled
    ],
)
def test_not_worse_rule(cand: dict[str, Any], act: dict[str, Any], ok: bool) -> None:
    decided, checks = not_worse({"queue": cand}, {"queue": act})
    assert decided is ok
    assert len(checks) == 1
    assert ("worse" in checks[0].replace("not worse", "")) is (not ok)


def test_merge_feedback_replaces_by_id() -> None:
    base = [{"id": 1, "queue": "a"}, {"id": 2, "queue": "b"}]
    feedback = [{"id": 2, "queue": "c"}, {"id": 3, "queue": "d"}]
    merged = merge_feedback(base, feedback, "id")
    assert sorted((r["id"], r["queue"]) for r in merged) == [(1, "a"), (2, "c"), (3, "d")]
    assert len(merge_feedback(base, feedback, None)) == 4


def test_retrain_activates_good_and_refuses_bad(tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path)
    base = synthetic_cases(120, seed=1)
    evaluation = synthetic_cases(200, seed=2)
    template = CaseModel(targets=("queue",), cv=3)
    first = retrain(base, [], evaluation, registry, template=template)
    assert first.activated
    assert first.active_metrics is None
    assert registry.active_version() == first.candidate_version

    # feedback that agrees with the truth: not worse, activated
    good = retrain(base, synthetic_cases(80, seed=3), evaluation, registry)
    assert good.activated, good.checks
    assert good.active_version == first.candidate_version
    assert registry.active_version() == good.candidate_version

    # a flood of wrong labels: the candidate is worse and the active model stays
    rng = random.Random(4)
    queues = ["warehouse", "finance", "carrier_desk", "claims"]
    wrong = [dict(r, queue=rng.choice(queues)) for r in synthetic_cases(600, seed=5)]
    bad = retrain(base, wrong, evaluation, registry)
    assert not bad.activated
    assert "worse" in bad.reason
    assert bad.candidate_metrics["queue"]["macro_f1"] < bad.active_metrics["queue"]["macro_f1"]
    assert registry.active_version() == good.candidate_version
    # the refused candidate is still registered, for audit
    assert bad.candidate_version in [m["version"] for m in registry.versions()]


def test_an_activation_during_the_fit_is_not_overridden(tmp_path: Path) -> None:
    """An admin who activates (or rolls back to) a version while a retrain fits has the last
    word: the candidate was compared with the model active before, so it is saved, not
    activated, and its recorded decision says why."""
    registry = ModelRegistry(tmp_path)
    base, evaluation = synthetic_cases(120, seed=1), synthetic_cases(200, seed=2)
    first = retrain(base, [], evaluation, registry, template=CaseModel(targets=("queue",), cv=3))
    chosen = registry.save(registry.load().model)  # another version an admin prefers
    admin = ModelRegistry(tmp_path)
    steps: list[str] = []

    def progress(message: str, *_: Any) -> None:
        if not steps:
            admin.activate(chosen)
        steps.append(message)

    late = retrain(base, synthetic_cases(80, seed=3), evaluation, registry, progress=progress)
    assert steps, "the fit reported no progress, so the admin never acted"
    assert not late.activated
    assert late.active_version == first.candidate_version
    assert f"the active version changed to {chosen}" in late.reason
    assert registry.active_version() == chosen
    decision = registry.metadata(late.candidate_version)["retrain"]["decision"]
    assert decision == late.reason
