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
    wilson_upper_bound,
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


def _pooling_fixture(thin_correct: list[bool]) -> tuple[np.ndarray, np.ndarray]:
    """Class 0: 200 validation predictions at confidence 0.97-0.99, all right (earns its own
    threshold). Class 1: one prediction per entry of ``thin_correct`` at confidence 0.98
    (right where True; the wrong ones were truly class 0). Class 2: never predicted."""
    conf0 = np.linspace(0.97, 0.99, 200)
    n1 = len(thin_correct)
    proba = np.zeros((200 + n1, 3))
    proba[:200, 0] = conf0
    proba[:200, 1] = 1 - conf0
    proba[200:, 1] = 0.98
    proba[200:, 0] = 0.02
    y = np.r_[np.zeros(200, dtype=int), [1 if ok else 0 for ok in thin_correct]]
    return y, proba


def test_thin_class_borrows_the_pooled_threshold() -> None:
    # 10 of 10 right: the Wilson bound (0.79) cannot earn class 1 its own threshold at 0.95,
    # but the 210 pooled predictions (all right) can, and nothing class 1 did contradicts it
    y, proba = _pooling_fixture([True] * 10)
    alone = select_thresholds(y, proba, 3, 0.95)
    assert alone[1].threshold == NEVER
    stats = select_thresholds(y, proba, 3, 0.95, pool=True)
    assert stats[0] == alone[0]  # a class that earned its own threshold keeps it
    assert not stats[0].pooled
    assert stats[1].pooled
    # every pooled prediction is right, so the cut is capped at the target (calibration)
    assert stats[1].threshold == pytest.approx(0.95)
    assert stats[1].validation_precision == pytest.approx(1.0)
    assert stats[1].validation_coverage == pytest.approx(1.0)
    assert stats[1].n_predicted == 10
    # never predicted on validation: nothing to borrow for
    assert stats[2].threshold == NEVER
    assert not stats[2].pooled


def test_own_evidence_vetoes_borrowing() -> None:
    # 7 of 12 right above the pooled cut: the upper Wilson bound of class 1's precision
    # (about 0.78) is below 0.95, so it keeps abstaining although the pool would admit it
    y, proba = _pooling_fixture([True] * 7 + [False] * 5)
    stats = select_thresholds(y, proba, 3, 0.95, pool=True)
    assert stats[1].threshold == NEVER
    assert not stats[1].pooled
    # 11 of 12 right is thin, not contradicting (upper bound above 0.95): it borrows
    y, proba = _pooling_fixture([True] * 11 + [False])
    assert select_thresholds(y, proba, 3, 0.95, pool=True)[1].pooled


def test_pooled_cut_uses_each_class_own_target() -> None:
    y, proba = _pooling_fixture([True] * 10)
    stats = select_thresholds(y, proba, 3, [0.95, 0.9, 0.95], pool=True)
    assert stats[1].pooled
    assert stats[1].threshold == pytest.approx(0.9)
    assert stats[1].target_precision == pytest.approx(0.9)


def test_wilson_bounds_bracket_the_estimate() -> None:
    p = np.array([0.0, 0.5, 0.9, 1.0])
    n = np.array([10, 40, 100, 25])
    lower, upper = wilson_lower_bound(p, n, 1.645), wilson_upper_bound(p, n, 1.645)
    assert np.all(lower <= p) and np.all(p <= upper)
    assert np.all(lower >= 0) and np.all(upper <= 1)
    # Wilson's upper end written out: (p + z^2/2n + z sqrt(p(1-p)/n + z^2/4n^2)) / (1 + z^2/n)
    z = 1.645
    spread = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    assert upper == pytest.approx((p + z * z / (2 * n) + spread) / (1 + z * z / n))
    assert wilson_upper_bound(np.array([0.9]), np.array([20]), z)[0] == pytest.approx(
        0.966, abs=1e-3
    )
    assert wilson_upper_bound(p, n, 0) == pytest.approx(p)


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
