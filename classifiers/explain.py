"""Why a prediction: an exact breakdown of a linear model's log-odds into the case's evidence.

Contract:
- :func:`explain` returns, per record and target, a ``contracts.suggestion.Explanation`` for
  the top-ranked label against the runner-up (also when the prediction abstained: the reviewer
  then sees what the two candidates were fighting over).
- The numbers are exact, not a local approximation (no LIME, no sampling): each target's
  classifier is linear in the features and its probabilities are ``softmax(scores / T)``, so
  ``ln(P(label) / P(versus)) = (s_label - s_versus) / T`` splits into one term per non-zero
  feature plus the intercepts' difference. ``baseline + sum(evidence) + other == log_odds``.
- Features are folded back into what a reviewer can read: a word's unigram weight and the
  weights of the character n-grams inside it (an n-gram that occurs in several words is
  shared equally between its occurrences) become one ``word`` item; word bigrams are
  ``phrase`` items; one-hot columns are ``field`` items with the case's value; numeric columns
  are ``number`` items. The embedding block's weight is split over the words too when the
  encoder's text vector is a normalised sum of word vectors (the static tables, the default:
  the split is exact, see :func:`classifiers.features.split_into_words`), so each ``word``
  item also carries its share of the text's meaning; for other encoders (transformers) the
  block is one ``meaning`` item (its 384 or 768 dimensions mean nothing one by one).
- Texts are shown as the model read them: lower-cased, digit runs masked as ``0``.
- Punctuation the static table reads as words of their own ("?", ",") is never listed: its
  weight stays in ``other``, so the sum above still holds and the list names only words.
"""

from __future__ import annotations

import re
import weakref
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from scipy.special import softmax
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.utils.validation import check_is_fitted

from classifiers.calibration import CalibratedLinearClassifier
from classifiers.features import (
    FeatureSpec,
    Record,
    RecordFeaturizer,
    _as_float,
    _wb_ngrams,
    split_into_words,
)
from contracts.suggestion import Evidence, Explanation

DEFAULT_TOP = 8
MAX_TOP = 50
_EDGE_PUNCT = re.compile(r"^\W+|\W+$")

_INVERSE_VOCABS: weakref.WeakKeyDictionary[TfidfVectorizer, list[str]] = weakref.WeakKeyDictionary()


def _inverse_vocab(vectorizer: TfidfVectorizer) -> list[str]:
    """Column -> term, built once per fitted vectorizer (300k terms: tens of ms)."""
    names = _INVERSE_VOCABS.get(vectorizer)
    if names is None:
        names = [""] * len(vectorizer.vocabulary_)
        for term, col in vectorizer.vocabulary_.items():
            names[col] = term
        _INVERSE_VOCABS[vectorizer] = names
    return names


@dataclass(frozen=True)
class _Layout:
    """Where each block of the featurizer's output starts (blocks in ``_assemble`` order)."""

    words: int  # end of the word block (it starts at 0)
    chars: int  # end of the character block
    one_hot: int  # end of the one-hot block
    numeric: int  # end of the numeric block; the embedding block runs from here to the end
    one_hot_offsets: tuple[int, ...]  # start of each categorical column inside the block


def _layout(fz: RecordFeaturizer, spec: FeatureSpec) -> _Layout:
    words = len(fz.word_vectorizer_.vocabulary_) if fz.word_vectorizer_ is not None else 0
    chars = words + (len(fz.char_vectorizer_.vocabulary_) if fz.char_vectorizer_ else 0)
    sizes = [len(c) for c in fz.encoder_.categories_] if fz.encoder_ is not None else []
    offsets = tuple(int(o) for o in np.cumsum([0, *sizes]))
    one_hot = chars + offsets[-1]
    numeric = one_hot + (len(spec.numeric_columns) if fz.scaler_ is not None else 0)
    return _Layout(words, chars, one_hot, numeric, offsets)


def _display(token: str) -> str:
    word = _EDGE_PUNCT.sub("", token)
    return word or token


