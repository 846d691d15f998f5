"""Prompt files and the ``triage kb`` command line."""

from __future__ import annotations

import hashlib
import json
from importlib import resources
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli.kb import app
from retrieval.errors import PromptError
from retrieval.prompts import load_message_templates, load_prompt, parse_prompt

GOOD = b"""id = "t.one"
version = "1"
description = "test"
variables = ["a", "b"]
system = "System ${a}."
user = "User ${b} costs $$5."
"""


def test_shipped_prompts_load_with_their_hash() -> None:
    for name in ("advisor_suggest.toml", "advisor_repair.toml"):
        prompt = load_prompt(name)
        raw = resources.files("prompts").joinpath(name).read_bytes()
        assert prompt.sha256 == hashlib.sha256(raw).hexdigest()
    templates = load_message_templates()
    assert {"shortage", "damaged_goods", "other"} <= set(templates.templates)


def test_render_substitutes_and_checks_variables() -> None:
    prompt = parse_prompt(GOOD)
    rendered = prompt.render(a="A", b="B")
    assert rendered.system == "System A." and rendered.user == "User B costs $5."
    with pytest.raises(PromptError, match="missing \\['b'\\]"):
        prompt.render(a="A")
    with pytest.raises(PromptError, match="undeclared \\['c'\\]"):
        prompt.render(a="A", b="B", c="C")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (GOOD + b"temperature = 0.2\n", "Extra inputs are not permitted"),
        (GOOD.replace(b'["a", "b"]', b'["a"]'), "placeholders used"),
        (GOOD.replace(b'["a", "b"]', b'["a", "b", "z"]'), "placeholders used"),
        (b"id = ", "not valid TOML"),
        (GOOD + b'sha256 = "x"\n', "computed"),
    ],
)
def test_invalid_prompt_files_are_refused(data: bytes, message: str) -> None:
    with pytest.raises(PromptError, match=message):
        parse_prompt(data)


def test_cli_ingest_search_stats(tmp_path: Path) -> None:
    runner = CliRunner()
    knowledge = Path(__file__).parents[2] / "knowledge"
    store = ["--chroma-path", str(tmp_path / "chroma")]
    first = runner.invoke(app, ["ingest", str(knowledge), *store])
    assert first.exit_code == 0, first.output
    assert "[11/11]" in first.output and "11 added" in first.output
    again = runner.invoke(app, ["ingest", str(knowledge), *store])
    assert "0 added, 0 updated, 11 unchanged" in again.output

    found = runner.invoke(app, ["search", "pallet arrived crushed", "--json", "-k", "2", *store])
    assert found.exit_code == 0, found.output
    payload = json.loads(found.output)
    assert len(payload["results"]) == 2 and payload["encoder"].startswith("static-")
    top = payload["results"][0]
    assert top["doc_id"] == "SOP-DMG-002" and 0 < top["score"] <= 1 and top["chunk_id"]

    text = runner.invoke(app, ["search", "pallet arrived crushed", *store])
    assert "1. score" in text.output and "SOP-DMG-002" in text.output

    stats = runner.invoke(app, ["stats", "--json", *store])
    info = json.loads(stats.output)
    assert info["documents"]["SOP-SHT-001"] == "1.4" and info["chunks"] > 11

    removed = runner.invoke(app, ["remove", "SOP-DMG-002", *store])
    assert removed.exit_code == 0, removed.output
    assert removed.output.startswith("removed SOP-DMG-002: ")
    after = runner.invoke(app, ["search", "pallet arrived crushed", "--json", "-k", "5", *store])
    assert "SOP-DMG-002" not in {r["doc_id"] for r in json.loads(after.output)["results"]}
    gone = json.loads(runner.invoke(app, ["stats", "--json", *store]).output)
    assert "SOP-DMG-002" not in gone["documents"] and len(gone["documents"]) == 10
    unknown = runner.invoke(app, ["remove", "SOP-DMG-002", *store])
    assert unknown.exit_code == 2 and "no document 'SOP-DMG-002'" in unknown.output


def test_cli_errors_are_one_line(tmp_path: Path) -> None:
    runner = CliRunner()
    empty = tmp_path / "empty"
    empty.mkdir()
    result = runner.invoke(app, ["ingest", str(empty), "--chroma-path", str(tmp_path / "c")])
    assert result.exit_code == 2 and "no supported files" in result.output
    bad = runner.invoke(app, ["search", "x", "--chroma-url", "ftp://nope", "--chroma-path", "x"])
    assert bad.exit_code == 2 and "http(s)://" in bad.output


def test_cli_fit_encoder(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(
        "\n".join(
            f"{who} says the {what} arrived {how}"
            for who in ("customer", "carrier", "depot", "shop")
            for what in ("pallet", "carton", "parcel", "order")
            for how in ("late", "damaged", "wet", "short")
        ),
        encoding="utf-8",
    )
    result = CliRunner().invoke(
        app, ["fit-encoder", str(corpus), "--out", str(tmp_path / "enc"), "--dim", "8"]
    )
    assert result.exit_code == 0, result.output
    assert (tmp_path / "enc" / "encoder.json").is_file()
