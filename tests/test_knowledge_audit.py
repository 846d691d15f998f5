"""Knowledge-base changes on the audit trail: long changes are recorded around the step
(``audit.with_intent``) without holding the database while they encode, and the command line
audits the deployment's store as the API does."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.exc import OperationalError

from tests.support import bearer, cli_runner
from triage import audit
from triage.errors import Unavailable
from triage.models import AuditEvent
from triage.stages import RetrievalStage

KNOWLEDGE = Path(__file__).parents[1] / "knowledge"
ACTOR = audit.Actor(audit.ActorType.human, "ops", "admin")
INTENT = audit.Intent(
    started="thing.started", done="thing.done", failed="thing.failed", payload={"n": 1}
)


def _events(db, prefix: str) -> list[tuple[int, str, str, dict]]:
    with db.read() as s:
        rows = s.execute(
            select(AuditEvent.seq, AuditEvent.action, AuditEvent.actor_id, AuditEvent.payload)
            .where(AuditEvent.action.like(f"{prefix}%"))
            .order_by(AuditEvent.seq)
        ).all()
    return [(seq, action, who, json.loads(p)) for seq, action, who, p in rows]


def test_with_intent_records_start_then_outcome(db):
    assert audit.with_intent(db, ACTOR, INTENT, lambda: {"made": 3}) == {"made": 3}
    (s1, a1, w1, p1), (_, a2, w2, p2) = _events(db, "thing.")
    assert (a1, w1, p1) == ("thing.started", "ops", {"n": 1})
    assert (a2, w2, p2) == ("thing.done", "ops", {"started_seq": s1, "made": 3})
    with db.read() as s:
        assert audit.verify(s).intact


def test_with_intent_records_a_failed_step_and_raises_its_error(db):
    def broken() -> dict:
        raise ValueError("disk full")

    with pytest.raises(ValueError, match="disk full"):
        audit.with_intent(db, ACTOR, INTENT, broken)
    (s1, a1, _, _), (_, a2, _, p2) = _events(db, "thing.")
    assert (a1, a2) == ("thing.started", "thing.failed")
    assert p2 == {"started_seq": s1, "error": "ValueError: disk full"}


def test_with_intent_says_when_the_outcome_cannot_be_written(db, monkeypatch):
    """The step ran; its outcome event fails: Unavailable names the start event, which stays."""
    real_append = audit.append

    def step() -> dict:
        def refuse(*args, **kwargs):
            raise OperationalError("INSERT", {}, Exception("database is read-only"))

        monkeypatch.setattr(audit, "append", refuse)
        return {"made": 1}

    with pytest.raises(Unavailable, match="the change ran") as caught:
        audit.with_intent(db, ACTOR, INTENT, step)
    monkeypatch.setattr(audit, "append", real_append)
    ((seq, action, _, _),) = _events(db, "thing.")
    assert action == "thing.started" and caught.value.details["started_seq"] == seq


def test_with_intent_refuses_the_step_when_the_database_cannot_be_written(db, monkeypatch):
    ran = []

    def refuse(*args, **kwargs):
        raise OperationalError("INSERT", {}, Exception("database is read-only"))

    monkeypatch.setattr(audit, "append", refuse)
    with pytest.raises(OperationalError):
        audit.with_intent(db, ACTOR, INTENT, lambda: ran.append(1) or {})
    assert ran == []


def test_an_api_ingest_does_not_hold_the_database_while_it_encodes(client, keys, db, monkeypatch):
    """Another writer (intake, say) commits while the documents are being ingested: with the
    ingest inside the audit transaction it would wait for the encoder (SQLite's one writer)."""
    real = RetrievalStage.ingest_read
    other: list[str] = []

    def ingest_read(self, docs):
        def write() -> None:
            audit.with_event(db, audit.SYSTEM, "other.write", dict)
            other.append("committed")

        writer = threading.Thread(target=write)
        writer.start()
        writer.join(timeout=10)
        other.append("alive" if writer.is_alive() else "joined")
        return real(self, docs)

    monkeypatch.setattr(RetrievalStage, "ingest_read", ingest_read)
    done = client.post(
        "/v1/knowledge/documents",
        json={"documents": [{"name": "cutoffs.txt", "content": "Pallets leave at 15:00.\n"}]},
        headers=bearer(keys["admin"]),
    )
    assert done.status_code == 200, done.text
    assert other == ["committed", "joined"]
    actions = [a for _, a, _, _ in _events(db, "")]
    started = actions.index("knowledge.ingest_started")
    assert actions[started:] == ["knowledge.ingest_started", "other.write", "knowledge.ingested"]


def test_an_unreadable_document_writes_no_event(client, keys, db):
    bad = client.post(
        "/v1/knowledge/documents",
        json={
            "documents": [
                {"name": "cutoffs.txt", "content": "Pallets leave at 15:00.\n"},
                {"name": "blank.md", "content": "   \n"},
            ]
        },
        headers=bearer(keys["admin"]),
    )
    assert bad.status_code == 422, bad.text
    assert _events(db, "knowledge.") == []


def test_kb_commands_on_the_deployments_store_are_audited(db, settings, monkeypatch, tmp_path):
    """Without --chroma-path the commands act on the deployment's store (<data_dir>/chroma,
    which `triage serve` uses) and write the API's events as the CLI admin; another folder has
    no audit trail; with the database out of reach nothing is changed."""
    triage = cli_runner(monkeypatch, settings)
    ingested = triage("kb", "ingest", str(KNOWLEDGE))
    assert ingested.exit_code == 0, ingested.output
    assert (settings.data_dir / "chroma").is_dir()  # TRIAGE_DATA_DIR's store, not ./var
    (s1, a1, w1, p1), (_, a2, w2, p2) = _events(db, "knowledge.")
    assert (a1, w1, a2, w2) == (
        "knowledge.ingest_started",
        "cli-admin",
        "knowledge.ingested",
        "cli-admin",
    )
    assert len(p1["documents"]) == 11 and all(len(d["sha256"]) == 64 for d in p1["documents"])
    assert p2["started_seq"] == s1 and p2["added"] == 11 and p2["chunks"] > 11
    assert f"{p2['chunks']} chunks in the knowledge base" in ingested.output

    removed = triage("kb", "remove", "SOP-DMG-002")
    assert removed.exit_code == 0, removed.output
    _, action, who, payload = _events(db, "knowledge.")[-1]
    assert (action, who, payload["doc_id"]) == ("knowledge.removed", "cli-admin", "SOP-DMG-002")
    unknown = triage("kb", "remove", "SOP-DMG-002")
    assert unknown.exit_code == 2 and len(_events(db, "knowledge.")) == 3  # refused: no event

    reindexed = triage("kb", "reindex")
    assert reindexed.exit_code == 0, reindexed.output
    assert [a for _, a, _, _ in _events(db, "knowledge.")][3:] == [
        "knowledge.reindex_started",
        "knowledge.reindexed",
    ]
    assert _events(db, "knowledge.")[-1][3]["chunks"] == p2["chunks"] - payload["chunks_removed"]

    elsewhere = triage("kb", "ingest", str(KNOWLEDGE), "--chroma-path", str(tmp_path / "exp"))
    assert elsewhere.exit_code == 0 and len(_events(db, "knowledge.")) == 5

    monkeypatch.setenv("TRIAGE_DATABASE_URL", "postgresql+psycopg://nobody@127.0.0.1:1/none")
    refused = triage("kb", "remove", "SOP-SHT-001")
    assert refused.exit_code == 2, refused.output
    assert (
        "deployment's knowledge base" in refused.output and "nothing was removed" in refused.output
    )
    monkeypatch.setenv("TRIAGE_DATABASE_URL", settings.resolved_database_url)
    stats = json.loads(triage("kb", "stats", "--json").stdout)
    assert "SOP-SHT-001" in stats["documents"]


def test_kb_ingest_names_an_unset_up_database(monkeypatch, tmp_path):
    """The deployment's database was never migrated: one line that says what to do, and the
    store is not touched."""
    from triage.settings import Settings

    settings = Settings(environment="test", data_dir=tmp_path)
    triage = cli_runner(monkeypatch, settings)
    refused = triage("kb", "ingest", str(KNOWLEDGE))
    assert refused.exit_code == 2, refused.output
    assert "triage db upgrade" in refused.output and "nothing was ingested" in refused.output
    assert json.loads(triage("kb", "stats", "--json").stdout)["chunks"] == 0


def _crashed_ingest(db) -> int:
    """A start event whose process died before the outcome: appended the way
    ``with_intent`` appends it, and nothing after."""
    with db.write() as s:
        return audit.append(s, ACTOR, "knowledge.ingest_started", {"documents": []})


def test_changes_started_without_an_outcome_are_listed_beside_verification(
    db, settings, client, keys, monkeypatch
):
    audit.with_intent(db, ACTOR, INTENT, lambda: {"made": 1})  # finished: not listed
    crashed = _crashed_ingest(db)
    audit.with_intent(db, ACTOR, INTENT, lambda: {"made": 2})
    with db.read() as s:
        assert [(u.seq, u.action, u.actor_id) for u in audit.unfinished(s)] == [
            (crashed, "knowledge.ingest_started", "ops")
        ]

    api = client.get("/v1/audit/verify", headers=bearer(keys["auditor"])).json()
    assert api["intact"] and [u["seq"] for u in api["unfinished"]] == [crashed]

    triage = cli_runner(monkeypatch, settings)
    text = triage("audit", "verify")
    assert text.exit_code == 0, text.output  # the chain is intact: an open change does not break it
    assert "1 change(s) started without a recorded outcome" in text.output
    assert f"event {crashed} " in text.output and "knowledge.ingest_started  by ops" in text.output
    as_json = json.loads(triage("audit", "verify", "--json").stdout)
    assert [u["action"] for u in as_json["unfinished"]] == ["knowledge.ingest_started"]


def test_no_unfinished_changes_on_a_trail_without_any(db):
    audit.with_intent(db, ACTOR, INTENT, lambda: {"made": 1})
    with pytest.raises(ValueError):
        audit.with_intent(db, ACTOR, INTENT, lambda: (_ for _ in ()).throw(ValueError("x")))
    with db.read() as s:
        assert audit.unfinished(s) == []
