"""The ``triage`` command line: keys, audit verify/export, simulate, db upgrade, --help."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli.main import app
from contracts.case import CaseIn
from retrieval.embeddings import EncoderConfig, load_encoder
from tests.support import cli_runner, submit_simulated
from triage import auth
from triage.classification import case_record, case_texts
from triage.models import Case
from triage.settings import get_settings
from triage.simulator import SimConfig, Simulator, parse_rates

runner = CliRunner()


@pytest.fixture
def env(monkeypatch, settings, db):
    monkeypatch.setenv("TRIAGE_DATABASE_URL", settings.resolved_database_url)
    monkeypatch.setenv("TRIAGE_DATA_DIR", str(settings.data_dir))
    get_settings.cache_clear()
    yield settings
    get_settings.cache_clear()


def test_help_on_every_command():
    for args in (
        [],
        ["keys"],
        ["audit"],
        ["db"],
        ["simulate"],
        ["serve"],
        ["demo"],
        ["worker"],
        ["keys", "create"],
        ["audit", "export"],
        ["audit", "verify"],
    ):
        r = runner.invoke(app, [*args, "--help"])
        assert r.exit_code == 0, (args, r.output)
        assert "Usage" in r.output


def test_keys_create_list_revoke(env, db):
    r = runner.invoke(app, ["keys", "create", "--name", "erp-eu", "--role", "orchestrator"])
    assert r.exit_code == 0, r.output
    key = next(line.split()[-1] for line in r.output.splitlines() if line.startswith("key:"))
    key_id = next(line.split()[-1] for line in r.output.splitlines() if line.startswith("id:"))
    with db.read() as s:
        assert auth.authenticate(s, key).name == "erp-eu"
    listed = runner.invoke(app, ["keys", "list"])
    assert "erp-eu" in listed.output and key not in listed.output
    bad = runner.invoke(app, ["keys", "create", "--name", "x", "--role", "superuser"])
    assert bad.exit_code == 2 and "unknown role" in bad.output
    assert runner.invoke(app, ["keys", "revoke", key_id]).exit_code == 0
    with db.read() as s, pytest.raises(auth.AuthenticationFailed):
        auth.authenticate(s, key)
    assert runner.invoke(app, ["keys", "revoke", "NOPE"]).exit_code == 2


def test_audit_verify_and_export(env, db, tmp_path):
    runner.invoke(app, ["keys", "create", "--name", "a", "--role", "agent"])
    r = runner.invoke(app, ["audit", "verify", "--json"])
    assert r.exit_code == 0
    out = json.loads(r.output)
    assert out["intact"] is True and out["events"] == 1
    target = tmp_path / "audit.csv"
    r = runner.invoke(app, ["audit", "export", "--format", "csv", "--out", str(target)])
    assert r.exit_code == 0
    assert target.read_text().splitlines()[0].startswith("seq,ts,actor_type")
    r = runner.invoke(app, ["audit", "export", "--action", "api_key.created"])
    assert json.loads(r.output.splitlines()[0])["action"] == "api_key.created"
    assert runner.invoke(app, ["audit", "export", "--format", "xml"]).exit_code == 2
    assert runner.invoke(app, ["audit", "export", "--since", "yesterday"]).exit_code == 2
    with db.write_engine.begin() as conn:  # tamper, then verify must exit 1
        if db.is_sqlite:
            conn.exec_driver_sql("DROP TRIGGER audit_events_no_update")
        else:
            conn.exec_driver_sql("SET LOCAL session_replication_role = replica")
        conn.exec_driver_sql("UPDATE audit_events SET actor_id = 'm' WHERE seq = 1")
    r = runner.invoke(app, ["audit", "verify"])
    assert r.exit_code == 1 and "BROKEN at sequence 1" in r.output


def test_simulate_writes_valid_cases(tmp_path):
    out = tmp_path / "cases.jsonl"
    r = runner.invoke(
        app, ["simulate", "-n", "40", "--seed", "3", "--out", str(out), "--with-labels"]
    )
    assert r.exit_code == 0, r.output
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == 40
    for rec in records:
        CaseIn.model_validate(rec["case"])
        assert set(rec["labels"]) == {"category", "queue", "priority"}
    bad = runner.invoke(app, ["simulate", "--rates", "meteor=1"])
    assert bad.exit_code == 2 and "unknown exception type" in bad.output


def test_simulator_is_deterministic_and_honours_rates():
    a = [c.case for c in Simulator(SimConfig(seed=5)).cases(30)]
    b = [c.case for c in Simulator(SimConfig(seed=5)).cases(30)]
    assert a == b
    only = Simulator(SimConfig(seed=1, type_weights=parse_rates("carrier_delay=1,shortage=0")))
    assert {c.case["exception_type"] for c in only.cases(25)} == {"carrier_delay"}
    every = {c.case["exception_type"] for c in Simulator(SimConfig(seed=2)).cases(400)}
    assert len(every) == 10
    with pytest.raises(ValueError):
        parse_rates("shortage=-1")


def test_db_upgrade_and_current(env):
    from alembic.script import ScriptDirectory

    from triage import migrate

    head = ScriptDirectory.from_config(
        migrate.alembic_config(env.resolved_database_url)
    ).get_current_head()
    r = runner.invoke(app, ["db", "upgrade"])
    assert r.exit_code == 0 and f"database at {head}" in r.output
    assert runner.invoke(app, ["db", "current"]).output.strip() == head


def test_kb_distil_encoder_from_stored_cases(monkeypatch, settings, db, tmp_path):
    submit_simulated(db, settings, 12, seed=5)
    with db.read() as s:
        expected = sorted(
            case_record(CaseIn.model_validate(row.payload))["text"] for row in s.query(Case).all()
        )
        assert sorted(case_texts(s, 100)) == expected and len(expected) == 12
        assert len(case_texts(s, 5)) == 5
    teacher = Path(__file__).parent / "retrieval" / "data" / "tiny-onnx"
    triage = cli_runner(monkeypatch, settings)
    out = tmp_path / "ours"
    r = triage(
        "kb",
        "distil-encoder",
        "--from-cases",
        "--teacher",
        str(teacher),
        "--out",
        str(out),
        "--dim",
        "8",
    )
    assert r.exit_code == 0, r.output
    assert "stored cases: 12 texts" in r.output
    assert load_encoder(EncoderConfig(name=str(out))).dim == 8
    nothing = triage("kb", "distil-encoder", "--teacher", str(teacher), "--out", str(out))
    assert nothing.exit_code == 2 and "give files of texts, --from-cases, or both" in nothing.output
