"""Calibration and threshold selection on synthetic data with known answers."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import softmax

from classifiers.calibration import DEFAULT_SMOOTHING, fit_temperature
from classifiers.evaluation import expected_calibration_error, oracle_coverage
from classifiers.operating_points import (
    ABSTAIN_CLOSE_RUNNER_UP,
    ABSTAIN_LOW_CONFIDENCE,
    ABSTAIN_OUT_OF_DISTRIBUTION,
    NEVER,
    decide,
    decide_batch,
    resolve_targets,
    select_thresholds,
    wilson_lower_bound,
)


def test_temperature_recovers_known_value() -> None:
    # labels drawn from softmax(z / 2): the NLL-optimal temperature is 2
    rng = np.random.default_rng(0)
    z = rng.normal(scale=4.0, size=(20_000, 4))
    p = softmax(z / 2.0, axis=1)
    y = np.array([rng.choice(4, p=row) for row in p])
    assert fit_temperature(z, y) == pytest.approx(2.0, rel=0.05)


def test_default_smoothing_keeps_separable_folds_from_certainty() -> None:
    # Held-out scores that separate the labels perfectly: plain NLL pushes T to its floor
    # (every probability ~1.0, which no new wording would honour); with the default label
    # smoothing e the fitted confidence settles where the smoothed target puts the true label,
    # 1 - e + e / K, and T stays well above the floor.
    rng = np.random.default_rng(2)
    y = rng.integers(0, 4, size=5_000)
    z = np.eye(4)[y] * 8.0 + rng.normal(scale=0.3, size=(5_000, 4))
    plain = fit_temperature(z, y)
    assert softmax(z / plain, axis=1).max(axis=1).mean() > 0.99999
    t = fit_temperature(z, y, DEFAULT_SMOOTHING)
    assert t > 20 * plain
    top = softmax(z / t, axis=1).max(axis=1).mean()
    assert top == pytest.approx(1 - DEFAULT_SMOOTHING + DEFAULT_SMOOTHING / 4, abs=0.001)


def test_calibrated_scores_have_small_ece_and_raw_ones_do_not() -> None:
    rng = np.random.default_rng(1)
    z = rng.normal(scale=4.0, size=(20_000, 3))
    p = softmax(z / 3.0, axis=1)
    y = np.array([rng.choice(3, p=row) for row in p])
    raw = softmax(z, axis=1)  # overconfident by a factor 3 in logit space
    t = fit_temperature(z, y)
    fixed = softmax(z / t, axis=1)
    ece_raw = expected_calibration_error(raw.max(1), raw.argmax(1) == y)
    ece_fixed = expected_calibration_error(fixed.max(1), fixed.argmax(1) == y)
    assert ece_raw > 0.1
    assert ece_fixed < 0.02


def test_threshold_is_lowest_cut_meeting_the_target() -> None:
    # class 0 predictions, by confidence: .99 .98 .97 .96 correct, .90 wrong, .80 .70 correct
    conf = np.array([0.99, 0.98, 0.97, 0.96, 0.90, 0.80, 0.70])
    y = np.array([0, 0, 0, 0, 1, 0, 0])
    proba = np.column_stack([conf, 1 - conf])
    stats = select_thresholds(y, proba, 2, target_precision=0.85, min_support=1, z=0)
    # kept sets: top 4 -> 1.0, top 5 -> .8, top 6 -> .833, top 7 -> 6/7 = .857 >= .85
    # the whole set meets the target, so the threshold is min(0.70, target) = 0.70
    assert stats[0].threshold == pytest.approx(0.70)
    assert stats[0].validation_precision == pytest.approx(6 / 7)
    strict = select_thresholds(y, proba, 2, target_precision=0.95, min_support=1, z=0)
    assert strict[0].threshold == pytest.approx(0.96)
    assert strict[0].validation_coverage == pytest.approx(4 / 7)
    # class 1 is never predicted: it never gets a usable threshold
    assert strict[1].threshold == NEVER


def test_all_correct_validation_caps_threshold_at_target() -> None:
    conf = np.array([0.999, 0.998, 0.997, 0.996, 0.995])
    proba = np.column_stack([conf, 1 - conf])
    stats = select_thresholds(np.zeros(5, dtype=int), proba, 2, 0.95, min_support=1, z=0)
    assert stats[0].threshold == pytest.approx(0.95)


def test_class_that_cannot_reach_target_always_abstains() -> None:
    conf = np.full(10, 0.9)
    y = np.array([0] * 5 + [1] * 5)  # 50% precision at every cut
    stats = select_thresholds(y, np.column_stack([conf, 1 - conf]), 2, 0.95, min_support=1)
    assert stats[0].threshold == NEVER
    assert decide(np.array([0.99, 0.01]), [NEVER, 0.5]).abstain_reason == ABSTAIN_LOW_CONFIDENCE


def test_min_support_refuses_thin_evidence() -> None:
    proba = np.array([[0.99, 0.01], [0.98, 0.02]])
    stats = select_thresholds(np.array([0, 0]), proba, 2, 0.95, min_support=5, z=0)
    assert stats[0].threshold == NEVER


@pytest.mark.parametrize(
    ("row", "ood", "expected_label", "reason"),
    [
        ([0.97, 0.02, 0.01], False, 0, None),
        ([0.60, 0.30, 0.10], False, None, ABSTAIN_LOW_CONFIDENCE),
        ([0.46, 0.44, 0.10], False, None, ABSTAIN_CLOSE_RUNNER_UP),
        ([0.97, 0.02, 0.01], True, None, ABSTAIN_OUT_OF_DISTRIBUTION),
    ],
)
def test_decide_reasons(
    row: list[float], ood: bool, expected_label: int | None, reason: str | None
) -> None:
    decision = decide(np.array(row), [0.9, 0.9, 0.9], ood=ood, margin=0.1)
    assert decision.index == expected_label
    assert decision.abstain_reason == reason
    assert decision.top == int(np.argmax(row))


def test_min_margin_abstains_above_threshold() -> None:
    d = decide(np.array([0.52, 0.48]), [0.5, 0.5], min_margin=0.1)
    assert d.index is None
    assert d.abstain_reason == ABSTAIN_CLOSE_RUNNER_UP


def test_batch_matches_single() -> None:
    rng = np.random.default_rng(2)
    proba = softmax(rng.normal(scale=2, size=(300, 4)), axis=1)
    thr = [0.6, 0.7, 0.8, NEVER]
    ood = rng.random(300) < 0.05
    batch = decide_batch(proba, thr, ood=ood, margin=0.15)
    for i in range(300):
        single = decide(proba[i], thr, ood=bool(ood[i]), margin=0.15)
        assert (single.index if single.index is not None else -1) == batch.index[i]
        assert single.abstain_reason == batch.reasons[i]


def test_resolve_targets_and_oracle_coverage() -> None:
    assert resolve_targets(["a", "b"], 0.95, {"b": 0.8}) == [0.95, 0.8]
    with pytest.raises(ValueError):
        resolve_targets(["a"], 1.5, None)
    conf = np.array([0.9, 0.8, 0.7, 0.6])
    correct = np.array([1, 1, 0, 1])
    assert oracle_coverage(conf, correct, 0.95) == pytest.approx(0.5)
    assert oracle_coverage(conf, correct, 0.75) == pytest.approx(1.0)


def test_wilson_bound_demands_enough_evidence() -> None:
    # all predictions right: 20 are not enough evidence for 95% (lower bound ~0.88), 60 are
    for n, usable in [(20, False), (60, True)]:
        conf = np.linspace(0.99, 0.9, n)
        proba = np.column_stack([conf, 1 - conf])
        stats = select_thresholds(np.zeros(n, dtype=int), proba, 2, 0.95, min_support=1)
        assert (stats[0].threshold <= 1.0) == usable
    assert wilson_lower_bound(np.array([1.0]), np.array([20]), 1.645)[0] == pytest.approx(
        20 / (20 + 1.645**2)
    )
