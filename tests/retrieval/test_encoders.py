"""Encoders: shapes, normalisation, safe persistence, fingerprints."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from retrieval.embeddings import (
    EncoderConfig,
    HashingEncoder,
    LsaConfig,
    LsaEncoder,
    encoder_from_spec,
    load_encoder,
    normalise_text,
)
from retrieval.errors import EncoderError

_WHO = ["customer", "warehouse", "carrier", "buyer", "shop", "depot"]
_WHAT = ["damaged", "missing", "late", "wrong", "returned", "billed twice", "crushed"]
_ITEM = ["goods", "pallets", "cartons", "parcels"]
TEXTS = [f"{who} reports {what} {item}" for who in _WHO for what in _WHAT for item in _ITEM]


def test_default_encoder_vectors_are_unit_length_and_deterministic() -> None:
    enc = load_encoder()
    vectors = enc.encode(["pallet arrived damaged", "invoice billed twice", ""])
    assert vectors.shape == (3, enc.dim) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors[:2], axis=1), 1.0, atol=1e-5)
    assert np.array_equal(
        vectors[:2], enc.encode(["pallet arrived damaged", "invoice billed twice"])
    )
    assert enc.encode([]).shape == (0, enc.dim)
    # Digits are masked: order numbers do not change the vector.
    a, b = enc.encode(["cancel order 113542617735902", "cancel order 42"])
    assert float(a @ b) > 0.999


def test_similar_texts_are_closer_than_unrelated_ones() -> None:
    enc = load_encoder()
    a, b, c = enc.encode(
        ["I want a refund for my order", "how do I get my money back", "change my shipping address"]
    )
    assert float(a @ b) > float(a @ c)


def test_fit_save_load_round_trip(tmp_path: Path) -> None:
    enc = LsaEncoder.fit(TEXTS, LsaConfig(dim=8))
    enc.save(tmp_path / "enc")
    loaded = LsaEncoder.load(tmp_path / "enc")
    assert loaded.fingerprint == enc.fingerprint
    assert np.allclose(loaded.encode(TEXTS[:5]), enc.encode(TEXTS[:5]), atol=1e-6)
    assert load_encoder(EncoderConfig(name=str(tmp_path / "enc"))).fingerprint == enc.fingerprint


def test_tampered_artifact_is_refused(tmp_path: Path) -> None:
    LsaEncoder.fit(TEXTS, LsaConfig(dim=8)).save(tmp_path / "enc")
    components = np.load(tmp_path / "enc" / "components.npy")
    components[0, 0] += 1.0
    np.save(tmp_path / "enc" / "components.npy", components)
    with pytest.raises(EncoderError, match="sha256"):
        LsaEncoder.load(tmp_path / "enc")


def test_pickled_arrays_are_never_loaded(tmp_path: Path) -> None:
    LsaEncoder.fit(TEXTS, LsaConfig(dim=8)).save(tmp_path / "enc")
    np.save(tmp_path / "enc" / "idf.npy", np.array([object()], dtype=object), allow_pickle=True)
    meta = json.loads((tmp_path / "enc" / "encoder.json").read_text())
    import hashlib

    meta["sha256"]["idf.npy"] = hashlib.sha256(
        (tmp_path / "enc" / "idf.npy").read_bytes()
    ).hexdigest()
    (tmp_path / "enc" / "encoder.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="allow_pickle"):
        LsaEncoder.load(tmp_path / "enc")


def test_fit_needs_enough_texts() -> None:
    with pytest.raises(EncoderError, match="distinct texts"):
        LsaEncoder.fit(["a", "b"], LsaConfig(dim=8))


def test_spec_round_trip_and_mismatch() -> None:
    enc = load_encoder()
    assert encoder_from_spec(enc.spec()).fingerprint == enc.fingerprint
    hashing = HashingEncoder(n_features=128)
    assert encoder_from_spec(hashing.spec()).fingerprint == hashing.fingerprint
    spec = dict(enc.spec(), fingerprint="lsa-0000000000000000")
    with pytest.raises(EncoderError, match="re-index"):
        encoder_from_spec(spec)
    with pytest.raises(EncoderError, match="unknown encoder kind"):
        encoder_from_spec({"kind": "onnx-default"})


def test_hashing_encoder_shape() -> None:
    vectors = HashingEncoder(n_features=256).encode(["a damaged pallet", "late truck"])
    assert vectors.shape == (2, 256)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_normalise_text() -> None:
    assert normalise_text("Order 12345 and SKU-9") == "order 0 and sku-0"


def test_single_text_fast_path_matches_scikit_learn(monkeypatch: pytest.MonkeyPatch) -> None:
    import retrieval.embeddings as embeddings

    enc = load_encoder()
    texts = [
        "We received 32 units instead of 40 but were billed for 40.",
        "  multiple   spaces\tand\nnewlines  ",
        "a",
        "Übergröße café",
        "",
        "EDI 856 rejected: segment N1 missing",
    ]
    fast = np.vstack([enc.encode([t]) for t in texts])
    monkeypatch.setattr(embeddings, "_FAST_PATH_MAX", 0)
    slow = enc.encode(texts)
    assert np.allclose(fast, slow, atol=1e-5)
