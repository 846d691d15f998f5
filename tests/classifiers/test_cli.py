"""The train / evaluate / models commands end to end on small CSV and JSONL files."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from cli.classifier import standalone_app
from tests.classifiers.conftest import bitext_rows, synthetic_cases

runner = CliRunner()
app = standalone_app()


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> Path:
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def bitext_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("bitext")
    rows = bitext_rows(24, seed=1)
    train = [{"message": r["text"], "topic": r["triage_category"]} for r in rows[:500]]
    test = [{"body": r["text"], "label": r["triage_category"]} for r in rows[500:]]
    return _write_csv(base / "train.csv", train), _write_csv(base / "test.csv", test)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, bitext_files: tuple[Path, Path]) -> Path:
    out = tmp_path_factory.mktemp("registry")
    result = runner.invoke(
        app,
        [
            "train",
            "--data",
            str(bitext_files[0]),
            "--text-column",
            "message",
            "--label-column",
            "topic",
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "registered" in result.stdout
    assert "training target 'topic'" in result.stderr  # progress on stderr
    return out


def test_evaluate_json_keys_and_report(
    trained: Path, bitext_files: tuple[Path, Path], tmp_path: Path
) -> None:
    result = runner.invoke(
        app,
        [
            "evaluate",
            "--model",
            str(trained),
            "--data",
            str(bitext_files[1]),
            "--text-column",
            "body",
            "--label-column",
            "label",
            "--json",
            "--report",
            str(tmp_path / "rep"),
        ],
    )
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)  # exactly one JSON object on stdout
    for key in ("accuracy", "macro_f1", "per_class", "coverage_at_precision", "ece"):
        assert key in payload
    assert payload["accuracy"] > 0.8
    cov = payload["coverage_at_precision"]
    assert cov["target_precision"] == 0.95
    assert {"coverage", "realized_precision", "drift"} <= set(cov)
    some = next(iter(payload["per_class"].values()))
    assert set(some) == {"precision", "recall", "f1", "support"}
    for name in ("report.md", "confusion_topic.png", "reliability_topic.png", "metrics.json"):
        assert (tmp_path / "rep" / name).stat().st_size > 0
    assert (tmp_path / "rep" / "confusion_topic.png").read_bytes()[:4] == b"\x89PNG"
    report = (tmp_path / "rep" / "report.md").read_text()
    cal = payload["calibration"]
    assert f"| mean confidence (minus accuracy) | {cal['mean_confidence']:.4f} " in report
    assert f"Calibration: mean confidence {cal['mean_confidence']:.4f}" in report


def test_evaluate_table(trained: Path, bitext_files: tuple[Path, Path]) -> None:
    result = runner.invoke(
        app,
        [
            "evaluate",
            "--model",
            str(trained),
            "--data",
            str(bitext_files[1]),
            "--text-column",
            "body",
            "--label-column",
            "label",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "macro-F1" in result.stdout and "coverage at precision 0.95" in result.stdout
    assert list((trained / "reports").iterdir())  # default report dir next to the model


def test_train_multi_target_jsonl_with_features(tmp_path: Path) -> None:
    rows = synthetic_cases(160, seed=9)
    data = _write_jsonl(tmp_path / "cases.jsonl", rows)
    out = tmp_path / "reg"
    result = runner.invoke(
        app,
        [
            "train",
            "--data",
            str(data),
            "--text-column",
            "text",
            "--label-column",
            "queue",
            "--label-column",
            "priority",
            "--feature-columns",
            "customer_tier",
            "--feature-columns",
            "amount",
            "--out",
            str(out),
            "--cv",
            "3",
            "--label-precision",
            "queue:claims=0.9",
            "--class-weight",
            "none",
            "--no-threshold-pooling",
        ],
    )
    assert result.exit_code == 0, result.output
    shown = runner.invoke(app, ["models", "show", "--registry", str(out)])
    meta = json.loads(shown.stdout)
    assert meta["params"]["class_weight"] is None  # unweighted on request
    assert meta["params"]["threshold_pooling"] is False  # strict per-label evidence on request
    assert not any(t["pooled"] for t in meta["thresholds"]["queue"].values())
    assert meta["targets"] == ["queue", "priority"]
    assert meta["feature_spec"]["numeric_columns"] == ["amount"]
    assert meta["feature_spec"]["categorical_columns"] == ["customer_tier"]
    assert meta["thresholds"]["queue"]["claims"]["target_precision"] == 0.9
    evaluated = runner.invoke(
        app,
        [
            "evaluate",
            "--model",
            str(out),
            "--data",
            str(data),
            "--text-column",
            "text",
            "--label-column",
            "queue",
            "--label-column",
            "priority",
            "--json",
        ],
    )
    assert evaluated.exit_code == 0, evaluated.output
    assert set(json.loads(evaluated.stdout)["targets"]) == {"queue", "priority"}


def test_models_list_activate_rollback(trained: Path, bitext_files: tuple[Path, Path]) -> None:
    first = runner.invoke(app, ["models", "show", "--registry", str(trained)])
    v1 = json.loads(first.stdout)["version"]
    assert json.loads(first.stdout)["params"]["class_weight"] == "balanced"  # the default
    assert json.loads(first.stdout)["params"]["threshold_pooling"] is True  # the default
    again = runner.invoke(
        app,
        [
            "train",
            "--data",
            str(bitext_files[0]),
            "--text-column",
            "message",
            "--label-column",
            "topic",
            "--out",
            str(trained),
            "--no-activate",
        ],
    )
    assert again.exit_code == 0, again.output
    listed = runner.invoke(app, ["models", "list", "--registry", str(trained)]).stdout
    versions = [line.lstrip("* ").split()[0] for line in listed.splitlines()]
    assert v1 in versions and len(versions) == 2
    assert f"* {v1}" in listed
    v2 = next(v for v in versions if v != v1)
    assert runner.invoke(app, ["models", "activate", "--registry", str(trained), v2]).exit_code == 0
    rolled = runner.invoke(app, ["models", "rollback", "--registry", str(trained)])
    assert rolled.exit_code == 0 and v1 in rolled.stdout
    bad = runner.invoke(app, ["models", "activate", "--registry", str(trained), "v-nope"])
    assert bad.exit_code == 2 and "not a valid model version id" in bad.stderr


def _bad_file(tmp_path: Path, kind: str) -> tuple[Path, str]:
    good = [{"text": "cancel order", "label": "order"}, {"text": "refund", "label": "refund"}]
    if kind == "missing column":
        return _write_csv(tmp_path / "a.csv", [{"text": "x", "other": "y"}] * 2), "missing label"
    if kind == "empty labels":
        return _write_csv(tmp_path / "b.csv", [{"text": "x", "label": ""}] * 3), "is empty"
    if kind == "one class":
        return _write_csv(tmp_path / "c.csv", [{"text": "x", "label": "a"}] * 3), "only one class"
    if kind == "long label":
        rows = [*good, {"text": "y", "label": "L" * 65}]
        return _write_csv(tmp_path / "h.csv", rows), "longer than 64 characters"
    if kind == "encoding":
        path = tmp_path / "d.csv"
        path.write_bytes("text,label\ncaf\u00e9,a\n".encode("latin-1"))
        return path, "unreadable encoding"
    if kind == "empty file":
        path = tmp_path / "e.csv"
        path.write_text("")
        return path, "empty"
    if kind == "extension":
        return _write_jsonl(tmp_path / "f.xlsx", good), "unknown file extension"
    if kind == "bad jsonl":
        path = tmp_path / "g.jsonl"
        path.write_text('{"text": "a", "label": "x"}\n{not json\n')
        return path, "line 2 is not valid JSON"
    if kind == "nested jsonl":  # read as its Python repr, a list label trained as "['x']"
        path = tmp_path / "h.jsonl"
        path.write_text('{"text": "a", "label": "x"}\n\n{"text": "b", "label": ["x", "y"]}\n')
        return path, "data row 2, column 'label' holds an array"
    raise AssertionError(kind)


_KINDS = [
    "missing column",
    "empty labels",
    "encoding",
    "empty file",
    "extension",
    "bad jsonl",
    "nested jsonl",
]


@pytest.mark.parametrize(
    ("command", "kind"),
    # one class and over-long labels are refused for training only: such an evaluation set is
    # legitimate (the model never predicts those labels, and nothing is stored)
    [("train", k) for k in [*_KINDS, "one class", "long label"]]
    + [("evaluate", k) for k in _KINDS],
)
def test_bad_files_exit_2_with_one_line(
    tmp_path: Path, trained: Path, kind: str, command: str
) -> None:
    path, expected = _bad_file(tmp_path, kind)
    args = ["--data", str(path), "--text-column", "text", "--label-column", "label"]
    args += ["--out", str(tmp_path / "o")] if command == "train" else ["--model", str(trained)]
    result = runner.invoke(app, [command, *args])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and expected in errors[0], result.stderr
    assert path.name in errors[0]


def test_signing_key_from_the_environment(tmp_path: Path, bitext_files: tuple[Path, Path]) -> None:
    out = tmp_path / "signed"
    args = ["train", "--data", str(bitext_files[0]), "--text-column", "message",
            "--label-column", "topic", "--out", str(out), "--cv", "3"]  # fmt: skip
    assert runner.invoke(app, args, env={"TRIAGE_MODEL_SIGNING_KEY": "k1"}).exit_code == 0
    ok = runner.invoke(app, ["models", "show", "--registry", str(out)], env={
        "TRIAGE_MODEL_SIGNING_KEY": "k1"})  # fmt: skip
    assert ok.exit_code == 0 and json.loads(ok.stdout)["signature"]
    wrong = runner.invoke(app, ["models", "show", "--registry", str(out)], env={
        "TRIAGE_MODEL_SIGNING_KEY": "k2"})  # fmt: skip
    assert wrong.exit_code == 2 and "invalid signature" in wrong.stderr


def _train_twelve_rows(tmp_path: Path, *options: str) -> tuple[Any, Path]:
    """``triage train`` on a two-label file ``a.csv`` into ``tmp_path/o`` with ``options``."""
    rows = [{"text": f"cancel order {i}", "label": "order"} for i in range(6)]
    rows += [{"text": f"refund please {i}", "label": "refund"} for i in range(6)]
    path = _write_csv(tmp_path / "a.csv", rows)
    out = tmp_path / "o"
    args = ["train", "--data", str(path), "--text-column", "text", "--label-column", "label"]
    return runner.invoke(app, [*args, "--out", str(out), *options]), out


@pytest.mark.parametrize(
    ("item", "expected"),
    [
        ("label:nope=0.9", "no row of a.csv has label 'nope'"),
        ("other:order=0.9", "not a label column"),
        ("label:order=1.2", "between 0.5 and 1"),
        ("label-order-0.9", "expected TARGET:LABEL=PRECISION"),
    ],
)
def test_bad_label_precision_is_named_and_nothing_trains(
    tmp_path: Path, item: str, expected: str
) -> None:
    result, out = _train_twelve_rows(tmp_path, "--label-precision", item)
    assert result.exit_code == 2, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and expected in errors[0], result.stderr
    assert not (out / "versions").exists() or not any((out / "versions").iterdir())


@pytest.mark.parametrize("value", ["1.0", "0.5", "0.3"])
def test_train_refuses_a_target_precision_outside_the_rule_every_other_path_uses(
    tmp_path: Path, value: str
) -> None:
    """(0.5, 1) as for per-label targets, re-thresholding and the API (it took (0, 1] here, so
    1.0 trained a model whose every label abstains), refused before anything trains."""
    result, out = _train_twelve_rows(tmp_path, "--target-precision", value)
    assert result.exit_code == 2, result.output
    assert f"target precision {float(value)}: use a value between 0.5 and 1" in result.stderr
    assert not (out / "versions").exists() or not any((out / "versions").iterdir())


def test_train_refuses_an_unknown_class_weight(tmp_path: Path) -> None:
    data = _write_jsonl(tmp_path / "cases.jsonl", synthetic_cases(40, seed=3))
    args = ["train", "--data", str(data), "--text-column", "text", "--label-column", "queue"]
    result = runner.invoke(app, [*args, "--out", str(tmp_path / "reg"), "--class-weight", "heavy"])
    assert result.exit_code == 2
    assert "class-weight" in result.output and "balanced" in result.output
    assert not (tmp_path / "reg").exists()


def test_models_operating_points_and_rethreshold(trained: Path, tmp_path: Path) -> None:
    import shutil

    reg = tmp_path / "models"
    shutil.copytree(trained, reg)
    shown = runner.invoke(app, ["models", "operating-points", "--registry", str(reg), "--json"])
    assert shown.exit_code == 0, shown.output
    view = json.loads(shown.stdout)
    parent = view["version"]
    assert view["settings"] == {
        "target_precision": 0.95,
        "label_precision": {},
        "threshold_pooling": True,
    }
    labels = view["targets"]["topic"]["labels"]
    table = runner.invoke(app, ["models", "operating-points", "--registry", str(reg)])
    assert table.exit_code == 0 and "pooling on" in table.stdout
    for label, point in labels.items():
        row = next(line for line in table.stdout.splitlines() if line[2:].startswith(label + " "))
        threshold = "never" if point["threshold"] > 1 else f"{point['threshold']:.3f}"
        assert threshold in row and str(point["n_predicted"]) in row

    def n_versions() -> int:
        listed = runner.invoke(app, ["models", "list", "--registry", str(reg)]).stdout
        return len(listed.splitlines())

    before = n_versions()  # the module's registry may hold more than one version by now
    base = ["models", "rethreshold", "--registry", str(reg)]
    dry = runner.invoke(app, [*base, "--target-precision", "0.8", "--dry-run", "--json"])
    assert dry.exit_code == 0, dry.output
    preview = json.loads(dry.stdout)
    assert preview["version"] is None and preview["parent"] == parent
    assert all(p["target_precision"] == 0.8 for p in preview["targets"]["topic"]["labels"].values())
    assert n_versions() == before  # the dry run registered nothing

    made = runner.invoke(app, [*base, "--target-precision", "0.8", "--activate"])
    assert made.exit_code == 0, made.output
    assert f"derived from {parent}" in made.stdout and "(active)" in made.stdout
    changed = preview["changed_labels"].get("topic", [])
    marked = [line[2:].split()[0] for line in made.stdout.splitlines() if line.startswith("* ")]
    assert sorted(marked) == sorted(changed)
    derived = json.loads(runner.invoke(app, ["models", "show", "--registry", str(reg)]).stdout)
    assert derived["derived_from"]["version"] == parent and derived["active"]
    assert derived["thresholds"]["topic"] == preview["targets"]["topic"]["labels"]

    refusals = [
        ([], "nothing would change"),  # the derived version's own settings again
        (["--target-precision", "0.8"], "nothing would change"),
        (["--target-precision", "1.0"], "between 0.5 and 1"),
        (["--label-precision", "topic:no_such=0.9"], "'no_such'"),
        (["--label-precision", "topic=0.9"], "TARGET:LABEL=PRECISION"),
        (["--label-precision", "topic:order=0.9", "--clear-label-precision"], "not both"),
        (["v20990101T000000000000Z-deadbeef", "--target-precision", "0.9"], "unknown model"),
    ]
    for args, words in refusals:
        refused = runner.invoke(app, [*base, *args])
        assert refused.exit_code == 2 and words in refused.stderr, (args, refused.output)
    assert n_versions() == before + 1  # the refusals registered nothing

    kept = runner.invoke(app, [*base, "--label-precision", "topic:order=0.99", "--json"])
    assert kept.exit_code == 0, kept.output
    out = json.loads(kept.stdout)
    assert out["after"] == {
        "target_precision": 0.8,
        "label_precision": {"topic": {"order": 0.99}},
        "threshold_pooling": True,
    }
    assert out["targets"]["topic"]["labels"]["order"]["target_precision"] == 0.99
    cleared = runner.invoke(
        app, [*base, out["version"], "--clear-label-precision", "--no-threshold-pooling", "--json"]
    )
    assert cleared.exit_code == 0, cleared.output
    assert json.loads(cleared.stdout)["after"] == {
        "target_precision": 0.8,
        "label_precision": {},
        "threshold_pooling": False,
    }
    rolled = runner.invoke(app, ["models", "rollback", "--registry", str(reg)])
    assert rolled.exit_code == 0 and parent in rolled.stdout


def test_models_sign_turns_signing_on(trained: Path, tmp_path: Path) -> None:
    import shutil

    reg = tmp_path / "models"
    shutil.copytree(trained, reg)
    keyed = ["--registry", str(reg), "--signing-key", "k1"]
    refused = runner.invoke(app, ["models", "show", *keyed])
    assert refused.exit_code == 2 and "unsigned" in refused.stderr
    assert runner.invoke(app, ["models", "sign", "--all", "--registry", str(reg)]).exit_code == 2
    both = runner.invoke(app, ["models", "sign", "v1", "--all", *keyed])
    assert both.exit_code == 2 and "or give --all" in both.stderr
    signed = runner.invoke(app, ["models", "sign", "--all", *keyed])
    assert signed.exit_code == 0, signed.output
    listed = runner.invoke(app, ["models", "list", "--registry", str(reg)]).stdout
    n = len(listed.splitlines())
    assert f"signed {n} version" in signed.stdout
    shown = runner.invoke(app, ["models", "show", *keyed])
    assert shown.exit_code == 0 and json.loads(shown.stdout)["signature"]
