"""The static encoder distilled from all-MiniLM-L6-v2 (``builtin:minilm-static-v2``)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from retrieval.embeddings import (
    BUILTIN_DIR,
    EncoderConfig,
    StaticEncoder,
    WordPieceTokenizer,
    encoder_from_spec,
    load_encoder,
)
from retrieval.errors import EncoderError

FOLDER = BUILTIN_DIR / "minilm-static-v2"
GOLDEN = Path(__file__).parent / "data" / "wordpiece_golden.json"


@pytest.fixture(scope="module")
def encoder() -> StaticEncoder:
    enc = load_encoder(EncoderConfig(name="builtin:minilm-static-v2"))
    assert isinstance(enc, StaticEncoder)
    return enc


def test_tokenizer_matches_reference_bert_tokenizer() -> None:
    """Ids recorded from transformers' BertTokenizer (all-MiniLM-L6-v2's own) for 80 real
    support texts and 11 awkward ones: accents, currency symbols, JSON, control and format
    characters, over-long words, emoji, CJK and Greek."""
    vocab = (FOLDER / "vocab.txt").read_text(encoding="utf-8").splitlines()
    tokenizer = WordPieceTokenizer(vocab)
    golden = json.loads(GOLDEN.read_text(encoding="utf-8"))
    assert len(golden) == 91
    mismatches = [
        item["text"]
        for item in golden
        if tokenizer.encode(re.sub(r"\d+", "0", item["text"])) != item["ids"]
    ]
    assert mismatches == []


def test_encode_contract(encoder: StaticEncoder) -> None:
    vectors = encoder.encode(["parcel arrived damaged", "invoice charged twice", ""])
    assert vectors.dtype == np.float32
    assert vectors.shape == (3, encoder.dim)
    np.testing.assert_allclose(np.linalg.norm(vectors[:2], axis=1), 1.0, rtol=1e-5)
    assert not vectors[2].any()  # nothing to look up: a zero vector, as the other encoders do
    assert encoder.encode([]).shape == (0, encoder.dim)
    # digits are masked: order numbers do not move a case
    np.testing.assert_array_equal(
        encoder.encode(["order 12345 is late"]), encoder.encode(["order 9 is late"])
    )


def test_batches_of_any_size_give_the_single_text_vectors(encoder: StaticEncoder) -> None:
    """One text, a few (per-text counts) and 16+ (each distinct word summed once) agree."""
    texts = [
        f"Order {i}: pallet arrived damaged, invoice charged twice; Übergröße café {i % 3}"
        if i % 5
        else ""
        for i in range(40)
    ]
    singles = np.vstack([encoder.encode([t]) for t in texts])
    np.testing.assert_allclose(encoder.encode(texts[:5]), singles[:5], atol=1e-6)
    np.testing.assert_allclose(encoder.encode(texts), singles, atol=1e-6)
    assert not encoder.encode(texts)[0].any()  # the empty text stays a zero vector


def test_word_vectors_sum_to_the_text_vector(encoder: StaticEncoder) -> None:
    """Per-word vectors (what explanations split the meaning vector over) add up to the text's
    vector before normalisation: punctuation, masked digits, accents, unknown words."""
    for text in (
        "Pallet damaged, 12 cartons crushed!",
        "Lieferung verspätet: Café order #4711 (ETA missed)",
        "zzyzx qwxv",
        "refund",
    ):
        words, vectors = encoder.word_vectors(text)
        assert len(words) == len(vectors) > 0
        total = vectors.sum(axis=0)
        expected = encoder.encode([text])[0]
        assert np.allclose(total / np.linalg.norm(total), expected, atol=1e-6), text
    words, _ = encoder.word_vectors("Order 4711, please!")
    assert words == ["order", "0", ",", "please", "!"]


def test_vectors_carry_meaning_beyond_shared_words(encoder: StaticEncoder) -> None:
    """Paraphrases with no content word in common land closer than texts on another topic."""
    anchor, paraphrase, other = encoder.encode(
        [
            "the parcel arrived broken",
            "package was damaged in transit",
            "please change the billing address on my account",
        ]
    )
    assert float(anchor @ paraphrase) > float(anchor @ other) + 0.1
    refund, money_back, tracking = encoder.encode(
        ["I want a refund", "give me my money back", "where is my shipment right now"]
    )
    assert float(refund @ money_back) > float(refund @ tracking) + 0.1


def test_spec_round_trip(encoder: StaticEncoder) -> None:
    rebuilt = encoder_from_spec(encoder.spec())
    assert rebuilt.fingerprint == encoder.fingerprint
    np.testing.assert_array_equal(
        rebuilt.encode(["late delivery"]), encoder.encode(["late delivery"])
    )


def test_tampered_table_is_refused(tmp_path: Path) -> None:
    copy = tmp_path / "enc"
    shutil.copytree(FOLDER, copy)
    raw = bytearray((copy / "vectors.npy").read_bytes())
    raw[-1] ^= 0x01
    (copy / "vectors.npy").write_bytes(bytes(raw))
    with pytest.raises(EncoderError, match="sha256"):
        StaticEncoder.load(copy)


def test_folder_kind_is_dispatched(tmp_path: Path) -> None:
    """A folder path loads whatever kind its encoder.json names; a wrong kind is refused."""
    copy = tmp_path / "enc"
    shutil.copytree(FOLDER, copy)
    assert isinstance(load_encoder(EncoderConfig(name=str(copy))), StaticEncoder)
    meta = json.loads((copy / "encoder.json").read_text(encoding="utf-8"))
    meta["kind"] = "lsa"
    (copy / "encoder.json").write_text(json.dumps(meta), encoding="utf-8")
    with pytest.raises(EncoderError):
        StaticEncoder.load(copy)


TINY_ONNX = Path(__file__).parent / "data" / "tiny-onnx"
TINY_MPNET_ONNX = Path(__file__).parent / "data" / "tiny-mpnet-onnx"


@pytest.mark.parametrize("folder", [TINY_ONNX, TINY_MPNET_ONNX], ids=["bert", "mpnet"])
def test_onnx_encoder_reproduces_the_torch_reference(folder: Path) -> None:
    """Our tokenizer + onnxruntime give the vectors torch computed with the library's own
    tokenizer for the same model (a tiny random BERT or MPNet exported like
    bench/export_minilm_onnx.py exports MiniLM and all-mpnet-base-v2), batched or not: the
    MPNet folder's special tokens (<s>, </s>, <pad>) come from its encoder.json."""
    from retrieval.embeddings import OnnxEncoder

    encoder = load_encoder(EncoderConfig(name=str(folder)))
    assert isinstance(encoder, OnnxEncoder)
    reference = json.loads((folder / "reference.json").read_text(encoding="utf-8"))
    texts = [r["text"] for r in reference]
    expected = np.array([r["vector"] for r in reference], dtype=np.float32)
    batched = encoder.encode(texts)  # mixed lengths: padded, length-sorted batches
    np.testing.assert_allclose(batched, expected, atol=1e-4)
    for text, row in zip(texts, expected, strict=True):
        np.testing.assert_allclose(encoder.encode([text])[0], row, atol=1e-4)
    assert encoder.encode([]).shape == (0, 16)
    assert encoder_from_spec(encoder.spec()).fingerprint == encoder.fingerprint


