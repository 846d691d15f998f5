"""How strict should a thin label's own evidence be before it may borrow the pooled threshold?

Usage (from the repository root; vectors from bench/classifier_encode.py with the shipped
static table, as in docs/classifier.md):
    nice .venv/bin/python bench/pooling_veto.py \
        --bitext-embeddings /tmp/bitext_static.npy --banking77-embeddings /tmp/b77_static.npy

``classifiers.operating_points.select_thresholds`` lets a label too thin for a threshold of its
own borrow the pooled one unless the Wilson *upper* bound of its own precision above that
threshold is below the target, at the same one-sided z (1.645) as the per-label rule. This
script fits the default CaseModel once per fold (balanced label weights, near-duplicate
validation groups, as ``triage train`` fits it) and re-chooses the thresholds from the same
out-of-fold predictions for: no pooling, and the veto at z = 1.645 (the product), 1.0, 0.5 and
0 (the label's own point precision must meet the target). Data: the Bitext low-resource proxy
(5% of keyword groups, 3 seeds) and BANKING77 stratified 5-fold. It prints, per variant, the
mean coverage at the operating points, the realized precision of what they keep, and how many
labels per fold fall more than 0.02 under their target (with at least 20 kept predictions, as
``triage evaluate``'s drift check counts them). The veto's z is not a product setting: the
script swaps the bound's z in ``classifiers.operating_points`` for the run. It asserts nothing.
"""

from __future__ import annotations

import argparse
import copy
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import classifiers.operating_points as operating_points  # noqa: E402
from bench import classifier_quality as cq  # noqa: E402
from classifiers.case_model import CaseModel  # noqa: E402
from classifiers.evaluation import evaluate_model  # noqa: E402
from classifiers.features import FeatureSpec  # noqa: E402

VARIANTS: tuple[tuple[str, float | None], ...] = (
    ("no pooling", None),
    ("veto z=1.645", 1.645),
    ("veto z=1.0", 1.0),
    ("veto z=0.5", 0.5),
    ("veto z=0", 0.0),
)
_upper: Callable[..., np.ndarray] = operating_points.wilson_upper_bound


def _with_veto_z(z_veto: float) -> None:
    """Make the pooled veto use ``z_veto`` (the per-label rule keeps its own z)."""

    def upper(p: np.ndarray, n: np.ndarray, z: float) -> np.ndarray:
        return _upper(p, n, z_veto)

    operating_points.wilson_upper_bound = upper  # type: ignore[assignment]


def score(
    name: str,
    rows: list[dict[str, Any]],
    label: str,
    splits: list[tuple[np.ndarray, np.ndarray]],
    vectors: np.ndarray,
) -> None:
    recs = [{"text": r["text"], label: r[label]} for r in rows]
    results: dict[str, list[tuple[float, float, int]]] = {v: [] for v, _ in VARIANTS}
    spec = FeatureSpec(text_columns=("text",), embedding_dim=vectors.shape[1])
    for k, (tr, te) in enumerate(splits):
        fitted = CaseModel(spec=spec, targets=(label,), class_weight="balanced").fit(
            [recs[i] for i in tr], embeddings=vectors[tr]
        )
        for variant, z_veto in VARIANTS:
            model = copy.deepcopy(fitted)
            if z_veto is None:
                model.set_params(threshold_pooling=False)
            else:
                _with_veto_z(z_veto)
            model.choose_operating_points()
            m = evaluate_model(model, [recs[i] for i in te], embeddings=vectors[te])
            cov = m["targets"][label]["coverage_at_precision"]
            realized = cov["realized_precision"]
            results[variant].append(
                (
                    cov["coverage"],
                    float("nan") if realized is None else realized,
                    len(cov["labels_below_target"]),
                )
            )
        print(
            f"{name} fold {k}: "
            + " | ".join(
                f"{v} {r[-1][0]:.3f}/{r[-1][1]:.3f}/{r[-1][2]}" for v, r in results.items()
            ),
            flush=True,
        )
    operating_points.wilson_upper_bound = _upper  # type: ignore[assignment]
    print(f"{name}, mean over folds (coverage / realized precision / labels below target):")
    for variant, values in results.items():
        a = np.array(values, dtype=float)
        print(
            f"  {variant:<14} coverage {a[:, 0].mean():.4f}  realized precision "
            f"{np.nanmean(a[:, 1]):.4f}  labels below target {a[:, 2].mean():.2f}",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    cq.add_data_arguments(parser)
    parser.add_argument("--bitext-embeddings", type=Path, required=True)
    parser.add_argument("--banking77-embeddings", type=Path, required=True)
    args = parser.parse_args()
    rows = cq.read_csv(args.bitext)
    y = np.array([r["triage_category"] for r in rows])
    splits = cq.low_resource_splits(y, cq.keyword_groups([r["text"] for r in rows]))
    score("Bitext low-resource", rows, "triage_category", splits, np.load(args.bitext_embeddings))
    rows = cq.read_csv(args.banking77)
    splits = cq.banking77_folds(np.array([r["category"] for r in rows]))
    score("BANKING77", rows, "category", splits, np.load(args.banking77_embeddings))


if __name__ == "__main__":
    main()
