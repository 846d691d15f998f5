"""Feature building for records (``list[dict]``), shared by every target of a model.

Contract:
- A record is a flat ``dict[str, object]``. Missing keys and ``None`` mean "empty": an empty
  string for text and categorical columns, ``0.0`` for numeric columns. Records never need
  pandas.
- :class:`FeatureSpec` names the columns: ``text_columns`` are concatenated (in order) into one
  document; ``categorical_columns`` are one-hot encoded (unknown values at predict time are
  ignored, not errors); ``numeric_columns`` get a signed ``log1p`` and standard scaling, so a
  large amount cannot dominate the text.
- Optional dense embeddings (one row per record, computed once by the caller and reused for
  similar-case retrieval) are L2-normalised and appended when the spec sets ``embedding_dim``.
  A model fitted with embeddings needs them at transform time: passed in, or computed from
  the joined text by the encoder the spec names (see :func:`set_embedder`); a model fitted
  without embeddings ignores any that are passed, so a pipeline can always hand its vectors
  over.
- The output is one CSR matrix; blocks are weighted so their scales are comparable.
"""

from __future__ import annotations

import re
import time
import weakref
from array import array
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from itertools import chain
from typing import Any

import numpy as np
import scipy.sparse as sp
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.feature_extraction.text import CountVectorizer, TfidfVectorizer
from sklearn.preprocessing import OneHotEncoder, StandardScaler
from sklearn.utils.validation import check_is_fitted

Record = Mapping[str, Any]

_DIGITS = re.compile(r"\d+")
_WORD_PATTERN = r"(?u)\b\w+\b"  # keep one-letter tokens: "a", "i" and masked digits ("0")


@dataclass(frozen=True)
class FeatureSpec:
    """Which record fields feed the model, and how.

    ``embedding_dim`` is ``None`` when the model uses no embeddings. Otherwise every
    ``fit``/``transform`` call either passes an ``embeddings`` array of shape
    ``(n_records, dim)`` (the pipeline hands over the vector it computed once per case), or the
    spec names an ``embedding_encoder`` and the featurizer asks the embedder installed with
    :func:`set_embedder` to encode the joined text columns. ``embedding_fingerprint`` is the
    encoder's fingerprint at training time; vectors from an encoder with another fingerprint
    are refused, since they live in another space.
    """

    text_columns: tuple[str, ...] = ("text",)
    categorical_columns: tuple[str, ...] = ()
    numeric_columns: tuple[str, ...] = ()
    embedding_dim: int | None = None
    embedding_encoder: str | None = None
    embedding_fingerprint: str | None = None

    def __post_init__(self) -> None:
        if not self.columns and self.embedding_dim is None:
            raise ValueError("a FeatureSpec needs at least one column or an embedding_dim")
        names = [*self.text_columns, *self.categorical_columns, *self.numeric_columns]
        if len(set(names)) != len(names):
            raise ValueError(f"a column appears twice in the feature spec: {names}")

    @property
    def columns(self) -> tuple[str, ...]:
        """Every record key the spec reads."""
        return (*self.text_columns, *self.categorical_columns, *self.numeric_columns)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form, stored in the registry metadata."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FeatureSpec:
        return cls(
            text_columns=tuple(data.get("text_columns", ())),
            categorical_columns=tuple(data.get("categorical_columns", ())),
            numeric_columns=tuple(data.get("numeric_columns", ())),
            embedding_dim=data.get("embedding_dim"),
            embedding_encoder=data.get("embedding_encoder"),
            embedding_fingerprint=data.get("embedding_fingerprint"),
        )


# (encoder name, texts) -> (float32 vectors of shape (len(texts), dim), encoder fingerprint)
Embedder = Callable[[str, Sequence[str]], tuple[np.ndarray, str]]
_embedder: Embedder | None = None


def set_embedder(embedder: Embedder | None) -> None:
    """Install the function that turns texts into vectors for specs naming an encoder.

    The encoders live in ``retrieval`` (a sibling layer), so the layer above wires them in:
    ``triage.classification`` installs one on import. Process-wide; ``None`` uninstalls.
    """
    global _embedder
    _embedder = embedder


