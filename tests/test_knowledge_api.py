"""The knowledge base over the API: admins ingest documents into the running server's own
store (audited), staff read what it holds; bad documents refuse the whole request."""

from __future__ import annotations

import base64
import json

from sqlalchemy import select

from api.app import create_app
from tests.support import bearer, build_pdf
from triage.models import AuditEvent

RETURNS = """---
id: returns-sop
version: "2026-11"
title: Returns of damaged pallets
---
# Returns of damaged pallets

A pallet that arrives crushed is photographed at the dock within two hours, the carrier's
driver signs the damage note, and the claim goes to the carrier desk with the photographs.
"""
CUTOFF = "Carrier cut-off times: parcels leave the Lyon hub at 17:30, pallets at 15:00.\n"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _post(client, key, documents):
    return client.post("/v1/knowledge/documents", json={"documents": documents}, headers=key)


def _events(db) -> list[tuple[str, dict]]:
    with db.read() as s:
        rows = s.scalars(
            select(AuditEvent)
            .where(AuditEvent.action == "knowledge.ingested")
            .order_by(AuditEvent.seq)
        )
        return [(e.actor_id, json.loads(e.payload)) for e in rows]


def test_admins_ingest_into_the_servers_store_and_staff_read_it(client, keys, db, app):
    admin = bearer(keys["admin"])
    first = _post(
        client,
        admin,
        [{"name": "returns.md", "content": RETURNS}, {"name": "cutoffs.txt", "content": CUTOFF}],
    )
    assert first.status_code == 200, first.text
    body = first.json()
    assert (body["added"], body["updated"], body["unchanged"], body["errors"]) == (2, 0, 0, 0)
    by_name = {d["name"]: d for d in body["documents"]}
    assert by_name["returns.md"]["doc_id"] == "returns-sop"
    assert by_name["returns.md"]["version"] == "2026-11"
    assert by_name["cutoffs.txt"]["doc_id"] == "cutoffs"
    assert body["chunks"] == sum(d["chunks_added"] for d in body["documents"]) > 0

    info = client.get("/v1/knowledge", headers=bearer(keys["agent"]))
    assert info.status_code == 200, info.text
    assert info.json()["documents"] == {
        "returns-sop": "2026-11",
        "cutoffs": by_name["cutoffs.txt"]["version"],
    }

    # the server's own retrieval finds it at once (no restart, no second process)
    passages = app.state.ctx.retrieval.service.kb.search("crushed pallet damage note photographs")
    assert passages and passages[0].doc_id == "returns-sop"
    assert passages[0].source_path == "returns.md"  # its name, not a scratch file's path

    again = _post(
        client,
        admin,
        [
            {"name": "returns.md", "content": RETURNS},
            {"name": "cutoffs.txt", "content": CUTOFF.replace("17:30", "18:00")},
        ],
    )
    assert again.status_code == 200, again.text
    assert [d["status"] for d in again.json()["documents"]] == ["unchanged", "updated"]

    events = _events(db)
    assert [actor for actor, _ in events] == ["test-admin", "test-admin"]
    assert [d["status"] for d in events[1][1]["documents"]] == ["unchanged", "updated"]
    assert events[1][1]["chunks"] == again.json()["chunks"]

    removed = client.delete("/v1/knowledge/documents/returns-sop", headers=admin)
    assert removed.status_code == 200, removed.text
    gone = removed.json()
    assert (gone["doc_id"], gone["version"]) == ("returns-sop", "2026-11")
    assert gone["chunks_removed"] == by_name["returns.md"]["chunks_added"]
    assert gone["chunks"] == again.json()["chunks"] - gone["chunks_removed"]
    left = app.state.ctx.retrieval.service.kb.search("crushed pallet damage note photographs")
    assert "returns-sop" not in {p.doc_id for p in left}
    assert list(client.get("/v1/knowledge", headers=admin).json()["documents"]) == ["cutoffs"]
    again_gone = client.delete("/v1/knowledge/documents/returns-sop", headers=admin)
    assert again_gone.status_code == 404 and "no document 'returns-sop'" in again_gone.text
    with db.read() as s:
        payloads = [
            json.loads(p)
            for p in s.scalars(
                select(AuditEvent.payload).where(AuditEvent.action == "knowledge.removed")
            )
        ]
    assert payloads == [gone]