def _char_owners(fz: RecordFeaturizer, text: str, start: int) -> dict[int, list[str]]:
    """Column -> the words (one entry per occurrence) whose ``char_wb`` n-grams hit it."""
    vectorizer = fz.char_vectorizer_
    if vectorizer is None:
        return {}
    vocab = vectorizer.vocabulary_
    min_n, max_n = vectorizer.ngram_range
    owners: dict[int, list[str]] = {}
    for token in text.split():
        shown = _display(token)
        for gram in _wb_ngrams(token, min_n, max_n):
            col = vocab.get(gram)
            if col is not None:
                owners.setdefault(start + col, []).append(shown)
    return owners


_Key = tuple[str, str, str | None]  # (kind, feature, value) of an Evidence item


def _listable(key: _Key) -> bool:
    """A reviewer reads words: a "word" of punctuation alone is not worth a row."""
    return key[0] != "word" or any(ch.isalnum() for ch in key[1])


def _evidence_keys(
    cols: np.ndarray,
    record: Record,
    text: str,
    fz: RecordFeaturizer,
    spec: FeatureSpec,
    layout: _Layout,
    words: list[str],
) -> list[list[tuple[_Key, float]]]:
    """For each feature column of one row: the evidence items it folds into, with shares."""
    owners = _char_owners(fz, text, layout.words)
    meaning = _meaning_key(spec)
    out: list[list[tuple[_Key, float]]] = []
    for col in cols.tolist():
        if col < layout.words:
            term = words[col]
            out.append([(("phrase" if " " in term else "word", term, None), 1.0)])
        elif col < layout.chars:
            shared = owners.get(col) or ["(spelling)"]
            out.append([(("word", word, None), 1.0 / len(shared)) for word in shared])
        elif col < layout.one_hot:
            offset = col - layout.chars
            field = int(np.searchsorted(layout.one_hot_offsets, offset, side="right")) - 1
            assert fz.encoder_ is not None
            value = fz.encoder_.categories_[field][offset - layout.one_hot_offsets[field]]
            out.append([(("field", spec.categorical_columns[field], str(value)), 1.0)])
        elif col < layout.numeric:
            name = spec.numeric_columns[col - layout.one_hot]
            out.append([(("number", name, f"{_as_float(record.get(name)):g}"), 1.0)])
        else:
            out.append([(meaning, 1.0)])
    return out


def _meaning_key(spec: FeatureSpec) -> _Key:
    return ("meaning", spec.embedding_encoder or "text embedding", None)


def _meaning_by_word(
    cols: np.ndarray,
    vals: np.ndarray,
    text: str,
    fz: RecordFeaturizer,
    spec: FeatureSpec,
    layout: _Layout,
) -> tuple[list[str], np.ndarray, float] | None:
    """The row's meaning vector as a sum over its words: (words, word vectors, norm of their
    sum), when the encoder allows it and its vector is the one in the row; else ``None``."""
    if spec.embedding_dim is None or not text:
        return None
    split = split_into_words(spec, text)
    if split is None:
        return None
    word_list, vectors = split
    total = vectors.sum(axis=0)
    norm = float(np.linalg.norm(total))
    if not word_list or norm == 0.0:
        return None
    in_row = np.zeros(spec.embedding_dim)
    block = cols >= layout.numeric
    in_row[cols[block] - layout.numeric] = vals[block] / fz.embedding_weight
    # vectors passed in by a caller may not be this text's: split only what it would encode
    if not np.allclose(total / norm, in_row, atol=1e-4):
        return None
    return word_list, vectors, norm


def _pair_weights(
    clf: CalibratedLinearClassifier, k: int, j: int, columns: np.ndarray | slice
) -> tuple[np.ndarray, float]:
    """Weights (at ``columns``) and intercept of ``(s_k - s_j)``, linear in the features.

    Only the columns asked for are read: the full difference of two rows is the vocabulary's
    size (hundreds of thousands), a case has a few hundred non-zero features.
    """
    coef = clf.estimator_.coef_
    intercept = np.asarray(clf.estimator_.intercept_, dtype=np.float64)
    if coef.shape[0] == 1:  # binary: the scores are -raw/2 and +raw/2 (see decision_function)
        sign = 1.0 if k == 1 else -1.0
        return sign * np.asarray(coef[0, columns], dtype=np.float64), sign * float(intercept[0])
    w = np.asarray(coef[k, columns], dtype=np.float64) - np.asarray(
        coef[j, columns], dtype=np.float64
    )
    return w, float(intercept[k] - intercept[j])