# (encoder name, text) -> (words, float64 (n_words, dim) vectors, encoder fingerprint), where
# the rows sum to the text's vector before L2 normalisation; None for an encoder whose vector is
# not a sum over words (a transformer's)
WordSplitter = Callable[[str, str], tuple[list[str], np.ndarray, str] | None]
_word_splitter: WordSplitter | None = None


def set_word_splitter(splitter: WordSplitter | None) -> None:
    """Install the function that splits a text's encoder vector over its words (see
    :func:`split_into_words`); wired by ``triage.classification`` like :func:`set_embedder`."""
    global _word_splitter
    _word_splitter = splitter


def split_into_words(spec: FeatureSpec, text: str) -> tuple[list[str], np.ndarray] | None:
    """The words of ``text`` and their vectors under the spec's encoder, when that encoder's
    vector is a normalised sum over words (the static tables) and is still the encoder the model
    was trained with; ``None`` otherwise."""
    if _word_splitter is None or spec.embedding_encoder is None:
        return None
    found = _word_splitter(spec.embedding_encoder, text)
    if found is None:
        return None
    words, vectors, fingerprint = found
    if spec.embedding_fingerprint and fingerprint != spec.embedding_fingerprint:
        return None
    return words, vectors


EMBED_CHUNK = 512  # texts per encoder call when progress is reported
PROGRESS_SECONDS = 5.0  # at most one progress message per this many seconds


def embed_texts(
    spec: FeatureSpec,
    texts: Sequence[str],
    progress: Callable[[str], None] | None = None,
) -> np.ndarray:
    """Vectors for ``texts`` from the spec's encoder, checked against its recorded fingerprint.

    With ``progress``, the texts are encoded in chunks of :data:`EMBED_CHUNK` and a message
    (texts done, rate, time left) is reported at most every :data:`PROGRESS_SECONDS` while more
    remain: a transformer encoder takes minutes for ten thousand texts on two cores, the static
    table a fraction of a second (and then says nothing). Chunking does not change the vectors
    beyond float rounding: each text is encoded on its own terms (padding is masked).
    """
    if spec.embedding_encoder is None:
        raise ValueError("this feature spec names no embedding encoder")
    if _embedder is None:
        raise ValueError(
            f"this model needs the {spec.embedding_encoder!r} encoder, and no embedder is "
            "installed (import triage.classification, or pass `embeddings`)"
        )
    texts = list(texts)
    if progress is None or len(texts) <= EMBED_CHUNK:
        vectors, fingerprint = _embedder(spec.embedding_encoder, texts)
    else:
        parts: list[np.ndarray] = []
        started = last = time.perf_counter()
        for lo in range(0, len(texts), EMBED_CHUNK):
            part, fingerprint = _embedder(spec.embedding_encoder, texts[lo : lo + EMBED_CHUNK])
            parts.append(part)
            done, now = lo + len(part), time.perf_counter()
            if done < len(texts) and now - last >= PROGRESS_SECONDS:
                rate = done / (now - started)
                left = (len(texts) - done) / rate
                progress(
                    f"encoding texts with {spec.embedding_encoder}: {done}/{len(texts)} "
                    f"({rate:.0f}/s, about {left:.0f}s left)"
                )
                last = now
        vectors = np.concatenate(parts)
    if spec.embedding_fingerprint and fingerprint != spec.embedding_fingerprint:
        raise ValueError(
            f"encoder {spec.embedding_encoder!r} now has fingerprint {fingerprint}, but the model "
            f"was trained with {spec.embedding_fingerprint}: retrain the model"
        )
    return vectors


CASE_FEATURE_SPEC = FeatureSpec(
    text_columns=("text",),
    categorical_columns=(
        "exception_type",
        "customer_tier",
        "warehouse_id",
        "carrier_id",
        "source_kind",
    ),
    numeric_columns=("amount", "qty_gap_ratio", "price_gap_ratio", "line_count"),
)
"""The flat case record the triage pipeline builds from ``contracts.case.CaseIn``."""


def normalise_text(text: str, max_chars: int) -> str:
    """Lower-case, mask digit runs (order ids and amounts carry no class signal) and cap length.

    Capping keeps the per-case cost bounded: an integration error can paste a whole stack trace.
    """
    # str.split() splits on exactly the characters ``\s`` matches (both use Py_UNICODE_ISSPACE)
    return " ".join(_DIGITS.sub("0", text[:max_chars].lower()).split())


