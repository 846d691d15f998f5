"""Classifier quality benchmark: grouped CV on Bitext triage categories, stratified CV on BANKING77.

Usage (from the repository root, data outside the repo):
    nice .venv/bin/python bench/classifier_quality.py \
        --bitext ../shared/data/bitext/bench_train_2023.csv \
        --banking77 ../shared/data/banking77/train.csv

For each fold it trains the reference baseline (word 1-2 + char_wb 2-5 TF-IDF, LinearSVC C=1)
and the default CaseModel on the same training part and scores both on the held-out part.
Bitext folds keep near-duplicate groups (masked token multisets) on one side; a stricter
"keyword hold-out" grouping (texts grouped by their rarest content word) is reported as well.
Nothing here tunes on the held-out parts: the CaseModel runs with its defaults.
"""

from __future__ import annotations

import argparse
import csv
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS, TfidfVectorizer
from sklearn.metrics import accuracy_score, f1_score
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold
from sklearn.pipeline import make_pipeline, make_union
from sklearn.svm import LinearSVC

from classifiers.case_model import CaseModel
from classifiers.evaluation import evaluate_model
from classifiers.features import FeatureSpec
from classifiers.grouping import group_key, near_duplicate_groups


def read_csv(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def baseline() -> Any:
    return make_pipeline(
        make_union(
            TfidfVectorizer(sublinear_tf=True, ngram_range=(1, 2)),
            TfidfVectorizer(sublinear_tf=True, analyzer="char_wb", ngram_range=(2, 5), min_df=2),
        ),
        LinearSVC(C=1.0),
    )


_GENERIC = set(ENGLISH_STOP_WORDS) | {
    "help", "assistance", "want", "need", "like", "know", "tell", "show", "let", "ask",
    "problem", "problems", "question", "questions", "info", "information", "possible",
    "trying", "try", "could", "would", "can", "ur", "pls", "please", "assist", "support",
}  # fmt: skip


def keyword_groups(texts: list[str]) -> list[int]:
    """Group texts by their rarest content word: whole phrasings are held out together."""
    content = [[w for w in group_key(t).split() if w not in _GENERIC and len(w) > 2] for t in texts]
    df = Counter(w for c in content for w in set(c))
    ids: dict[str, int] = {}
    return [
        ids.setdefault(min(c, key=lambda w: (df[w], w)) if c else "", len(ids)) for c in content
    ]


def run_folds(
    rows: list[dict[str, Any]],
    label: str,
    splits: list[tuple[np.ndarray, np.ndarray]],
    groups: list[int] | None,
) -> dict[str, Any]:
    texts = np.array([r["text"] for r in rows], dtype=object)
    y = np.array([r[label] for r in rows], dtype=object)
    base_f1, base_acc, ours = [], [], []
    fit_seconds = []
    for k, (tr, te) in enumerate(splits):
        b = baseline().fit(texts[tr], y[tr])
        pb = b.predict(texts[te])
        base_f1.append(f1_score(y[te], pb, average="macro"))
        base_acc.append(accuracy_score(y[te], pb))
        train_rows = [{"text": rows[i]["text"], label: rows[i][label]} for i in tr]
        test_rows = [{"text": rows[i]["text"], label: rows[i][label]} for i in te]
        started = time.perf_counter()
        model = CaseModel(spec=FeatureSpec(text_columns=("text",)), targets=(label,))
        model.fit(train_rows, groups=None if groups is None else [groups[i] for i in tr])
        fit_seconds.append(time.perf_counter() - started)
        ours.append(evaluate_model(model, test_rows)["targets"][label])
        m = ours[-1]
        print(
            f"  fold {k}: baseline macro-F1 {base_f1[-1]:.4f} acc {base_acc[-1]:.4f} | ours "
            f"macro-F1 {m['macro_f1']:.4f} acc {m['accuracy']:.4f} ECE {m['ece']:.4f} coverage "
            f"{m['coverage_at_precision']['coverage']:.4f} @ realized precision "
            f"{m['coverage_at_precision']['realized_precision']} (fit {fit_seconds[-1]:.1f}s)",
            flush=True,
        )

    def mean(key: str) -> float:
        return float(np.mean([m[key] for m in ours]))

    def cov(key: str) -> float:
        return float(np.mean([m["coverage_at_precision"][key] or 0.0 for m in ours]))

    return {
        "baseline_macro_f1": float(np.mean(base_f1)),
        "baseline_accuracy": float(np.mean(base_acc)),
        "macro_f1": mean("macro_f1"),
        "accuracy": mean("accuracy"),
        "ece": mean("ece"),
        "coverage": cov("coverage"),
        "realized_precision": cov("realized_precision"),
        "oracle_coverage": cov("oracle_coverage"),
        "fit_seconds": float(np.mean(fit_seconds)),
    }


def report(name: str, r: dict[str, Any]) -> None:
    print(
        f"{name}: baseline macro-F1 {r['baseline_macro_f1']:.4f} acc {r['baseline_accuracy']:.4f}"
        f" | CaseModel macro-F1 {r['macro_f1']:.4f} acc {r['accuracy']:.4f} ECE {r['ece']:.4f}"
        f" coverage@0.95 {r['coverage']:.4f} (realized precision {r['realized_precision']:.4f},"
        f" oracle coverage {r['oracle_coverage']:.4f}) fit {r['fit_seconds']:.1f}s",
        flush=True,
    )


def bitext(path: Path, folds: int) -> None:
    rows = read_csv(path)
    texts = [r["text"] for r in rows]
    y = np.array([r["triage_category"] for r in rows])
    for name, groups in (
        ("near-duplicate groups", near_duplicate_groups(texts)),
        ("keyword hold-out groups", keyword_groups(texts)),
    ):
        print(f"Bitext triage_category, {folds}-fold CV over {len(set(groups))} {name}")
        splitter = StratifiedGroupKFold(folds, shuffle=True, random_state=0)
        splits = list(splitter.split(np.zeros(len(y)), y, groups))
        report(f"Bitext [{name}]", run_folds(rows, "triage_category", splits, groups))


def banking77(path: Path, folds: int) -> None:
    rows = read_csv(path)
    y = np.array([r["category"] for r in rows])
    print(f"BANKING77, stratified {folds}-fold CV on the official train split ({len(rows)} rows)")
    splits = list(StratifiedKFold(folds, shuffle=True, random_state=0).split(np.zeros(len(y)), y))
    report("BANKING77", run_folds(rows, "category", splits, None))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--bitext", type=Path, default=Path("../shared/data/bitext/bench_train_2023.csv")
    )
    parser.add_argument(
        "--banking77", type=Path, default=Path("../shared/data/banking77/train.csv")
    )
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--only", choices=("bitext", "banking77"), default=None)
    args = parser.parse_args()
    if args.only in (None, "bitext"):
        bitext(args.bitext, args.folds)
    if args.only in (None, "banking77"):
        banking77(args.banking77, args.folds)


if __name__ == "__main__":
    main()
