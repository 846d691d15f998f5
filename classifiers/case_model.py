"""The multi-target case model: one feature transform, one calibrated classifier per target.

This is the object the triage pipeline calls. Contract:
- ``CaseModel(...).fit(records, embeddings=None, groups=None)`` trains every target in
  ``targets`` on the records whose value for that target is non-empty; label sets come from the
  data (or are checked against ``labels`` when the configuration gives them). Returns ``self``.
- ``predict(records, embeddings=None)`` returns, per record, ``{target: Prediction}`` where
  ``Prediction`` is ``contracts.suggestion.Prediction``: ``label`` is ``None`` exactly when
  ``abstained`` is true, and ``abstain_reason`` is one of ``low_confidence``,
  ``close_runner_up``, ``out_of_distribution``. ``confidence`` is the calibrated probability of
  the top label (also when abstaining, so a reviewer sees how unsure the model was).
- Thresholds are chosen per target and per label on held-out folds to meet
  ``target_precision`` (default 0.95; ``label_precision[target][label]`` overrides it).
- The transform runs once per batch and is shared by all targets; pass ``embeddings`` computed
  once per case to reuse them for similar-case retrieval.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import scipy.sparse as sp
from sklearn.base import BaseEstimator, clone
from sklearn.metrics import f1_score
from sklearn.preprocessing import normalize
from sklearn.utils.validation import check_is_fitted

from classifiers.calibration import DEFAULT_SMOOTHING, CalibratedLinearClassifier
from classifiers.features import (
    CASE_FEATURE_SPEC,
    FeatureSpec,
    Record,
    RecordFeaturizer,
    row_ids,
    row_nnz_between,
    row_norms,
    texts_of,
)
from classifiers.grouping import near_duplicate_groups
from classifiers.linalg import TransposedCache
from classifiers.operating_points import (
    ThresholdStats,
    decide_batch,
    resolve_targets,
    select_thresholds,
)
from contracts.suggestion import Explanation, Prediction

CASE_TARGETS: tuple[str, ...] = ("category", "queue", "priority")


def label_of(value: Any) -> str | None:
    """A training label as a clean string, or ``None`` for an empty cell."""
    if value is None:
        return None
    if isinstance(value, float) and np.isnan(value):
        return None
    text = str(value).strip()
    return text or None


def _column_prefix(X: sp.csr_matrix, width: int) -> sp.csr_matrix:
    """``X[:, :width]`` for a CSR matrix in one construction (slicing builds two)."""
    keep = X.indices < width
    counts = np.bincount(row_ids(X)[keep], minlength=X.shape[0])
    indptr = np.concatenate([[0], np.cumsum(counts)])
    return sp.csr_matrix((X.data[keep], X.indices[keep], indptr), shape=(X.shape[0], width))


class CaseModel(TransposedCache, BaseEstimator):
    """Predict several targets for flat case records, calibrated, abstaining when unsure.

    Parameters (stored as given; learned state ends in ``_``):
    spec: the :class:`FeatureSpec`; ``None`` means the triage case record
        (:data:`classifiers.features.CASE_FEATURE_SPEC`).
    targets: record keys to predict.
    labels: optional configured label set per target; training labels outside it are refused.
    target_precision: default precision each label's threshold must reach on validation.
    label_precision: ``{target: {label: precision}}`` overrides.
    base, C, cv, class_weight, smoothing: see :class:`CalibratedLinearClassifier`.
    margin: below-threshold predictions whose top two are closer than this abstain with
        ``close_runner_up`` instead of ``low_confidence``.
    min_margin: abstain (``close_runner_up``) even above threshold when the top two are closer.
    ood_quantile: a case whose word profile is less similar to every training class than this
        quantile of the training cases is ``out_of_distribution``.
    min_support: validation predictions a label needs before a threshold is trusted.
    threshold_pooling: a label with too few validation predictions to earn its own threshold
        borrows the one all labels' predictions earn together, unless its own predictions
        say it falls short (:func:`classifiers.operating_points.select_thresholds`).
    group_near_duplicates: when ``fit`` gets no ``groups``, group records whose text is the same
        after masking numbers and names (:mod:`classifiers.grouping`), so that templated
        near-copies never sit on both sides of a validation fold.
    featurizer: a :class:`RecordFeaturizer` template (cloned; its ``spec`` is replaced).
    """

    # Artifacts saved before the parameter existed chose their thresholds without pooling and
    # carry no such attribute: reading it from the class keeps ``get_params`` (clone, retrain)
    # working on them and their operating points as they were.
    threshold_pooling: bool = False

    def __init__(
        self,
        spec: FeatureSpec | None = None,
        targets: Sequence[str] = CASE_TARGETS,
        labels: Mapping[str, Sequence[str]] | None = None,
        target_precision: float = 0.95,
        label_precision: Mapping[str, Mapping[str, float]] | None = None,
        base: str = "svc",
        C: float = 1.0,
        cv: int = 5,
        class_weight: str | None = None,
        smoothing: float = DEFAULT_SMOOTHING,
        margin: float = 0.1,
        min_margin: float = 0.0,
        ood_quantile: float = 0.002,
        min_support: int = 5,
        threshold_pooling: bool = True,
        group_near_duplicates: bool = True,
        featurizer: RecordFeaturizer | None = None,
        random_state: int = 0,
    ) -> None:
        self.spec = spec
        self.targets = targets
        self.labels = labels
        self.target_precision = target_precision
        self.label_precision = label_precision
        self.base = base
        self.C = C
        self.cv = cv
        self.class_weight = class_weight
        self.smoothing = smoothing
        self.margin = margin
        self.min_margin = min_margin
        self.ood_quantile = ood_quantile
        self.min_support = min_support
        self.threshold_pooling = threshold_pooling
        self.group_near_duplicates = group_near_duplicates
        self.featurizer = featurizer
        self.random_state = random_state

    # -- training ------------------------------------------------------------------------------
    def feature_spec(self) -> FeatureSpec:
        """The spec in force: ``spec`` or, when it is ``None``, the triage case record's."""
        return self.spec if self.spec is not None else CASE_FEATURE_SPEC

    def fit(
        self,
        records: Sequence[Record],
        y: Any = None,
        *,
        embeddings: np.ndarray | None = None,
        groups: Sequence[Any] | None = None,
        progress: Any = None,
    ) -> CaseModel:
        """Train on ``records`` (labels read from the target keys); returns ``self``.

        ``groups`` (one id per record) keeps records of a group in the same validation fold;
        by default near-duplicate texts are grouped (see ``group_near_duplicates``).
        ``progress`` is an optional callable ``progress(message: str)`` for long steps.
        Raises ``ValueError`` when a target has fewer than two labels or an unconfigured label.
        """
        records = list(records)
        if not self.targets:
            raise ValueError("CaseModel needs at least one target")
        say = progress or (lambda _msg: None)
        spec = self.feature_spec()
        template = self.featurizer if self.featurizer is not None else RecordFeaturizer()
        self.featurizer_ = clone(template).set_params(spec=spec)
        if embeddings is None:  # encoded once, here, so that a slow encoder reports progress
            embeddings = self.featurizer_.embed(records, progress=progress)
        say(f"building features for {len(records)} records")
        X = self.featurizer_.fit_transform(records, embeddings=embeddings)
        if groups is None and self.group_near_duplicates and spec.text_columns:
            groups = near_duplicate_groups(texts_of(records, spec.text_columns))
        group_arr = None if groups is None else np.asarray(groups)
        self.estimators_: dict[str, CalibratedLinearClassifier] = {}
        self.classes_: dict[str, np.ndarray] = {}
        self.thresholds_: dict[str, np.ndarray] = {}
        self.threshold_stats_: dict[str, dict[str, ThresholdStats]] = {}
        self.validation_: dict[str, dict[str, Any]] = {}
        first_labels: tuple[np.ndarray, np.ndarray] | None = None
        for target in self.targets:
            values = [label_of(r.get(target)) for r in records]
            idx = np.array([i for i, v in enumerate(values) if v is not None], dtype=int)
            y_t = np.array([values[i] for i in idx], dtype=object)
            self._check_labels(target, y_t)
            say(f"training target {target!r}: {len(idx)} labelled records")
            clf = CalibratedLinearClassifier(
                base=self.base,
                C=self.C,
                cv=self.cv,
                class_weight=self.class_weight,
                smoothing=self.smoothing,
                random_state=self.random_state,
            ).fit(X[idx], y_t.astype(str), None if group_arr is None else group_arr[idx])
            self.estimators_[target] = clf
            self.classes_[target] = clf.classes_
            self._choose_operating_point(target)
            if first_labels is None:
                first_labels = (idx, np.searchsorted(clf.classes_, y_t.astype(str)))
        assert first_labels is not None
        self._fit_ood(X, *first_labels)
        self.n_records_seen_ = len(records)
        return self

    def choose_operating_points(self) -> CaseModel:
        """Re-choose every target's thresholds from the stored out-of-fold predictions under the
        current ``target_precision``, ``label_precision``, ``min_support`` and
        ``threshold_pooling`` (set them with ``set_params`` first); nothing is refitted.
        Returns ``self``."""
        check_is_fitted(self, "n_records_seen_")
        for target in self.targets:
            self._choose_operating_point(target)
        return self

    def _choose_operating_point(self, target: str) -> None:
        clf = self.estimators_[target]
        targets = resolve_targets(
            [str(c) for c in clf.classes_],
            self.target_precision,
            (self.label_precision or {}).get(target),
        )
        stats = select_thresholds(
            clf.oof_y_,
            clf.oof_proba_,
            len(clf.classes_),
            targets,
            self.min_support,
            pool=self.threshold_pooling,
        )
        self.thresholds_[target] = np.array([s.threshold for s in stats])
        self.threshold_stats_[target] = {
            str(c): s for c, s in zip(clf.classes_, stats, strict=True)
        }
        self.validation_[target] = self._validation_summary(target, clf)

    def _check_labels(self, target: str, y: np.ndarray) -> None:
        found = sorted({str(v) for v in y})
        if len(found) < 2:
            raise ValueError(
                f"target {target!r} needs at least two distinct labels, found {found or 'none'}"
            )
        if self.labels and target in self.labels:
            allowed = {str(v) for v in self.labels[target]}
            unknown = sorted(set(found) - allowed)
            if unknown:
                raise ValueError(f"target {target!r} has labels not in its label set: {unknown}")

    def _validation_summary(self, target: str, clf: CalibratedLinearClassifier) -> dict[str, Any]:
        """Held-out (out-of-fold) figures at the chosen thresholds: the drift baseline."""
        proba, y = clf.oof_proba_, clf.oof_y_
        dec = decide_batch(
            proba, self.thresholds_[target], margin=self.margin, min_margin=self.min_margin
        )
        kept = dec.index >= 0
        pred = proba.argmax(axis=1)
        return {
            "n": len(y),
            "accuracy": float((pred == y).mean()),
            "macro_f1": float(f1_score(y, pred, average="macro")),
            "coverage": float(kept.mean()),
            "precision": float((dec.index[kept] == y[kept]).mean()) if kept.any() else None,
            "temperature": clf.temperature_,
        }

    def _fit_ood(self, X: sp.csr_matrix, labelled: np.ndarray, label_index: np.ndarray) -> None:
        """Learn how similar in-distribution word profiles are to the training centroids.

        ``labelled`` holds the rows of ``X`` that have a label for the first target and
        ``label_index`` those labels as indices into its ``classes_``: the centroids are one per
        class of the first target (any partition works; this one is to hand), built from every
        labelled row, so that a rare label's examples count too.
        """
        words = self.featurizer_.split_word_block(X)
        self.word_centroids_: np.ndarray | None = None
        self.ood_min_similarity_ = 0.0
        if words is None or words.shape[1] == 0:
            return
        clf = self.estimators_[self.targets[0]]
        rows = np.full(words.shape[0], -1)
        rows[labelled] = label_index
        keep = rows >= 0
        member = sp.csr_matrix(
            (np.ones(keep.sum()), (rows[keep], np.flatnonzero(keep))),
            shape=(len(clf.classes_), words.shape[0]),
        )
        centroids = normalize(np.asarray((member @ words).todense()))
        self.word_centroids_ = centroids.astype(np.float32)
        sims = self._max_similarity(words)
        has_words = np.asarray(words.getnnz(axis=1)) > 0
        if has_words.any():
            self.ood_min_similarity_ = float(np.quantile(sims[has_words], self.ood_quantile))

    def _max_similarity(self, words: sp.csr_matrix) -> np.ndarray:
        """Cosine similarity of each row to its nearest class centroid (0 for an empty row)."""
        assert self.word_centroids_ is not None
        norms = row_norms(words)
        norms[norms == 0] = 1.0
        sims = np.asarray(words @ self.transposed("centroids", self.word_centroids_))
        sims /= norms[:, None]
        return np.asarray(sims.max(axis=1)).ravel()

    # -- prediction ----------------------------------------------------------------------------
    def embed(
        self, records: Sequence[Record], progress: Callable[[str], None] | None = None
    ) -> np.ndarray | None:
        """The model's encoder vectors for ``records`` (``None`` without an encoder), with
        optional progress messages; pass them on as ``embeddings`` to reuse them."""
        check_is_fitted(self, "n_records_seen_")
        return self.featurizer_.embed(records, progress)

    def transform(
        self, records: Sequence[Record], *, embeddings: np.ndarray | None = None
    ) -> sp.csr_matrix:
        """The shared feature matrix (exposed so callers can cache it)."""
        check_is_fitted(self, "n_records_seen_")
        return self.featurizer_.transform(records, embeddings=embeddings)

    def out_of_distribution(self, X: sp.csr_matrix) -> np.ndarray:
        """Boolean mask: no known word at all, or farther from training data than ``ood_quantile``.

        A record without any text is not OOD by itself (structured fields may still carry it).
        """
        fz = self.featurizer_
        if fz.word_vectorizer_ is None or self.word_centroids_ is None:
            return np.zeros(X.shape[0], dtype=bool)
        n_words = len(fz.word_vectorizer_.vocabulary_)
        n_chars = len(fz.char_vectorizer_.vocabulary_) if fz.char_vectorizer_ is not None else 0
        nnz = row_nnz_between(X, 0, n_words)
        # an empty word row means either no text or only unknown words; the char block tells
        # them apart (unknown words still produce character n-grams)
        chars = row_nnz_between(X, n_words, n_words + n_chars) > 0
        unknown_vocab = (nnz == 0) & chars
        far = np.zeros_like(unknown_vocab)
        has = nnz > 0
        if has.any():
            far = (
                self._max_similarity(_column_prefix(X, n_words)) < self.ood_min_similarity_
            ) & has
        return np.asarray(unknown_vocab | far)

    def predict_proba(
        self, records: Sequence[Record], *, embeddings: np.ndarray | None = None
    ) -> dict[str, np.ndarray]:
        """Calibrated probabilities per target; columns follow ``classes_[target]``."""
        X = self.transform(records, embeddings=embeddings)
        return {t: self.estimators_[t].predict_proba(X) for t in self.targets}

    def predict(
        self, records: Sequence[Record], *, embeddings: np.ndarray | None = None
    ) -> list[dict[str, Prediction]]:
        """One ``{target: Prediction}`` per record (see module contract)."""
        X = self.transform(records, embeddings=embeddings)
        ood = self.out_of_distribution(X)
        per_target = {t: self._predict_target(t, X, ood) for t in self.targets}
        return [{t: per_target[t][i] for t in self.targets} for i in range(X.shape[0])]

    def _predict_target(self, target: str, X: sp.csr_matrix, ood: np.ndarray) -> list[Prediction]:
        proba = self.estimators_[target].predict_proba(X)
        classes = [str(c) for c in self.classes_[target]]
        dec = decide_batch(
            proba,
            self.thresholds_[target],
            ood=ood,
            margin=self.margin,
            min_margin=self.min_margin,
        )
        rounded = np.round(proba, 6).tolist()
        out: list[Prediction] = []
        for i, row in enumerate(rounded):
            runner = int(dec.runner_up[i])
            # model_construct: values are produced here and already satisfy the contract, and
            # validating thousands of models per second would dominate the batch cost
            out.append(
                Prediction.model_construct(
                    target=target,
                    label=None if dec.index[i] < 0 else classes[int(dec.index[i])],
                    confidence=float(dec.confidence[i]),
                    runner_up=None if runner < 0 else classes[runner],
                    runner_up_confidence=None if runner < 0 else float(dec.runner_up_confidence[i]),
                    abstained=bool(dec.index[i] < 0),
                    abstain_reason=dec.reasons[i],
                    probabilities=dict(zip(classes, row, strict=True)),
                )
            )
        return out

    def explain(
        self,
        records: Sequence[Record],
        *,
        embeddings: np.ndarray | None = None,
        targets: Sequence[str] | None = None,
        top: int = 8,
    ) -> list[dict[str, Explanation]]:
        """Why each record's top label won, per target: see :func:`classifiers.explain.explain`."""
        from classifiers.explain import explain

        return explain(self, records, embeddings=embeddings, targets=targets, top=top)

    def predict_labels(
        self, records: Sequence[Record], *, embeddings: np.ndarray | None = None
    ) -> dict[str, list[str]]:
        """Top label per target ignoring thresholds (for accuracy figures)."""
        probas = self.predict_proba(records, embeddings=embeddings)
        return {t: [str(self.classes_[t][j]) for j in p.argmax(axis=1)] for t, p in probas.items()}

    # -- description ----------------------------------------------------------------------------
    def label_sets(self) -> dict[str, list[str]]:
        check_is_fitted(self, "n_records_seen_")
        return {t: [str(c) for c in self.classes_[t]] for t in self.targets}

    def thresholds_dict(self) -> dict[str, dict[str, dict[str, Any]]]:
        """JSON-ready thresholds with their validation figures (for metadata and reports)."""
        check_is_fitted(self, "n_records_seen_")
        return {
            t: {
                label: {
                    "threshold": s.threshold,
                    "target_precision": s.target_precision,
                    "validation_precision": s.validation_precision,
                    "validation_coverage": s.validation_coverage,
                    "n_predicted": s.n_predicted,
                    "pooled": s.pooled,
                }
                for label, s in stats.items()
            }
            for t, stats in self.threshold_stats_.items()
        }