def test_a_pdf_is_ingested_from_its_bytes_and_cited_by_page(client, keys, app):
    """PDFs come over the API base64-encoded; each page's text is a chunk with its page."""
    manual = build_pdf(
        "Damaged pallets are photographed at the dock within two hours.",
        "Duplicate invoices are credited in full once the original is confirmed paid.",
    )
    r = _post(
        client,
        bearer(keys["admin"]),
        [
            {"name": "carrier-manual.pdf", "content_base64": _b64(manual)},
            {"name": "cutoffs.txt", "content_base64": _b64(CUTOFF.encode())},
        ],
    )
    assert r.status_code == 200, r.text
    docs = {d["name"]: d for d in r.json()["documents"]}
    assert docs["carrier-manual.pdf"]["doc_id"] == "carrier-manual"
    assert docs["carrier-manual.pdf"]["chunks_added"] == 2
    assert docs["cutoffs.txt"]["status"] == "added"
    kb = app.state.ctx.retrieval.service.kb
    hit = kb.search("duplicate invoice credited once the original is paid", k=1)[0]
    assert (hit.doc_id, hit.page) == ("carrier-manual", 2)
    again = _post(
        client,
        bearer(keys["admin"]),
        [{"name": "carrier-manual.pdf", "content_base64": _b64(manual)}],
    )
    assert again.json()["documents"][0]["status"] == "unchanged"


def test_a_bad_document_refuses_the_request_and_ingests_nothing(client, keys, db):
    admin = bearer(keys["admin"])
    good = {"name": "cutoffs.txt", "content": CUTOFF}
    cases = [
        ([good, {"name": "blank.md", "content": "   \n"}], "documents[1].content", "no text"),
        ([{"name": "../etc/passwd.md", "content": "x"}], "documents[0].name", "a file name"),
        ([{"name": "manual.doc", "content": "x"}], "documents[0].name", "ending .md"),
        ([{"name": "manual.pdf", "content": "x"}], "documents[0]", "content_base64"),
        ([{"name": "a.md"}], "documents[0]", "exactly one of"),
        ([{"name": "a.md", "content": "x", "content_base64": "eA=="}], "documents[0]", "one of"),
        (
            [{"name": "a.pdf", "content_base64": "not base64!"}],
            "documents[0].content_base64",
            "base64",
        ),
        (
            [good, {"name": "a.pdf", "content_base64": _b64(b"%PDF-1.4\n%%EOF")}],
            "documents[1].content_base64",
            "cannot read the PDF",
        ),
        (
            [{"name": "scan.pdf", "content_base64": _b64(build_pdf(""))}],
            "documents[0].content_base64",
            "no text layer",
        ),
        (
            [{"name": "a.txt", "content_base64": _b64(b"\xff\xfe")}],
            "documents[0].content_base64",
            "not valid UTF-8",
        ),
        ([good, dict(good)], "documents[1].name", "appears twice"),
        ([good, {"name": "cutoffs.md", "content": "x"}], "documents[1].content", "document id"),
        ([], "documents", None),
        ([good] * 51, "documents", None),
    ]
    for documents, field, problem in cases:
        r = _post(client, admin, documents)
        assert r.status_code == 422, (field, r.text)
        fields = {f["field"]: f["problem"] for f in r.json()["error"]["fields"]}
        assert field in fields, (field, fields)
        if problem is not None:
            assert problem in fields[field], fields
    info = client.get("/v1/knowledge", headers=admin).json()
    assert info["chunks"] == 0 and info["documents"] == {}
    assert _events(db) == []
    forbidden = _post(client, bearer(keys["agent"]), [good])
    assert forbidden.status_code == 403


def test_without_retrieval_there_is_no_knowledge_base(settings, db, keys):
    from fastapi.testclient import TestClient

    off = settings.model_copy(update={"retrieval_enabled": False})
    with TestClient(create_app(off, db=db, start_worker=False)) as client:
        r = client.get("/v1/knowledge", headers=bearer(keys["admin"]))
        assert r.status_code == 409, r.text
        assert "retrieval is disabled" in r.json()["error"]["message"]
        posted = _post(client, bearer(keys["admin"]), [{"name": "a.txt", "content": "x"}])
        assert posted.status_code == 409


def test_an_unreachable_vector_store_is_a_503_not_a_500(settings, db, keys):
    from fastapi.testclient import TestClient

    down = settings.model_copy(update={"chroma_url": "http://127.0.0.1:9"})  # nothing listens
    with TestClient(create_app(down, db=db, start_worker=False)) as client:
        r = client.get("/v1/knowledge", headers=bearer(keys["admin"]))
        assert r.status_code == 503, r.text
        assert r.json()["error"]["code"] == "unavailable"
        assert "vector store failed" in r.json()["error"]["message"]
        posted = _post(client, bearer(keys["admin"]), [{"name": "a.txt", "content": "x"}])
        assert posted.status_code == 503, posted.text
    assert _events(db) == []
