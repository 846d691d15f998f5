"""The multi-target case model: contract of predictions, abstentions and configured labels."""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import pytest
from sklearn.base import clone

from classifiers.case_model import CaseModel
from classifiers.evaluation import evaluate_model
from classifiers.features import FeatureSpec
from classifiers.operating_points import ABSTAIN_REASONS, select_thresholds
from contracts.suggestion import Prediction
from tests.classifiers.conftest import synthetic_cases


def test_predictions_follow_the_contract(case_model: CaseModel) -> None:
    records = synthetic_cases(40, seed=7)
    out = case_model.predict(records)
    assert len(out) == 40
    for row in out:
        assert set(row) == {"category", "queue", "priority"}
        for target, p in row.items():
            assert isinstance(p, Prediction)
            Prediction.model_validate(p.model_dump())  # really satisfies the contract
            assert p.target == target
            assert (p.label is None) == p.abstained
            assert (p.abstain_reason is None) == (not p.abstained)
            assert p.abstain_reason is None or p.abstain_reason in ABSTAIN_REASONS
            assert sum(p.probabilities.values()) == pytest.approx(1.0, abs=1e-4)
            assert p.confidence == pytest.approx(max(p.probabilities.values()), abs=1e-5)
            assert p.runner_up != max(p.probabilities, key=p.probabilities.__getitem__)


def test_learns_text_and_structured_rules(case_model: CaseModel) -> None:
    records = synthetic_cases(200, seed=11)
    result = evaluate_model(case_model, records)
    assert result["targets"]["queue"]["accuracy"] > 0.97
    # priority depends only on tier and amount: the structured features must carry it
    assert result["targets"]["priority"]["accuracy"] > 0.9
    cov = result["targets"]["queue"]["coverage_at_precision"]
    assert cov["realized_precision"] is None or cov["realized_precision"] >= 0.95


def test_gibberish_is_out_of_distribution(case_model: CaseModel) -> None:
    record = dict(synthetic_cases(1, seed=3)[0], text="qwxz vlorp zzyzx frumious bandersnatch")
    out = case_model.predict([record])[0]
    assert all(p.abstain_reason == "out_of_distribution" for p in out.values())


def test_ambiguous_cases_abstain_with_the_right_reason() -> None:
    # reviewers labelled the very same text differently: 65/35 and 50/50 splits
    rows = synthetic_cases(300)
    base = rows[0]
    for i in range(40):
        rows.append(
            dict(
                base,
                text="parcel arrived late and broken",
                exception_type="other",
                category="transport" if i < 26 else "quality",
            )
        )
        rows.append(
            dict(
                base,
                text="box crushed while truck delayed",
                exception_type="other",
                category="transport" if i < 20 else "quality",
            )
        )
    model = CaseModel(targets=("category",), cv=3).fit(rows)
    lean, split = (
        model.predict([dict(base, text=t, exception_type="other")])[0]["category"]
        for t in ("parcel arrived late and broken", "box crushed while truck delayed")
    )
    assert lean.abstained and lean.abstain_reason == "low_confidence"
    assert split.abstained and split.abstain_reason == "close_runner_up"
    for p in (lean, split):
        assert {max(p.probabilities, key=p.probabilities.__getitem__), p.runner_up} == {
            "transport",
            "quality",
        }


def test_confident_case_gets_a_label(bitext_model: CaseModel) -> None:
    out = bitext_model.predict([{"text": "I want to cancel my order 123"}])[0]["triage_category"]
    assert out.label == "order"
    assert not out.abstained


def test_configured_label_set_refuses_unknown_labels(case_records: list[dict[str, Any]]) -> None:
    model = CaseModel(targets=("queue",), labels={"queue": ["warehouse", "finance"]}, cv=3)
    with pytest.raises(ValueError, match="not in its label set"):
        model.fit(case_records[:80])


def test_single_class_target_is_refused(case_records: list[dict[str, Any]]) -> None:
    rows = [dict(r, queue="only") for r in case_records[:40]]
    with pytest.raises(ValueError, match="at least two distinct labels"):
        CaseModel(targets=("queue",), cv=3).fit(rows)


def test_rows_without_a_label_are_skipped_per_target(case_records: list[dict[str, Any]]) -> None:
    rows = [dict(r) for r in case_records[:120]]
    for r in rows[::2]:
        r["priority"] = ""
    model = CaseModel(cv=3).fit(rows)
    assert len(model.estimators_["priority"].oof_y_) == 60
    assert len(model.estimators_["queue"].oof_y_) == 120


