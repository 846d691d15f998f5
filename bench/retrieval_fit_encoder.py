"""Fit the shipped default encoder (retrieval/models/lsa-char-v1).

Corpus: every text of the Bitext training file (customer-support requests about orders,
refunds, invoices, delivery) plus every paragraph of the demo knowledge base, so that the
character n-gram vocabulary covers both the way customers write and the procedures' wording.

    .venv/bin/python bench/retrieval_fit_encoder.py \
        --bitext ../shared/data/bitext/bench_train_2023.csv --out retrieval/models/lsa-char-v1
"""

from __future__ import annotations

import argparse
import csv
import shutil
import time
from pathlib import Path

from retrieval.chunking import load_document
from retrieval.embeddings import LsaConfig, LsaEncoder

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--bitext", type=Path, default=ROOT.parent / "shared/data/bitext/bench_train_2023.csv"
    )
    parser.add_argument("--knowledge", type=Path, default=ROOT / "knowledge")
    parser.add_argument("--out", type=Path, default=ROOT / "retrieval/models/lsa-char-v1")
    parser.add_argument("--dim", type=int, default=256)
    args = parser.parse_args()

    with args.bitext.open(encoding="utf-8") as fh:
        texts = [row["text"] for row in csv.DictReader(fh)]
    n_bitext = len(texts)
    for path in sorted(args.knowledge.glob("*.md")):
        doc = load_document(path)
        texts.extend(p.strip() for p in doc.body.split("\n\n") if p.strip())
    start = time.perf_counter()
    encoder = LsaEncoder.fit(texts, LsaConfig(dim=args.dim))
    encoder.save(args.out)
    licence = args.bitext.parent / "LICENSE-CDLA-Sharing-1.0.txt"
    if licence.is_file():
        shutil.copy(licence, args.out / "LICENSE-CDLA-Sharing-1.0.txt")
    print(
        f"fitted on {n_bitext} Bitext texts + {len(texts) - n_bitext} knowledge paragraphs in "
        f"{time.perf_counter() - start:.1f}s: vocabulary {len(encoder.vocabulary)}, "
        f"dim {encoder.dim}, fingerprint {encoder.fingerprint} -> {args.out}"
    )


if __name__ == "__main__":
    main()