def _as_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float) and np.isnan(value):
        return ""
    return str(value)


def _as_float(value: Any) -> float:
    if value is None or value == "":
        return 0.0
    try:
        number = float(value)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"expected a number, got {value!r}") from exc
    return 0.0 if not np.isfinite(number) else number


@dataclass
class _Columns:
    text: list[str] = field(default_factory=list)
    categorical: list[list[str]] = field(default_factory=list)
    numeric: np.ndarray | None = None


def _plain_vocabulary(vectorizer: TfidfVectorizer) -> None:
    """Make the fitted vocabulary's column numbers Python ints (scikit-learn leaves numpy
    int64 scalars). skops writes every numpy scalar as its own array file, so a 12k-term
    vocabulary was a 12k-file artifact: 2.9 s to save and 1.7 s to load a Bitext model, against
    0.3 s and 0.5 s with plain ints (same transform; ``bench/artifact_io.py``)."""
    vectorizer.vocabulary_ = {term: int(column) for term, column in vectorizer.vocabulary_.items()}


class RecordFeaturizer(TransformerMixin, BaseEstimator):
    """Turn records into one sparse matrix: word and character TF-IDF, one-hot, numeric, embeddings.

    Parameters are stored as given (scikit-learn convention); everything learned ends in ``_``.
    ``fit``/``transform`` take ``embeddings`` as a keyword so the caller can reuse vectors it
    computed once per case.
    """

    def __init__(
        self,
        spec: FeatureSpec | None = None,
        word_ngram_range: tuple[int, int] = (1, 2),
        char_ngram_range: tuple[int, int] = (2, 5),
        min_df: int = 1,
        char_min_df: int = 2,
        max_features: int | None = 300_000,
        max_chars: int = 4_000,
        word_weight: float = 1.0,
        char_weight: float = 1.0,
        categorical_weight: float = 0.5,
        numeric_weight: float = 0.25,
        embedding_weight: float = 2.0,
    ) -> None:
        self.spec = spec
        self.word_ngram_range = word_ngram_range
        self.char_ngram_range = char_ngram_range
        self.min_df = min_df
        self.char_min_df = char_min_df
        self.max_features = max_features
        self.max_chars = max_chars
        self.word_weight = word_weight
        self.char_weight = char_weight
        self.categorical_weight = categorical_weight
        self.numeric_weight = numeric_weight
        self.embedding_weight = embedding_weight

    # -- helpers -----------------------------------------------------------------------------
    def _spec(self) -> FeatureSpec:
        return self.spec if self.spec is not None else FeatureSpec()

    def texts(self, records: Sequence[Record]) -> list[str]:
        """The normalised joined text of each record: what the n-grams and the encoder read."""
        columns = self._spec().text_columns
        return [
            normalise_text(" \n ".join(_as_text(r.get(c)) for c in columns), self.max_chars)
            for r in records
        ]

    def _columns(self, records: Sequence[Record]) -> _Columns:
        spec = self._spec()
        cols = _Columns()
        if spec.text_columns:
            cols.text = self.texts(records)
        if spec.categorical_columns:
            cols.categorical = [
                [_as_text(r.get(c)).strip().lower() for c in spec.categorical_columns]
                for r in records
            ]
        if spec.numeric_columns:
            values = np.array(
                [[_as_float(r.get(c)) for c in spec.numeric_columns] for r in records],
                dtype=np.float64,
            ).reshape(len(records), len(spec.numeric_columns))
            cols.numeric = np.sign(values) * np.log1p(np.abs(values))
        return cols

    def _embedding_block(
        self, embeddings: np.ndarray | None, n: int, texts: Sequence[str]
    ) -> np.ndarray | None:
        spec = self._spec()
        dim = spec.embedding_dim
        if dim is None:
            return None  # fitted without embeddings: vectors passed by the pipeline are ignored
        if embeddings is None:
            if spec.embedding_encoder is None:
                raise ValueError(
                    f"this model was trained with {dim}-d embeddings; pass `embeddings`"
                )
            embeddings = embed_texts(spec, texts)
        arr = np.asarray(embeddings, dtype=np.float64)
        if arr.shape != (n, dim):
            raise ValueError(f"embeddings must have shape ({n}, {dim}), got {arr.shape}")
        norms = np.linalg.norm(arr, axis=1, keepdims=True)
        arr = arr / np.where(norms == 0, 1.0, norms)
        return (arr * self.embedding_weight).astype(np.float32)

    def embed(
        self, X: Sequence[Record], progress: Callable[[str], None] | None = None
    ) -> np.ndarray | None:
        """The encoder's vectors for ``X``'s text, as fit/transform would compute them.

        ``None`` when the spec names no encoder (no embeddings, or vectors the caller passes).
        Needs only the parameters, not a fitted featurizer, so a caller can encode once with
        progress and hand the result to ``fit_transform``/``transform`` as ``embeddings``.
        """
        spec = self._spec()
        if spec.embedding_dim is None or spec.embedding_encoder is None:
            return None
        return embed_texts(spec, self.texts(list(X)) if spec.text_columns else [], progress)

    # -- scikit-learn API ----------------------------------------------------------------------
    def fit(
        self, X: Sequence[Record], y: Any = None, *, embeddings: np.ndarray | None = None
    ) -> RecordFeaturizer:
        """Learn vocabularies, categories and scales from ``X``; returns ``self``."""
        self._fit_transform(X, embeddings)
        return self

    def fit_transform(
        self,
        X: Sequence[Record],
        y: Any = None,
        *,
        embeddings: np.ndarray | None = None,
    ) -> sp.csr_matrix:
        return self._fit_transform(X, embeddings)

    def _fit_transform(self, X: Sequence[Record], embeddings: np.ndarray | None) -> sp.csr_matrix:
        records = list(X)
        if not records:
            raise ValueError("cannot fit features on zero records")
        spec = self._spec()
        cols = self._columns(records)
        self.word_vectorizer_: TfidfVectorizer | None = None
        self.char_vectorizer_: TfidfVectorizer | None = None
        self.encoder_: OneHotEncoder | None = None
        self.scaler_: StandardScaler | None = None
        if spec.text_columns:
            self.word_vectorizer_ = TfidfVectorizer(
                ngram_range=self.word_ngram_range,
                min_df=self.min_df,
                sublinear_tf=True,
                max_features=self.max_features,
                token_pattern=_WORD_PATTERN,
                dtype=np.float32,
            )
            self.char_vectorizer_ = TfidfVectorizer(
                analyzer="char_wb",
                ngram_range=self.char_ngram_range,
                min_df=self.char_min_df,
                sublinear_tf=True,
                max_features=self.max_features,
                dtype=np.float32,
            )
            try:
                self.word_vectorizer_.fit(cols.text)
            except ValueError:  # empty vocabulary: no text at all in the training data
                self.word_vectorizer_ = None
            try:
                self.char_vectorizer_.fit(cols.text)
            except ValueError:
                # too few documents for min_df: fall back to keeping every n-gram
                self.char_vectorizer_.set_params(min_df=1)
                try:
                    self.char_vectorizer_.fit(cols.text)
                except ValueError:
                    self.char_vectorizer_ = None
            for vectorizer in (self.word_vectorizer_, self.char_vectorizer_):
                if vectorizer is not None:
                    _plain_vocabulary(vectorizer)
        if spec.categorical_columns:
            self.encoder_ = OneHotEncoder(handle_unknown="ignore", dtype=np.float32)
            self.encoder_.fit(np.array(cols.categorical, dtype=object))
            # plain lookups for transform: the encoder's per-call input validation costs more
            # than the encoding for a single case
            self.category_index_ = [
                {str(v): i for i, v in enumerate(c)} for c in self.encoder_.categories_
            ]
        if spec.numeric_columns and cols.numeric is not None:
            self.scaler_ = StandardScaler().fit(cols.numeric)
        self.n_records_seen_ = len(records)
        return self._assemble(cols, embeddings, len(records))

    def transform(
        self, X: Sequence[Record], *, embeddings: np.ndarray | None = None
    ) -> sp.csr_matrix:
        """Features for ``X`` as CSR; shape ``(len(X), n_features_out_)``."""
        check_is_fitted(self, "n_records_seen_")
        records = list(X)
        return self._assemble(self._columns(records), embeddings, len(records))

    def _assemble(self, cols: _Columns, embeddings: np.ndarray | None, n: int) -> sp.csr_matrix:
        blocks: list[sp.csr_matrix | np.ndarray] = [*self._text_blocks(cols.text)]
        if self.encoder_ is not None:
            blocks.append(self._one_hot(cols.categorical))
        if self.scaler_ is not None and cols.numeric is not None:
            scaled = (cols.numeric - self.scaler_.mean_) / self.scaler_.scale_
            blocks.append((np.clip(scaled, -5, 5) * self.numeric_weight).astype(np.float32))
        emb = self._embedding_block(embeddings, n, cols.text)
        if emb is not None:
            blocks.append(emb)
        return _hstack(blocks, n)

    def _one_hot(self, rows: list[list[str]]) -> sp.csr_matrix:
        """Same matrix as ``encoder_.transform`` (unknown values ignored), times the weight."""
        offsets = np.cumsum([0] + [len(c) for c in self.category_index_])
        indices: list[int] = []
        indptr = [0]
        for row in rows:
            for j, value in enumerate(row):
                hit = self.category_index_[j].get(value)
                if hit is not None:
                    indices.append(int(offsets[j]) + hit)
            indptr.append(len(indices))
        return sp.csr_matrix(
            (
                np.full(len(indices), self.categorical_weight, dtype=np.float32),
                np.asarray(indices, dtype=np.int32),
                np.asarray(indptr, dtype=np.int64),
            ),
            shape=(len(rows), int(offsets[-1])),
        )

    def _text_blocks(self, texts: list[str]) -> list[sp.spmatrix]:
        blocks: list[sp.spmatrix] = []
        if self.word_vectorizer_ is not None:
            blocks.append(_tfidf(self.word_vectorizer_, texts, self.word_weight))
        if self.char_vectorizer_ is not None:
            blocks.append(_tfidf(self.char_vectorizer_, texts, self.char_weight))
        return blocks

    def word_block(self, X: Sequence[Record]) -> sp.csr_matrix | None:
        """The word TF-IDF block alone (used for out-of-distribution checks)."""
        check_is_fitted(self, "n_records_seen_")
        if self.word_vectorizer_ is None:
            return None
        return self.word_vectorizer_.transform(self._columns(list(X)).text).tocsr()

    def split_word_block(self, matrix: sp.csr_matrix) -> sp.csr_matrix | None:
        """Slice the word block out of an already transformed matrix (no second tokenisation)."""
        if self.word_vectorizer_ is None:
            return None
        width = len(self.word_vectorizer_.vocabulary_)
        return matrix[:, :width]

    @property
    def n_features_out_(self) -> int:
        check_is_fitted(self, "n_records_seen_")
        total = 0
        if self.word_vectorizer_ is not None:
            total += len(self.word_vectorizer_.vocabulary_)
        if self.char_vectorizer_ is not None:
            total += len(self.char_vectorizer_.vocabulary_)
        if self.encoder_ is not None:
            total += sum(len(c) for c in self.encoder_.categories_)
        if self.scaler_ is not None:
            total += len(self._spec().numeric_columns)
        if self._spec().embedding_dim is not None:
            total += int(self._spec().embedding_dim or 0)
        return total


