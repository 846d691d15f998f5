"""The prompt-injection corpus (tests/data/injection_corpus.jsonl) against the detector alone:
every attack raises at least the flag kinds it is labelled with, in the field it sits in, and
no text of the benign control set (tests/data/benign_corpus.jsonl) raises any flag.

The end-to-end version (real API, real pipeline, clean twins) is tests/test_injection_corpus.py.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from retrieval.injection import detect_injection

DATA = Path(__file__).parents[1] / "data"


def load(name: str) -> list[dict[str, Any]]:
    lines = (DATA / name).read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


ATTACKS = load("injection_corpus.jsonl")
BENIGN = load("benign_corpus.jsonl")


def test_corpus_shape() -> None:
    assert len(ATTACKS) >= 50 and len(BENIGN) >= 30
    assert len({a["text"] for a in ATTACKS}) == len(ATTACKS), "attacks must be distinct"
    fields = {"customer_message", "operator_notes", "integration_error", "title"}
    assert {a["field"] for a in ATTACKS} == fields
    assert all(a["expect"] for a in ATTACKS)


@pytest.mark.parametrize("attack", ATTACKS, ids=[a["id"] for a in ATTACKS])
def test_attack_raises_its_flag_kinds(attack: dict[str, Any]) -> None:
    flags = detect_injection(attack["text"], attack["field"])
    assert {f.field for f in flags} <= {attack["field"]}
    assert set(attack["expect"]) <= {f.kind for f in flags}, [str(f) for f in flags]


@pytest.mark.parametrize("text", BENIGN, ids=[b["id"] for b in BENIGN])
def test_benign_text_raises_nothing(text: dict[str, Any]) -> None:
    assert detect_injection(text["text"], text["field"]) == []
