"""Classifier quality benchmark: grouped CV on Bitext triage categories, stratified CV on BANKING77.

Usage (from the repository root, data outside the repo):
    nice .venv/bin/python bench/classifier_quality.py \
        --bitext ../shared/data/bitext/bench_train_2023.csv \
        --banking77 ../shared/data/banking77/train.csv

For each fold it trains the reference baseline (word 1-2 + char_wb 2-5 TF-IDF, LinearSVC C=1)
and the default CaseModel on the same training part and scores both on the held-out part; with
``--bitext-embeddings`` / ``--banking77-embeddings`` (vectors made by bench/classifier_encode.py:
the static encoder, or all-MiniLM-L6-v2 from the optional extra) it also scores CaseModel +
those embeddings.
Bitext folds keep near-duplicate groups (masked token multisets) on one side; a stricter
"keyword hold-out" grouping (texts grouped by their rarest content word) is reported as well.
Nothing here tunes on the held-out parts: the CaseModel runs with its defaults.
"""

from __future__ import annotations

import argparse
import copy
import csv
import time
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS, TfidfVectorizer
from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score
from sklearn.model_selection import (
    GroupShuffleSplit,
    StratifiedGroupKFold,
    StratifiedKFold,
    train_test_split,
)
from sklearn.pipeline import make_pipeline, make_union
from sklearn.svm import LinearSVC

from classifiers.calibration import DEFAULT_SMOOTHING
from classifiers.case_model import CaseModel
from classifiers.evaluation import evaluate_model
from classifiers.features import FeatureSpec, RecordFeaturizer
from classifiers.grouping import group_key, near_duplicate_groups

EMBEDDINGS_LABEL = "emb"
Vectors = np.ndarray | list[np.ndarray]  # one array for all folds, or one per fold
CLASS_WEIGHT: str | None = None
SMOOTHING: float | None = None  # CaseModel's temperature label smoothing; None: its default
C = 1.0  # CaseModel's LinearSVC regularisation (its default)
EMBEDDING_WEIGHT = 2.0  # RecordFeaturizer's default weight of the embedding block
MAX_FOLDS: int | None = None  # run only the first N folds (quick comparisons)
COMPARE_POOLING = False  # also score each fitted CaseModel with threshold pooling switched off
NO_POOLING = " no-pool"


