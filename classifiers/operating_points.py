"""Per-class operating points: when may the model fill a field, and when must it abstain.

Contract:
- :func:`select_thresholds` picks, for each class, the lowest confidence threshold such that the
  predictions of that class at or above it reached the class's target precision on validation
  data (out-of-fold predictions, never the training fit), judged by the Wilson lower bound of
  the precision so that thin evidence does not earn a threshold. When even the lowest-confidence
  validation prediction keeps the precision on target, the threshold is capped at the target
  itself (calibrated confidences carry the argument below the observed range). A class that
  never reaches its target with at least ``min_support`` predictions gets threshold ``> 1``
  (the model always abstains on it): we refuse rather than guess.
- With ``pool=True`` a class whose own validation predictions are too few to earn a threshold
  borrows the **pooled** one: the same rule applied to every class's validation predictions
  together (correct = top label is the true one), at that class's target. Calibration is what
  makes confidences comparable across classes, so the pooled curve speaks for a thin class too;
  the class's own evidence may still veto it: when the Wilson *upper* bound of its own precision
  above the pooled threshold is below its target, its validation predictions say it falls short
  and it keeps ``> 1``. A class never predicted on validation gets nothing pooled. Such thresholds
  are marked ``pooled``; their validation precision and coverage are the class's own above it.
- :func:`decide` applies thresholds to one probability vector and returns the label or an
  abstention with exactly one reason, checked in this order:
  ``out_of_distribution`` (no known vocabulary / far from the training data) →
  ``low_confidence`` / ``close_runner_up`` (below the class threshold: ``close_runner_up`` when
  the top two are within ``margin`` of each other, since a reviewer then only has to choose between
  two, else ``low_confidence``) → ``close_runner_up`` even above the threshold when the margin is
  under ``min_margin``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

ABSTAIN_LOW_CONFIDENCE = "low_confidence"
ABSTAIN_CLOSE_RUNNER_UP = "close_runner_up"
ABSTAIN_OUT_OF_DISTRIBUTION = "out_of_distribution"
ABSTAIN_REASONS = (ABSTAIN_LOW_CONFIDENCE, ABSTAIN_CLOSE_RUNNER_UP, ABSTAIN_OUT_OF_DISTRIBUTION)

NEVER = 1.01
"""Threshold of a class that cannot meet its precision target: confidence never reaches it."""


@dataclass(frozen=True)
class ThresholdStats:
    """What validation said about one class's threshold (kept for reports and drift checks)."""

    threshold: float
    target_precision: float
    validation_precision: float | None
    validation_coverage: float
    n_predicted: int
    pooled: bool = False
    """True when the threshold was borrowed from all classes' pooled validation predictions."""


def select_thresholds(
    y_true: Sequence[int] | np.ndarray,
    proba: np.ndarray,
    n_classes: int,
    target_precision: float | Sequence[float] = 0.95,
    min_support: int = 5,
    z: float = 1.645,
    pool: bool = False,
) -> list[ThresholdStats]:
    """One :class:`ThresholdStats` per class index, chosen on validation predictions.

    ``y_true`` holds class indices; ``proba`` is ``(n, n_classes)``. ``target_precision`` is one
    number or one per class. Coverage is the share of the class's own predictions kept.
    The target must be met by the Wilson lower confidence bound of the validation precision
    (``z`` = 1.645: one-sided 95%), not by the point estimate, so a label with little validation
    evidence (20 predictions, all right) does not get a threshold it has not earned; ``z=0``
    uses the point estimate. ``pool`` lets such a label borrow the pooled threshold (module
    contract).
    """
    y = np.asarray(y_true)
    proba = np.asarray(proba)
    if isinstance(target_precision, int | float):
        targets = [float(target_precision)] * n_classes
    else:
        targets = [float(t) for t in target_precision]
    if len(targets) != n_classes:
        raise ValueError("need one target precision per class")
    pred = proba.argmax(axis=1)
    conf = proba.max(axis=1)
    hit = pred == y
    out: list[ThresholdStats] = []
    for k in range(n_classes):
        mask = pred == k
        n_pred = int(mask.sum())
        cut = _lowest_cut(conf[mask], hit[mask], targets[k], min_support, z)
        if cut is None:
            out.append(ThresholdStats(NEVER, targets[k], None, 0.0, n_pred))
            continue
        threshold, precision, kept = cut
        out.append(ThresholdStats(threshold, targets[k], precision, kept / n_pred, n_pred))
    if pool:
        pooled: dict[float, float | None] = {}  # one pooled cut per distinct target
        for k, stats in enumerate(out):
            if stats.threshold < NEVER or stats.n_predicted == 0:
                continue
            if targets[k] not in pooled:
                found = _lowest_cut(conf, hit, targets[k], min_support, z)
                pooled[targets[k]] = None if found is None else found[0]
            borrowed = pooled[targets[k]]
            if borrowed is None:
                continue
            own = (pred == k) & (conf >= borrowed)
            n_own = int(own.sum())
            own_precision = float(hit[own].mean()) if n_own else None
            if own_precision is not None:
                upper = wilson_upper_bound(np.array([own_precision]), np.array([n_own]), z)[0]
                if upper < targets[k]:
                    continue  # its own predictions say it falls short: no borrowing
            out[k] = ThresholdStats(
                borrowed,
                targets[k],
                own_precision,
                n_own / stats.n_predicted,
                stats.n_predicted,
                pooled=True,
            )
    return out


