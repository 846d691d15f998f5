"""Regenerate tests/retrieval/data/tiny-onnx: a 2-layer, 16-dim BERT with random weights and a
small WordPiece vocabulary, exported like bench/export_minilm_onnx.py exports MiniLM, plus the
vectors torch computes for a few texts (reference.json). Needs torch, transformers and onnx
(the optional extra); the test suite only reads the output.

    /work/venv-extra/bin/python tests/retrieval/data/make_tiny_onnx.py
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
from pathlib import Path

import torch
from transformers import BertConfig, BertModel, BertTokenizer

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
from bench.export_minilm_onnx import export_pooled

OUT = Path(__file__).parent / "tiny-onnx"
TEXTS = [
    "pallet arrived damaged",
    "Invoice charged twice!",
    "order 123 is late",
    "unknownword zzz",
    "",
]
WORDS = [
    "pallet",
    "arrived",
    "damaged",
    "invoice",
    "charged",
    "twice",
    "order",
    "is",
    "late",
    "the",
    "a",
    "of",
    "to",
    "and",
    "carrier",
    "delivery",
    "refund",
    "credit",
    "note",
    "shipment",
    "missing",
    "items",
    "wrong",
    "price",
    "##s",
    "##ed",
    "##ing",
    "un",
    "##known",
    "##word",
    "z",
    "##z",
]


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *list("!?.,0123456789"), *WORDS]
    (OUT / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=64,
    )
    bert = BertModel(config).eval()

    model = export_pooled(bert, OUT / "model.onnx")
    tokenizer = BertTokenizer(str(OUT / "vocab.txt"), do_lower_case=True)
    reference = []
    with torch.inference_mode():
        for text in TEXTS:
            enc = tokenizer(re.sub(r"\d+", "0", text), return_tensors="pt")
            vec = model(enc["input_ids"], enc["attention_mask"])[0]
            reference.append({"text": text, "vector": [round(float(x), 6) for x in vec]})
    (OUT / "reference.json").write_text(json.dumps(reference, indent=1) + "\n", encoding="utf-8")
    meta = {
        "kind": "onnx",
        "name": "tiny random BERT (tests only)",
        "dim": 16,
        "max_tokens": 64,
        "sha256": {
            n: hashlib.sha256((OUT / n).read_bytes()).hexdigest()
            for n in ("model.onnx", "vocab.txt")
        },
    }
    (OUT / "encoder.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
