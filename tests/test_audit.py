"""Hash-chained audit trail: verification, tamper detection, DB-level refusal, concurrency."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import threading

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from tests.support import bearer
from triage import audit, auth
from triage.audit import Actor, ActorType

ALICE = Actor(ActorType.human, "alice", "agent")


def _fill(db, n=10):
    with db.write() as s:
        for i in range(n):
            audit.append(s, ALICE, "test.event", {"i": i, "note": "ünïcode ✓"}, case_id=f"C{i % 3}")


def _verify(db):
    with db.read() as s:
        return audit.verify(s)


def _tamper(db, *statements, params=None):
    """Run raw SQL as an attacker with table access: the append-only triggers are removed
    first (SQLite) or bypassed with replication role (PostgreSQL superuser)."""
    with db.write_engine.begin() as conn:
        if db.is_sqlite:
            conn.exec_driver_sql("DROP TRIGGER IF EXISTS audit_events_no_update")
            conn.exec_driver_sql("DROP TRIGGER IF EXISTS audit_events_no_delete")
        else:
            conn.execute(text("SET LOCAL session_replication_role = replica"))
        for st in statements:
            conn.execute(text(st), params or {})


def test_intact_chain(db):
    _fill(db)
    res = _verify(db)
    assert res.intact and res.events == 10 and res.head_seq == 10
    assert res.first_bad_seq is None


def test_empty_chain_is_intact(db):
    res = _verify(db)
    assert res.intact and res.events == 0 and res.head_hash == audit.GENESIS


def test_edit_detected_at_its_sequence(db):
    _fill(db)
    _tamper(db, "UPDATE audit_events SET payload = :p WHERE seq = 5", params={"p": '{"i":99}'})
    res = _verify(db)
    assert not res.intact and res.first_bad_seq == 5
    assert "hash" in (res.problem or "")


def test_actor_edit_detected(db):
    _fill(db)
    _tamper(db, "UPDATE audit_events SET actor_id = 'mallory' WHERE seq = 3")
    assert _verify(db).first_bad_seq == 3


def test_delete_detected_at_missing_sequence(db):
    _fill(db)
    _tamper(db, "DELETE FROM audit_events WHERE seq = 5")
    res = _verify(db)
    assert not res.intact and res.first_bad_seq == 5 and "missing" in (res.problem or "")


def test_truncated_tail_detected_by_head(db):
    _fill(db)
    _tamper(db, "DELETE FROM audit_events WHERE seq >= 9")
    res = _verify(db)
    assert not res.intact and res.first_bad_seq == 9 and res.events == 8


def _shift_from(seq: int) -> list[str]:
    return [
        f"UPDATE audit_events SET seq = seq + 1000 WHERE seq >= {seq}",
        f"UPDATE audit_events SET seq = seq - 999 WHERE seq >= {seq + 1000}",
    ]


def test_insert_with_forged_hash_detected_after_it(db):
    """A forger who knows the algorithm inserts a well-formed event: its successor breaks."""
    _fill(db)
    with db.read() as s:
        prev = s.execute(text("SELECT hash FROM audit_events WHERE seq = 4")).scalar_one()
    payload = '{"i":"forged"}'
    ts = "2026-11-26T00:00:00.000000Z"
    forged = audit.entry_hash(5, ts, "human", "mallory", "admin", None, "test.event", payload, prev)
    _tamper(
        db,
        *_shift_from(5),
        "INSERT INTO audit_events (seq, ts, actor_type, actor_id, actor_role, case_id, action,"
        " payload, prev_hash, hash) VALUES (5, :ts, 'human', 'mallory', 'admin', NULL,"
        " 'test.event', :payload, :prev, :hash)",
        params={"ts": ts, "payload": payload, "prev": prev, "hash": forged},
    )
    res = _verify(db)
    assert not res.intact and res.first_bad_seq == 6


def test_insert_with_junk_hash_detected_at_it(db):
    _fill(db)
    _tamper(
        db,
        *_shift_from(5),
        "INSERT INTO audit_events (seq, ts, actor_type, actor_id, actor_role, case_id, action,"
        " payload, prev_hash, hash) VALUES (5, '2026-11-26T00:00:00.000000Z', 'human', 'm',"
        " NULL, NULL, 'x', '{}', (SELECT hash FROM audit_events WHERE seq = 4), 'beef')",
    )
    assert _verify(db).first_bad_seq == 5


def test_reorder_detected(db):
    _fill(db)
    _tamper(
        db,
        "UPDATE audit_events SET seq = 1005 WHERE seq = 5",
        "UPDATE audit_events SET seq = 5 WHERE seq = 6",
        "UPDATE audit_events SET seq = 6 WHERE seq = 1005",
    )
    res = _verify(db)
    assert not res.intact and res.first_bad_seq == 5


def test_database_refuses_update_and_delete(db):
    """PostgreSQL refuses UPDATE, DELETE and TRUNCATE by trigger; SQLite refuses UPDATE/DELETE."""
    _fill(db, 3)
    statements = [
        "UPDATE audit_events SET actor_id = 'x' WHERE seq = 1",
        "DELETE FROM audit_events WHERE seq = 1",
    ]
    if not db.is_sqlite:
        statements.append("TRUNCATE audit_events")
    for stmt in statements:
        with pytest.raises(DBAPIError, match="append-only"), db.write() as s:
            s.execute(text(stmt))
    res = _verify(db)
    assert res.intact and res.events == 3


def test_concurrent_writers_never_fork_the_chain(db):
    errors: list[BaseException] = []

    def writer(n: int) -> None:
        try:
            for i in range(25):
                with db.write() as s:
                    audit.append(s, Actor(ActorType.system, f"w{n}"), "race", {"i": i})
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    res = _verify(db)
    assert res.intact and res.events == 200 and res.head_seq == 200


def _offline_verify(lines: list[dict]) -> bool:
    """An auditor's own verifier, written from the documented rule only."""
    prev = "0" * 64
    for e in lines:
        doc = {
            k: e[k]
            for k in (
                "action",
                "actor_id",
                "actor_role",
                "actor_type",
                "case_id",
                "prev_hash",
                "seq",
                "ts",
            )
        }
        text_ = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        # payload is embedded verbatim as stored canonical JSON
        text_ = text_[:-1] + ',"payload":' + e["payload"] + "}"
        ordered = json.dumps(
            json.loads(text_), sort_keys=True, separators=(",", ":"), ensure_ascii=False
        )
        if e["prev_hash"] != prev or hashlib.sha256(ordered.encode()).hexdigest() != e["hash"]:
            return False
        prev = e["hash"]
    return True