def _hstack(blocks: Sequence[sp.csr_matrix | np.ndarray], n: int) -> sp.csr_matrix:
    """Side-by-side float32 CSR of sparse and dense ``(n, width)`` blocks (zeros not stored).

    One row (a single case, the latency-bound call) is concatenated directly: scipy's
    constructors and ``hstack`` cost ~0.1 ms each in input checks, several times the work.
    """
    if not blocks:
        return sp.csr_matrix((n, 0), dtype=np.float32)
    if n == 1:
        data: list[np.ndarray] = []
        indices: list[np.ndarray] = []
        offset = 0
        for block in blocks:
            if isinstance(block, np.ndarray):
                row = block[0]
                (cols,) = np.nonzero(row)
                data.append(row[cols])
            else:
                cols, data_part = block.indices, block.data
                data.append(data_part)
            indices.append(cols.astype(np.int32) + offset)
            offset += block.shape[1]
        values = np.concatenate(data).astype(np.float32, copy=False)
        return sp.csr_matrix(
            (values, np.concatenate(indices), [0, len(values)]),
            shape=(1, offset),
            dtype=np.float32,
        )
    sparse = [b if isinstance(b, sp.csr_matrix) else sp.csr_matrix(b) for b in blocks]
    # every block is float32 already: a dtype conversion here would make scipy sort the
    # (deliberately unsorted) char block's indices, a third of a long batch's cost
    return sp.hstack(sparse, format="csr", dtype=np.float32)


