"""Bitext proxy in which the static table saw the training texts, not the test texts.

On the hidden Bitext release the default model's encoder table (``builtin:minilm-static-v2``)
was refined on the training release's texts (never its labels) and never on the test's. The
low-resource proxy of ``classifier_quality.py`` scores tables that saw no Bitext text at all
(too pessimistic for that situation); the shipped table saw every text of the file, the
proxy's test texts included (too flattering). This proxy sits where the hidden test sits:

1. ``split --seed S --out DIR``: the keyword groups of ``classifier_quality.py`` are split in
   two halves. ``DIR/seen.csv`` holds the texts of half A, the only Bitext texts a table may
   see; ``DIR/split.npz`` the row indices of both halves.
2. Build a table with the shipped recipe on those texts (needs the optional extra), then
   encode the Bitext file with it::

       nice /work/venv-extra/bin/python bench/distill_static_encoder.py --augment 2 \\
           --corpus knowledge --corpus ../shared/data/banking77/train.csv \\
           --corpus DIR/seen.csv --out /tmp/static-seen-S
       nice .venv/bin/python bench/classifier_encode.py --encoder /tmp/static-seen-S \\
           --data ../shared/data/bitext/bench_train_2023.csv --out /tmp/bitext_seen_S.npy

3. ``run --split DIR --embeddings seen=/tmp/bitext_seen_S.npy [name=FILE ...]``: for each
   ``--fractions`` share, ``--seeds`` draws train on that share of half A's keyword groups and
   test on all of half B (phrasings no table saw): the reference baseline, CaseModel without
   embeddings and CaseModel with each embedding file. Then every variant is read at the
   training size where the **baseline** scores its hidden-release figure
   (``--baseline-target``, 0.879), by linear interpolation between the two fractions around
   it. The shift is calibrated on the baseline alone; nothing is tuned on half B.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from sklearn.model_selection import GroupShuffleSplit

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import classifier_quality as cq  # noqa: E402

LABEL = "triage_category"
METRICS = ("macro_f1", "ece", "coverage", "realized_precision", "labels_below_target")


def _rows(path: Path) -> tuple[list[dict[str, str]], np.ndarray, list[int]]:
    rows = cq.read_csv(path)
    texts = [r["text"] for r in rows]
    return rows, np.array([r[LABEL] for r in rows]), cq.keyword_groups(texts)


def split(data: Path, seed: int, out: Path) -> None:
    rows, y, groups = _rows(data)
    seen, unseen = next(GroupShuffleSplit(1, train_size=0.5, random_state=seed).split(y, y, groups))
    out.mkdir(parents=True, exist_ok=True)
    np.savez(out / "split.npz", seen=seen, unseen=unseen, seed=seed)
    cq.write_texts(out / "seen.csv", [rows[i]["text"] for i in seen])
    print(
        f"half A (a table may see its texts): {len(seen)} rows, "
        f"{len({groups[i] for i in seen})} keyword groups; half B (test only): {len(unseen)} "
        f"rows -> {out}"
    )


def _interpolate(xs: list[float], ys: list[float], target: float) -> float | None:
    """``ys`` at the point where ``xs`` (baseline scores, rising with the fraction) hits target."""
    for i in range(len(xs) - 1):
        x0, x1, y0, y1 = xs[i], xs[i + 1], ys[i], ys[i + 1]
        if x0 <= target <= x1 and x1 > x0:
            return y0 + (target - x0) / (x1 - x0) * (y1 - y0)
    return None


def run(
    data: Path,
    split_dir: Path,
    embeddings: dict[str, np.ndarray],
    fractions: list[float],  # ascending
    seeds: int,
    target: float,
    keyword_groups: bool = True,
) -> None:
    rows, y, groups = _rows(data)
    halves = np.load(split_dir / "split.npz")
    seen, unseen = halves["seen"], halves["unseen"]
    seen_groups = [groups[i] for i in seen]
    curves: dict[str, list[float]] = {}
    for fraction in sorted(fractions):
        splits = []
        for seed in range(seeds):
            part, _ = next(
                GroupShuffleSplit(1, train_size=fraction, random_state=seed).split(
                    seen, y[seen], seen_groups
                )
            )
            splits.append((seen[part], unseen))
        sizes = [len(tr) for tr, _ in splits]
        print(
            f"share {fraction:g} of half A's groups: {seeds} draws, {min(sizes)}-{max(sizes)} "
            f"training rows, {len(unseen)} test rows",
            flush=True,
        )
        model_groups = groups if keyword_groups else None  # None: CaseModel groups itself
        scores = cq.run_folds(rows, LABEL, splits, model_groups, embeddings, verbose=False)
        for variant, score in scores.items():
            for metric in METRICS:
                if metric in score:
                    curves.setdefault(f"{variant}|{metric}", []).append(score[metric])
            extra = (
                f"  ECE {score['ece']:.4f}  coverage@0.95 {score['coverage']:.4f} "
                f"(realized precision {score['realized_precision']:.4f})"
                if "ece" in score
                else ""
            )
            print(f"  {variant:<20} macro-F1 {score['macro_f1']:.4f}{extra}", flush=True)
    baseline = curves["baseline|macro_f1"]
    print(f"read where the baseline scores {target} (linear between the fractions around it):")
    for variant in dict.fromkeys(key.partition("|")[0] for key in curves):
        parts = []
        for metric in METRICS:
            values = curves.get(f"{variant}|{metric}")
            if values is None:
                continue
            value = _interpolate(baseline, values, target)
            shown = "not bracketed: add fractions" if value is None else f"{value:.4f}"
            parts.append(f"{metric.replace('_', '-')} {shown}")
        print(f"  {variant:<20} " + "  ".join(parts))


def add_draw_arguments(parser: argparse.ArgumentParser) -> None:
    """The draws and the crossing: ``--fractions``, ``--seeds``, ``--baseline-target``."""
    parser.add_argument("--fractions", default="0.08,0.10,0.13,0.15")
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--baseline-target", type=float, default=0.879)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--data", type=Path, default=Path("../shared/data/bitext/bench_train_2023.csv")
    )
    commands = parser.add_subparsers(dest="command", required=True)
    make = commands.add_parser("split", help="split the keyword groups in two halves")
    make.add_argument("--seed", type=int, required=True)
    make.add_argument("--out", type=Path, required=True)
    score = commands.add_parser("run", help="train on half A, test on half B")
    score.add_argument("--split", type=Path, required=True, help="folder written by split")
    score.add_argument(
        "--embeddings",
        action="append",
        default=[],
        metavar="NAME=FILE",
        help=".npy of the whole Bitext file from classifier_encode.py (repeatable)",
    )
    add_draw_arguments(score)
    cq.add_class_weight_argument(score)
    cq.add_smoothing_argument(score)
    score.add_argument(
        "--model-groups",
        choices=("keyword", "near-duplicate"),
        default="keyword",
        help="validation groups inside CaseModel (its operating points and calibration): the "
        "proxy's keyword groups, or CaseModel's own default, near-duplicate texts (what "
        "`triage train` uses)",
    )
    score.add_argument(
        "--compare-pooling",
        action="store_true",
        help="also score every fitted CaseModel with threshold pooling off (same fits; rows "
        "ending 'no-pool')",
    )
    args = parser.parse_args()
    if args.command == "split":
        split(args.data, args.seed, args.out)
        return
    if not args.embeddings:
        parser.error("run needs at least one --embeddings NAME=FILE")
    embeddings = {}
    for item in args.embeddings:
        name, _, file = item.partition("=")
        if not name or not file:
            parser.error(f"--embeddings {item!r}: expected NAME=FILE")
        embeddings[name] = np.load(file)
    fractions = sorted(float(f) for f in args.fractions.split(","))
    cq.CLASS_WEIGHT = None if args.class_weight == "none" else args.class_weight
    cq.SMOOTHING = args.smoothing
    cq.COMPARE_POOLING = args.compare_pooling
    run(
        args.data,
        args.split,
        embeddings,
        fractions,
        args.seeds,
        args.baseline_target,
        keyword_groups=args.model_groups == "keyword",
    )


if __name__ == "__main__":
    main()
