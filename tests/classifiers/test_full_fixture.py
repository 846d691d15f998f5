"""Full-fixture regression check (slow): the whole shipped Bitext sample, one grouped fold."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.model_selection import StratifiedGroupKFold

from classifiers.case_model import CaseModel
from classifiers.data import BITEXT_FIXTURE, load_records
from classifiers.evaluation import evaluate_model
from classifiers.features import FeatureSpec
from classifiers.grouping import near_duplicate_groups


@pytest.mark.slow
def test_bitext_fixture_grouped_fold_meets_calibration_and_coverage() -> None:
    rows = load_records(BITEXT_FIXTURE)
    y = np.array([r["triage_category"] for r in rows])
    groups = near_duplicate_groups([r["text"] for r in rows])
    train_idx, test_idx = next(
        StratifiedGroupKFold(5, shuffle=True, random_state=0).split(y, y, groups)
    )
    model = CaseModel(spec=FeatureSpec(text_columns=("text",)), targets=("triage_category",))
    model.fit([rows[i] for i in train_idx])
    result = evaluate_model(model, [rows[i] for i in test_idx])
    cov = result["coverage_at_precision"]
    assert result["macro_f1"] > 0.99
    assert result["ece"] < 0.03
    assert cov["coverage"] >= 0.95
    assert cov["realized_precision"] >= 0.95
    assert not cov["drift"]
