"""Do MPNet's lower layers add anything to CaseModel on BANKING77? (ninth session)

Two steps, so the slow one runs once:

    # 1. on the extra's torch (sentence-transformers + an unpacked all-mpnet-base-v2 folder):
    nice /work/venv-extra/bin/python bench/mpnet_layer_features.py encode \\
        --model /opt/models/all-mpnet-base-v2 --data ../shared/data/banking77/train.csv \\
        --out /tmp/b77_layers.npz
    # 2. in the project's venv: CaseModel on the bench's BANKING77 folds, per feature set
    nice .venv/bin/python bench/mpnet_layer_features.py cv --layers /tmp/b77_layers.npz \\
        --data ../shared/data/banking77/train.csv --folds 0,1 \\
        --variant L12 --variant L12+mean8-11 --variant L12+L9

``encode`` stores the attention-masked mean of every layer's token states (layers 6-12; layer
12's is what sentence-transformers returns before normalising). ``cv`` L2-normalises each
block, concatenates the blocks of a variant and normalises again, then fits CaseModel with its
defaults on the same stratified folds as ``bench/classifier_quality.py`` (seed 0) and prints
the accuracy per fold and the mean.
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

LAYERS = range(6, 13)


def _texts_and_labels(path: Path) -> tuple[list[str], list[str]]:
    with path.open(encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh))
    return [r["text"] for r in rows], [r["category"] for r in rows]


def encode(model_dir: Path, data: Path, out: Path, batch: int = 64) -> None:
    import torch
    from sentence_transformers import SentenceTransformer

    texts, _ = _texts_and_labels(data)
    torch.set_num_threads(2)
    st = SentenceTransformer(str(model_dir), device="cpu")
    tokenizer, model = st.tokenizer, st[0].auto_model
    model.eval()
    order = np.argsort([len(t) for t in texts])  # similar lengths per batch: less padding
    pooled = {layer: np.zeros((len(texts), 768), np.float32) for layer in LAYERS}
    started = time.perf_counter()
    with torch.inference_mode():
        for b in range(0, len(texts), batch):
            idx = order[b : b + batch]
            enc = tokenizer(
                [texts[i] for i in idx],
                padding=True,
                truncation=True,
                max_length=384,
                return_tensors="pt",
            )
            states = model(**enc, output_hidden_states=True).hidden_states
            mask = enc["attention_mask"].unsqueeze(-1).float()
            for layer in LAYERS:
                mean = (states[layer] * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                pooled[layer][idx] = mean.numpy()
            done = b + len(idx)
            if done % (batch * 20) == 0 or done == len(texts):
                rate = done / (time.perf_counter() - started)
                print(f"encoded {done}/{len(texts)} ({rate:.0f}/s)", file=sys.stderr, flush=True)
    arrays: dict[str, Any] = {f"L{layer}": v for layer, v in pooled.items()}
    np.savez(out, **arrays)
    print(f"wrote {out}: layers {LAYERS.start}-{LAYERS.stop - 1}, {len(texts)} texts")


def _norm(a: np.ndarray) -> np.ndarray:
    out: np.ndarray = a / np.linalg.norm(a, axis=1, keepdims=True)
    return out


def variant(layers: Any, name: str) -> np.ndarray:
    """``L12``, ``L12+L9`` (blocks side by side) or ``L12+mean8-11`` (layer 12 beside the
    mean of the normalised layers 8 to 11)."""
    blocks = []
    for part in name.split("+"):
        if part.startswith("mean"):
            lo, hi = (int(x) for x in part.removeprefix("mean").split("-"))
            stack = [_norm(layers[f"L{k}"]) for k in range(lo, hi + 1)]
            blocks.append(_norm(np.sum(stack, axis=0)))
        else:
            blocks.append(_norm(layers[part]))
    return _norm(np.hstack(blocks))


def cv(layers_path: Path, data: Path, folds: list[int], variants: list[str]) -> None:
    from sklearn.model_selection import StratifiedKFold

    from classifiers.case_model import CaseModel
    from classifiers.evaluation import evaluate_model
    from classifiers.features import FeatureSpec

    texts, labels = _texts_and_labels(data)
    records = [{"text": t, "category": c} for t, c in zip(texts, labels, strict=True)]
    y = np.array(labels)
    splits = list(StratifiedKFold(5, shuffle=True, random_state=0).split(np.zeros(len(y)), y))
    layers = np.load(layers_path)
    for name in variants:
        emb = variant(layers, name)
        accuracies = []
        for k in folds:
            tr, te = splits[k]
            started = time.perf_counter()
            spec = FeatureSpec(text_columns=("text",), embedding_dim=emb.shape[1])
            model = CaseModel(spec=spec, targets=("category",)).fit(
                [records[i] for i in tr], embeddings=emb[tr]
            )
            metrics = evaluate_model(model, [records[i] for i in te], embeddings=emb[te])
            accuracies.append(metrics["targets"]["category"]["accuracy"])
            took = time.perf_counter() - started
            print(f"{name} fold {k}: accuracy {accuracies[-1]:.4f} ({took:.0f} s)", flush=True)
        print(f"== {name}: mean {np.mean(accuracies):.4f} over folds {folds}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="step", required=True)
    enc = sub.add_parser("encode", help="mean-pooled states of layers 6-12 (needs torch)")
    enc.add_argument("--model", type=Path, required=True, help="all-mpnet-base-v2 folder")
    enc.add_argument("--data", type=Path, required=True, help="BANKING77 train.csv")
    enc.add_argument("--out", type=Path, required=True, help=".npz to write")
    run = sub.add_parser("cv", help="CaseModel per feature set on the bench's folds")
    run.add_argument("--layers", type=Path, required=True, help=".npz from encode")
    run.add_argument("--data", type=Path, required=True, help="the same train.csv")
    run.add_argument("--folds", default="0,1,2,3,4", help="comma-separated fold numbers")
    run.add_argument(
        "--variant", action="append", required=True, help="L12, L12+L9, L12+mean8-11, ..."
    )
    args = parser.parse_args()
    if args.step == "encode":
        encode(args.model, args.data, args.out)
    else:
        cv(args.layers, args.data, [int(f) for f in args.folds.split(",")], args.variant)


if __name__ == "__main__":
    main()
