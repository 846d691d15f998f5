"""Which label smoothing of the temperature fit is calibrated under a wording shift.

On the draws of ``bench/bitext_seen_table_proxy.py`` (same halving, shares and seeds), fits
the product's CaseModel once per draw (``--class-weight balanced``, near-duplicate validation
groups, as ``triage train`` does), then refits only the temperature on that model's own
out-of-fold scores for each ``--smoothing`` value (T does not move the ranking, so one fit
serves every value) and scores half B: ECE, the gap between mean confidence and accuracy
(negative: under-confident), coverage at the 0.95 operating points re-chosen at that
temperature, and their realized precision. Every figure is read where the reference baseline
scores ``--baseline-target`` (0.879), linear between the shares around it, as the proxy does::

    nice .venv/bin/python bench/calibration_grid.py --split DIR --embeddings FILE.npy \\
        --smoothing 0,0.002,0.003,0.005,0.01

``DIR`` and ``FILE.npy`` are the proxy's ``split`` folder and the Bitext file encoded with the
table built on that halving's seen texts (see the proxy's docstring).

``--hold-out-flag Z`` instead trains one model on every row without that Bitext language flag
(Z: typos, C: colloquial, K: keyword style, ...) and tests on the rows with it: a full-size
model meeting a register it never saw, which the few-hundred-row draws cannot show.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from scipy.special import softmax
from sklearn.metrics import f1_score
from sklearn.model_selection import GroupShuffleSplit

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import classifier_quality as cq  # noqa: E402
from bench.bitext_seen_table_proxy import (  # noqa: E402
    LABEL,
    _interpolate,
    _rows,
    add_draw_arguments,
)
from classifiers.calibration import fit_temperature  # noqa: E402
from classifiers.case_model import CaseModel  # noqa: E402
from classifiers.evaluation import expected_calibration_error  # noqa: E402
from classifiers.features import FeatureSpec, RecordFeaturizer  # noqa: E402
from classifiers.operating_points import decide_batch, resolve_targets, select_thresholds  # noqa: E402

METRICS = ("ece", "gap", "coverage", "realized_precision")


def _score(
    model: CaseModel,
    oof_scores: np.ndarray,
    T: float,
    test_scores: np.ndarray,
    ood: np.ndarray,
    y_test: np.ndarray,
) -> dict[str, float]:
    """Half B's figures with the temperature ``T`` and operating points re-chosen at it
    (out-of-distribution abstentions applied as the product applies them)."""
    clf = model.estimators_[LABEL]
    classes = np.array([str(c) for c in clf.classes_])
    targets = resolve_targets(list(classes), model.target_precision, None)
    stats = select_thresholds(
        clf.oof_y_,
        softmax(oof_scores / T, axis=1),
        len(classes),
        targets,
        model.min_support,
        pool=model.threshold_pooling,
    )
    proba = softmax(test_scores / T, axis=1)
    # a test label the draw never trained on is a miss (compared as strings, not indices)
    correct = classes[proba.argmax(axis=1)] == y_test
    thresholds = np.array([s.threshold for s in stats])
    dec = decide_batch(proba, thresholds, ood=ood, margin=model.margin)
    kept = dec.index >= 0
    conf = proba.max(axis=1)
    return {
        "ece": expected_calibration_error(conf, correct),
        "gap": float(conf.mean() - correct.mean()),
        "coverage": float(kept.mean()),
        "realized_precision": float(correct[kept].mean()) if kept.any() else float("nan"),
    }


class Data:
    """The Bitext file, its encoder vectors and the feature spec, loaded once."""

    def __init__(self, path: Path, embeddings: Path) -> None:
        self.rows, self.y, self.groups = _rows(path)
        self.texts = np.array([r["text"] for r in self.rows], dtype=object)
        self.recs = [{"text": r["text"], LABEL: r[LABEL]} for r in self.rows]
        self.emb = np.load(embeddings)
        self.spec = FeatureSpec(text_columns=("text",), embedding_dim=self.emb.shape[1])


def fit_and_score(
    data: Data, tr: np.ndarray, te: np.ndarray, grid: list[float]
) -> tuple[float, float, dict[tuple[float, str], float]]:
    """Baseline macro-F1, CaseModel macro-F1 and ``{(smoothing, metric): value}`` on ``te``."""
    y = data.y
    pred = cq.baseline().fit(data.texts[tr], y[tr]).predict(data.texts[te])
    baseline = float(f1_score(y[te], pred, average="macro"))
    model = CaseModel(
        spec=data.spec, targets=(LABEL,), class_weight="balanced", featurizer=RecordFeaturizer()
    ).fit([data.recs[i] for i in tr], embeddings=data.emb[tr])
    clf = model.estimators_[LABEL]
    X_test = model.transform([data.recs[i] for i in te], embeddings=data.emb[te])
    test_scores = clf.decision_function(X_test)
    ood = model.out_of_distribution(X_test)
    top = clf.classes_[test_scores.argmax(axis=1)].astype(object)
    macro_f1 = float(f1_score(y[te], top, average="macro"))
    # softmax is shift-invariant per row, so T * log p recovers the out-of-fold scores
    oof_scores = np.log(np.clip(clf.oof_proba_, 1e-300, None)) * clf.temperature_
    scores = {}
    for e in grid:
        T = fit_temperature(oof_scores, clf.oof_y_, e)
        for metric, value in _score(model, oof_scores, T, test_scores, ood, y[te]).items():
            scores[(e, metric)] = value
    return baseline, macro_f1, scores


def _line(e: float, values: dict[str, float | None]) -> str:
    parts = []
    for metric in METRICS:
        value = values[metric]
        shown = "n/a" if value is None else f"{value:+.4f}" if metric == "gap" else f"{value:.4f}"
        parts.append(f"{metric.replace('_', '-')} {shown}")
    return f"  smoothing {e:<6g} " + "  ".join(parts)


def hold_out_flag(data: Data, flag: str, grid: list[float]) -> None:
    has = np.array([flag in r["flags"] for r in data.rows])
    tr, te = np.flatnonzero(~has), np.flatnonzero(has)
    if len(te) == 0 or len(tr) == 0:
        raise SystemExit(f"flag {flag!r}: no rows on one side ({len(tr)} without, {len(te)} with)")
    baseline, macro_f1, scores = fit_and_score(data, tr, te, grid)
    print(
        f"trained on {len(tr)} rows without flag {flag}, tested on {len(te)} with it: "
        f"baseline macro-F1 {baseline:.4f}, CaseModel {macro_f1:.4f}"
    )
    for e in grid:
        print(_line(e, {metric: scores[(e, metric)] for metric in METRICS}))


def draws(data: Data, split: Path, fractions: list[float], seeds: int, target: float,
          grid: list[float]) -> None:  # fmt: skip
    halves = np.load(split / "split.npz")
    seen, unseen = halves["seen"], halves["unseen"]
    baseline: list[float] = []
    macro_f1: list[float] = []
    curves: dict[tuple[float, str], list[float]] = {}
    for fraction in sorted(fractions):
        per_draw: dict[tuple[float, str], list[float]] = {}
        base_scores, f1s = [], []
        for seed in range(seeds):
            part, _ = next(
                GroupShuffleSplit(1, train_size=fraction, random_state=seed).split(
                    seen, data.y[seen], [data.groups[i] for i in seen]
                )
            )
            base, f1, scores = fit_and_score(data, seen[part], unseen, grid)
            base_scores.append(base)
            f1s.append(f1)
            for key, value in scores.items():
                per_draw.setdefault(key, []).append(value)
        baseline.append(float(np.mean(base_scores)))
        macro_f1.append(float(np.mean(f1s)))
        for key, values in per_draw.items():
            curves.setdefault(key, []).append(float(np.nanmean(values)))
        print(
            f"share {fraction:g}: baseline macro-F1 {baseline[-1]:.4f}, CaseModel "
            f"{macro_f1[-1]:.4f}; ECE by smoothing "
            + ", ".join(f"{e:g}: {curves[(e, 'ece')][-1]:.4f}" for e in grid),
            flush=True,
        )
    f1_at = _interpolate(baseline, macro_f1, target)
    if f1_at is None:
        print("the baseline never crossed the target: add fractions")
        return
    print(f"read where the baseline scores {target} (CaseModel macro-F1 {f1_at:.4f}):")
    for e in grid:
        print(_line(e, {m: _interpolate(baseline, curves[(e, m)], target) for m in METRICS}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--data", type=Path, default=Path("../shared/data/bitext/bench_train_2023.csv")
    )
    parser.add_argument("--split", type=Path, help="the proxy's split folder (draws)")
    parser.add_argument("--embeddings", type=Path, required=True, help=".npy of the Bitext file")
    parser.add_argument(
        "--hold-out-flag", default=None, metavar="FLAG", help="one split by language flag instead"
    )
    parser.add_argument("--smoothing", default="0,0.002,0.003,0.005,0.01")
    add_draw_arguments(parser)
    args = parser.parse_args()
    grid = [float(e) for e in args.smoothing.split(",")]
    data = Data(args.data, args.embeddings)
    if args.hold_out_flag:
        hold_out_flag(data, args.hold_out_flag, grid)
        return
    if args.split is None:
        parser.error("--split is needed unless --hold-out-flag is given")
    fractions = [float(f) for f in args.fractions.split(",")]
    draws(data, args.split, fractions, args.seeds, args.baseline_target, grid)


if __name__ == "__main__":
    main()
