"""Score CaseModel on one CV fold, alone and blended with a fine-tuned encoder's head.

Reads the folder written by bench/finetune_top_layers.py (``frozen.npy``, ``tuned.npy``,
``head_log_proba.npy``, ``labels.json``, ``split.json``) and runs in the project's virtualenv:

    nice .venv/bin/python bench/blend_finetuned_head.py --data ../shared/data/banking77/train.csv \
        --dir /tmp/mpnet-top2-fold0

Honest protocol: the blend weight ``w`` in ``(1 - w) * log p_CaseModel + w * log p_head`` is
chosen on the inner validation rows, with a CaseModel fitted on the inner-training rows only (the
head never saw the inner validation rows either). Then CaseModel is refitted on the whole
training part and the chosen ``w`` is applied once to the fold's test rows. The best weight *on
the test rows* is printed too, labelled as hindsight, to show how much the choice costs.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.finetune_encoder import read_rows
from classifiers.case_model import CaseModel
from classifiers.features import FeatureSpec

WEIGHTS = tuple(round(w, 2) for w in np.arange(0.0, 1.0001, 0.1))


def case_log_proba(
    texts: list[str],
    labels: list[str],
    names: list[str],
    vectors: np.ndarray | None,
    fit: np.ndarray,
    score: np.ndarray,
) -> np.ndarray:
    """CaseModel fitted on rows ``fit``; log-probabilities of rows ``score``, columns ``names``."""
    spec = FeatureSpec(
        text_columns=("text",), embedding_dim=None if vectors is None else vectors.shape[1]
    )
    records = [{"text": t, "label": label} for t, label in zip(texts, labels, strict=True)]
    started = time.perf_counter()
    model = CaseModel(spec=spec, targets=("label",)).fit(
        [records[i] for i in fit], embeddings=None if vectors is None else vectors[fit]
    )
    X = model.transform(
        [records[i] for i in score], embeddings=None if vectors is None else vectors[score]
    )
    estimator = model.estimators_["label"]
    proba = estimator.predict_proba(X)
    order = [list(estimator.classes_).index(n) for n in names]
    seconds = time.perf_counter() - started
    print(f"  CaseModel fit+score on {len(fit)}/{len(score)} rows: {seconds:.0f}s")
    return np.log(np.clip(proba[:, order], 1e-12, None))


def blend_accuracy(case_lp: np.ndarray, head_lp: np.ndarray, y: np.ndarray, w: float) -> float:
    return float((((1 - w) * case_lp + w * head_lp).argmax(1) == y).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--text-column", default="text")
    parser.add_argument("--label-column", default="category")
    parser.add_argument("--dir", type=Path, required=True, help="finetune_top_layers.py --out")
    parser.add_argument(
        "--vectors",
        choices=("frozen", "tuned", "none"),
        default="frozen",
        help="which vectors CaseModel gets (tuned ones are cleaner on rows they were tuned on)",
    )
    args = parser.parse_args()
    texts, labels = read_rows(args.data, args.text_column, args.label_column)
    names = json.loads((args.dir / "labels.json").read_text(encoding="utf-8"))
    split = {
        k: np.asarray(v)
        for k, v in json.loads((args.dir / "split.json").read_text()).items()
        if isinstance(v, list)
    }
    y = np.asarray([names.index(label) for label in labels])
    head_lp = np.load(args.dir / "head_log_proba.npy")
    vectors = None if args.vectors == "none" else np.load(args.dir / f"{args.vectors}.npy")

    inner_case = case_log_proba(
        texts, labels, names, vectors, split["inner_train"], split["inner_val"]
    )
    y_val = y[split["inner_val"]]
    val_scores = {
        w: blend_accuracy(inner_case, head_lp[split["inner_val"]], y_val, w) for w in WEIGHTS
    }
    chosen = max(WEIGHTS, key=lambda w: (val_scores[w], -abs(w - 0.5)))
    print(
        "inner-val accuracy by head weight: "
        + " ".join(f"{w:g}:{a:.4f}" for w, a in val_scores.items())
    )

    test = split["test"]
    case_lp = case_log_proba(texts, labels, names, vectors, split["train"], test)
    y_test = y[test]
    test_scores = {w: blend_accuracy(case_lp, head_lp[test], y_test, w) for w in WEIGHTS}
    hindsight = max(WEIGHTS, key=lambda w: test_scores[w])
    print(f"\n== figures (fold test, {len(test)} rows) ==")
    print(f"CaseModel + {args.vectors} vectors alone: {test_scores[0.0]:.4f}")
    print(f"fine-tuned head alone:                {test_scores[1.0]:.4f}")
    print(f"blend, weight {chosen:g} chosen on inner val: {test_scores[chosen]:.4f}")
    best = test_scores[hindsight]
    print(f"(hindsight: best weight on the test rows {hindsight:g} -> {best:.4f})")


if __name__ == "__main__":
    main()
