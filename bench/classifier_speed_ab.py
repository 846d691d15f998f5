"""Classifier speed, this tree against an earlier revision, alternated in one process.

Usage (from the repository root):
    nice .venv/bin/python bench/classifier_speed_ab.py --old-rev 42fbc50 [--extra-words 100]
    nice .venv/bin/python bench/classifier_speed_ab.py --transposes [--extra-words 100]

Whole-run benchmarks (bench/classifier_speed.py) of two checkouts scatter by tens of percent
on a shared 2-core machine, more than the change being measured. This script fits one default
model (static encoder features) and predicts the same cases with the featurisation code of
``--old-rev`` and of this tree swapped in turn: ``classifiers/features.py``'s count paths,
row assembly, row norms and text normalisation, and ``retrieval/embeddings.py``'s static
encoder, read from git into a scratch folder. Everything else (the fitted vectorizers, classifiers,
calibration, thresholds) is the same object, so the difference is the code alone. It prints
CPU seconds per batch and per single case, medians over alternations, and their ratio;
it asserts nothing, but refuses to time a pair whose predictions differ. ``--transposes``
times this tree twice instead, with the fitted estimators' transposed-matrix cache
(``classifiers/linalg.py``) switched off and on.
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

import classifiers.case_model as case_model_module
import classifiers.features as features
import retrieval.embeddings as embeddings
from classifiers.case_model import CaseModel
from classifiers.linalg import TransposedCache
from triage.classification import embedding_spec

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.classifier_speed import FIXTURE, build_cases  # noqa: E402


def old_module(rev: str, path: str, name: str, scratch: Path) -> ModuleType:
    """Import ``path`` as it was at ``rev`` under the module name ``name``."""
    source = subprocess.run(
        ["git", "-C", str(ROOT), "show", f"{rev}:{path}"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    file = scratch / f"{name}.py"
    file.write_text(source, encoding="utf-8")
    spec = importlib.util.spec_from_file_location(name, file)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


# What a revision swap exchanges: (module alias, dotted attribute). ``row_norms`` is also set
# on case_model, which imported the name (its OOD check normalises with it).
SWAPPED = (
    ("features", "_char_wb_counts"),
    ("features", "_word_counts"),
    ("features", "normalise_text"),
    ("features", "row_norms"),
    ("features", "RecordFeaturizer._assemble"),
    ("features", "RecordFeaturizer._embedding_block"),
    ("embeddings", "StaticEncoder.encode"),
)


def _owner_and_name(module: ModuleType, dotted: str) -> tuple[Any, str]:
    *path, name = dotted.split(".")
    owner: Any = module
    for part in path:
        owner = getattr(owner, part)
    return owner, name


def swap(old_features: ModuleType, old_embeddings: ModuleType) -> dict[str, Any]:
    """Setter functions that install one side's code; returns {"old": fn, "new": fn}."""
    live = {"features": features, "embeddings": embeddings}
    old = {"features": old_features, "embeddings": old_embeddings}
    code = {
        side: [getattr(*_owner_and_name(mods[alias], dotted)) for alias, dotted in SWAPPED]
        for side, mods in (("new", live), ("old", old))
    }
    targets = [_owner_and_name(live[alias], dotted) for alias, dotted in SWAPPED]

    def setter(side: str) -> Any:
        def install() -> None:
            for (owner, name), value in zip(targets, code[side], strict=True):
                setattr(owner, name, value)
            case_model_module.row_norms = features.row_norms

        return install

    return {"old": setter("old"), "new": setter("new")}


def same_predictions(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> bool:
    return all(
        x[t].label == y[t].label and abs(x[t].confidence - y[t].confidence) < 1e-5
        for x, y in zip(a, b, strict=True)
        for t in x
    )


def transposes_off_on() -> dict[str, Any]:
    """Installers for the two sides of ``--transposes``: "old" makes every estimator compute
    with the plain transposed view again (scipy copies it per call), "new" restores the cache."""
    cached = TransposedCache.transposed

    def plain(self: TransposedCache, name: str, matrix: np.ndarray) -> np.ndarray:
        return matrix.T

    def install(method: Any) -> Any:
        return lambda: setattr(TransposedCache, "transposed", method)

    return {"old": install(plain), "new": install(cached)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    side = parser.add_mutually_exclusive_group(required=True)
    side.add_argument("--old-rev", help="git revision to compare against")
    side.add_argument(
        "--transposes",
        action="store_true",
        help="compare this tree with its transposed-matrix cache (classifiers.linalg) switched "
        "off (old) and on (new) instead of two revisions",
    )
    parser.add_argument("--extra-words", type=int, default=0, help="lengthen each case's notes")
    parser.add_argument("--n-train", type=int, default=1500)
    parser.add_argument("--batch", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=7, help="alternations of the batch")
    parser.add_argument("--singles", type=int, default=1000)
    args = parser.parse_args()
    with FIXTURE.open(encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    train = build_cases(rows, args.n_train, seed=0, extra_words=args.extra_words)
    cases = build_cases(rows, args.batch, seed=1, extra_words=args.extra_words)
    model = CaseModel(
        spec=embedding_spec(features.CASE_FEATURE_SPEC, embeddings.DEFAULT_ENCODER)
    ).fit(train)
    if args.transposes:
        install = transposes_off_on()
        label = "transposed-matrix cache off (old) vs on (new)"
    else:
        with tempfile.TemporaryDirectory() as scratch:
            old_f = old_module(
                args.old_rev, "classifiers/features.py", "old_features", Path(scratch)
            )
            old_e = old_module(
                args.old_rev, "retrieval/embeddings.py", "old_embeddings", Path(scratch)
            )
        old_f.set_embedder(features._embedder)  # the pipeline's encoder wiring, for the old side
        install = swap(old_f, old_e)
        label = f"old {args.old_rev} vs this tree"
    outputs = {}
    for side in ("old", "new"):  # warm each side's caches; check they agree
        install[side]()
        outputs[side] = model.predict(cases)
    if not same_predictions(outputs["old"], outputs["new"]):
        raise SystemExit("the two revisions predict differently; not timing them")
    batch: dict[str, list[float]] = {"old": [], "new": []}
    for _ in range(args.rounds):
        for side in ("old", "new"):
            install[side]()
            started = time.process_time()
            model.predict(cases)
            batch[side].append(time.process_time() - started)
    single: dict[str, list[float]] = {"old": [], "new": []}
    for lo in range(0, args.singles, 50):  # alternate in runs of 50 single calls
        for side in ("old", "new"):
            install[side]()
            for case in cases[lo : lo + 50]:
                started = time.process_time()
                model.predict([case])
                single[side].append(time.process_time() - started)
    words = np.mean([len(c["text"].split()) for c in cases])
    print(
        f"{label}; {len(cases)}-case batch, mean {words:.0f} words; "
        f"CPU time, medians; load average {os.getloadavg()[0]:.2f}"
    )
    for side in ("old", "new"):
        b, s = np.median(batch[side]), np.median(single[side])
        print(
            f"  {side}: batch {b:.3f} s = {len(cases) / b:,.0f} cases/CPU-s "
            f"(all {[round(x, 3) for x in batch[side]]}); single case {1000 * s:.3f} ms "
            f"(p95 {1000 * np.percentile(single[side], 95):.3f})"
        )
    print(
        f"  ratio new/old: batch {np.median(batch['new']) / np.median(batch['old']):.2f}, "
        f"single {np.median(single['new']) / np.median(single['old']):.2f}"
    )


if __name__ == "__main__":
    main()
