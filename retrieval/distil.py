"""Distil a sentence encoder into a static token table, refined on the operator's own texts.

The default encoder (``builtin:minilm-static-v2``) is a table of WordPiece token vectors: a
text's vector is the sum of its tokens' rows, so it runs on numpy at thousands of texts per
second. The shipped table was refined on public support texts. Refining it on an operator's
own case texts (unlabelled) brought it level with its teacher on the Bitext proxy that mirrors
that situation (docs/classifier.md, "A proxy in the hidden test's own situation"). This module
builds such a table from any ONNX sentence encoder folder (:class:`OnnxEncoder`: onnxruntime,
no torch), in three steps:

1. **Per-token vectors.** Every vocabulary token goes through the teacher alone
   (``[CLS] token [SEP]``); its pooled, unit output is the token's starting row.
2. **Fit to sentences.** The table is refined so that the weighted mean of a text's token rows
   reproduces the teacher's vector of that text: a ridge regression on the bag of tokens,
   pulled towards the step-1 rows (``ridge``) so tokens the corpus lacks keep them. Each corpus
   text also contributes ``augment`` typo'd variants, so misspelt words' pieces learn too.
3. **PCA + smooth inverse frequency.** Projected to ``dim`` principal components; each row is
   scaled by ``sif_a / (sif_a + p(token))`` (corpus frequencies, add-one) so frequent function
   words weigh less in the sum.

Contract: :func:`distil_static_table` is deterministic for the same teacher, texts and config
(variants are seeded per text); it writes ``vectors.npy`` (float16), ``vocab.txt`` and
``encoder.json`` (kind ``static``, with both files' sha256) and returns the loaded
:class:`StaticEncoder`. Texts are used, never labels. ``bench/distill_static_encoder.py`` uses
the same fitting (:func:`fit_table`) with a sentence-transformers teacher; it built the shipped
table.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from itertools import chain
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
from scipy.sparse.linalg import cg

from retrieval.embeddings import _DIGITS, OnnxEncoder, StaticEncoder
from retrieval.errors import EncoderError

Progress = Callable[[str], None]


@dataclass(frozen=True)
class DistilConfig:
    """How a table is distilled. The defaults are the recipe of the shipped
    ``minilm-static-v2`` (``--augment 2``, 256 dimensions)."""

    dim: int = 256
    augment: int = 2
    typo: float = 0.15
    ridge: float = 1.0
    sif_a: float = 1e-3
    max_texts: int = 40_000
    max_tokens: int = 256

    def __post_init__(self) -> None:
        if not 8 <= self.dim <= 1024:
            raise EncoderError(f"dim must be between 8 and 1024, got {self.dim}")
        if not 0 <= self.augment <= 8:
            raise EncoderError(f"augment must be between 0 and 8, got {self.augment}")
        if not 0.0 <= self.typo <= 1.0:
            raise EncoderError(f"typo must be between 0 and 1, got {self.typo}")
        if self.ridge <= 0 or self.sif_a <= 0:
            raise EncoderError("ridge and sif_a must be positive")
        if self.max_texts < 1:
            raise EncoderError("max_texts must be at least 1")


def augmented(
    texts: Sequence[str],
    copies: int,
    *,
    seed: int = 0,
    crop: float = 1.0,
    dropout: float = 0.0,
    typo: float = 0.15,
) -> list[str]:
    """``copies`` noisy variants of each text of three words or more: a contiguous crop of
    ``crop``-100% of the words, ``dropout`` word dropout, and a typo (swap, drop or double a
    letter) in a ``typo`` share of the words longer than three letters.

    Each text's variants are seeded by the text itself, so a text gets the same variants
    whatever corpus it is part of (a cache of teacher vectors built on one corpus then serves
    the others)."""
    out: list[str] = []
    for text in texts:
        rng = np.random.default_rng([seed, zlib.crc32(text.encode())])
        words = text.split()
        if len(words) < 3:
            continue
        for _ in range(copies):
            keep = max(2, int(len(words) * rng.uniform(crop, 1.0)))
            start = int(rng.integers(0, len(words) - keep + 1))
            variant = [w for w in words[start : start + keep] if rng.random() >= dropout] or words
            for i, word in enumerate(variant):
                if len(word) > 3 and rng.random() < typo:
                    j = int(rng.integers(1, len(word) - 1))
                    kind = rng.integers(3)
                    if kind == 0:
                        word = word[:j] + word[j + 1] + word[j] + word[j + 2 :]
                    elif kind == 1:
                        word = word[:j] + word[j + 1 :]
                    else:
                        word = word[:j] + word[j] + word[j:]
                    variant[i] = word
            out.append(" ".join(variant))
    return out


def corpus_texts(texts: Sequence[str], limit: int, *, seed: int = 0) -> list[str]:
    """Distinct non-blank texts, digit runs masked as the encoders mask them, at most
    ``limit`` (a seeded sample, kept in corpus order, when there are more)."""
    unique = list(dict.fromkeys(_DIGITS.sub("0", t).strip() for t in texts))
    unique = [t for t in unique if t]
    if len(unique) > limit:
        keep = np.random.default_rng(seed).choice(len(unique), limit, replace=False)
        unique = [unique[i] for i in sorted(keep)]
    return unique


def sif_weights(token_ids: Sequence[Sequence[int]], vocab_size: int, sif_a: float) -> np.ndarray:
    """Smooth inverse-frequency weight per token: corpus counts with add-one smoothing, or a
    Zipf prior on vocabulary order when there is no corpus."""
    if token_ids:
        every = np.fromiter(chain.from_iterable(token_ids), dtype=np.int64)
        counts = 1.0 + np.bincount(every, minlength=vocab_size)
        freq = counts / counts.sum()
    else:
        zipf = 1.0 / np.log(np.arange(vocab_size) + 2.0)
        freq = zipf / zipf.sum()
    return np.asarray(sif_a / (sif_a + freq))


def fit_table(
    base: np.ndarray,
    token_ids: Sequence[Sequence[int]],
    targets: np.ndarray,
    weights: np.ndarray,
    *,
    ridge: float,
    progress: Progress | None = None,
) -> np.ndarray:
    """Step 2: the table ``X`` minimising ``|A X - targets|^2 + ridge |X - base|^2``, where row
    ``i`` of ``A`` is text ``i``'s bag of tokens, weighted by ``weights`` and summing to one.

    Solved per output dimension with conjugate gradients from ``base`` (the normal equations
    ``(A^T A + ridge I) X = A^T targets + ridge base`` are sparse: vocabulary x vocabulary).
    Returns float32 of ``base``'s shape; with no texts, ``base`` itself."""
    n = base.shape[0]
    if not len(token_ids):
        return base.astype(np.float32, copy=True)
    rows: list[int] = []
    cols: list[int] = []
    vals: list[float] = []
    for i, ids in enumerate(token_ids):
        if not len(ids):
            continue
        uniq, in_text = np.unique(np.asarray(ids, dtype=np.int64), return_counts=True)
        w = in_text * weights[uniq]
        rows.extend([i] * len(uniq))
        cols.extend(uniq.tolist())
        vals.extend((w / w.sum()).tolist())
    A = sp.csr_matrix((vals, (rows, cols)), shape=(len(token_ids), n))
    gram = (A.T @ A).tocsr() + ridge * sp.identity(n, format="csr")
    start = base.astype(np.float64)
    rhs = A.T @ targets.astype(np.float64) + ridge * start
    table = np.empty(base.shape, dtype=np.float32)
    for d in range(base.shape[1]):
        table[:, d], _ = cg(gram, rhs[:, d], x0=start[:, d], maxiter=300)
        if progress and (d + 1) % 64 == 0:
            progress(f"step 2: fitted {d + 1}/{base.shape[1]} dimensions")
    return table


