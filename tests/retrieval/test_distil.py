"""Distilling a static table from an ONNX teacher, refined on the operator's texts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from cli.kb import app
from retrieval.distil import DistilConfig, augmented, distil_static_table, fit_table
from retrieval.embeddings import BUILTIN_DIR, EncoderConfig, OnnxEncoder, load_encoder
from retrieval.errors import EncoderError

TINY_ONNX = Path(__file__).parent / "data" / "tiny-onnx"
# every word is in the tiny teacher's vocabulary
_WHAT = ["pallet", "invoice", "order", "carrier", "delivery", "refund", "credit"]
_HOW = ["arrived", "charged", "is", "damaged", "late", "twice"]
TEXTS = [f"the {a} {b} and {c}" for a in _WHAT for b in _HOW for c in _WHAT]


def _agreement(encoder: object, teacher: OnnxEncoder, texts: list[str]) -> float:
    """Correlation of the pairwise cosines of ``encoder`` with the teacher's over ``texts``."""
    ours = encoder.encode(texts)  # type: ignore[attr-defined]
    theirs = teacher.encode(texts)
    upper = np.triu_indices(len(texts), 1)
    return float(np.corrcoef((ours @ ours.T)[upper], (theirs @ theirs.T)[upper])[0, 1])


def test_fit_table_recovers_a_table_that_explains_the_targets() -> None:
    rng = np.random.default_rng(0)
    n, dim = 40, 6
    truth = rng.normal(size=(n, dim))
    token_ids = [rng.choice(n, size=5).tolist() for _ in range(400)]
    weights = np.ones(n)
    bags = np.zeros((len(token_ids), n))
    for i, ids in enumerate(token_ids):
        np.add.at(bags[i], ids, 1.0)
    bags /= bags.sum(axis=1, keepdims=True)
    targets = bags @ truth
    base = rng.normal(size=(n, dim)).astype(np.float32)
    fitted = fit_table(base, token_ids, targets, weights, ridge=1e-3)
    before = np.linalg.norm(bags @ base - targets)
    after = np.linalg.norm(bags @ fitted - targets)
    assert fitted.shape == base.shape and fitted.dtype == np.float32
    assert after < 0.02 * before
    # no texts: the step-1 rows unchanged
    assert np.array_equal(fit_table(base, [], targets[:0], weights, ridge=1.0), base)


def test_augmented_variants_are_seeded_per_text() -> None:
    texts = ["the pallet arrived damaged at the dock", "short"]
    variants = augmented(texts, 3)
    assert len(variants) == 3  # texts under three words get none
    assert variants == augmented(texts[:1], 3)  # same variants whatever the corpus
    assert all(len(v.split()) == 7 for v in variants)
    assert any(v != texts[0] for v in variants)


def test_distilled_table_follows_the_teacher_on_unseen_texts(tmp_path: Path) -> None:
    teacher = OnnxEncoder(TINY_ONNX)
    seen, unseen = TEXTS[::2], TEXTS[1::2]
    cfg = DistilConfig(dim=16)
    refined = distil_static_table(teacher, seen, tmp_path / "refined", cfg)
    untrained = distil_static_table(teacher, [], tmp_path / "step1", cfg)
    # refining on the operator's texts moves the table towards the teacher on texts it never
    # saw (0.82 vs 0.78 when written)
    assert _agreement(refined, teacher, unseen) > _agreement(untrained, teacher, unseen) + 0.02
    # the folder is a normal encoder folder, found by path like any fitted encoder
    loaded = load_encoder(EncoderConfig(name=str(tmp_path / "refined")))
    assert loaded.fingerprint == refined.fingerprint and loaded.dim == 16
    meta = json.loads((tmp_path / "refined" / "encoder.json").read_text(encoding="utf-8"))
    assert meta["teacher_fingerprint"] == teacher.fingerprint
    assert meta["corpus_texts"] == len(seen) and meta["config"]["augment"] == 2
    # deterministic: the same texts give the same table
    again = distil_static_table(teacher, seen, tmp_path / "again", cfg)
    assert again.fingerprint == refined.fingerprint


def test_distil_refuses_what_it_cannot_build(tmp_path: Path) -> None:
    teacher = OnnxEncoder(TINY_ONNX)
    with pytest.raises(EncoderError, match="exceeds the teacher's dimension 16"):
        distil_static_table(teacher, TEXTS, tmp_path / "out", DistilConfig(dim=32))
    precious = tmp_path / "models"
    precious.mkdir()
    (precious / "model.skops").write_bytes(b"not ours")
    with pytest.raises(EncoderError, match="holds no static encoder"):
        distil_static_table(teacher, TEXTS, precious, DistilConfig(dim=8))
    assert (precious / "model.skops").read_bytes() == b"not ours"
    with pytest.raises(EncoderError, match="augment must be between 0 and 8"):
        DistilConfig(augment=9)
    assert not (tmp_path / "out").exists()