def test_onnx_encoder_names_a_special_token_missing_from_its_vocabulary(tmp_path: Path) -> None:
    copy = tmp_path / "enc"
    shutil.copytree(TINY_MPNET_ONNX, copy)
    meta = json.loads((copy / "encoder.json").read_text(encoding="utf-8"))
    meta["special_tokens"]["cls"] = "<cls>"
    (copy / "encoder.json").write_text(json.dumps(meta), encoding="utf-8")
    with pytest.raises(EncoderError, match="<cls>"):
        load_encoder(EncoderConfig(name=str(copy)))


def test_onnx_encoder_refuses_a_swapped_model(tmp_path: Path) -> None:
    from retrieval.embeddings import OnnxEncoder

    copy = tmp_path / "enc"
    shutil.copytree(TINY_ONNX, copy)
    raw = bytearray((copy / "model.onnx").read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    (copy / "model.onnx").write_bytes(bytes(raw))
    with pytest.raises(EncoderError, match="sha256"):
        OnnxEncoder(copy)


def test_onnx_encoder_runs_the_model_it_checked(tmp_path: Path, monkeypatch) -> None:
    """Its fingerprint is the recorded hash: a model.onnx replaced after the check (by someone
    who can write the folder) must not be what runs under that fingerprint."""
    from retrieval import embeddings

    copy = tmp_path / "enc"
    shutil.copytree(TINY_ONNX, copy)
    reference = embeddings.OnnxEncoder(copy).encode(["pallet arrived crushed"])
    checked = embeddings._verified_files

    def swap_after_check(directory: Path, kind: str):
        out = checked(directory, kind)
        other = TINY_ONNX.parent / "tiny-mpnet-onnx" / "model.onnx"  # another model, same size
        (copy / "model.onnx").write_bytes(other.read_bytes())
        return out

    monkeypatch.setattr(embeddings, "_verified_files", swap_after_check)
    again = embeddings.OnnxEncoder(copy).encode(["pallet arrived crushed"])
    assert np.array_equal(again, reference)


def test_an_encoder_file_without_a_recorded_hash_is_refused(tmp_path: Path) -> None:
    from retrieval.embeddings import OnnxEncoder

    copy = tmp_path / "enc"
    shutil.copytree(TINY_ONNX, copy)
    meta = json.loads((copy / "encoder.json").read_text(encoding="utf-8"))
    del meta["sha256"]["vocab.txt"]
    (copy / "encoder.json").write_text(json.dumps(meta), encoding="utf-8")
    with pytest.raises(EncoderError, match=r"no sha256 for vocab\.txt"):
        OnnxEncoder(copy)


def test_unknown_encoder_name_lists_the_choices() -> None:
    with pytest.raises(EncoderError, match=r"unknown encoder 'nonsense'.*builtin:minilm-static-v2"):
        load_encoder(EncoderConfig(name="nonsense"))


def test_the_previous_table_stays_loadable_for_models_trained_on_it(
    encoder: StaticEncoder,
) -> None:
    """v2 is the default; v1 still ships so models and indexes built with it keep working
    (their recorded fingerprint is v1's) until they are retrained or re-indexed."""
    old = load_encoder(EncoderConfig(name="builtin:minilm-static-v1"))
    assert isinstance(old, StaticEncoder)
    assert old.fingerprint != encoder.fingerprint and old.dim == encoder.dim
    # a working encoder in its own space: a paraphrase is nearer than another topic
    a, b, c = old.encode(
        ["parcel arrived damaged", "the package came broken", "invoice charged twice"]
    )
    assert a @ b > a @ c