def _tfidf(vectorizer: TfidfVectorizer, texts: list[str], weight: float) -> sp.csr_matrix:
    """``vectorizer.transform(texts) * weight`` without scikit-learn's per-call input checks.

    Same arithmetic as ``TfidfVectorizer(sublinear_tf=True, norm="l2")``: counts from the fitted
    vocabulary, ``1 + log(tf)``, times ``idf_``, row-wise L2 normalisation. The generic input
    validation costs more than the arithmetic for a single case, and the per-case latency
    budget is 2 ms.
    """
    if _fast_char_wb_ok(vectorizer):
        counts = _char_wb_counts(vectorizer, texts)
    elif _fast_word_ok(vectorizer):
        counts = _word_counts(vectorizer, texts)
    else:
        counts = CountVectorizer.transform(vectorizer, texts).astype(np.float32)
    counts.data = 1.0 + np.log(counts.data)
    counts.data *= vectorizer.idf_.astype(np.float32)[counts.indices]
    norms = row_norms(counts)
    norms[norms == 0] = 1.0
    counts.data /= np.repeat(norms, np.diff(counts.indptr)).astype(np.float32)
    counts.data *= np.float32(weight)
    return counts.tocsr()


_CHAR_CACHES: weakref.WeakKeyDictionary[TfidfVectorizer, dict[str, array[int]]] = (
    weakref.WeakKeyDictionary()
)
_CHAR_CACHE_LIMIT = 200_000  # words per fitted vectorizer; cleared wholesale when exceeded
# Below this many documents the batched count paths (distinct words of the batch, numpy
# gathers, sparse products) cost more in fixed overhead than they save: a single case took
# ~2x longer (bench: ~200 vs ~90 us per block).
_BATCHED_MIN = 16