def test_cli_distil_encoder(tmp_path: Path) -> None:
    export = tmp_path / "cases.jsonl"
    export.write_text(
        "\n".join(json.dumps({"message": t, "notes": "late"}) for t in TEXTS) + "\n",
        encoding="utf-8",
    )
    out = tmp_path / "ours"
    args = ["distil-encoder", str(export), "--teacher", str(TINY_ONNX), "--out", str(out)]
    result = CliRunner().invoke(
        app, [*args, "--text-column", "message", "--text-column", "notes", "--dim", "8"]
    )
    assert result.exit_code == 0, result.output
    assert "step 1: 51/51 token vectors" in result.output
    assert f"corpus: {len(TEXTS)} texts" in result.output
    assert load_encoder(EncoderConfig(name=str(out))).dim == 8
    columns = ["--text-column", "message", "--dim", "8"]
    again = CliRunner().invoke(app, [*args, *columns])
    assert again.exit_code == 2 and "already holds a static encoder" in again.output
    assert CliRunner().invoke(app, [*args, *columns, "--replace"]).exit_code == 0

    missing = CliRunner().invoke(app, [*args, "--dim", "8"])  # default column: text
    assert missing.exit_code == 2
    assert "no column 'text' (columns: message, notes)" in missing.output

    not_onnx = CliRunner().invoke(
        app, [*args[:3], str(BUILTIN_DIR / "minilm-static-v2"), *args[4:], "--text-column", "notes"]
    )
    assert not_onnx.exit_code == 2
    assert "holds a 'static' encoder, not 'onnx'" in not_onnx.output

    empty = tmp_path / "empty.csv"
    empty.write_text("text\n", encoding="utf-8")
    no_rows = CliRunner().invoke(app, [*args[:1], str(empty), *args[2:]])
    assert no_rows.exit_code == 2
    assert "error: empty.csv: the file has no data rows" in no_rows.output
    assert no_rows.output.count("empty.csv") == 1  # the file is named once

    unsupported = tmp_path / "cases.xlsx"
    unsupported.write_bytes(b"PK")
    wrong_type = CliRunner().invoke(app, [*args[:1], str(unsupported), *args[2:]])
    assert wrong_type.exit_code == 2 and "unsupported file type '.xlsx'" in wrong_type.output


def test_a_failed_write_leaves_the_previous_table(tmp_path: Path, monkeypatch) -> None:
    teacher = OnnxEncoder(TINY_ONNX)
    out = tmp_path / "ours"
    first = distil_static_table(teacher, TEXTS[:20], out, DistilConfig(dim=8))
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def disk_full(*_args: object, **_kwargs: object) -> None:
        raise OSError(28, "No space left on device")

    with pytest.raises(EncoderError, match="already holds a static encoder"):
        distil_static_table(teacher, TEXTS, out, DistilConfig(dim=8))
    monkeypatch.setattr("retrieval.distil.np.save", disk_full)
    with pytest.raises(OSError, match="No space left"):
        distil_static_table(teacher, TEXTS, out, DistilConfig(dim=8), replace=True)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["ours"]  # no staging folder left behind
    monkeypatch.undo()
    # overwriting a table replaces it whole
    second = distil_static_table(teacher, TEXTS, out, DistilConfig(dim=8), replace=True)
    assert second.fingerprint != first.fingerprint
    assert load_encoder(EncoderConfig(name=str(out))).fingerprint == second.fingerprint
    assert [p.name for p in tmp_path.iterdir()] == ["ours"]
    assert out.stat().st_mode & 0o777 == 0o755


def test_cli_distils_on_the_redacted_text_the_pipeline_embeds(tmp_path: Path, monkeypatch) -> None:
    from triage.settings import get_settings

    corpus = tmp_path / "notes.txt"
    corpus.write_text(
        "\n".join([*TEXTS[:30], "the invoice for jane.doe@example.com is late"]) + "\n",
        encoding="utf-8",
    )
    fingerprints = {}
    for enabled in ("true", "false"):
        monkeypatch.setenv("TRIAGE_REDACTION_ENABLED", enabled)
        get_settings.cache_clear()
        out = tmp_path / f"redaction-{enabled}"
        args = ["distil-encoder", str(corpus), "--teacher", str(TINY_ONNX), "--out", str(out)]
        result = CliRunner().invoke(app, [*args, "--dim", "8"])
        get_settings.cache_clear()
        assert result.exit_code == 0, result.output
        said = "redacted personal data in 1 of 31 texts" in result.output
        assert said == (enabled == "true")
        fingerprints[enabled] = load_encoder(EncoderConfig(name=str(out))).fingerprint
    # the e-mail address did not shape the table that was fitted on the redacted text
    assert fingerprints["true"] != fingerprints["false"]
