"""Regenerate tests/retrieval/data/tiny-onnx and tiny-mpnet-onnx: a 2-layer, 16-dim BERT and
MPNet with random weights and a small WordPiece vocabulary, exported like
bench/export_minilm_onnx.py exports MiniLM and all-mpnet-base-v2, plus the vectors torch
computes for a few texts with the library's own tokenizer (reference.json). MPNet marks texts
with <s> ... </s> and pads with <pad> (id 1), which encoder.json records. Needs torch,
transformers and onnx (the optional extra); the test suite only reads the output.

    /work/venv-extra/bin/python tests/retrieval/data/make_tiny_onnx.py
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
from pathlib import Path
from typing import Any

import torch
from transformers import (
    BertConfig,
    BertModel,
    BertTokenizer,
    MPNetConfig,
    MPNetModel,
    MPNetTokenizer,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
from bench.export_minilm_onnx import export_pooled

OUT = Path(__file__).parent / "tiny-onnx"
OUT_MPNET = Path(__file__).parent / "tiny-mpnet-onnx"
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


def build(out: Path, special: list[str], make_model: Any, make_tokenizer: Any, meta: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    vocab = [*special, *list("!?.,0123456789"), *WORDS]
    (out / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    torch.manual_seed(0)
    model = export_pooled(make_model(len(vocab)).eval(), out / "model.onnx")
    tokenizer = make_tokenizer(str(out / "vocab.txt"))
    reference = []
    with torch.inference_mode():
        for text in TEXTS:
            enc = tokenizer(re.sub(r"\d+", "0", text), return_tensors="pt")
            vec = model(enc["input_ids"], enc["attention_mask"])[0]
            reference.append({"text": text, "vector": [round(float(x), 6) for x in vec]})
    (out / "reference.json").write_text(json.dumps(reference, indent=1) + "\n", encoding="utf-8")
    meta = {
        "kind": "onnx",
        **meta,
        "dim": 16,
        "max_tokens": 64,
        "sha256": {
            n: hashlib.sha256((out / n).read_bytes()).hexdigest()
            for n in ("model.onnx", "vocab.txt")
        },
    }
    (out / "encoder.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {out}")


def main() -> None:
    small = {
        "hidden_size": 16,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "intermediate_size": 32,
        "max_position_embeddings": 64,
    }
    build(
        OUT,
        ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"],
        lambda n: BertModel(BertConfig(vocab_size=n, **small)),
        lambda path: BertTokenizer(path, do_lower_case=True),
        {"name": "tiny random BERT (tests only)"},
    )
    build(
        OUT_MPNET,
        ["<s>", "<pad>", "</s>", "<unk>", "[UNK]", "<mask>"],
        lambda n: MPNetModel(MPNetConfig(vocab_size=n, pad_token_id=1, **small)),
        lambda path: MPNetTokenizer(path, do_lower_case=True),
        {
            "name": "tiny random MPNet (tests only)",
            "special_tokens": {"cls": "<s>", "sep": "</s>", "pad": "<pad>", "unk": "[UNK]"},
        },
    )


if __name__ == "__main__":
    main()
