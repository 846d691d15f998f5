"""Saving and loading a model artifact: numpy-scalar vocabularies against plain ints, alternated.

Usage (from the repository root):
    nice .venv/bin/python bench/artifact_io.py [--data FILE] [--rounds 5]

scikit-learn's TfidfVectorizer keeps its vocabulary as ``{term: numpy.int64}``; skops writes
each numpy scalar as its own file in the artifact's zip. Since this session the featurizer
stores plain Python ints instead (``classifiers.features._plain_vocabulary``). The script
fits one model as ``triage train`` does (default: the shipped Bitext fixture, default encoder),
makes an *old* copy whose vocabularies hold numpy int64 (as every artifact saved before had)
and a *new* copy with ints, then, ``--rounds`` times in turn, saves and loads each through
the registry's trusted loader and times both; then it times prediction with each loaded
copy (the vocabulary is read on every transform): one batch of all records, and single
records. It prints medians, ratios, artifact sizes and file counts, and checks that both
copies, after the round trip, give the same features and probabilities on the training
records. It asserts nothing else.
"""

from __future__ import annotations

import copy
import statistics
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np
import skops.io as sio

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.rethreshold_speed import train_version, training_arguments  # noqa: E402
from classifiers import CaseModel, load_records  # noqa: E402
from classifiers.registry import ModelRegistry, load_trusted_artifact  # noqa: E402


def with_vocabulary(model: CaseModel, kind: type) -> CaseModel:
    """A deep copy whose vectorizers' vocabulary values are of ``kind``."""
    out = copy.deepcopy(model)
    fz = out.featurizer_
    for vectorizer in (fz.word_vectorizer_, fz.char_vectorizer_):
        if vectorizer is not None:
            vectorizer.vocabulary_ = {t: kind(c) for t, c in vectorizer.vocabulary_.items()}
    return out


def main() -> None:
    args = training_arguments(__doc__.split("\n\n")[0])
    records = load_records(args.data)
    with tempfile.TemporaryDirectory() as tmp:
        _, model = train_version(args, records, ModelRegistry(Path(tmp) / "registry"))
        variants = {"old (numpy int64)": with_vocabulary(model, np.int64)}
        variants["new (int)"] = with_vocabulary(model, int)
        times: dict[str, dict[str, list[float]]] = {k: {"save": [], "load": []} for k in variants}
        loaded: dict[str, CaseModel] = {}
        paths = {k: Path(tmp) / f"{i}.skops" for i, k in enumerate(variants)}
        for round_ in range(args.rounds):
            for name, variant in variants.items():
                started = time.perf_counter()
                sio.dump(variant, paths[name])
                saved = time.perf_counter()
                loaded[name] = load_trusted_artifact(paths[name])
                times[name]["save"].append(saved - started)
                times[name]["load"].append(time.perf_counter() - saved)
            print(
                f"round {round_ + 1}/{args.rounds}: "
                + "; ".join(
                    f"{n} save {t['save'][-1]:.2f}s load {t['load'][-1]:.2f}s"
                    for n, t in times.items()
                ),
                flush=True,
            )
        embeddings = model.embed(records)
        old, new = (loaded[k] for k in variants)
        same_x = (
            old.transform(records, embeddings=embeddings)
            != new.transform(records, embeddings=embeddings)
        ).nnz == 0
        target = args.label_column
        same_p = np.array_equal(
            old.predict_proba(records, embeddings=embeddings)[target],
            new.predict_proba(records, embeddings=embeddings)[target],
        )
        # the vocabulary is read on every transform: the prediction path, alternated, batch
        # of all records and single records (no embedding step: the same vectors are passed)
        batch: dict[str, list[float]] = {k: [] for k in variants}
        single: dict[str, list[float]] = {k: [] for k in variants}
        for _ in range(args.rounds):
            for name, m in loaded.items():
                started = time.perf_counter()
                m.predict(records, embeddings=embeddings)
                batch[name].append(time.perf_counter() - started)
                for i in range(0, len(records), max(1, len(records) // 200)):
                    started = time.perf_counter()
                    m.predict(records[i : i + 1], embeddings=embeddings[i : i + 1])
                    single[name].append(time.perf_counter() - started)
        print(f"{args.data.name}: {len(records)} records")
        for name, path in paths.items():
            files = len(zipfile.ZipFile(path).namelist())
            print(
                f"{name}: {path.stat().st_size / 1e6:.1f} MB, {files} files; median save "
                f"{statistics.median(times[name]['save']):.2f}s, load "
                f"{statistics.median(times[name]['load']):.2f}s"
            )
        o, n = (times[k] for k in variants)
        for step in ("save", "load"):
            ratio = statistics.median(n[step]) / statistics.median(o[step])
            print(f"{step}: new/old ratio {ratio:.3f}")
        for name in variants:
            print(
                f"{name}: predict {len(records) / statistics.median(batch[name]):,.0f} records/s "
                f"in one batch, single record median {statistics.median(single[name]) * 1e3:.2f} ms"
            )
        ob, nb = (statistics.median(batch[k]) for k in variants)
        os_, ns = (statistics.median(single[k]) for k in variants)
        print(f"predict: new/old ratio batch {nb / ob:.3f}, single {ns / os_:.3f}")
        print(
            f"identical features after the round trip: {same_x}; identical probabilities: {same_p}"
        )


if __name__ == "__main__":
    main()