def _lowest_cut(
    conf: np.ndarray, correct: np.ndarray, target: float, min_support: int, z: float
) -> tuple[float, float, int] | None:
    """``(threshold, precision, kept)`` of the largest top-confidence set whose precision's
    Wilson lower bound meets ``target`` with at least ``min_support`` predictions, or ``None``."""
    n = len(conf)
    if n == 0:
        return None
    order = np.argsort(-conf, kind="stable")
    c_sorted = conf[order]
    kept_n = np.arange(1, n + 1)
    cum_prec = np.cumsum(correct[order].astype(np.float64)) / kept_n
    bound = wilson_lower_bound(cum_prec, kept_n, z)
    # only cut between distinct confidences: ties are kept or dropped together
    distinct = np.r_[c_sorted[1:] < c_sorted[:-1], True]
    ok = (bound >= target) & distinct & (kept_n >= min_support)
    if not ok.any():
        return None
    last = int(np.flatnonzero(ok).max())  # largest kept set that meets the target
    threshold = float(c_sorted[last])
    if last == n - 1:
        # Every validation prediction is kept and still meets the target, so validation says
        # nothing about confidences below its lowest one. Rather than freezing that accidental
        # minimum (brittle when validation is near-perfect), rely on calibration there: a
        # calibrated confidence >= target is enough.
        threshold = min(threshold, target)
    return threshold, float(cum_prec[last]), last + 1


def wilson_lower_bound(p: np.ndarray, n: np.ndarray, z: float) -> np.ndarray:
    """Lower end of the Wilson score interval for a proportion ``p`` observed on ``n`` trials."""
    p = np.asarray(p, dtype=np.float64)
    n = np.asarray(n, dtype=np.float64)
    if z == 0:
        return p
    z2 = z * z
    centre = p + z2 / (2 * n)
    spread = z * np.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    return np.asarray((centre - spread) / (1 + z2 / n))


def wilson_upper_bound(p: np.ndarray, n: np.ndarray, z: float) -> np.ndarray:
    """Upper end of the Wilson score interval (the lower one's mirror: ``1 - lower(1 - p)``)."""
    return np.asarray(1.0 - wilson_lower_bound(1.0 - np.asarray(p, dtype=np.float64), n, z))


@dataclass(frozen=True)
class Decision:
    """Outcome for one case and one target."""

    index: int | None
    top: int
    runner_up: int | None
    abstain_reason: str | None


def decide(
    proba_row: np.ndarray,
    thresholds: Sequence[float] | np.ndarray,
    *,
    ood: bool = False,
    margin: float = 0.1,
    min_margin: float = 0.0,
) -> Decision:
    """Apply the operating point to one probability vector (see module contract)."""
    batch = decide_batch(
        np.asarray(proba_row, dtype=np.float64).reshape(1, -1),
        thresholds,
        ood=np.array([ood]),
        margin=margin,
        min_margin=min_margin,
    )
    runner = int(batch.runner_up[0])
    index = int(batch.index[0])
    return Decision(
        index=None if index < 0 else index,
        top=int(batch.top[0]),
        runner_up=None if runner < 0 else runner,
        abstain_reason=batch.reasons[0],
    )


def resolve_targets(
    classes: Sequence[str],
    default: float,
    per_label: Mapping[str, float] | None,
) -> list[float]:
    """Target precision per class: ``per_label`` overrides ``default`` for the labels it names."""
    per_label = dict(per_label or {})
    for value in [default, *per_label.values()]:
        if not 0.0 < value <= 1.0:
            raise ValueError(f"target precision must be in (0, 1], got {value}")
    return [float(per_label.get(c, default)) for c in classes]


@dataclass(frozen=True)
class BatchDecision:
    """Vectorised :class:`Decision` for many rows: ``index`` is ``-1`` where the model abstains."""

    index: np.ndarray
    top: np.ndarray
    runner_up: np.ndarray
    confidence: np.ndarray
    runner_up_confidence: np.ndarray
    reasons: list[str | None]


def decide_batch(
    proba: np.ndarray,
    thresholds: Sequence[float] | np.ndarray,
    *,
    ood: np.ndarray | None = None,
    margin: float = 0.1,
    min_margin: float = 0.0,
) -> BatchDecision:
    """:func:`decide` for every row of ``proba`` at once (same rules, same order)."""
    proba = np.asarray(proba, dtype=np.float64)
    n, k = proba.shape
    thr = np.asarray(thresholds, dtype=np.float64)
    rows = np.arange(n)
    top = proba.argmax(axis=1)
    conf = proba[rows, top]
    if k > 1:
        masked = proba.copy()
        masked[rows, top] = -np.inf
        runner = masked.argmax(axis=1)
        runner_conf = proba[rows, runner]
    else:
        runner = np.full(n, -1)
        runner_conf = np.zeros(n)
    gap = conf - runner_conf
    ood_mask = np.zeros(n, dtype=bool) if ood is None else np.asarray(ood, dtype=bool)
    below = conf < thr[top]
    close = gap < margin
    reasons: list[str | None] = [None] * n
    index = top.copy()
    for i in np.flatnonzero(ood_mask | below | (gap < min_margin)):
        if ood_mask[i]:
            reasons[i] = ABSTAIN_OUT_OF_DISTRIBUTION
        elif below[i]:
            reasons[i] = ABSTAIN_CLOSE_RUNNER_UP if close[i] else ABSTAIN_LOW_CONFIDENCE
        else:
            reasons[i] = ABSTAIN_CLOSE_RUNNER_UP
        index[i] = -1
    return BatchDecision(index, top, runner, conf, runner_conf, reasons)