def test_api_search_verify_and_exports_reverify_offline(client, keys, db):
    _fill(db, 12)
    h = bearer(keys["auditor"])
    v = client.get("/v1/audit/verify", headers=h).json()
    # + the five key creations and the policy activation (+ its re-check) at app start-up
    assert v["intact"] is True and v["events"] == 12 + 5 + 2
    page = client.get("/v1/audit", params={"case_id": "C1", "limit": 2}, headers=h).json()
    assert [e["payload"]["i"] for e in page["items"]] == [1, 4]
    nxt = client.get(
        "/v1/audit", params={"case_id": "C1", "limit": 2, "cursor": page["next_cursor"]}, headers=h
    ).json()
    assert [e["payload"]["i"] for e in nxt["items"]] == [7, 10] and nxt["next_cursor"] is None
    by_action = client.get("/v1/audit", params={"action": "api_key.created"}, headers=h).json()
    assert len(by_action["items"]) == 5
    jsonl = client.get("/v1/audit/export", params={"format": "jsonl"}, headers=h)
    assert jsonl.headers["content-type"].startswith("application/x-ndjson")
    events = [json.loads(line) for line in jsonl.text.splitlines()]
    assert len(events) == 19 and _offline_verify(events)
    events[3]["payload"] = events[3]["payload"].replace("0", "1")
    assert not _offline_verify(events)
    rows = list(
        csv.DictReader(
            io.StringIO(client.get("/v1/audit/export", params={"format": "csv"}, headers=h).text)
        )
    )
    assert len(rows) == 19
    for r in rows:
        r["seq"] = int(r["seq"])
        r["actor_role"] = r["actor_role"] or None
        r["case_id"] = r["case_id"] or None
    assert _offline_verify(rows)
    assert client.get("/v1/audit/export", params={"format": "xml"}, headers=h).status_code == 422
    naive = client.get("/v1/audit", params={"since": "2026-01-01T00:00:00"}, headers=h)
    assert naive.status_code == 422


