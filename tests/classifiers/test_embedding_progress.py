"""Encoding with progress: chunked calls, messages while work remains, the same vectors and
features as encoding inside ``transform``, and progress from training and evaluation."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from classifiers import features
from classifiers.case_model import CaseModel
from classifiers.evaluation import evaluate_model
from classifiers.features import FeatureSpec, embed_texts
from tests.classifiers.conftest import bitext_rows

SPEC = FeatureSpec(
    text_columns=("text",),
    embedding_dim=3,
    embedding_encoder="fake",
    embedding_fingerprint="fake-1",
)


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """A fake encoder (vectors from the text itself) recording the texts of every call."""
    seen: list[list[str]] = []

    def fake(name: str, texts: Any) -> tuple[np.ndarray, str]:
        assert name == "fake"
        seen.append(list(texts))
        rows = [[len(t), t.count("a") + 1.0, t.count(" ") + 1.0] for t in texts]
        return np.array(rows, dtype=np.float32), "fake-1"

    monkeypatch.setattr(features, "_embedder", fake)
    monkeypatch.setattr(features, "EMBED_CHUNK", 4)
    monkeypatch.setattr(features, "PROGRESS_SECONDS", 0.0)
    return seen


def test_chunks_report_progress_and_keep_the_vectors(calls: list[list[str]]) -> None:
    texts = [f"text number {i} " + "a" * i for i in range(10)]
    whole = embed_texts(SPEC, texts)
    messages: list[str] = []
    chunked = embed_texts(SPEC, texts, progress=messages.append)
    np.testing.assert_array_equal(chunked, whole)
    assert [len(c) for c in calls] == [10, 4, 4, 2]
    # one message per finished chunk while texts remain, none after the last
    assert len(messages) == 2
    assert "4/10" in messages[0] and "8/10" in messages[1]
    assert all("encoding texts with fake" in m and "left" in m for m in messages)


def test_training_and_evaluation_report_encoding(calls: list[list[str]]) -> None:
    rows = [{"text": r["text"], "label": r["triage_category"]} for r in bitext_rows(2)]
    messages: list[str] = []
    model = CaseModel(spec=SPEC, targets=("label",), cv=3).fit(rows, progress=messages.append)
    assert any(m.startswith("encoding texts with fake") for m in messages)
    # the vectors encoded up front feed the same features as encoding inside transform
    np.testing.assert_array_equal(
        model.transform(rows[:9]).toarray(),
        model.transform(rows[:9], embeddings=model.embed(rows[:9])).toarray(),
    )
    before = len(calls)
    messages.clear()
    result = evaluate_model(model, rows, progress=messages.append)
    assert result["targets"]["label"]["n"] == len(rows)
    assert any(m.startswith("encoding texts with fake") for m in messages)
    # evaluation encodes every text once, in chunks
    assert sum(len(c) for c in calls[before:]) == len(rows)
    assert max(len(c) for c in calls[before:]) == 4


def test_without_an_encoder_nothing_is_encoded(calls: list[list[str]]) -> None:
    rows = [{"text": r["text"], "label": r["triage_category"]} for r in bitext_rows(2)]
    model = CaseModel(spec=FeatureSpec(text_columns=("text",)), targets=("label",), cv=3)
    model.fit(rows)
    assert model.embed(rows) is None
    assert calls == []