def explain(
    model: object,
    records: Sequence[Record],
    *,
    embeddings: np.ndarray | None = None,
    targets: Sequence[str] | None = None,
    top: int = DEFAULT_TOP,
) -> list[dict[str, Explanation]]:
    """One ``{target: Explanation}`` per record for a fitted :class:`CaseModel`.

    ``embeddings`` as for ``CaseModel.predict`` (computed by the model's encoder when omitted).
    ``top`` (1..``MAX_TOP``) caps the evidence listed per target; the rest is summed in
    ``other``. Raises ``ValueError`` for an unknown target or a ``top`` out of range.
    """
    from classifiers.case_model import CaseModel  # the model module imports this one

    if not isinstance(model, CaseModel):
        raise TypeError("explain needs a fitted CaseModel")
    check_is_fitted(model, "n_records_seen_")
    chosen = list(targets or model.targets)
    unknown = [t for t in chosen if t not in model.estimators_]
    if unknown:
        raise ValueError(f"the model does not predict {unknown}; it predicts {list(model.targets)}")
    if not 1 <= top <= MAX_TOP:
        raise ValueError(f"top must be between 1 and {MAX_TOP}")
    records = list(records)
    fz = model.featurizer_
    spec = model.feature_spec()
    X = sp.csr_matrix(model.transform(records, embeddings=embeddings))
    layout = _layout(fz, spec)
    texts = fz.texts(records) if spec.text_columns else [""] * len(records)
    words = _inverse_vocab(fz.word_vectorizer_) if fz.word_vectorizer_ is not None else []
    out: list[dict[str, Explanation]] = []
    for i, record in enumerate(records):
        lo, hi = X.indptr[i], X.indptr[i + 1]
        cols = np.asarray(X.indices[lo:hi], dtype=np.int64)
        vals = np.asarray(X.data[lo:hi], dtype=np.float64)
        keys = _evidence_keys(cols, record, texts[i], fz, spec, layout, words)
        by_word = _meaning_by_word(cols, vals, texts[i], fz, spec, layout)
        row = X[i]
        per_target: dict[str, Explanation] = {}
        for target in chosen:
            clf = model.estimators_[target]
            scores = clf.decision_function(row) / clf.temperature_
            proba = softmax(scores[0])  # what clf.predict_proba gives, without a second pass
            order = np.argsort(-scores[0], kind="stable")
            k, j = int(order[0]), int(order[1])
            w, bias = _pair_weights(clf, k, j, cols)
            contrib = vals * w / clf.temperature_
            items: dict[_Key, float] = {}
            for shares, c in zip(keys, contrib.tolist(), strict=True):
                for key, share in shares:
                    items[key] = items.get(key, 0.0) + c * share
            rounding = 0.0
            if by_word is not None:
                # the meaning vector is a normalised sum of word vectors: its weight splits
                # exactly over the words, which join their n-gram evidence
                word_list, vectors, norm = by_word
                meaning = items.pop(_meaning_key(spec), 0.0)
                w_meaning, _ = _pair_weights(clf, k, j, slice(layout.numeric, None))
                parts = fz.embedding_weight * (vectors @ w_meaning) / norm / clf.temperature_
                for word, part in zip(word_list, parts.tolist(), strict=True):
                    key = ("word", _display(word), None)
                    items[key] = items.get(key, 0.0) + part
                rounding = meaning - float(parts.sum())  # float32 features: ~1e-7
            unlisted = sum(v for key, v in items.items() if not _listable(key))
            ranked = sorted(
                ((key, v) for key, v in items.items() if v != 0.0 and _listable(key)),
                key=lambda kv: -abs(kv[1]),
            )
            shown, rest = ranked[:top], ranked[top:]
            per_target[target] = Explanation(
                target=target,
                label=str(clf.classes_[k]),
                probability=round(float(proba[k]), 6),
                versus=str(clf.classes_[j]),
                versus_probability=round(float(proba[j]), 6),
                log_odds=round(float(scores[0][k] - scores[0][j]), 6),
                baseline=round(bias / clf.temperature_, 6),
                evidence=[
                    Evidence(kind=kind, feature=feature, value=value, weight=round(v, 6))
                    for (kind, feature, value), v in shown
                ],
                other=round(sum(v for _, v in rest) + unlisted + rounding, 6),
            )
        out.append(per_target)
    return out
