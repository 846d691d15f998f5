"""People hear about their work through relays the operator configures: approvers about
approvals (``approval.*`` to ``approval_webhook_url``: requested, reminder, escalated,
expired), the service team about assignments and SLA breaches (``case.assigned`` and
``case.sla_breached`` to ``team_webhook_url``), once each, signed, through the outbox to a real
local receiver; and caller-addressed callbacks stay behind the private-address guard."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import select, update

from tests import test_actions, test_webhooks
from tests.support import bearer
from tests.test_actions import _case, _create
from tests.test_webhooks import _drain, _triage_with_callback, _verified
from triage import actions, cases
from triage.models import Case, OutboxMessage

# the fixtures of the modules whose set-up these tests share
people = test_actions.people
receiver = test_webhooks.receiver


def _bodies(rx, settings) -> list[dict]:
    return [_verified(settings, headers, body) for headers, body in rx.requests]


def test_approvers_are_told_when_an_approval_waits_is_due_escalates_and_expires(
    client, people, db, settings, receiver
):
    rx = receiver([])
    settings.approval_webhook_url = rx.url
    settings.public_url = "https://triage.example.com/"
    settings.approval_max_escalations = 1
    case_id = _case(client, people, db, settings)
    small = _create(client, people["agent"], case_id, "10")  # auto-executes: nobody is asked
    assert small["status"] == "approved"
    a = _create(client, people["agent"], case_id, "12400")
    assert a["status"] == "pending_approval"
    due = datetime.fromisoformat(a["due_at"].replace("Z", "+00:00"))
    sla = timedelta(seconds=a["decision"]["approval"]["sla_seconds"])
    for moment in (
        due - sla * 0.4,  # reminder
        due - sla * 0.3,  # nothing new
        due + timedelta(minutes=1),  # escalation
    ):
        with db.write() as s:
            actions.sweep_sla(s, settings, now=moment)
    with db.read() as s:
        new_due = s.get(actions.ActionRow, a["id"]).due_at
    with db.write() as s:
        later = datetime.fromisoformat(new_due.replace("Z", "+00:00")) + timedelta(minutes=1)
        actions.sweep_sla(s, settings, now=later)  # expiry
    with db.write() as s:  # a second sweep after the end tells nobody anything again
        actions.sweep_sla(s, settings, now=later + timedelta(hours=1))

    _drain(db, settings, 3)
    bodies = [b for b in _bodies(rx, settings) if b["event"].startswith("approval.")]
    assert [b["event"] for b in bodies] == [
        "approval.requested",
        "approval.reminder",
        "approval.escalated",
        "approval.expired",
    ]
    assert {b["action_id"] for b in bodies} == {a["id"]}
    first = bodies[0]
    # the amount as the action states it (what the approver will see in the inbox)
    assert first["amount"] == a["action"]["amount"] and first["currency"] == "EUR"
    assert first["action_type"] == "issue_credit_note" and first["case_id"] == case_id
    assert first["requested_by"] == "test-agent" and first["due_at"] == a["due_at"]
    assert first["eligible_roles"] == a["decision"]["approval"]["eligible_roles"]
    assert first["min_approvals"] == a["decision"]["approval"]["min_approvals"]
    assert first["reasons"] and all(isinstance(r, str) for r in first["reasons"])
    assert first["inbox_url"] == "https://triage.example.com/console/approvals"
    assert bodies[2]["to_roles"] == ["finance_controller", "cfo"]
    assert bodies[2]["escalation_level"] == 1
    assert bodies[3]["due_at"] == new_due  # when it ran out, though the action has no due now
    assert len({b["event_id"] for b in bodies}) == 4


def test_no_url_no_message(client, people, db, settings):
    settings.approval_webhook_url = None
    case_id = _case(client, people, db, settings)
    a = _create(client, people["agent"], case_id, "12400")
    assert a["status"] == "pending_approval"
    with db.read() as s:
        kinds = s.scalars(select(OutboxMessage.kind)).all()
    assert not [k for k in kinds if k.startswith("approval.")]


def test_only_operator_addresses_pass_the_private_address_guard(
    client, people, db, settings, receiver
):
    """With the guard on, the approval relay the operator configured on 127.0.0.1 is
    delivered, while a caller's ``case.resolved`` callback to 127.0.0.1 is refused (it used
    to pass: the guard looked at ``case.triaged`` only)."""
    settings.callback_allow_private_hosts = False
    relay, callback = receiver([]), receiver([])
    settings.approval_webhook_url = relay.url
    case_id = _triage_with_callback(client, people, db, settings, callback.url)
    a = _create(client, people["agent"], case_id, "12400")
    assert a["status"] == "pending_approval"
    agent = bearer(people["agent"])
    r = client.post(
        f"/v1/actions/{a['id']}/cancel", json={"reason": "duplicate request"}, headers=agent
    )
    assert r.status_code == 200, r.text
    move = f"/v1/cases/{case_id}/transitions"
    assert client.post(move, json={"to": "in_review"}, headers=agent).status_code == 200
    body = {"to": "resolved", "resolution": "credited elsewhere"}
    assert client.post(move, json=body, headers=agent).status_code == 200

    _drain(db, settings, 2)
    assert [b["event"] for b in _bodies(relay, settings)] == ["approval.requested"]
    assert callback.requests == []
    with db.read() as s:
        refused = {
            m.kind: m.last_error or ""
            for m in s.scalars(select(OutboxMessage).where(OutboxMessage.status == "dead"))
        }
    assert set(refused) == {"case.triaged", "case.resolved"}
    assert all("non-public address" in error for error in refused.values())


def test_the_team_hears_of_assignments_and_sla_breaches_once_each(
    client, people, db, settings, receiver
):
    rx = receiver([])
    settings.team_webhook_url = rx.url
    settings.public_url = "https://triage.example.com"
    case_id = _case(client, people, db, settings)
    r = client.post(
        f"/v1/cases/{case_id}/assignment",
        json={"assignee": "test-agent", "reason": "you know this customer"},
        headers=bearer(people["admin"]),
    )
    assert r.status_code == 200, r.text
    with db.write() as s:
        s.execute(
            update(Case)
            .where(Case.id == case_id)
            .values(resolution_due_at="2020-01-01T00:00:00.000000Z")
        )
    for _ in range(2):  # the sweep runs again and again; the breach is told once
        with db.write() as s:
            cases.flag_sla_breaches(s, settings=settings)

    _drain(db, settings, 2)
    bodies = [b for b in _bodies(rx, settings) if b["event"].startswith("case.")]
    assert [b["event"] for b in bodies] == ["case.assigned", "case.sla_breached"]
    assigned, breached = bodies
    assert (assigned["assignee"], assigned["assigned_by"]) == ("test-agent", "test-admin")
    assert assigned["previous_assignee"] is None and assigned["reason"] == "you know this customer"
    assert assigned["status"] == "in_review" and assigned["case_id"] == case_id
    assert assigned["case_url"] == f"https://triage.example.com/console/cases/{case_id}"
    case = client.get(f"/v1/cases/{case_id}", headers=bearer(people["auditor"])).json()
    assert assigned["source"] == {
        "system": case["source_system"],
        "case_id": case["source_case_id"],
    }
    assert (assigned["priority"], assigned["queue"]) == (case["priority"], case["queue"])
    assert breached["kind"] == "resolution" and breached["due_at"] == "2020-01-01T00:00:00.000000Z"
    assert breached["assignee"] == "test-agent"  # whose case is late
    # no case text goes to a shared channel
    assert all("title" not in b and "customer_message" not in b for b in bodies)


def test_without_a_team_relay_nothing_is_queued(client, people, db, settings):
    settings.team_webhook_url = None
    case_id = _case(client, people, db, settings)
    r = client.post(
        f"/v1/cases/{case_id}/assignment",
        json={"assignee": "test-agent"},
        headers=bearer(people["admin"]),
    )
    assert r.status_code == 200, r.text
    with db.read() as s:
        assert s.scalars(select(OutboxMessage.kind)).all() == []