def read_csv(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def write_texts(path: Path, texts: list[str]) -> None:
    """A CSV with one ``text`` column: a corpus for bench/distill_static_encoder.py."""
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text"])
        writer.writerows([t] for t in texts)


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


def add_class_weight_argument(parser: argparse.ArgumentParser) -> None:
    """``--class-weight none|balanced`` for CaseModel (sets ``CLASS_WEIGHT`` once parsed)."""
    parser.add_argument(
        "--class-weight",
        choices=("none", "balanced"),
        default="none",
        help="CaseModel's label weighting (the baseline keeps the reference's, none; "
        "`triage train` defaults to balanced)",
    )


def add_smoothing_argument(parser: argparse.ArgumentParser) -> None:
    """``--smoothing E`` for CaseModel's temperature fit (sets ``SMOOTHING`` once parsed)."""
    parser.add_argument(
        "--smoothing",
        type=float,
        default=None,
        help="label smoothing of CaseModel's temperature fit (default: the product's)",
    )


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
    embeddings: Vectors | Mapping[str, Vectors] | None = None,
    verbose: bool = True,
) -> dict[str, dict[str, float]]:
    """Baseline, default CaseModel and (with ``embeddings``) CaseModel + embeddings per fold.

    Vectors are one array for every fold, or a list with one array per fold (from an encoder
    built for that fold, e.g. a table that saw only the fold's training texts). A mapping
    ``{name: vectors}`` scores one ``CaseModel+name`` variant per entry on the same folds,
    fitting the baseline and the plain CaseModel once; bare vectors are named
    ``EMBEDDINGS_LABEL``.
    """
    texts = np.array([r["text"] for r in rows], dtype=object)
    y = np.array([r[label] for r in rows], dtype=object)
    recs = [{"text": r["text"], label: r[label]} for r in rows]
    named: dict[str, Vectors] = {}
    if isinstance(embeddings, Mapping):
        named.update(embeddings)
    elif embeddings is not None:
        named[EMBEDDINGS_LABEL] = embeddings
    variants: dict[str, list[dict[str, float | None]]] = {"baseline": [], "CaseModel": []}
    variants.update({f"CaseModel+{name}": [] for name in named})
    models = list(variants)[1:]
    if COMPARE_POOLING:
        variants.update({name + NO_POOLING: [] for name in models})
    for k, (tr, te) in enumerate(splits[:MAX_FOLDS]):
        started = time.perf_counter()
        pred = baseline().fit(texts[tr], y[tr]).predict(texts[te])
        variants["baseline"].append(
            {
                "macro_f1": f1_score(y[te], pred, average="macro"),
                "accuracy": accuracy_score(y[te], pred),
                "balanced_accuracy": balanced_accuracy_score(y[te], pred),
                "fit_seconds": time.perf_counter() - started,
            }
        )
        fold_groups = None if groups is None else [groups[i] for i in tr]
        for name in models:
            vectors = named.get(name.partition("+")[2])  # None for the plain CaseModel
            emb = vectors[k] if isinstance(vectors, list) else vectors
            spec = FeatureSpec(
                text_columns=("text",), embedding_dim=None if emb is None else emb.shape[1]
            )
            started = time.perf_counter()
            model = CaseModel(
                spec=spec,
                targets=(label,),
                class_weight=CLASS_WEIGHT,
                C=C,
                smoothing=DEFAULT_SMOOTHING if SMOOTHING is None else SMOOTHING,
                featurizer=RecordFeaturizer(embedding_weight=EMBEDDING_WEIGHT),
            ).fit(
                [recs[i] for i in tr],
                embeddings=None if emb is None else emb[tr],
                groups=fold_groups,
            )
            fit_seconds = time.perf_counter() - started
            scored = [(name, model)]
            if COMPARE_POOLING:
                # same fit, thresholds re-chosen from the same out-of-fold predictions
                plain = copy.deepcopy(model).set_params(threshold_pooling=False)
                scored.append((name + NO_POOLING, plain.choose_operating_points()))
            for variant, fitted in scored:
                m = evaluate_model(
                    fitted, [recs[i] for i in te], embeddings=None if emb is None else emb[te]
                )["targets"][label]
                cov = m["coverage_at_precision"]
                variants[variant].append(
                    {
                        "macro_f1": m["macro_f1"],
                        "accuracy": m["accuracy"],
                        "balanced_accuracy": _balanced_accuracy(m["per_class"]),
                        "ece": m["ece"],
                        "coverage": cov["coverage"],
                        # None when every prediction abstained: left out of the mean, not a zero
                        "realized_precision": cov["realized_precision"],
                        "oracle_coverage": cov["oracle_coverage"],
                        # labels whose own realized precision (>= 20 kept) fell under target
                        "labels_below_target": len(cov["labels_below_target"]),
                        "fit_seconds": fit_seconds,
                    }
                )
        if verbose:
            print(
                f"  fold {k}: "
                + " | ".join(
                    f"{n} acc {v[-1]['accuracy']:.4f} bal {v[-1]['balanced_accuracy']:.4f} "
                    f"macro-F1 {v[-1]['macro_f1']:.4f}"
                    for n, v in variants.items()
                ),
                flush=True,
            )
    return {n: {key: _mean([f[key] for f in v]) for key in v[0]} for n, v in variants.items()}


def _balanced_accuracy(per_class: dict[str, dict[str, float]]) -> float:
    """Mean recall over the labels present: the accuracy a class-balanced test set would show.

    BANKING77's official test holds 40 texts per intent while its training split runs from 35
    to 187, so this, not plain accuracy on stratified folds, is the CV figure to read beside it.
    """
    return float(np.mean([c["recall"] for c in per_class.values() if c["support"] > 0]))


