"""Giving a case to a colleague: ``POST /v1/cases/{id}/assignment`` and ``cases.assign``.

Who may assign what to whom, what is written (and what is not when refused), races.
"""

from __future__ import annotations

import json

from sqlalchemy import select

from tests.conftest import ADMIN_ACTOR
from tests.support import bearer, sample_case
from triage import audit, auth, cases, users
from triage.models import AuditEvent
from triage.pipeline import Pipeline, run_case

PASSWORD = "correct horse battery staple"


def _triaged(client, keys, db, settings, n=1) -> str:
    r = client.post("/v1/cases", json=sample_case(n), headers=bearer(keys["orchestrator"]))
    assert r.status_code == 202, r.text
    case_id = r.json()["case_id"]
    assert run_case(db, case_id, Pipeline(), settings, worker_id="w1").status == "triaged"
    return case_id


def _assign(client, keys, case_id, who, *, as_role="agent", **extra):
    return client.post(
        f"/v1/cases/{case_id}/assignment",
        json={"assignee": who, **extra},
        headers=bearer(keys[as_role]),
    )


def _trail(db, case_id) -> list[tuple[str, str, dict]]:
    with db.read() as s:
        rows = s.scalars(
            select(AuditEvent).where(AuditEvent.case_id == case_id).order_by(AuditEvent.seq)
        ).all()
        return [(e.action, e.actor_id, json.loads(e.payload)) for e in rows]


def _people(db) -> None:
    """bob and carol are agents in the console; dave was an agent and is disabled."""
    with db.write() as s:
        for name in ("bob", "carol", "dave"):
            users.create_user(s, name, PASSWORD, "agent", created_by=ADMIN_ACTOR)
        users.create_user(s, "erin", PASSWORD, "auditor", created_by=ADMIN_ACTOR)
        users.disable_user(s, "dave", by=ADMIN_ACTOR)


def test_assignees_are_enabled_agents_and_admins_from_console_and_keys(client, keys, db):
    _people(db)
    r = client.get("/v1/cases/assignees", headers=bearer(keys["agent"]))
    assert r.status_code == 200, r.text
    # console agents, the agent and admin API keys; not the disabled one, not the auditor,
    # approver or orchestrator
    assert r.json()["items"] == ["bob", "carol", "test-admin", "test-agent"]
    with db.write() as s:
        key_id = next(k.id for k in auth.list_keys(s) if k.name == "test-admin")
        auth.revoke_key(s, key_id, by=ADMIN_ACTOR)
        assert cases.case_workers(s) == ["bob", "carol", "test-agent"]


def test_an_agent_dispatches_an_unclaimed_case_which_moves_to_review(client, keys, db, settings):
    _people(db)
    case_id = _triaged(client, keys, db, settings)
    before = len(_trail(db, case_id))
    r = _assign(client, keys, case_id, "bob", reason="bob knows this customer")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["assignee"] == "bob" and body["status"] == "in_review"
    new = _trail(db, case_id)[before:]
    assert [(a, who) for a, who, _ in new] == [
        ("case.in_review", "test-agent"),
        ("case.assigned", "test-agent"),
    ]
    assert new[1][2] == {"from": None, "to": "bob", "reason": "bob knows this customer"}
    listed = client.get("/v1/cases?assignee=bob", headers=bearer(keys["auditor"]))
    assert [c["id"] for c in listed.json()["items"]] == [case_id]


def test_only_the_holder_or_an_admin_hands_a_held_case_over(client, keys, db, settings):
    _people(db)
    case_id = _triaged(client, keys, db, settings)
    assert _assign(client, keys, case_id, "bob").status_code == 200
    trail = _trail(db, case_id)
    with db.read() as s:
        version = cases.get(s, case_id).version

    # test-agent does not hold it now: refused, nothing written
    taken = _assign(client, keys, case_id, "test-agent")
    assert taken.status_code == 403, taken.text
    assert "bob holds" in taken.json()["error"]["message"]
    assert _trail(db, case_id) == trail

    # an admin reassigns: still in review, one event, version bumped
    r = _assign(client, keys, case_id, "carol", as_role="admin", reason="bob is off today")
    assert r.status_code == 200, r.text
    assert r.json()["assignee"] == "carol" and r.json()["status"] == "in_review"
    assert r.json()["version"] == version + 1
    assert _trail(db, case_id)[len(trail) :] == [
        (
            "case.assigned",
            "test-admin",
            {"from": "bob", "to": "carol", "reason": "bob is off today"},
        )
    ]

    # the holder hands over their own case
    claimed = client.post(
        "/v1/cases",
        json=sample_case(2),
        headers=bearer(keys["orchestrator"]),
    ).json()["case_id"]
    assert run_case(db, claimed, Pipeline(), settings, worker_id="w1").status == "triaged"
    move = client.post(
        f"/v1/cases/{claimed}/transitions", json={"to": "in_review"}, headers=bearer(keys["agent"])
    )
    assert move.json()["assignee"] == "test-agent"
    handed = _assign(client, keys, claimed, "bob", reason="end of shift")
    assert handed.status_code == 200 and handed.json()["assignee"] == "bob"

    # to the current holder: nothing changes, nothing written
    trail = _trail(db, claimed)
    same = _assign(client, keys, claimed, "bob", as_role="admin")
    assert same.status_code == 200 and same.json()["version"] == handed.json()["version"]
    assert _trail(db, claimed) == trail
    with db.read() as s:
        assert audit.verify(s).intact