def _fast_char_wb_ok(vectorizer: TfidfVectorizer) -> bool:
    return (
        vectorizer.analyzer == "char_wb"
        and vectorizer.lowercase
        and vectorizer.strip_accents is None
        and vectorizer.preprocessor is None
        and not vectorizer.binary
    )


def _fast_word_ok(vectorizer: TfidfVectorizer) -> bool:
    return (
        vectorizer.analyzer == "word"
        and vectorizer.lowercase
        and vectorizer.strip_accents is None
        and vectorizer.preprocessor is None
        and vectorizer.tokenizer is None
        and vectorizer.stop_words is None
        and not vectorizer.binary
    )


def _word_counts(vectorizer: TfidfVectorizer, texts: list[str]) -> sp.csr_matrix:
    """The word n-gram count matrix ``CountVectorizer.transform`` would give (same tokens and
    n-gram joining), for n-grams up to bigrams without per-document analyzer calls.

    Tokens are numbered over the batch's distinct tokens; each distinct unigram and each
    distinct bigram (a pair of token numbers, found with numpy) is looked up in the vocabulary
    once, and the per-position ids are gathered with numpy. Longer n-grams take the plain
    per-document path, as do batches under ``_BATCHED_MIN`` documents. Equality with
    scikit-learn is checked by the tests.
    """
    vocab = vectorizer.vocabulary_
    token = re.compile(vectorizer.token_pattern)
    min_n, max_n = vectorizer.ngram_range
    if max_n > 2 or len(texts) < _BATCHED_MIN:
        return _word_counts_per_document(vectorizer, texts, token)
    words, flat, lengths = _number_tokens([token.findall(doc.lower()) for doc in texts])
    doc_of = np.repeat(np.arange(len(texts), dtype=np.int64), lengths)
    rows: list[np.ndarray] = [np.zeros(0, dtype=np.int64)]
    cols: list[np.ndarray] = [np.zeros(0, dtype=np.int64)]

    def keep(doc: np.ndarray, ids: np.ndarray) -> None:  # n-grams the vocabulary knows
        known = ids >= 0
        rows.append(doc[known])
        cols.append(ids[known])

    if min_n == 1:
        unigram = np.fromiter((vocab.get(w, -1) for w in words), dtype=np.int64, count=len(words))
        keep(doc_of, unigram[flat])
    if max_n == 2 and len(flat) > 1:
        same_doc = doc_of[1:] == doc_of[:-1]
        n = len(words)
        keys = flat[:-1][same_doc] * n + flat[1:][same_doc]
        distinct, inverse = np.unique(keys, return_inverse=True)
        bigram = np.fromiter(
            (vocab.get(words[k // n] + " " + words[k % n], -1) for k in distinct.tolist()),
            dtype=np.int64,
            count=len(distinct),
        )
        keep(doc_of[1:][same_doc], bigram[inverse.reshape(-1)])
    row, col = np.concatenate(rows), np.concatenate(cols)
    # COO -> CSR sums the repeated n-grams of a document
    return sp.coo_matrix(
        (np.ones(len(row), dtype=np.float32), (row, col)), shape=(len(texts), len(vocab))
    ).tocsr()


def _number_tokens(
    token_lists: list[list[str]],
) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Number a batch's tokens by their distinct values (first-seen order), so that each
    distinct token is looked up once: returns the distinct tokens, every token's number in
    document order (int64) and each document's token count (int64)."""
    words = list(dict.fromkeys(chain.from_iterable(token_lists)))
    position = {word: i for i, word in enumerate(words)}
    lengths = np.fromiter(map(len, token_lists), dtype=np.int64, count=len(token_lists))
    flat = np.fromiter(
        map(position.__getitem__, chain.from_iterable(token_lists)),
        dtype=np.int64,
        count=int(lengths.sum()),
    )
    return words, flat, lengths


def _word_counts_per_document(
    vectorizer: TfidfVectorizer, texts: list[str], token: re.Pattern[str]
) -> sp.csr_matrix:
    """``_word_counts`` for any n-gram range: the n-grams of each document joined and looked up
    one by one."""
    vocab = vectorizer.vocabulary_
    min_n, max_n = vectorizer.ngram_range
    indices = array("i")
    indptr = array("q", [0])
    get = vocab.get
    for doc in texts:
        tokens = token.findall(doc.lower())
        grams: list[str] = tokens if min_n == 1 else []
        for n in range(max(2, min_n), max_n + 1):
            grams = grams + [" ".join(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]
        indices.extend([i for i in map(get, grams) if i is not None])
        indptr.append(len(indices))
    matrix = _ones_csr(indices, indptr, len(vocab))
    matrix.sum_duplicates()
    return matrix


def _wb_ngrams(word: str, min_n: int, max_n: int) -> list[str]:
    """scikit-learn's ``char_wb`` n-grams of one word (same padding and short-word rule)."""
    w = " " + word + " "
    w_len = len(w)
    out = []
    for n in range(min_n, max_n + 1):
        offset = 0
        out.append(w[offset : offset + n])
        while offset + n < w_len:
            offset += 1
            out.append(w[offset : offset + n])
        if offset == 0:
            break
    return out


def _char_wb_counts(vectorizer: TfidfVectorizer, texts: list[str]) -> sp.csr_matrix:
    """The ``char_wb`` count matrix ``CountVectorizer.transform`` would give, computed per word.

    ``char_wb`` n-grams never cross a word boundary, so a document's counts are the sum of its
    words' counts: ``(documents x words) @ (words x n-grams)`` over the batch's distinct words.
    Words repeat (Zipf), so each word's n-grams are looked up once per fitted vectorizer
    (cached) and once per batch; the sparse product sums repeated n-grams in C without
    sorting every row, which dominated the cost of long texts. The result's column indices
    are not sorted within rows (nothing downstream needs them sorted). Batches under
    ``_BATCHED_MIN`` documents take the per-document path. Equality with scikit-learn is
    checked by the tests.
    """
    cache = _CHAR_CACHES.get(vectorizer)
    if cache is None:
        cache = _CHAR_CACHES.setdefault(vectorizer, {})
    if len(texts) < _BATCHED_MIN:
        return _char_wb_counts_per_document(vectorizer, texts, cache)
    vocab = vectorizer.vocabulary_
    min_n, max_n = vectorizer.ngram_range
    words, flat, lengths = _number_tokens([doc.lower().split() for doc in texts])
    gram_ids = array("i")
    gram_ptr = array("q", [0])
    for word in words:
        gram_ids.extend(_char_ids(word, vocab, min_n, max_n, cache))
        gram_ptr.append(len(gram_ids))
    word_grams = _ones_csr(gram_ids, gram_ptr, len(vocab))
    doc_words = _ones_csr(flat, np.concatenate(([0], np.cumsum(lengths))), len(words))
    counts: sp.csr_matrix = (doc_words @ word_grams).tocsr()  # sums of ones: no zeros stored
    return counts


def _char_wb_counts_per_document(
    vectorizer: TfidfVectorizer, texts: list[str], cache: dict[str, array[int]]
) -> sp.csr_matrix:
    """``_char_wb_counts`` for a few documents: each word's cached n-gram ids appended per
    document, then one sort per row (cheaper than building two matrices for one case)."""
    vocab = vectorizer.vocabulary_
    min_n, max_n = vectorizer.ngram_range
    indices = array("i")
    indptr = array("q", [0])
    for doc in texts:
        for word in doc.lower().split():
            indices.extend(_char_ids(word, vocab, min_n, max_n, cache))
        indptr.append(len(indices))
    matrix = _ones_csr(indices, indptr, len(vocab))
    matrix.sum_duplicates()
    return matrix


def _char_ids(
    word: str, vocab: Mapping[str, int], min_n: int, max_n: int, cache: dict[str, array[int]]
) -> array[int]:
    """Vocabulary ids of one word's ``char_wb`` n-grams, cached per fitted vectorizer."""
    ids = cache.get(word)
    if ids is None:
        ids = array("i", [vocab[g] for g in _wb_ngrams(word, min_n, max_n) if g in vocab])
        if len(cache) >= _CHAR_CACHE_LIMIT:
            cache.clear()
        cache[word] = ids
    return ids


def _ones_csr(
    indices: array[int] | np.ndarray, indptr: array[int] | np.ndarray, width: int
) -> sp.csr_matrix:
    """A CSR matrix of ones at ``indices`` (rows delimited by ``indptr``); repeated columns in
    a row are kept as separate entries (the caller sums them or multiplies them out).
    ``array('i')`` / ``array('q')`` extend by memcpy and become numpy without a copy."""
    return sp.csr_matrix(
        (np.ones(len(indices), dtype=np.float32), np.asarray(indices), np.asarray(indptr)),
        shape=(len(indptr) - 1, width),
    )


def row_ids(matrix: sp.csr_matrix) -> np.ndarray:
    """Row index of every stored entry of a CSR matrix."""
    return np.repeat(np.arange(matrix.shape[0]), np.diff(matrix.indptr))


def row_norms(matrix: sp.csr_matrix) -> np.ndarray:
    """L2 norm of each row of a CSR matrix (float64; 0 for an empty row).

    Sums the squares per row segment with ``np.add.reduceat`` (6x faster than a ``bincount``
    over per-entry row ids on a 5,000-case batch); empty rows are skipped because reduceat
    would return the next row's first entry for them."""
    squares = np.square(matrix.data, dtype=np.float64)
    out = np.zeros(matrix.shape[0], dtype=np.float64)
    starts = matrix.indptr[:-1]
    filled = matrix.indptr[1:] > starts
    if filled.any():
        out[filled] = np.add.reduceat(squares, starts[filled])
    return np.sqrt(out)


def row_nnz_between(matrix: sp.csr_matrix, start: int, stop: int) -> np.ndarray:
    """Stored entries per row whose column lies in ``[start, stop)``."""
    inside = (matrix.indices >= start) & (matrix.indices < stop)
    return np.bincount(row_ids(matrix)[inside], minlength=matrix.shape[0])


def texts_of(records: Iterable[Record], columns: Sequence[str]) -> list[str]:
    """The concatenated raw text of each record (for grouping and reports)."""
    return [" \n ".join(_as_text(r.get(c)) for c in columns) for r in records]
