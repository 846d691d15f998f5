"""Work notes on a case: added by the people and systems who work it, read by everyone, kept
as audit events (never edited, chained); bad notes are field-level 4xx with nothing written."""

from __future__ import annotations

from sqlalchemy import func, select

from tests.support import bearer, sample_case
from triage import audit
from triage.models import AuditEvent


def _case(client, keys) -> str:
    r = client.post("/v1/cases", json=sample_case(), headers=bearer(keys["orchestrator"]))
    assert r.status_code == 202, r.text
    return r.json()["case_id"]


def _note(client, keys, who, case_id, text):
    return client.post(f"/v1/cases/{case_id}/notes", json={"text": text}, headers=bearer(keys[who]))


def test_notes_are_added_in_order_and_read_by_everyone(client, keys, db):
    case_id = _case(client, keys)
    first = _note(client, keys, "agent", case_id, "  Called the carrier: POD expected Friday.\r\n")
    assert first.status_code == 201, first.text
    assert first.json()["text"] == "Called the carrier: POD expected Friday."
    assert (first.json()["author"], first.json()["author_role"]) == ("test-agent", "agent")
    second = _note(client, keys, "orchestrator", case_id, "ERP: invoice INV-1 put on hold")
    third = _note(client, keys, "approver", case_id, "Credit only after the POD arrives")
    assert second.status_code == third.status_code == 201
    listed = client.get(f"/v1/cases/{case_id}/notes", headers=bearer(keys["auditor"]))
    assert listed.status_code == 200, listed.text
    items = listed.json()["items"]
    assert [n["author"] for n in items] == ["test-agent", "test-orchestrator", "test-approver"]
    assert [n["seq"] for n in items] == sorted(n["seq"] for n in items)
    assert items[0] == first.json()
    with db.read() as s:
        events = s.scalars(select(AuditEvent).where(AuditEvent.action == "case.note_added")).all()
        assert {e.case_id for e in events} == {case_id} and len(events) == 3
        assert audit.verify(s).intact


def test_bad_notes_are_refused_and_nothing_is_written(client, keys, db):
    case_id = _case(client, keys)
    with db.read() as s:
        before = s.scalar(select(func.max(AuditEvent.seq)))
    for body, field in (
        ({"text": ""}, "text"),
        ({"text": "x" * 5001}, "text"),
        ({}, "text"),
        ({"text": "ok", "extra": 1}, "extra"),
    ):
        r = client.post(f"/v1/cases/{case_id}/notes", json=body, headers=bearer(keys["agent"]))
        assert r.status_code == 422, (body, r.text)
        assert field in {f["field"] for f in r.json()["error"]["fields"]}, r.text
    blank = _note(client, keys, "agent", case_id, " \n\t ")  # passes min_length, stripped empty
    assert blank.status_code == 422 and blank.json()["error"]["fields"][0]["field"] == "text"
    unknown = _note(client, keys, "agent", "01NOSUCHCASE0000000000000", "hello")
    assert unknown.status_code == 404
    assert (
        client.get(
            "/v1/cases/01NOSUCHCASE0000000000000/notes", headers=bearer(keys["agent"])
        ).status_code
        == 404
    )
    assert _note(client, keys, "auditor", case_id, "auditors only read").status_code == 403
    with db.read() as s:
        added = s.scalars(select(AuditEvent.action).where(AuditEvent.seq > before)).all()
    assert added == ["auth.forbidden"]  # the auditor's attempt; no note


def test_notes_page_with_a_cursor(client, keys):
    case_id = _case(client, keys)
    for i in range(5):
        assert _note(client, keys, "agent", case_id, f"note {i}").status_code == 201
    url = f"/v1/cases/{case_id}/notes"
    seen, cursor, pages = [], None, 0
    while True:
        params = {"limit": 2} | ({"cursor": cursor} if cursor else {})
        page = client.get(url, params=params, headers=bearer(keys["agent"])).json()
        seen += [n["text"] for n in page["items"]]
        cursor, pages = page["next_cursor"], pages + 1
        if not cursor:
            break
    assert seen == [f"note {i}" for i in range(5)] and pages == 3
    for bad in ({"cursor": -1}, {"cursor": "x"}, {"limit": 0}, {"limit": 501}):
        r = client.get(url, params=bad, headers=bearer(keys["agent"]))
        assert r.status_code == 422, (bad, r.text)


def test_latest_notes_for_a_page_of_cases_in_one_query(client, keys, db):
    """``latest_notes_by_case`` (the approver inbox's read) equals ``latest_notes`` per case:
    the n latest, oldest first; a case without notes is absent."""
    from triage import cases

    busy, quiet, silent = (
        client.post("/v1/cases", json=sample_case(n), headers=bearer(keys["orchestrator"])).json()[
            "case_id"
        ]
        for n in (1, 2, 3)
    )
    for i in range(5):
        assert _note(client, keys, "agent", busy, f"busy {i}").status_code == 201
        if i == 2:
            assert _note(client, keys, "agent", quiet, "quiet 0").status_code == 201
    with db.read() as s:
        got = cases.latest_notes_by_case(s, [busy, quiet, silent, busy], 3)
        assert set(got) == {busy, quiet}
        assert [json_text(e) for e in got[busy]] == ["busy 2", "busy 3", "busy 4"]
        assert [json_text(e) for e in got[quiet]] == ["quiet 0"]
        for case_id in (busy, quiet):
            assert [e.seq for e in got[case_id]] == [
                e.seq for e in cases.latest_notes(s, case_id, 3)
            ]
        assert cases.latest_notes_by_case(s, [], 3) == {}


def json_text(e: AuditEvent) -> str:
    import json

    return json.loads(e.payload)["text"]
