"""Changing the operating point: re-choosing thresholds against retraining, alternated in one run.

Usage (from the repository root):
    nice .venv/bin/python bench/rethreshold_speed.py [--data FILE] [--rounds 5]

Before ``rethreshold`` existed, an admin who wanted another target precision retrained the
version at that target. Each round here does both for the same new target, in turn:
*retrain* (``triage.classification.train_model`` on the data, as ``triage train`` and ``POST
/v1/models/train`` do, saved in a registry) and *rethreshold*
(``classifiers.rethreshold`` from the version trained at 0.95: load, re-choose, save a derived
version). It prints the wall-clock medians, their ratio, and how far the two sets of
thresholds are apart (they should agree up to rounding, since fitting is deterministic). It
asserts nothing. Default data: the shipped Bitext fixture (6,509 rows, ``triage_category``)
with the default encoder's embedding features.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from classifiers import CaseModel, load_records, rethreshold  # noqa: E402
from classifiers.data import BITEXT_FIXTURE  # noqa: E402
from classifiers.registry import ModelRegistry  # noqa: E402
from retrieval.defaults import DEFAULT_ENCODER  # noqa: E402
from triage.classification import train_model  # noqa: E402

TARGETS = (0.9, 0.85, 0.8, 0.97, 0.92)


def training_arguments(description: str) -> argparse.Namespace:
    """The data, columns, encoder and rounds options of this bench and ``artifact_io.py``."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--data", type=Path, default=BITEXT_FIXTURE, help="labelled CSV/JSONL")
    parser.add_argument("--text-column", default="text")
    parser.add_argument("--label-column", default="triage_category")
    parser.add_argument("--encoder", default=DEFAULT_ENCODER, help="or 'none'")
    parser.add_argument("--rounds", type=int, default=5)
    return parser.parse_args()


def train_version(
    args: argparse.Namespace,
    records: list[dict[str, Any]],
    registry: ModelRegistry,
    target: float = 0.95,
) -> tuple[str, CaseModel]:
    """Fit and register a version on ``records`` as ``triage train`` does (not activated)."""
    return train_model(
        records,
        registry=registry,
        text_columns=[args.text_column],
        label_columns=[args.label_column],
        encoder=args.encoder,
        activate=False,
        target_precision=target,
    )


def main() -> None:
    args = training_arguments(__doc__.split("\n\n")[0])
    records = load_records(args.data)
    with tempfile.TemporaryDirectory() as tmp:
        registry = ModelRegistry(Path(tmp))

        def train(target: float) -> tuple[str, float]:
            started = time.perf_counter()
            version, _ = train_version(args, records, registry, target)
            return version, time.perf_counter() - started

        parent, first = train(0.95)
        print(f"{args.data.name}: {len(records)} records; first training {first:.1f}s", flush=True)
        retrain_s: list[float] = []
        rethreshold_s: list[float] = []
        worst = 0.0
        for i in range(args.rounds):
            target = TARGETS[i % len(TARGETS)]
            retrained, seconds = train(target)
            retrain_s.append(seconds)
            started = time.perf_counter()
            out = rethreshold(registry, parent, target_precision=target)
            rethreshold_s.append(time.perf_counter() - started)
            assert out.version is not None
            fitted = registry.verify(retrained)["thresholds"][args.label_column]
            derived = registry.verify(out.version)["thresholds"][args.label_column]
            gap = max(abs(fitted[k]["threshold"] - derived[k]["threshold"]) for k in fitted)
            worst = max(worst, gap)
            print(
                f"round {i + 1}/{args.rounds} target {target}: retrain {seconds:.2f}s, "
                f"rethreshold {rethreshold_s[-1]:.2f}s, largest threshold gap {gap:.2e}",
                flush=True,
            )
        a, b = statistics.median(retrain_s), statistics.median(rethreshold_s)
        print(
            f"median retrain {a:.2f}s, rethreshold {b:.2f}s: ratio {b / a:.3f} "
            f"({a / b:.1f}x faster); largest threshold gap over all rounds {worst:.2e}"
        )


if __name__ == "__main__":
    main()
