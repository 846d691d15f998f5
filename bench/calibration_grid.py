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
        clf.oof_y_, softmax(oof_scores / T, axis=1), len(classes), targets, model.min_support
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--data", type=Path, default=Path("../shared/data/bitext/bench_train_2023.csv")
    )
    parser.add_argument("--split", type=Path, required=True, help="the proxy's split folder")
    parser.add_argument("--embeddings", type=Path, required=True, help=".npy of the Bitext file")
    parser.add_argument("--smoothing", default="0,0.002,0.003,0.005,0.01")
    add_draw_arguments(parser)
    args = parser.parse_args()
    grid = [float(e) for e in args.smoothing.split(",")]
    rows, y, groups = _rows(args.data)
    texts = np.array([r["text"] for r in rows], dtype=object)
    recs = [{"text": r["text"], LABEL: r[LABEL]} for r in rows]
    emb = np.load(args.embeddings)
    halves = np.load(args.split / "split.npz")
    seen, unseen = halves["seen"], halves["unseen"]
    spec = FeatureSpec(text_columns=("text",), embedding_dim=emb.shape[1])
    baseline: list[float] = []
    macro_f1: list[float] = []
    curves: dict[tuple[float, str], list[float]] = {}
    for fraction in sorted(float(f) for f in args.fractions.split(",")):
        draws: dict[tuple[float, str], list[float]] = {}
        base_scores, f1s = [], []
        for seed in range(args.seeds):
            part, _ = next(
                GroupShuffleSplit(1, train_size=fraction, random_state=seed).split(
                    seen, y[seen], [groups[i] for i in seen]
                )
            )
            tr = seen[part]
            pred = cq.baseline().fit(texts[tr], y[tr]).predict(texts[unseen])
            base_scores.append(f1_score(y[unseen], pred, average="macro"))
            model = CaseModel(
                spec=spec,
                targets=(LABEL,),
                class_weight="balanced",
                featurizer=RecordFeaturizer(),
            ).fit([recs[i] for i in tr], embeddings=emb[tr])
            clf = model.estimators_[LABEL]
            X_test = model.transform([recs[i] for i in unseen], embeddings=emb[unseen])
            test_scores = clf.decision_function(X_test)
            ood = model.out_of_distribution(X_test)
            f1s.append(
                f1_score(
                    y[unseen], clf.classes_[test_scores.argmax(axis=1)].astype(object),
                    average="macro",
                )
            )  # fmt: skip
            # softmax is shift-invariant per row, so T * log p recovers the out-of-fold scores
            oof_scores = np.log(np.clip(clf.oof_proba_, 1e-300, None)) * clf.temperature_
            for e in grid:
                T = fit_temperature(oof_scores, clf.oof_y_, e)
                scored = _score(model, oof_scores, T, test_scores, ood, y[unseen])
                for metric, value in scored.items():
                    draws.setdefault((e, metric), []).append(value)
        baseline.append(float(np.mean(base_scores)))
        macro_f1.append(float(np.mean(f1s)))
        for key, values in draws.items():
            curves.setdefault(key, []).append(float(np.nanmean(values)))
        print(
            f"share {fraction:g}: baseline macro-F1 {baseline[-1]:.4f}, CaseModel "
            f"{macro_f1[-1]:.4f}; ECE by smoothing "
            + ", ".join(f"{e:g}: {curves[(e, 'ece')][-1]:.4f}" for e in grid),
            flush=True,
        )
    target = args.baseline_target
    f1_at = _interpolate(baseline, macro_f1, target)
    if f1_at is None:
        print("the baseline never crossed the target: add fractions")
        return
    print(f"read where the baseline scores {target} (CaseModel macro-F1 {f1_at:.4f}):")
    for e in grid:
        parts = []
        for metric in METRICS:
            value = _interpolate(baseline, curves[(e, metric)], target)
            parts.append(f"{metric.replace('_', '-')} {value:+.4f}" if metric == "gap" else
                         f"{metric.replace('_', '-')} {value:.4f}")  # fmt: skip
        print(f"  smoothing {e:<6g} " + "  ".join(parts))


if __name__ == "__main__":
    main()