def _mean(values: list[float | None]) -> float:
    """Mean of the values that exist (NaN when none do)."""
    present = [v for v in values if v is not None]
    return float(np.mean(present)) if present else float("nan")


def report(title: str, result: dict[str, dict[str, float]]) -> None:
    print(title)
    for name, r in result.items():
        line = (
            f"  {name:<17} macro-F1 {r['macro_f1']:.4f}  accuracy {r['accuracy']:.4f}"
            f"  balanced accuracy {r['balanced_accuracy']:.4f}"
        )
        if "ece" in r:
            line += (
                f"  ECE {r['ece']:.4f}  coverage@0.95 {r['coverage']:.4f} (realized precision "
                f"{r['realized_precision']:.4f}; oracle coverage {r['oracle_coverage']:.4f}; "
                f"labels below target {r['labels_below_target']:.1f})"
            )
        line += f"  fit {r['fit_seconds']:.1f}s"
        print(line, flush=True)


def low_resource_splits(y: np.ndarray, groups: list[int]) -> list[tuple[np.ndarray, np.ndarray]]:
    """The Bitext low-resource proxy's draws: 5% of the keyword groups to train on, the rest to
    test on, seeds 0-2."""
    return [
        next(GroupShuffleSplit(1, train_size=0.05, random_state=seed).split(y, y, groups))
        for seed in range(3)
    ]


def banking77_folds(y: np.ndarray, folds: int = 5) -> list[tuple[np.ndarray, np.ndarray]]:
    """BANKING77's stratified folds (shuffled, seed 0): the same test folds in every bench."""
    return list(StratifiedKFold(folds, shuffle=True, random_state=0).split(np.zeros(len(y)), y))


def add_data_arguments(parser: argparse.ArgumentParser) -> None:
    """``--bitext`` and ``--banking77``: the training files, by default beside the repository."""
    parser.add_argument(
        "--bitext", type=Path, default=Path("../shared/data/bitext/bench_train_2023.csv")
    )
    parser.add_argument(
        "--banking77", type=Path, default=Path("../shared/data/banking77/train.csv")
    )


def bitext(
    path: Path, folds: int, embeddings: np.ndarray | None, *, proxy_only: bool = False
) -> None:
    rows = read_csv(path)
    texts = [r["text"] for r in rows]
    y = np.array([r["triage_category"] for r in rows])
    kw_groups = keyword_groups(texts)
    grouped_cvs = (
        ("near-duplicate groups", near_duplicate_groups(texts)),
        ("keyword hold-out groups", kw_groups),
    )
    for name, groups in () if proxy_only else grouped_cvs:
        print(f"Bitext triage_category, {folds}-fold CV over {len(set(groups))} {name}")
        splitter = StratifiedGroupKFold(folds, shuffle=True, random_state=0)
        splits = list(splitter.split(np.zeros(len(y)), y, groups))
        result = run_folds(rows, "triage_category", splits, groups, embeddings)
        report(f"Bitext [{name}], mean over folds:", result)
    # Both grouped CVs saturate (~0.999) although the reference baseline scores 0.879 on the
    # hidden release. Training on a small share of the phrasings and testing on the rest puts
    # the baseline near that reference, so it is a closer proxy for a shift in wording.
    print("Bitext low-resource proxy: train on 5% of keyword groups, test on the rest, 3 seeds")
    result = run_folds(
        rows, "triage_category", low_resource_splits(y, kw_groups), kw_groups, embeddings
    )
    report("Bitext [low-resource keyword hold-out], mean over seeds:", result)


