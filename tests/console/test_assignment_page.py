"""Assigning cases in the console: the case page's Assign form and the queue's bulk assign."""

from __future__ import annotations

import re

from sqlalchemy import select

from tests.console.conftest import flash, post, sign_in
from triage.models import AuditEvent, Case


def _holders(db, ids) -> dict[str, tuple[str, str | None]]:
    with db.read() as s:
        return {i: (s.get(Case, i).status, s.get(Case, i).assignee) for i in ids}


def _assign_options(html: str, select_id: str) -> list[str]:
    block = html.split(f'id="{select_id}"')[1].split("</select>")[0]
    return [v for v in re.findall(r'<option value="([^"]*)"', block) if v]


def test_an_agent_assigns_from_the_case_page_and_then_cannot_take_it_back(
    client, people, case_ids, db
):
    sign_in(client, "agent")
    page = client.get(f"/console/cases/{case_ids[0]}").text
    assert 'id="assign"' in page
    # agents and admins only: not approvers or auditors
    assert _assign_options(page, "a-assignee") == ["agent", "boss"]
    r = post(
        client,
        f"/console/cases/{case_ids[0]}/assign",
        {"assignee": "boss", "reason": "tier A: the lead takes it"},
    )
    assert flash(client, r) == "ok: Case assigned to boss."
    assert _holders(db, [case_ids[0]]) == {case_ids[0]: ("in_review", "boss")}
    with db.read() as s:
        event = s.scalars(
            select(AuditEvent).where(
                AuditEvent.case_id == case_ids[0], AuditEvent.action == "case.assigned"
            )
        ).one()
        assert event.actor_id == "agent" and '"to":"boss"' in event.payload

    page = client.get(f"/console/cases/{case_ids[0]}").text
    assert "held by <strong>boss</strong>" in page and 'id="assign"' not in page
    assert "assigned by agent: tier A: the lead takes it</span>" in page
    refused = post(client, f"/console/cases/{case_ids[0]}/assign", {"assignee": "agent"})
    assert flash(client, refused).startswith("error: boss holds case")
    assert _holders(db, [case_ids[0]])[case_ids[0]] == ("in_review", "boss")

    sign_in(client, "boss")  # an admin reassigns anyone's case
    page = client.get(f"/console/cases/{case_ids[0]}").text
    assert _assign_options(page, "a-assignee") == ["agent"]  # not the current holder
    r = post(client, f"/console/cases/{case_ids[0]}/assign", {"assignee": "agent"})
    assert flash(client, r) == "ok: Case assigned to agent."
    page = client.get(f"/console/cases/{case_ids[0]}").text
    assert '<span id="assigned-by" class="small muted">assigned by boss</span>' in page
    # released and claimed again: the holder took it, nobody handed it over
    move = f"/console/cases/{case_ids[0]}/transition"
    post(client, move, {"to": "awaiting_review"})
    assert 'id="assigned-by"' not in client.get(f"/console/cases/{case_ids[0]}").text
    post(client, move, {"to": "in_review"})
    page = client.get(f"/console/cases/{case_ids[0]}").text
    assert "held by <strong>boss</strong>" in page and 'id="assigned-by"' not in page
    bad = post(client, f"/console/cases/{case_ids[1]}/assign", {"assignee": "fin1"})
    assert flash(client, bad).startswith("error: fin1 cannot hold cases (assignee: not an enabled")
    assert _holders(db, [case_ids[1]])[case_ids[1]] == ("awaiting_review", None)


def test_bulk_assign_from_the_queue_reports_each_refusal(client, people, case_ids, db):
    sign_in(client, "boss")
    post(client, f"/console/cases/{case_ids[2]}/assign", {"assignee": "boss"})
    sign_in(client, "agent")
    queue = client.get("/console/queue").text
    ticks = re.findall(r'name="case_id" value="([0-9A-Z]+)" form="bulk-assign"', queue)
    # boss's case has no tick box for an agent: it is not theirs to hand over
    assert set(ticks) == {case_ids[0], case_ids[1]}
    assert _assign_options(queue, "b-assignee") == ["agent", "boss"]

    back = "/console/queue?priority=P2"
    r = client.post(
        "/console/queue/assign",
        data={
            "csrf_token": client.cookies.get("triage_csrf"),
            "assignee": "agent",
            "case_id": [case_ids[0], case_ids[1], case_ids[2]],
            "back": back,
            "reason": "morning dispatch",
        },
        follow_redirects=False,
    )
    assert r.headers["location"] == back
    text = flash(client, r)
    assert text.startswith("error: Assigned 2 of 3 cases to agent. Not assigned: ")
    assert f"{case_ids[2]}: boss holds case" in text
    assert _holders(db, case_ids) == {
        case_ids[0]: ("in_review", "agent"),
        case_ids[1]: ("in_review", "agent"),
        case_ids[2]: ("in_review", "boss"),
    }


def test_bulk_assign_refuses_bad_input_without_assigning_anything(client, people, case_ids, db):
    sign_in(client, "agent")
    before = _holders(db, case_ids)
    token = client.cookies.get("triage_csrf")

    def send(**data):
        return client.post(
            "/console/queue/assign",
            data={"csrf_token": token, **data},
            follow_redirects=False,
        )

    nobody = send(assignee="auditor", case_id=case_ids)
    assert flash(client, nobody).startswith("error: auditor cannot hold cases")
    assert flash(client, send(assignee="agent")) == "error: Tick the cases to assign first."
    many = send(assignee="agent", case_id=[f"C{i}" for i in range(101)])
    assert flash(client, many) == "error: At most 100 cases at a time."
    # the return address comes from the form: anything but the queue goes to the queue
    for forged in (
        "https://evil.example/",
        "//evil.example/console/queue",
        "/console/audit",
        "/console/queue\r\nSet-Cookie: triage_session=x",
    ):
        r = send(assignee="agent", back=forged)
        assert r.headers["location"] == "/console/queue", forged
    assert _holders(db, case_ids) == before

    sign_in(client, "auditor")
    refused = client.post(
        "/console/queue/assign",
        data={"csrf_token": client.cookies.get("triage_csrf"), "assignee": "agent"},
        follow_redirects=False,
    )
    assert refused.status_code == 403
    assert _holders(db, case_ids) == before
