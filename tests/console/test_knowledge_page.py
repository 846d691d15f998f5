"""The console's knowledge base page: staff read it, admins upload documents into the running
server's store (audited as over the API); a refused file ingests nothing."""

from __future__ import annotations

import json

from sqlalchemy import select

from tests.console.conftest import csrf, flash, post, sign_in
from tests.support import build_pdf
from triage.models import AuditEvent

URL = "/console/knowledge"
SOP = "# Crushed pallets\n\nPhotograph a crushed pallet at the dock and file the carrier claim.\n"


def _upload(client, *files: tuple[str, bytes]):
    return client.post(
        URL,
        data={"csrf_token": csrf(client)},
        files=[("files", (name, content, "text/markdown")) for name, content in files],
        follow_redirects=False,
    )


def test_admins_upload_and_everyone_on_staff_reads(client, login, db, app):
    login("boss")
    page = client.get(URL)
    assert page.status_code == 200 and "No documents yet." in page.text
    assert 'action="/console/knowledge"' in page.text  # the admin's upload form

    message = flash(client, _upload(client, ("crushed-pallets.md", SOP), ("cutoffs.txt", b"x")))
    assert message.startswith("ok: Ingested crushed-pallets.md added, cutoffs.txt added;"), message
    page = client.get(URL).text
    assert "crushed-pallets" in page and "cutoffs" in page
    hits = app.state.ctx.retrieval.service.kb.search("crushed pallet carrier claim")
    assert hits and hits[0].doc_id == "crushed-pallets"
    with db.read() as s:
        (event,) = s.execute(
            select(AuditEvent.actor_id, AuditEvent.payload).where(
                AuditEvent.action == "knowledge.ingested"
            )
        ).all()
    assert event.actor_id == "boss"
    assert [d["name"] for d in json.loads(event.payload)["documents"]] == [
        "crushed-pallets.md",
        "cutoffs.txt",
    ]

    refused = flash(client, _upload(client, ("new.md", SOP + "more"), ("bad.md", b"\xff\xfe\x00")))
    assert refused.startswith("error: Nothing was ingested:"), refused
    assert "bad.md" in refused and "not valid UTF-8 text" in refused, refused
    blank = flash(client, _upload(client, ("new.md", SOP), ("blank.txt", b"  \n")))
    assert blank.startswith("error: Nothing was ingested:") and "no text" in blank, blank
    damaged = flash(client, _upload(client, ("manual.pdf", b"%PDF-1.4")))
    assert damaged.startswith("error: Nothing was ingested:"), damaged
    assert "manual.pdf" in damaged and "cannot read the PDF" in damaged, damaged
    empty = flash(client, _upload(client, ("empty.md", b"")))
    assert empty == "error: empty.md is empty.", empty
    docx = flash(client, _upload(client, ("notes.docx", b"PK")))
    assert docx.startswith("error: Nothing was ingested:") and "ending .md" in docx, docx
    table = client.get(URL).text.split('id="documents"')[1].split("</table>")[0]
    assert ">crushed-pallets<" in table and ">new<" not in table  # none of the refused ingested

    manual = build_pdf("Seal numbers are checked against the bill of lading at the gate.")
    pdf = flash(client, _upload(client, ("gate-manual.pdf", manual)))
    assert pdf.startswith("ok: Ingested gate-manual.pdf added;"), pdf
    hit = app.state.ctx.retrieval.service.kb.search("seal number bill of lading", k=1)[0]
    assert (hit.doc_id, hit.page) == ("gate-manual", 1)

    removed = flash(client, post(client, f"{URL}/cutoffs/remove"))
    assert removed.startswith("ok: Removed cutoffs (version sha-"), removed
    assert ">cutoffs<" not in client.get(URL).text
    unknown = flash(client, post(client, f"{URL}/cutoffs/remove"))
    assert unknown == "error: the knowledge base holds no document &#39;cutoffs&#39;", unknown

    login("agent")
    page = client.get(URL)
    assert page.status_code == 200 and "crushed-pallets" in page.text
    assert 'action="/console/knowledge"' not in page.text
    denied = _upload(client, ("other.md", SOP))
    assert denied.status_code == 403
    assert post(client, f"{URL}/crushed-pallets/remove").status_code == 403


def test_verification_lists_a_change_that_started_without_an_outcome(client, people, db):
    from triage import audit

    with db.write() as s:
        seq = audit.append(s, audit.SYSTEM, "knowledge.reindex_started", {"encoder": "x"})
    sign_in(client, "auditor")
    r = client.get("/console/audit/verify", follow_redirects=False)
    assert flash(client, r).startswith("ok: Chain verified:")
    page = client.get("/console/audit").text
    assert "1 change(s) started without a recorded outcome" in page
    assert f"#{seq} knowledge.reindex_started</a> by system" in page