def reduce_table(table: np.ndarray, weights: np.ndarray, dim: int) -> np.ndarray:
    """Step 3: the table's first ``dim`` principal components, each row scaled by its token's
    weight (baked in, so the encoder takes a plain sum), as float16."""
    mean = table.mean(axis=0)
    _, _, vt = np.linalg.svd(table - mean, full_matrices=False)
    reduced = (table - mean) @ vt[:dim].T
    return np.asarray(reduced * weights[:, None], dtype=np.float16)


def write_table(
    out: Path, vocab: Sequence[str], vectors: np.ndarray, meta: dict[str, Any]
) -> StaticEncoder:
    """Write a static encoder folder and load it back (which verifies the recorded sha256).

    The files are written to a sibling temporary folder that then takes ``out``'s place, so a
    failure part-way (disk full, interrupted) leaves ``out`` as it was, never half-written."""
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    staging.chmod(0o755)  # mkdtemp makes it private; the server may run as another user
    try:
        np.save(staging / "vectors.npy", vectors, allow_pickle=False)
        (staging / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
        record = {
            "kind": StaticEncoder.kind,
            "name": out.name,
            "dim": int(vectors.shape[1]),
            "vocab_size": len(vocab),
            **meta,
            "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "sha256": {
                name: hashlib.sha256((staging / name).read_bytes()).hexdigest()
                for name in ("vectors.npy", "vocab.txt")
            },
        }
        text = json.dumps(record, indent=2) + "\n"
        (staging / "encoder.json").write_text(text, encoding="utf-8")
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old.", dir=out.parent))
            out.rename(old / out.name)
            staging.rename(out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            staging.rename(out)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return StaticEncoder.load(out)


def distil_static_table(
    teacher: OnnxEncoder,
    texts: Sequence[str],
    out: Path,
    config: DistilConfig | None = None,
    *,
    replace: bool = False,
    progress: Progress | None = None,
) -> StaticEncoder:
    """Distil ``teacher`` into a static table refined on ``texts`` and write it to ``out``
    (module docstring). ``texts`` may be empty: the table is then step 1's, PCA'd and
    weighted by a Zipf prior. Raises :class:`EncoderError` when ``dim`` exceeds the teacher's
    dimension, or ``out`` is not empty and is not a static encoder ``replace`` allows
    replacing (models and indexes built on a table refuse it once it changes)."""
    cfg = config or DistilConfig()
    say = progress or (lambda _message: None)
    if cfg.dim > teacher.dim:
        raise EncoderError(f"dim {cfg.dim} exceeds the teacher's dimension {teacher.dim}")
    _check_out(out, replace=replace)
    vocab = teacher.vocab
    n = len(vocab)

    started = time.perf_counter()
    base = np.zeros((n, teacher.dim), dtype=np.float32)
    step = 4096
    for lo in range(0, n, step):
        ids = range(lo, min(lo + step, n))
        base[lo : lo + len(ids)] = teacher.encode_ids(
            [[teacher.cls_id, i, teacher.sep_id] for i in ids]
        )
        say(f"step 1: {min(lo + step, n)}/{n} token vectors ({time.perf_counter() - started:.0f}s)")

    corpus = corpus_texts(texts, cfg.max_texts)
    variants = augmented(corpus, cfg.augment, typo=cfg.typo) if cfg.augment else []
    all_texts = corpus + variants
    keep = cfg.max_tokens - 2
    token_ids = [teacher.tokenizer.encode(t)[:keep] for t in all_texts]
    weights = sif_weights(token_ids, n, cfg.sif_a)
    table = base
    if all_texts:
        say(f"corpus: {len(corpus)} texts + {len(variants)} noisy variants")
        # a variant without a typo equals its text (a third of them with the defaults): the
        # teacher encodes each distinct text once
        distinct = list(dict.fromkeys(all_texts))
        started = time.perf_counter()
        encoded = np.zeros((len(distinct), teacher.dim), dtype=np.float32)
        chunk = 2048
        for lo in range(0, len(distinct), chunk):
            encoded[lo : lo + chunk] = teacher.encode(distinct[lo : lo + chunk])
            done = min(lo + chunk, len(distinct))
            rate = done / max(time.perf_counter() - started, 1e-9)
            say(f"step 2: teacher encoded {done}/{len(distinct)} distinct texts ({rate:.0f}/s)")
        row = {text: i for i, text in enumerate(distinct)}
        targets = encoded[[row[t] for t in all_texts]]
        table = fit_table(base, token_ids, targets, weights, ridge=cfg.ridge, progress=say)
    vectors = reduce_table(table, weights, cfg.dim)
    say("step 3: reduced and weighted the table")
    return write_table(
        out,
        vocab,
        vectors,
        {
            "teacher": teacher.source,
            "teacher_fingerprint": teacher.fingerprint,
            "corpus_texts": len(corpus),
            "augment": {"copies": cfg.augment, "crop": 1.0, "dropout": 0.0, "typo": cfg.typo},
            "config": asdict(cfg),
        },
    )


def _check_out(out: Path, *, replace: bool) -> None:
    """Refuse a non-empty ``out`` unless it is a static encoder and ``replace`` is set: a
    wrong path must not cost a model or a Chroma store, and a table in use must not change
    under the models and indexes built on it without the operator saying so."""
    if not out.exists():
        return
    if not out.is_dir():
        raise EncoderError(f"{out} exists and is not a folder")
    if not any(out.iterdir()):
        return
    kind = None
    meta = out / "encoder.json"
    if meta.is_file():
        try:
            kind = json.loads(meta.read_text(encoding="utf-8")).get("kind")
        except (ValueError, AttributeError):
            kind = None
    if kind != StaticEncoder.kind:
        raise EncoderError(f"{out} is not empty and holds no static encoder: choose a new folder")
    if not replace:
        raise EncoderError(
            f"{out} already holds a static encoder: choose a new folder, or replace it "
            "(models and indexes built on it will then refuse it until retrained or re-indexed)"
        )