def banking77(
    path: Path,
    folds: int,
    embeddings: Vectors | None,
    train_fraction: float = 1.0,
    fold_texts: Path | None = None,
) -> None:
    rows = read_csv(path)
    y = np.array([r["category"] for r in rows])
    splits = banking77_folds(y, folds)
    if fold_texts is not None:
        # corpora for per-fold tables: each fold's training texts, never its test texts
        fold_texts.mkdir(parents=True, exist_ok=True)
        for k, (tr, _) in enumerate(splits):
            write_texts(fold_texts / f"fold{k}_train.csv", [rows[i]["text"] for i in tr])
        print(f"wrote the training texts of {folds} folds to {fold_texts}")
        return
    print(f"BANKING77, stratified {folds}-fold CV on the official train split ({len(rows)} rows)")
    if train_fraction < 1.0:
        # a learning curve: the same test folds, a stratified share of each training part
        splits = [
            (train_test_split(tr, train_size=train_fraction, stratify=y[tr], random_state=0)[0], te)
            for tr, te in splits
        ]
        print(f"  training on {train_fraction:g} of each fold's training part")
    report("BANKING77, mean over folds:", run_folds(rows, "category", splits, None, embeddings))


def _load(path: Path | None, folds: int = 0) -> Vectors | None:
    """One array, or with ``{fold}`` in the path one array per fold."""
    if path is None:
        return None
    if "{fold}" in str(path):
        return [np.load(str(path).format(fold=k)) for k in range(folds)]
    return np.load(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_data_arguments(parser)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument(
        "--bitext-embeddings",
        type=Path,
        default=None,
        help=".npy from bench/classifier_encode.py (optional extra)",
    )
    parser.add_argument(
        "--banking77-embeddings",
        type=Path,
        default=None,
        help=".npy from bench/classifier_encode.py (optional extra); with {fold} in the name, "
        "one file per fold",
    )
    parser.add_argument(
        "--banking77-fold-texts",
        type=Path,
        default=None,
        help="write each fold's training texts to DIR/fold<k>_train.csv (corpora for per-fold "
        "tables) and stop",
    )
    parser.add_argument("--only", choices=("bitext", "banking77"), default=None)
    parser.add_argument(
        "--bitext-proxy-only",
        action="store_true",
        help="skip Bitext's two grouped CVs (both saturate near 0.999); run the proxy only",
    )
    parser.add_argument(
        "--embeddings-label", default="emb", help="name of the embedding variant in the output"
    )
    add_class_weight_argument(parser)
    add_smoothing_argument(parser)
    parser.add_argument(
        "--C",
        type=float,
        default=1.0,
        help="CaseModel's LinearSVC C (default 1.0, the product's; the baseline keeps 1.0)",
    )
    parser.add_argument(
        "--train-fraction",
        type=float,
        default=1.0,
        help="BANKING77: train on this stratified share of each fold's training part (same "
        "test folds), for a learning curve",
    )
    parser.add_argument(
        "--embedding-weight",
        type=float,
        default=2.0,
        help="weight of the embedding block in CaseModel's features (default 2.0, the product's)",
    )
    parser.add_argument(
        "--max-folds", type=int, default=None, help="run only the first N folds / seeds"
    )
    parser.add_argument(
        "--compare-pooling",
        action="store_true",
        help="also score every fitted CaseModel with threshold pooling off (same fit, "
        "thresholds re-chosen from the same out-of-fold predictions; rows ending 'no-pool')",
    )
    args = parser.parse_args()
    global EMBEDDINGS_LABEL, CLASS_WEIGHT, SMOOTHING, C, EMBEDDING_WEIGHT, MAX_FOLDS
    global COMPARE_POOLING
    COMPARE_POOLING = args.compare_pooling
    EMBEDDINGS_LABEL = args.embeddings_label
    CLASS_WEIGHT = None if args.class_weight == "none" else args.class_weight
    SMOOTHING = args.smoothing
    C = args.C
    EMBEDDING_WEIGHT = args.embedding_weight
    MAX_FOLDS = args.max_folds
    if args.only in (None, "bitext"):
        bitext(
            args.bitext,
            args.folds,
            None if args.bitext_embeddings is None else np.load(args.bitext_embeddings),
            proxy_only=args.bitext_proxy_only,
        )
    if args.only in (None, "banking77"):
        banking77(
            args.banking77,
            args.folds,
            _load(args.banking77_embeddings, args.folds),
            args.train_fraction,
            args.banking77_fold_texts,
        )


if __name__ == "__main__":
    main()
