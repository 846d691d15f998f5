"""Evaluation figures and the drift check."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from classifiers.case_model import CaseModel
from classifiers.evaluation import (
    calibration_reading,
    evaluate_model,
    expected_calibration_error,
    format_table,
)
from tests.classifiers.conftest import synthetic_cases


def test_no_drift_on_the_training_distribution(case_model: CaseModel) -> None:
    result = evaluate_model(case_model, synthetic_cases(300, seed=21))
    cov = result["targets"]["queue"]["coverage_at_precision"]
    assert cov["drift"] is False, cov["drift_reasons"]
    assert cov["validation_precision"] is not None
    assert result["targets"]["queue"]["ece"] < 0.05
    cal = result["targets"]["queue"]["calibration"]
    proba = case_model.predict_proba(synthetic_cases(300, seed=21))["queue"]
    assert cal["mean_confidence"] == pytest.approx(proba.max(axis=1).mean())
    assert cal["gap"] == pytest.approx(
        cal["mean_confidence"] - result["targets"]["queue"]["accuracy"]
    )


def test_drift_is_flagged_when_the_meaning_of_labels_moves(case_model: CaseModel) -> None:
    # a new "release" where warehouse cases now go to claims: the old thresholds no longer hold
    shifted: list[dict[str, Any]] = []
    for r in synthetic_cases(300, seed=22):
        row = dict(r)
        if row["queue"] == "warehouse":
            row["queue"] = "claims"
        shifted.append(row)
    result = evaluate_model(case_model, shifted, targets=["queue"])
    cov = result["coverage_at_precision"]
    assert cov["drift"] is True
    assert cov["realized_precision"] < 0.93
    assert "warehouse" in cov["labels_below_target"]
    assert "DRIFT" in format_table(result)
    # the model is as sure as before and wrong on the moved label: over-confident, said so
    assert result["calibration"]["reading"] == "over-confident"
    assert result["calibration"]["gap"] > 0.02
    assert "over-confident by" in format_table(result)


def test_calibration_reading_names_the_direction() -> None:
    assert calibration_reading(0.97, 0.93, 0.02)["reading"] == "over-confident"
    assert calibration_reading(0.90, 0.95, 0.02)["reading"] == "under-confident"
    reading = calibration_reading(0.95, 0.94, 0.02)
    assert reading["reading"] == "calibrated" and reading["gap"] == pytest.approx(0.01)


def test_unknown_labels_count_as_errors(case_model: CaseModel) -> None:
    rows = [dict(r, queue="brand_new_queue") for r in synthetic_cases(20, seed=23)]
    result = evaluate_model(case_model, rows, targets=["queue"])
    assert result["accuracy"] == 0.0
    assert result["unknown_labels"] == ["brand_new_queue"]


def test_unknown_target_is_refused(case_model: CaseModel) -> None:
    with pytest.raises(ValueError, match="does not predict"):
        evaluate_model(case_model, synthetic_cases(5), targets=["colour"])


def test_ece_known_values() -> None:
    assert expected_calibration_error(np.array([0.8] * 10), np.array([1] * 8 + [0] * 2)) == (
        pytest.approx(0.0)
    )
    assert expected_calibration_error(np.array([0.9] * 4), np.array([1, 0, 1, 0])) == (
        pytest.approx(0.4)
    )
