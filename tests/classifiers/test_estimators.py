"""scikit-learn conventions: parameters stored as given, clone/get_params/set_params, learned
state ending in ``_``, ``fit`` returning ``self``."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import scipy.sparse as sp
from sklearn.base import clone
from sklearn.exceptions import NotFittedError

from classifiers.calibration import CalibratedLinearClassifier
from classifiers.case_model import CaseModel
from classifiers.features import CASE_FEATURE_SPEC, FeatureSpec, RecordFeaturizer, row_norms


@pytest.mark.parametrize(
    "estimator",
    [
        CaseModel(C=2.0, targets=("queue",), target_precision=0.9),
        RecordFeaturizer(spec=CASE_FEATURE_SPEC, char_ngram_range=(3, 4)),
        CalibratedLinearClassifier(base="logreg", C=3.0, cv=4),
    ],
)
def test_clone_and_params_round_trip(estimator: Any) -> None:
    params = estimator.get_params(deep=False)
    copy = clone(estimator)
    assert copy.get_params(deep=False) == params
    assert copy is not estimator
    # set_params returns the estimator and changes exactly the named parameter
    key = "C" if "C" in params else "max_chars"
    assert copy.set_params(**{key: 7}) is copy
    assert copy.get_params()[key] == 7
    assert estimator.get_params()[key] == params[key]
    # __init__ stores only parameters: nothing learned before fit
    assert not [a for a in vars(estimator) if a.endswith("_") and not a.startswith("_")]


def test_fit_returns_self_and_sets_learned_state(case_records: list[dict[str, Any]]) -> None:
    model = CaseModel(cv=3, targets=("queue",))
    assert model.fit(case_records[:120]) is model
    assert set(model.classes_) == {"queue"}
    assert sorted(model.classes_["queue"]) == ["carrier_desk", "claims", "finance", "warehouse"]
    proba = model.predict_proba(case_records[:5])["queue"]
    assert proba.shape == (5, 4)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-6)


def test_predict_before_fit_raises(case_records: list[dict[str, Any]]) -> None:
    with pytest.raises(NotFittedError):
        CaseModel().predict(case_records[:1])


def test_calibrated_classifier_on_matrix() -> None:
    rng = np.random.default_rng(0)
    X = sp.csr_matrix(rng.normal(size=(200, 5)))
    y = np.where(X[:, 0].toarray().ravel() > 0, "pos", "neg")
    clf = CalibratedLinearClassifier(cv=3).fit(X, y)
    assert list(clf.classes_) == ["neg", "pos"]
    assert (clf.predict(X) == y).mean() > 0.9
    assert clf.predict_proba(X).shape == (200, 2)
    assert clf.oof_proba_.shape == (200, 2)
    assert clf.temperature_ > 0


def test_rare_labels_do_not_flatten_the_calibration() -> None:
    # Three well-separated labels with 40 rows each, plus fifteen labels with one row each. A
    # one-row label is never in its fold's training part; before, such rows still entered the
    # temperature fit as certain misses and pushed every probability towards uniform (median
    # top probability 0.45 on this data, against 0.99 now).
    rng = np.random.default_rng(1)
    centres = np.eye(18) * 6.0
    labels = [k for k in range(3) for _ in range(40)] + list(range(3, 18))
    X = sp.csr_matrix(np.array([centres[k] + rng.normal(size=18) for k in labels]))
    y = np.array([f"label{k}" for k in labels])
    clf = CalibratedLinearClassifier(cv=3).fit(X, y)
    assert len(clf.oof_y_) == 120  # the one-row labels have no held-out prediction
    assert set(clf.oof_index_) == set(range(120))
    big = clf.predict_proba(X[:120])
    assert (clf.classes_[big.argmax(axis=1)] == y[:120]).mean() > 0.95
    assert np.median(big.max(axis=1)) > 0.9


def test_featurizer_blocks_and_unknown_categories(case_records: list[dict[str, Any]]) -> None:
    fz = RecordFeaturizer(spec=CASE_FEATURE_SPEC).fit(case_records)
    X = fz.transform(case_records[:3])
    assert X.shape == (3, fz.n_features_out_)
    odd = dict(case_records[0], exception_type="never_seen", amount=None, carrier_id=None)
    assert fz.transform([odd]).shape == (1, fz.n_features_out_)  # unknown value is not an error


def test_embeddings_required_only_when_spec_says_so(case_records: list[dict[str, Any]]) -> None:
    records = case_records[:60]
    emb = np.random.default_rng(1).normal(size=(60, 8))
    spec = FeatureSpec(text_columns=("text",), embedding_dim=8)
    with_emb = RecordFeaturizer(spec=spec).fit(records, embeddings=emb)
    assert with_emb.transform(records, embeddings=emb).shape[1] == with_emb.n_features_out_
    with pytest.raises(ValueError, match="embeddings"):
        with_emb.transform(records)
    with pytest.raises(ValueError, match="shape"):
        with_emb.transform(records, embeddings=emb[:, :4])
    without = RecordFeaturizer(spec=FeatureSpec(text_columns=("text",))).fit(records)
    # a pipeline may always hand its vectors over; a model trained without them ignores them
    a = without.transform(records, embeddings=emb)
    b = without.transform(records)
    assert (a != b).nnz == 0


def test_feature_spec_validation() -> None:
    with pytest.raises(ValueError, match="twice"):
        FeatureSpec(text_columns=("a",), categorical_columns=("a",))
    with pytest.raises(ValueError, match="at least one"):
        FeatureSpec(text_columns=())
    assert FeatureSpec.from_dict(CASE_FEATURE_SPEC.to_dict()) == CASE_FEATURE_SPEC


def test_one_record_transforms_to_its_row_of_the_batch(case_records: list[dict[str, Any]]) -> None:
    # a single case is assembled by direct concatenation, a batch of 16+ by the batched count
    # paths and scipy's hstack: every row must come out the same either way
    spec = FeatureSpec(
        text_columns=CASE_FEATURE_SPEC.text_columns,
        categorical_columns=CASE_FEATURE_SPEC.categorical_columns,
        numeric_columns=CASE_FEATURE_SPEC.numeric_columns,
        embedding_dim=4,
    )
    records = [*case_records[:30], dict(case_records[0], text="", exception_type=None)]
    vectors = np.random.default_rng(0).normal(size=(len(records), 4))
    vectors[-1] = 0.0  # an empty text's vector
    fz = RecordFeaturizer(spec=spec).fit(records, embeddings=vectors)
    batch = fz.transform(records, embeddings=vectors)
    assert batch.dtype == np.float32
    for i, record in enumerate(records):
        one = fz.transform([record], embeddings=vectors[i : i + 1])
        assert one.shape == (1, batch.shape[1]) and one.dtype == np.float32
        assert abs(one - batch[i]).max() == 0


@pytest.mark.parametrize("word_range", [(1, 1), (2, 2), (1, 3)])
def test_word_counts_equal_scikit_learn_for_other_ngram_ranges(
    case_records: list[dict[str, Any]], word_range: tuple[int, int]
) -> None:
    # unigram-only and bigram-only take the batched path, trigrams the per-document one
    fz = RecordFeaturizer(spec=CASE_FEATURE_SPEC, word_ngram_range=word_range).fit(case_records)
    texts = [*fz._columns(case_records[:40]).text, "", "a a a b a b", "x"]
    assert fz.word_vectorizer_ is not None
    want = fz.word_vectorizer_.transform(texts)
    have = fz._text_blocks(texts)[0]
    assert want.shape == have.shape and want.nnz == have.nnz
    assert abs(want - have).max() < 1e-6


def test_fast_transforms_equal_scikit_learn(case_records: list[dict[str, Any]]) -> None:
    # the featurizer's own per-word char n-gram counts, TF-IDF arithmetic and one-hot lookups
    # must give exactly what the fitted scikit-learn transformers give
    fz = RecordFeaturizer(spec=CASE_FEATURE_SPEC).fit(case_records)
    records = [
        *case_records[:50],
        dict(case_records[0], text="  Ünïcode\ttabs\n\nnew  lines  x "),
        dict(case_records[1], text=""),
        dict(case_records[2], exception_type="unseen", customer_tier=None),
    ]
    cols = fz._columns(records)
    assert fz.word_vectorizer_ is not None and fz.char_vectorizer_ is not None
    expected = [
        fz.word_vectorizer_.transform(cols.text) * fz.word_weight,
        fz.char_vectorizer_.transform(cols.text) * fz.char_weight,
        fz.encoder_.transform(np.array(cols.categorical, dtype=object)) * fz.categorical_weight,
    ]
    got = [*fz._text_blocks(cols.text), fz._one_hot(cols.categorical)]
    for want, have in zip(expected, got, strict=True):
        assert want.shape == have.shape
        assert abs(want - have).max() < 1e-6


@pytest.mark.parametrize("shape", [(7, 30), (1, 30), (0, 30), (5, 0)])
def test_row_norms_match_dense_norms_including_empty_rows(shape: tuple[int, int]) -> None:
    rng = np.random.default_rng(3)
    dense = rng.standard_normal(shape).astype(np.float32)
    dense[rng.random(shape) < 0.7] = 0.0
    if shape[0] >= 7:
        dense[[0, 3, 6]] = 0.0  # empty first, middle and last rows
    matrix = sp.csr_matrix(dense)
    expected = np.linalg.norm(dense.astype(np.float64), axis=1)
    assert np.allclose(row_norms(matrix), expected, rtol=1e-12, atol=0.0)
    assert row_norms(matrix).shape == (shape[0],)