def test_who_cannot_hold_a_case_is_a_field_error_and_nothing_changes(client, keys, db, settings):
    _people(db)
    case_id = _triaged(client, keys, db, settings)
    trail = _trail(db, case_id)
    for who in ("nobody-here", "dave", "erin", "test-auditor", "test-orchestrator", "   "):
        r = _assign(client, keys, case_id, who)
        assert r.status_code == 422, (who, r.text)
        assert r.json()["error"]["fields"][0]["field"] == "assignee", who
    empty = _assign(client, keys, case_id, "")
    assert empty.status_code == 422
    assert "assignee" in empty.json()["error"]["fields"][0]["field"]
    unknown_field = client.post(
        f"/v1/cases/{case_id}/assignment",
        json={"assignee": "bob", "priority": "P1"},
        headers=bearer(keys["agent"]),
    )
    assert unknown_field.status_code == 422
    assert _trail(db, case_id) == trail
    with db.read() as s:
        row = cases.get(s, case_id)
        assert row.assignee is None and row.status == "awaiting_review"


def test_untriaged_resolved_and_stale_cases_are_refused(client, keys, db, settings):
    _people(db)
    received = client.post(
        "/v1/cases", json=sample_case(3), headers=bearer(keys["orchestrator"])
    ).json()["case_id"]
    r = _assign(client, keys, received, "bob")
    assert r.status_code == 409
    assert r.json()["error"]["fields"][0]["field"] == "status"
    assert "received case cannot be assigned" in r.json()["error"]["message"]

    case_id = _triaged(client, keys, db, settings)
    with db.read() as s:
        version = cases.get(s, case_id).version
    stale = _assign(client, keys, case_id, "bob", expected_version=version - 1)
    assert stale.status_code == 409
    assert stale.json()["error"]["fields"][0]["field"] == "expected_version"
    ok = _assign(client, keys, case_id, "bob", expected_version=version)
    assert ok.status_code == 200, ok.text

    done = client.post(
        f"/v1/cases/{case_id}/transitions",
        json={"to": "resolved", "resolution": "credited"},
        headers=bearer(keys["admin"]),
    )
    assert done.status_code == 200, done.text
    late = _assign(client, keys, case_id, "carol", as_role="admin")
    assert late.status_code == 409 and "resolved case" in late.json()["error"]["message"]
    assert _assign(client, keys, "NOCASE", "bob").status_code == 404


def test_an_escalated_case_goes_to_the_specialist(client, keys, db, settings):
    _people(db)
    case_id = _triaged(client, keys, db, settings)
    up = client.post(
        f"/v1/cases/{case_id}/transitions",
        json={"to": "escalated", "reason": "needs a billing specialist"},
        headers=bearer(keys["agent"]),
    )
    assert up.status_code == 200 and up.json()["assignee"] is None
    r = _assign(client, keys, case_id, "carol", as_role="admin")
    assert r.status_code == 200 and r.json()["status"] == "in_review"
    assert r.json()["assignee"] == "carol"
    assert [a for a, _, _ in _trail(db, case_id)[-2:]] == ["case.in_review", "case.assigned"]


def test_racing_reassignments_from_one_version_exactly_one_wins(client, keys, db, settings):
    """Four admins reassign the same held case at once from the version they saw: one wins,
    three get a conflict, one ``case.assigned`` is written and the chain stays intact."""
    import threading

    from triage.errors import InvalidTransition

    _people(db)
    case_id = _triaged(client, keys, db, settings)
    assert _assign(client, keys, case_id, "bob").status_code == 200
    with db.read() as s:
        version = cases.get(s, case_id).version
    results: list[str] = []
    barrier = threading.Barrier(4)

    def worker(n: int) -> None:
        barrier.wait()
        try:
            with db.write() as s:
                cases.assign(
                    s,
                    case_id,
                    ("carol", "test-agent", "test-admin", "carol")[n],
                    actor=audit.Actor(audit.ActorType.human, f"admin-{n}", "admin"),
                    expected_version=version,
                )
            results.append("ok")
        except InvalidTransition:
            results.append("conflict")

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == ["conflict"] * 3 + ["ok"]
    with db.read() as s:
        assert cases.get(s, case_id).version == version + 1
        assigned = [a for a, _, _ in _trail(db, case_id) if a == "case.assigned"]
        assert len(assigned) == 2  # bob's, then the one winner's
        assert audit.verify(s).intact