def test_key_names_cannot_plant_a_formula_in_the_csv_export(client, keys, db):
    """A key's name is the actor id of every event the key causes, and the audit log is
    exported byte-exact as CSV for auditors (so it re-verifies offline): a name a spreadsheet
    would run as a formula (leading = + - @) or holding control characters is refused at
    creation, over the API and in the core the CLI shares; the export's other columns are
    fixed vocabularies, ids, hashes or JSON objects."""
    admin = bearer(keys["admin"])
    for name in ('=HYPERLINK("http://x")', "+1", "-2+3", "@SUM(A1)", "ok\tname", " =lead"):
        r = client.post("/v1/keys", json={"name": name, "role": "agent"}, headers=admin)
        assert r.status_code == 422, (name, r.text)
        assert r.json()["error"]["fields"][0]["field"] == "name"
    ok = client.post("/v1/keys", json={"name": "wms-prod 2 (eu)", "role": "agent"}, headers=admin)
    assert ok.status_code == 201, ok.text
    export = client.get(
        "/v1/audit/export", params={"format": "csv"}, headers=bearer(keys["auditor"])
    )
    cells = [c for row in csv.reader(io.StringIO(export.text)) for c in row]
    assert cells and not [c for c in cells if c.startswith(tuple(auth.FORMULA_LEADS))]


def test_audit_cursor_beyond_bigint_is_a_422_not_a_500(client, keys):
    import base64

    auditor = bearer(keys["auditor"])
    huge = base64.urlsafe_b64encode(str(2**63).encode()).decode().rstrip("=")
    r = client.get("/v1/audit", params={"cursor": huge}, headers=auditor)
    assert r.status_code == 422, r.text
    assert r.json()["error"]["fields"][0]["field"] == "cursor"


def test_deferred_appends_are_written_in_order_at_the_end_of_the_block(db):
    _fill(db, 2)
    with db.write() as s, audit.deferred(s):
        payload = {"n": 1}
        assert audit.append(s, ALICE, "deferred.one", payload) == 0  # queued
        payload["n"] = 99  # a later change to the dict does not reach the queued event
        with audit.deferred(s):  # nested: queues into the outer block
            audit.append(s, ALICE, "deferred.two", {"n": 2})
        assert s.execute(text("SELECT count(*) FROM audit_events")).scalar() == 2
    with db.read() as s:
        rows = s.execute(text("SELECT seq, action, payload FROM audit_events ORDER BY seq")).all()
    assert [(r.seq, r.action, r.payload) for r in rows[2:]] == [
        (3, "deferred.one", '{"n":1}'),
        (4, "deferred.two", '{"n":2}'),
    ]
    _verify(db)


def test_deferred_appends_are_dropped_when_the_block_raises(db):
    _fill(db, 1)

    def fails() -> None:
        with db.write() as s, audit.deferred(s):
            audit.append(s, ALICE, "never.written", {})
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        fails()
    with db.read() as s:
        assert s.execute(text("SELECT count(*) FROM audit_events")).scalar() == 1
    with db.write() as s:  # the session state is clean: a normal append goes straight in
        assert audit.append(s, ALICE, "after", {}) == 2
    _verify(db)
