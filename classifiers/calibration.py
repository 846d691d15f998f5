"""A linear text classifier with probabilities calibrated on held-out folds.

Why this shape: a linear SVM (or logistic regression) on word and character n-grams is fast
enough for thousands of cases per second and hard to beat on short support texts, but its raw
scores are not probabilities. We fit the model ``cv`` times on folds, keep the out-of-fold
scores, and fit one *temperature* (softmax of scores / T) that minimises the log-loss of those
held-out scores. Temperature scaling keeps the ranking (so accuracy is untouched), needs one
parameter (so it cannot overfit a few hundred examples) and gives well-calibrated top-label
confidences. The out-of-fold probabilities are kept (``oof_proba_``) because they are exactly
what per-class operating thresholds must be chosen on: predictions for examples the model did
not train on.

Folds respect ``groups`` when given (near-duplicate templated texts stay on one side), so both
the temperature and the thresholds are chosen on honestly unseen text.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax, softmax
from sklearn.base import BaseEstimator, ClassifierMixin, clone
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GroupKFold, StratifiedGroupKFold, StratifiedKFold
from sklearn.preprocessing import LabelEncoder
from sklearn.svm import LinearSVC
from sklearn.utils.validation import check_is_fitted

from classifiers.linalg import TransposedCache

BASES = ("svc", "logreg")

# Label smoothing of the temperature fit. Large enough to stop T -> 0 when the held-out folds
# are near-separable (templated text: a whole-file Bitext model gets 99.9% of its folds right),
# small enough not to make the model under-confident on new wording. Measured
# (bench/calibration_grid.py, docs/classifier.md, thirteenth session): 0.01 left the model
# under-confident on the Bitext wording-shift proxy (mean confidence 2.6-4.9 points below
# accuracy, ECE 0.040-0.051); 0.002-0.003 is calibrated there (ECE 0.020-0.025), better under
# grouped CV (0.004 vs 0.011) and neutral on BANKING77. Of the two, 0.003 leaves a little more
# room for the larger shifts a model trained on more data meets.
DEFAULT_SMOOTHING = 0.003


def fit_temperature(scores: np.ndarray, y: np.ndarray, smoothing: float = 0.0) -> float:
    """The temperature T > 0 minimising the cross-entropy of ``softmax(scores / T)``.

    ``y`` holds column indices into ``scores``. With ``smoothing`` = e the target puts 1 - e on
    the true label and spreads e over all labels (label smoothing): when the held-out folds are
    (nearly) separable, plain NLL drives T towards 0 and makes every prediction ~1.0, which
    does not survive a shift in wording; a small e keeps the model honest about the unseen.
    Searched on log T in [1e-3, 1e3].
    """
    rows = np.arange(len(y))

    def nll(log_t: float) -> float:
        logp = log_softmax(scores / np.exp(log_t), axis=1)
        true = logp[rows, y].mean()
        if smoothing == 0.0:
            return float(-true)
        return float(-((1 - smoothing) * true + smoothing * logp.mean(axis=1).mean()))

    result = minimize_scalar(nll, bounds=(np.log(1e-3), np.log(1e3)), method="bounded")
    return float(np.exp(result.x))


def _scores(model: Any, X: Any, n_classes: int) -> np.ndarray:
    raw = np.asarray(model.decision_function(X), dtype=np.float64)
    if raw.ndim == 1:  # binary: sklearn returns the score of the positive class only
        raw = np.column_stack([-raw / 2, raw / 2])
    if raw.shape[1] != n_classes:
        raise ValueError("decision_function returned an unexpected number of columns")
    return raw


def _fold_splitter(
    y: np.ndarray, groups: np.ndarray | None, cv: int, random_state: int
) -> tuple[Any, int]:
    counts = np.bincount(y)
    n_splits = int(max(2, min(cv, counts.min() if counts.min() >= 2 else cv)))
    if groups is not None:
        n_groups = len(np.unique(groups))
        n_splits = int(min(n_splits, n_groups))
        if n_splits < 2:
            raise ValueError("need at least two groups to calibrate on held-out folds")
        if counts.min() >= n_splits:
            return StratifiedGroupKFold(n_splits, shuffle=True, random_state=random_state), n_splits
        return GroupKFold(n_splits), n_splits
    return StratifiedKFold(n_splits, shuffle=True, random_state=random_state), n_splits


class CalibratedLinearClassifier(TransposedCache, ClassifierMixin, BaseEstimator):
    """Linear classifier + temperature scaling fitted on out-of-fold scores.

    Parameters
    ----------
    base: ``"svc"`` (LinearSVC, default: fastest, best on n-grams) or ``"logreg"``.
    C: inverse regularisation strength of the base model.
    cv: number of folds for the held-out scores (at least 2).
    class_weight: passed to the base model (``None`` or ``"balanced"``).
    smoothing: label smoothing of the temperature fit (see :func:`fit_temperature`).
    random_state: fold shuffling seed.

    Learned: ``classes_``, ``estimator_`` (fitted on all data), ``temperature_``,
    ``oof_proba_`` (calibrated held-out probabilities, rows in the order of ``y``),
    ``oof_y_`` (class indices of those rows), ``oof_index_`` (their row numbers in ``y``). Rows
    of a rare label (fewer rows than folds) whose fold did not train on it have no out-of-fold
    prediction worth the name and are not among them.
    """

    def __init__(
        self,
        base: str = "svc",
        C: float = 1.0,
        cv: int = 5,
        class_weight: str | None = None,
        smoothing: float = DEFAULT_SMOOTHING,
        random_state: int = 0,
    ) -> None:
        self.base = base
        self.C = C
        self.cv = cv
        self.class_weight = class_weight
        self.smoothing = smoothing
        self.random_state = random_state

    def _make_base(self) -> Any:
        if self.base == "svc":
            return LinearSVC(C=self.C, class_weight=self.class_weight)
        if self.base == "logreg":
            return LogisticRegression(C=self.C, class_weight=self.class_weight, max_iter=2000)
        raise ValueError(f"base must be one of {BASES}, got {self.base!r}")

    def fit(self, X: Any, y: Any, groups: Any = None) -> CalibratedLinearClassifier:
        """Fit on folds for calibration, then on all of ``X``; returns ``self``.

        Raises ``ValueError`` for fewer than two classes.
        """
        encoder = LabelEncoder()
        y_idx = encoder.fit_transform(np.asarray(y))
        self.classes_ = encoder.classes_
        n_classes = len(self.classes_)
        if n_classes < 2:
            raise ValueError("need at least two classes to train a classifier")
        if self.cv < 2:
            raise ValueError("cv must be at least 2")
        groups_arr = None if groups is None else np.asarray(groups)
        splitter, n_splits = _fold_splitter(y_idx, groups_arr, self.cv, self.random_state)
        # labels with fewer rows than folds cannot be in every fold's training part
        rare = np.bincount(y_idx, minlength=n_classes) < n_splits
        oof = np.zeros((len(y_idx), n_classes))
        seen = np.zeros(len(y_idx), dtype=bool)
        template = self._make_base()
        with warnings.catch_warnings():
            # small classes can be absent from a fold; the fold model then lacks that column
            warnings.simplefilter("ignore", category=UserWarning)
            for train_idx, test_idx in splitter.split(np.zeros(len(y_idx)), y_idx, groups_arr):
                fold_classes = np.unique(y_idx[train_idx])
                if len(fold_classes) < 2:
                    continue
                model = clone(template).fit(X[train_idx], y_idx[train_idx])
                scores = _scores(model, X[test_idx], len(fold_classes))
                # a class missing from this fold's training data gets a very low score
                full = np.full((len(test_idx), n_classes), scores.min() - 10.0)
                full[:, fold_classes] = scores
                oof[test_idx] = full
                # A row of a rare label that this fold never trained on measures the sample
                # size, not the model: it is a certain miss with a made-up score, and a few such
                # rows drive the temperature up until every probability is near-uniform. They
                # are left out of calibration and of the thresholds. A label with enough rows
                # that is absent all the same was held out whole by the groups (one template):
                # that miss is the honest measure of generalisation, and stays.
                y_test = y_idx[test_idx]
                seen[test_idx[~rare[y_test] | np.isin(y_test, fold_classes)]] = True
        if not seen.any():
            raise ValueError(
                "no held-out example to calibrate on (every label has fewer examples than "
                f"{n_splits} folds, or no fold had two labels); add more labelled examples"
            )
        self.temperature_ = fit_temperature(oof[seen], y_idx[seen], self.smoothing)
        self.oof_proba_ = softmax(oof[seen] / self.temperature_, axis=1)
        self.oof_y_ = y_idx[seen]
        self.oof_index_ = np.flatnonzero(seen)
        self.estimator_ = clone(template).fit(X, y_idx)
        self.n_features_in_ = X.shape[1]
        return self

    def decision_function(self, X: Any) -> np.ndarray:
        """Raw linear scores ``X @ coef_.T + intercept_`` of the model fitted on all data.

        Computed from the public ``coef_``/``intercept_`` directly: scikit-learn's per-call input
        validation costs more than the product itself for one case; the transposed
        coefficients are kept C-ordered (see :mod:`classifiers.linalg`).
        """
        check_is_fitted(self, "estimator_")
        coef = self.estimator_.coef_
        if X.shape[1] != coef.shape[1]:
            raise ValueError(f"X has {X.shape[1]} features, the model expects {coef.shape[1]}")
        raw = np.asarray(X @ self.transposed("coef", coef), dtype=np.float64)
        raw += self.estimator_.intercept_
        if raw.shape[1] == 1:  # binary: one column for the positive class
            raw = np.column_stack([-raw[:, 0] / 2, raw[:, 0] / 2])
        return raw

    def predict_proba(self, X: Any) -> np.ndarray:
        """Calibrated class probabilities, columns in the order of ``classes_``."""
        return np.asarray(softmax(self.decision_function(X) / self.temperature_, axis=1))

    def predict(self, X: Any) -> np.ndarray:
        return np.asarray(self.classes_[np.argmax(self.decision_function(X), axis=1)])
