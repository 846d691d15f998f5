"""Why a prediction: the explanation is an exact split of the model's log-odds into evidence a
reviewer can read (words with their spelling features, phrases, fields, numbers, meaning)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from classifiers.case_model import CaseModel
from classifiers.explain import MAX_TOP
from classifiers.features import FeatureSpec
from contracts.suggestion import Explanation
from tests.classifiers.conftest import synthetic_cases


def _total(exp: Explanation) -> float:
    return exp.baseline + sum(e.weight for e in exp.evidence) + exp.other


def _assert_exact(model: CaseModel, records: list[dict[str, Any]], **kw: Any) -> None:
    """Every explanation sums to ln(P(label)/P(versus)) and names the top two labels."""
    probas = model.predict_proba(records, embeddings=kw.get("embeddings"))
    explained = model.explain(records, top=MAX_TOP, **kw)
    for i, per_target in enumerate(explained):
        for target, exp in per_target.items():
            row = probas[target][i]
            classes = [str(c) for c in model.classes_[target]]
            first, second = np.argsort(-row, kind="stable")[:2]
            assert (exp.label, exp.versus) == (classes[first], classes[second])
            assert exp.probability == pytest.approx(row[first], abs=1e-6)
            assert exp.log_odds == pytest.approx(math.log(row[first] / row[second]), abs=1e-4)
            assert _total(exp) == pytest.approx(exp.log_odds, abs=1e-4)


def test_evidence_sums_exactly_to_the_log_odds(case_model: CaseModel) -> None:
    # text, one-hot and numeric blocks, three targets (two multi-class, one binary)
    _assert_exact(case_model, synthetic_cases(25, seed=5))


def test_exact_with_embedding_features() -> None:
    rng = np.random.default_rng(0)
    records = synthetic_cases(200, seed=2)
    vectors = rng.normal(size=(200, 16))
    queues = sorted({r["queue"] for r in records})
    for i, r in enumerate(records):  # the embedding carries the queue too
        vectors[i, queues.index(r["queue"])] += 3.0
    model = CaseModel(
        spec=FeatureSpec(text_columns=("text",), embedding_dim=16), targets=("queue",), cv=3
    ).fit(records, embeddings=vectors)
    _assert_exact(model, records[:20], embeddings=vectors[:20])
    exp = model.explain(records[:1], embeddings=vectors[:1])[0]["queue"]
    meaning = [e for e in exp.evidence if e.kind == "meaning"]
    assert len(meaning) == 1 and meaning[0].feature == "text embedding"


def test_the_deciding_word_leads_and_a_misspelling_still_counts(case_model: CaseModel) -> None:
    record = dict(synthetic_cases(1, seed=1)[0], text="pallet damaged in transit")
    exp = case_model.explain([record])[0]["queue"]
    assert exp.label == "claims"
    words = {e.feature: e.weight for e in exp.evidence if e.kind == "word"}
    assert words["damaged"] > 0
    assert max(words, key=words.__getitem__) in {"damaged", "pallet"}
    # "damagedd" is not in the word vocabulary: only its character n-grams carry it, and they
    # are folded back into the word as the reviewer typed it
    typo = dict(record, text="pallet damagedd")
    exp = case_model.explain([typo])[0]["queue"]
    folded = {e.feature: e.weight for e in exp.evidence if e.kind == "word"}
    assert folded["damagedd"] > 0
    assert "damagedd" not in case_model.featurizer_.word_vectorizer_.vocabulary_


def test_structured_fields_are_named_with_the_case_value(case_model: CaseModel) -> None:
    # priority follows tier and amount only (synthetic rule): those fields must carry it
    record = dict(synthetic_cases(1, seed=4)[0], customer_tier="A", amount=50.0)
    exp = case_model.explain([record], targets=["priority"], top=MAX_TOP)[0]["priority"]
    assert exp.label == "high"
    fields = {(e.feature, e.value): e.weight for e in exp.evidence if e.kind == "field"}
    assert fields[("customer_tier", "a")] > 0
    numbers = {e.feature: e.value for e in exp.evidence if e.kind == "number"}
    assert numbers["amount"] == "50"
    assert set(exp.model_dump()) >= {"label", "versus", "log_odds", "baseline", "other"}


def test_phrases_and_masked_numbers_read_as_the_model_read_them(case_model: CaseModel) -> None:
    record = dict(synthetic_cases(1, seed=6)[0], text="Missing units on order 48213")
    exp = case_model.explain([record], top=MAX_TOP)[0]["queue"]
    features = {(e.kind, e.feature) for e in exp.evidence}
    assert ("phrase", "missing units") in features
    assert ("word", "0") in features  # digit runs are masked before the model reads them
    assert not any("48213" in f for _, f in features)


def test_top_caps_the_list_and_other_keeps_the_rest(case_model: CaseModel) -> None:
    record = synthetic_cases(1, seed=8)[0]
    full = case_model.explain([record], top=MAX_TOP)[0]["queue"]
    one = case_model.explain([record], top=1)[0]["queue"]
    assert len(one.evidence) == 1
    assert one.evidence[0] == full.evidence[0]  # the strongest by |weight|
    assert abs(one.evidence[0].weight) == max(abs(e.weight) for e in full.evidence)
    assert _total(one) == pytest.approx(_total(full), abs=1e-4)
    weights = [abs(e.weight) for e in full.evidence]
    assert weights == sorted(weights, reverse=True)


def test_an_abstaining_prediction_is_explained_too(case_model: CaseModel) -> None:
    record = dict(synthetic_cases(1, seed=3)[0], text="qwxz vlorp zzyzx frumious bandersnatch")
    prediction = case_model.predict([record])[0]["queue"]
    assert prediction.abstained
    exp = case_model.explain([record])[0]["queue"]
    assert exp.label == max(prediction.probabilities, key=prediction.probabilities.__getitem__)
    assert exp.versus == prediction.runner_up


def test_bad_arguments_are_refused(case_model: CaseModel) -> None:
    record = synthetic_cases(1)[0]
    with pytest.raises(ValueError, match="top must be between 1 and 50"):
        case_model.explain([record], top=0)
    with pytest.raises(ValueError, match="top must be between"):
        case_model.explain([record], top=MAX_TOP + 1)
    with pytest.raises(ValueError, match="does not predict"):
        case_model.explain([record], targets=["colour"])
