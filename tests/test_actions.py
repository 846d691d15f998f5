"""Governed actions end to end over the API: policy decisions, four-eyes, authority, quorum,
approvals bound to the action hash, release through the outbox, outcomes, SLA timers, races."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from tests.support import bearer, sample_case
from triage import actions, audit, auth
from triage.models import ActionRow, AuditEvent, OutboxMessage
from triage.pipeline import Pipeline, run_case

ADMIN = audit.Actor(audit.ActorType.human, "test-admin", "admin")


@pytest.fixture
def people(db, keys, settings):
    """Named keys with policy authorities, and a case in awaiting_review."""
    settings.action_webhook_url = "http://127.0.0.1:9/orchestrator/actions"
    out = dict(keys)
    with db.write() as s:
        for name, role, auths in (
            ("fin-1", "approver", ["finance_approver"]),
            ("fin-2", "approver", ["finance_approver"]),
            ("ctrl-1", "approver", ["finance_controller"]),
            ("boss", "admin", ["finance_controller"]),  # may request AND approve: SoD test
        ):
            out[name] = auth.create_key(s, name, role, created_by=ADMIN, authorities=auths).key
    return out


def _case(client, people, db, settings, n=1, tier="B") -> str:
    refs = sample_case()["references"] | {"customer": {"id": f"CUST-{n}", "tier": tier}}
    r = client.post(
        "/v1/cases", json=sample_case(n, references=refs), headers=bearer(people["orchestrator"])
    )
    case_id = r.json()["case_id"]
    pipe = Pipeline(policy=actions.CedarGate(settings))
    assert run_case(db, case_id, pipe, settings, worker_id="w").status == "triaged"
    return case_id


def _credit(amount: str, invoice="INV-1") -> dict:
    return {
        "action": {
            "type": "issue_credit_note",
            "invoice_id": invoice,
            "amount": amount,
            "currency": "EUR",
            "reason_code": "shortage",
        }
    }


def _create(client, key, case_id, amount) -> dict:
    r = client.post(f"/v1/cases/{case_id}/actions", json=_credit(amount), headers=bearer(key))
    assert r.status_code == 201, r.text
    return r.json()


def _approve(client, key, action, reason=None):
    return client.post(
        f"/v1/actions/{action['id']}/approve",
        json={"action_hash": action["action_hash"], "reason": reason},
        headers=bearer(key),
    )


def _actions_audit(db, action_id) -> list[str]:
    with db.read() as s:
        return [
            a
            for a, p in s.execute(
                select(AuditEvent.action, AuditEvent.payload).order_by(AuditEvent.seq)
            ).all()
            if action_id in p
        ]


def test_suggested_actions_are_proposed_not_executed(client, people, db, settings):
    case_id = _case(client, people, db, settings)
    listed = client.get(
        "/v1/actions", params={"case_id": case_id}, headers=bearer(people["agent"])
    ).json()["items"]
    assert [a["status"] for a in listed] == ["proposed"]
    assert listed[0]["action_type"] == "issue_credit_note" and listed[0]["origin"] == "suggestion"
    with db.read() as s:
        assert (
            s.scalar(select(OutboxMessage.id).where(OutboxMessage.kind == "action.execute")) is None
        )
    # the agent accepts it: small credit for a tier B customer runs automatically
    r = client.post(f"/v1/actions/{listed[0]['id']}/request", headers=bearer(people["agent"]))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] == "approved" and body["accepted_by"] == "test-agent"
    assert body["decision"]["outcome"] == "auto_execute"
    with db.read() as s:
        msg = s.scalars(select(OutboxMessage).where(OutboxMessage.kind == "action.execute")).one()
        assert body["id"] in msg.body and msg.target_url == settings.action_webhook_url
    again = client.post(f"/v1/actions/{listed[0]['id']}/request", headers=bearer(people["agent"]))
    assert again.status_code == 409


def test_material_credit_needs_approval_with_readable_reasons(client, people, db, settings):
    case_id = _case(client, people, db, settings)
    a = _create(client, people["agent"], case_id, "12400")
    assert a["status"] == "pending_approval"
    reasons = a["decision"]["reasons"]
    assert any(r["policy_id"] == "billing.credit_note.tier_b" for r in reasons)
    assert any("5,000" in r["explanation"] or "5000" in r["explanation"] for r in reasons)
    assert a["decision"]["approval"]["min_approvals"] >= 1 and a["due_at"]
    # wrong hash: the approver did not review this action
    stale = client.post(
        f"/v1/actions/{a['id']}/approve",
        json={"action_hash": "0" * 64},
        headers=bearer(people["fin-1"]),
    )
    assert stale.status_code == 409
    ok = _approve(client, people["fin-1"], a, "checked the POD")
    assert ok.status_code == 200, ok.text
    assert ok.json()["status"] == "approved"
    out = client.post(
        f"/v1/actions/{a['id']}/outcome",
        json={"status": "done"},
        headers=bearer(people["orchestrator"]),
    )
    assert out.status_code == 200 and out.json()["status"] == "executed"
    retry = client.post(
        f"/v1/actions/{a['id']}/outcome",
        json={"status": "done"},
        headers=bearer(people["orchestrator"]),
    )
    assert retry.status_code == 200  # a retried report is a no-op
    assert (
        client.post(
            f"/v1/actions/{a['id']}/outcome",
            json={"status": "failed", "reason": "x"},
            headers=bearer(people["orchestrator"]),
        ).status_code
        == 409
    )
    trail = _actions_audit(db, a["id"])
    assert trail[:2] == ["action.created", "action.decided"]
    assert "action.approved" in trail and "action.released" in trail
    assert trail[-1] == "action.executed"


def test_nobody_approves_their_own_request(client, people, db, settings):
    case_id = _case(client, people, db, settings)
    a = _create(client, people["boss"], case_id, "12400")
    r = _approve(client, people["boss"], a)
    assert r.status_code == 403
    err = r.json()["error"]
    assert err["code"] == "forbidden" and err["reasons"]
    detail = client.get(f"/v1/actions/{a['id']}", headers=bearer(people["boss"])).json()
    assert detail["you"]["can_approve"] is False and detail["you"]["why_not"]
    inbox = client.get("/v1/approvals", headers=bearer(people["fin-1"])).json()["items"]
    mine = [i for i in inbox if i["action"]["id"] == a["id"]]
    assert mine and mine[0]["action"]["you"]["can_approve"] is True
    assert mine[0]["evidence"]["policy_reasons"]
    assert "approval_refused" in " ".join(_actions_audit(db, a["id"]))


def test_authority_limit_and_quorum_above_50k(client, people, db, settings):
    case_id = _case(client, people, db, settings)
    a = _create(client, people["agent"], case_id, "60000")
    assert a["status"] == "pending_approval"
    assert a["decision"]["approval"]["min_approvals"] == 2
    # a finance approver's authority stops at 25,000
    too_small = _approve(client, people["fin-1"], a)
    assert too_small.status_code == 403
    first = _approve(client, people["ctrl-1"], a)
    assert first.status_code == 200 and first.json()["status"] == "pending_approval"
    again = _approve(client, people["ctrl-1"], a)
    assert again.status_code == 403  # the same person cannot count twice
    detail = client.get(f"/v1/actions/{a['id']}", headers=bearer(people["boss"])).json()
    assert detail["you"]["quorum"]["valid_approvals"] == 1
    assert detail["you"]["quorum"]["required_approvals"] == 2
    second = _approve(client, people["boss"], a)
    assert second.status_code == 200, second.text
    assert second.json()["status"] == "approved"


def test_edit_voids_earlier_approvals(client, people, db, settings):
    case_id = _case(client, people, db, settings)
    a = _create(client, people["agent"], case_id, "60000")
    assert _approve(client, people["ctrl-1"], a).status_code == 200
    edited = client.patch(
        f"/v1/actions/{a['id']}", json=_credit("59000"), headers=bearer(people["agent"])
    )
    assert edited.status_code == 200, edited.text
    e = edited.json()
    assert e["status"] == "pending_approval" and e["action_hash"] != a["action_hash"]
    assert e["last_edited_by"] == "test-agent"
    detail = client.get(f"/v1/actions/{a['id']}", headers=bearer(people["boss"])).json()
    assert [x["current"] for x in detail["approvals"]] == [False]
    assert detail["you"]["quorum"]["valid_approvals"] == 0
    # the old hash no longer approves anything
    assert _approve(client, people["boss"], a).status_code == 409
    wrong_type = client.patch(
        f"/v1/actions/{a['id']}",
        headers=bearer(people["agent"]),
        json={"action": {"type": "refund", "amount": "1", "currency": "EUR"}},
    )
    assert wrong_type.status_code == 422


def test_split_credits_cannot_dodge_approval(client, people, db, settings):
    case_id = _case(client, people, db, settings)
    outcomes = [_create(client, people["agent"], case_id, "4000")["status"] for _ in range(3)]
    assert outcomes[0] == "approved"  # 4,000 alone is under the tier B threshold
    assert outcomes[1:] == ["pending_approval", "pending_approval"]  # 8,000 and 12,000 are not


def test_reject_needs_reason_and_eligible_approver(client, people, db, settings):
    case_id = _case(client, people, db, settings)
    a = _create(client, people["agent"], case_id, "12400")
    no_reason = client.post(
        f"/v1/actions/{a['id']}/reject",
        json={"action_hash": a["action_hash"]},
        headers=bearer(people["fin-1"]),
    )
    assert no_reason.status_code == 422
    agent = client.post(
        f"/v1/actions/{a['id']}/reject",
        json={"action_hash": a["action_hash"], "reason": "no"},
        headers=bearer(people["agent"]),
    )
    assert agent.status_code == 403
    r = client.post(
        f"/v1/actions/{a['id']}/reject",
        json={"action_hash": a["action_hash"], "reason": "no proof of delivery"},
        headers=bearer(people["fin-1"]),
    )
    assert r.status_code == 200 and r.json()["status"] == "rejected"
    assert r.json()["outcome_reason"] == "no proof of delivery"


def test_racing_approvals_exactly_one_wins(client, people, db, settings):
    case_id = _case(client, people, db, settings)
    a = _create(client, people["agent"], case_id, "12400")
    results: list[int] = []
    barrier = threading.Barrier(2)

    def go(key: str) -> None:
        barrier.wait()
        results.append(_approve(client, people[key], a).status_code)

    threads = [threading.Thread(target=go, args=(k,)) for k in ("fin-1", "fin-2")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [200, 409]
    with db.read() as s:
        assert s.get(ActionRow, a["id"]).status == "approved"
        released = s.scalars(
            select(OutboxMessage).where(OutboxMessage.kind == "action.execute")
        ).all()
        assert len(released) == 1  # delivered once, never twice
        assert audit.verify(s).intact


def test_sla_reminder_escalation_and_expiry(client, people, db, settings):
    settings.approval_max_escalations = 1
    case_id = _case(client, people, db, settings)
    a = _create(client, people["agent"], case_id, "12400")
    due = datetime.fromisoformat(a["due_at"].replace("Z", "+00:00"))
    sla = timedelta(seconds=a["decision"]["approval"]["sla_seconds"])
    with db.write() as s:
        assert actions.sweep_sla(s, settings, now=due - sla * 0.4)["reminded"] == 1
    with db.write() as s:
        assert actions.sweep_sla(s, settings, now=due - sla * 0.3)["reminded"] == 0
    with db.write() as s:
        assert actions.sweep_sla(s, settings, now=due + timedelta(minutes=1))["escalated"] == 1
    with db.read() as s:
        row = s.get(ActionRow, a["id"])
        assert row.escalation_level == 1 and row.escalated_to == ["finance_controller", "cfo"]
        new_due = datetime.fromisoformat(row.due_at.replace("Z", "+00:00"))
    with db.write() as s:
        assert actions.sweep_sla(s, settings, now=new_due + timedelta(minutes=1))["expired"] == 1
    detail = client.get(f"/v1/actions/{a['id']}", headers=bearer(people["agent"])).json()
    assert detail["status"] == "expired"
    assert _actions_audit(db, a["id"])[-3:] == [
        "action.reminder",
        "action.escalated",
        "action.expired",
    ]


def test_policy_activation_is_audited_once(client, people, db, settings):
    with db.read() as s:
        acts = s.scalars(
            select(AuditEvent.action).where(AuditEvent.action == "policy.activated")
        ).all()
    assert len(acts) == 1  # recorded at app start-up, not again for the same bundle
    info = client.get("/v1/policy", headers=bearer(people["auditor"])).json()
    assert info["version"] and info["base_currency"] == "EUR"
    r = client.post("/v1/policy/recheck", headers=bearer(people["admin"]))
    assert r.status_code == 200 and r.json() == {"checked": 0, "changed": 0}


def test_fx_rates_feed_non_base_currency_decisions(client, people, db, settings):
    case_id = _case(client, people, db, settings)
    usd = {
        "action": {
            "type": "issue_credit_note",
            "invoice_id": "INV-1",
            "amount": "100",
            "currency": "USD",
            "reason_code": "shortage",
        }
    }
    missing = client.post(f"/v1/cases/{case_id}/actions", json=usd, headers=bearer(people["agent"]))
    assert missing.status_code == 422  # no USD rate: refused, never guessed
    today = datetime.now(UTC).date().isoformat()
    put = client.put(
        "/v1/fx-rates",
        json={"currency": "USD", "rate": "0.92", "valid_from": today},
        headers=bearer(people["admin"]),
    )
    assert put.status_code == 200
    ok = client.post(f"/v1/cases/{case_id}/actions", json=usd, headers=bearer(people["agent"]))
    assert ok.status_code == 201, ok.text
    assert ok.json()["decision"]["exposure"]["base_currency"] == "EUR"


def test_resolving_settles_the_case_actions(client, people, db, settings):
    """A pending approval blocks resolving (409 naming it, nothing changes); once decided or
    withdrawn the case resolves, and suggestions nobody requested are cancelled as not taken."""
    case_id = _case(client, people, db, settings)
    agent = bearer(people["agent"])
    suggested = client.get("/v1/actions", params={"case_id": case_id}, headers=agent).json()
    proposed_id = suggested["items"][0]["id"]
    pending = _create(client, people["agent"], case_id, "12400")
    assert pending["status"] == "pending_approval"
    with db.read() as s:
        events_before = s.scalar(select(AuditEvent.seq).order_by(AuditEvent.seq.desc()).limit(1))

    resolve = {"to": "resolved", "resolution": "credited the shortage"}
    r = client.post(f"/v1/cases/{case_id}/transitions", json=resolve, headers=agent)
    assert r.status_code == 409, r.text
    err = r.json()["error"]
    assert pending["id"] in err["message"] and "await approval" in err["message"]
    assert err["fields"][0]["field"] == "actions"
    with db.read() as s:
        # refused whole: no event, the suggestion still proposed, the case still open
        assert (
            s.scalar(select(AuditEvent.seq).order_by(AuditEvent.seq.desc()).limit(1))
            == events_before
        )
        assert s.get(ActionRow, proposed_id).status == "proposed"
    assert client.get(f"/v1/cases/{case_id}", headers=agent).json()["status"] == "awaiting_review"

    r = client.post(
        f"/v1/actions/{pending['id']}/cancel", json={"reason": "customer withdrew"}, headers=agent
    )
    assert r.status_code == 200, r.text
    r = client.post(f"/v1/cases/{case_id}/transitions", json=resolve, headers=agent)
    assert r.status_code == 200, r.text
    with db.read() as s:
        row = s.get(ActionRow, proposed_id)
        assert (row.status, row.outcome_reason) == ("cancelled", actions.NOT_TAKEN)
        assert s.get(ActionRow, pending["id"]).outcome_reason == "customer withdrew"
    trail = _actions_audit(db, proposed_id)
    assert trail[-1] == "action.cancelled"
    # a resolved case takes no new action requests
    r = client.post(f"/v1/cases/{case_id}/actions", json=_credit("10"), headers=agent)
    assert r.status_code == 409


def test_the_inbox_customer_filter_pages_through_every_match(client, people, db, settings):
    """The filter is part of the query: a customer's actions behind a page of others' are
    found (it used to filter one page after fetching it, so they were never listed)."""
    pending = [
        _create(client, people["agent"], _case(client, people, db, settings, n), "12400")
        for n in (1, 2, 3, 4, 5)
    ]
    assert {a["status"] for a in pending} == {"pending_approval"}
    fin = bearer(people["fin-1"])
    seen, cursor = [], None
    while True:
        params = {"customer_id": "CUST-4", "limit": 1} | ({"cursor": cursor} if cursor else {})
        page = client.get("/v1/approvals", params=params, headers=fin).json()
        seen += [item["action"]["id"] for item in page["items"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert seen == [pending[3]["id"]]
    note = client.post(
        f"/v1/cases/{pending[3]['case_id']}/notes",
        json={"text": "POD checked"},
        headers=bearer(people["agent"]),
    )
    assert note.status_code == 201, note.text
    page = client.get("/v1/approvals", params={"customer_id": "CUST-4"}, headers=fin).json()
    (item,) = page["items"]
    assert [(n["author"], n["text"]) for n in item["evidence"]["work_notes"]] == [
        ("test-agent", "POD checked")
    ]
    listed = client.get("/v1/actions", params={"customer_id": "CUST-4"}, headers=fin).json()
    assert {a["id"] for a in listed["items"]} >= {pending[3]["id"]}
    assert {a["customer_id"] for a in listed["items"]} == {"CUST-4"}
    everyone = client.get("/v1/approvals", params={"limit": 2}, headers=fin).json()
    assert [i["action"]["id"] for i in everyone["items"]] == [a["id"] for a in pending[:2]]
    assert everyone["next_cursor"] == pending[1]["id"]