def test_out_of_distribution_centroids_use_the_labelled_rows(
    case_records: list[dict[str, Any]],
) -> None:
    # The first target is unlabelled on every third row: each class centroid must be built from
    # the rows labelled with that class (before, positions within the labelled subset were read
    # as positions among all records, so the centroids mixed in the wrong rows).
    rows = [dict(r) for r in case_records[:120]]
    for r in rows[1::3]:
        r["queue"] = ""
    model = CaseModel(targets=("queue",), cv=3).fit(rows)
    words = model.featurizer_.split_word_block(model.featurizer_.transform(rows)).toarray()
    assert model.word_centroids_ is not None
    for k, label in enumerate(model.classes_["queue"]):
        members = [i for i, r in enumerate(rows) if r["queue"] == label]
        expected = words[members].sum(axis=0)
        expected /= np.linalg.norm(expected)
        np.testing.assert_allclose(model.word_centroids_[k], expected, atol=1e-6)


def test_per_label_precision_override(case_records: list[dict[str, Any]]) -> None:
    model = CaseModel(targets=("queue",), cv=3, label_precision={"queue": {"claims": 0.5}}).fit(
        case_records[:160]
    )
    assert model.threshold_stats_["queue"]["claims"].target_precision == 0.5
    assert model.threshold_stats_["queue"]["finance"].target_precision == 0.95


def test_operating_points_are_rechosen_without_refitting(
    case_records: list[dict[str, Any]],
) -> None:
    # 60 records: several labels have too few validation predictions for a threshold of their own
    model = CaseModel(targets=("queue",), cv=3).fit(case_records[:60])
    clf = model.estimators_["queue"]
    stats = model.threshold_stats_["queue"]
    assert any(s.pooled for s in stats.values())  # pooling is on by default
    coef = clf.estimator_.coef_.copy()
    plain = copy.deepcopy(model).set_params(threshold_pooling=False).choose_operating_points()
    assert np.array_equal(plain.estimators_["queue"].estimator_.coef_, coef)  # nothing refitted
    expected = select_thresholds(clf.oof_y_, clf.oof_proba_, len(clf.classes_), 0.95)
    assert list(plain.threshold_stats_["queue"].values()) == expected
    assert not any(s.pooled for s in plain.threshold_stats_["queue"].values())
    # a pooled threshold only ever opens a label the plain rule closed
    for label, s in stats.items():
        if s.pooled:
            assert plain.threshold_stats_["queue"][label].threshold > 1
        else:
            assert s == plain.threshold_stats_["queue"][label]
    pooled_label = next(label for label, s in stats.items() if s.pooled)
    assert model.thresholds_dict()["queue"][pooled_label]["pooled"] is True
    # an artifact saved before the parameter existed has no such attribute: it reads as off,
    # and cloning it (what retrain does) keeps it off
    old = copy.deepcopy(plain)
    del old.threshold_pooling
    assert old.get_params()["threshold_pooling"] is False
    assert clone(old).threshold_pooling is False


def test_embeddings_feed_the_model(case_records: list[dict[str, Any]]) -> None:
    # the embedding alone carries the label: a model given only embeddings must learn it
    rows = case_records[:120]
    labels = sorted({r["queue"] for r in rows})
    emb = np.array([[1.0 if r["queue"] == q else 0.0 for q in labels] for r in rows])
    spec = FeatureSpec(text_columns=(), embedding_dim=len(labels))
    model = CaseModel(spec=spec, targets=("queue",), cv=3).fit(rows, embeddings=emb)
    pred = model.predict_labels(rows, embeddings=emb)["queue"]
    assert pred == [r["queue"] for r in rows]


def test_near_duplicates_are_kept_in_one_validation_fold() -> None:
    # every label is one template with varying order numbers; a fold split that ignores the
    # templates validates on copies of training text and looks perfect, a grouped one cannot
    rows = [
        {"text": f"{word} request for order {1000 + i}", "topic": word}
        for word in ("cancel", "refund", "invoice", "track", "address", "complain")
        for i in range(20)
    ]
    spec = FeatureSpec(text_columns=("text",))
    naive = CaseModel(spec=spec, targets=("topic",), cv=3, group_near_duplicates=False).fit(rows)
    grouped = CaseModel(spec=spec, targets=("topic",), cv=3).fit(rows)
    assert naive.validation_["topic"]["accuracy"] == 1.0
    assert grouped.validation_["topic"]["accuracy"] < 0.5
