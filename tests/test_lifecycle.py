"""The case state machine over the API and in the service: 409s, audit per transition, races."""

from __future__ import annotations

import threading

from sqlalchemy import select

from tests.support import bearer, sample_case
from triage import audit, cases
from triage.errors import InvalidTransition
from triage.lifecycle import HUMAN_TRANSITIONS, SYSTEM_TRANSITIONS, Status
from triage.models import AuditEvent
from triage.pipeline import Pipeline, run_case


def _submit(client, keys, n=1) -> str:
    r = client.post("/v1/cases", json=sample_case(n), headers=bearer(keys["orchestrator"]))
    assert r.status_code == 202
    return r.json()["case_id"]


def _move(client, keys, case_id, to, **extra):
    return client.post(
        f"/v1/cases/{case_id}/transitions", json={"to": to, **extra}, headers=bearer(keys["agent"])
    )


def _actions(db, case_id):
    with db.read() as s:
        return list(
            s.scalars(
                select(AuditEvent.action)
                .where(AuditEvent.case_id == case_id)
                .order_by(AuditEvent.seq)
            )
        )


def test_full_lifecycle_with_an_audit_event_per_transition(client, keys, db, settings):
    case_id = _submit(client, keys)
    # people cannot skip triage
    r = _move(client, keys, case_id, "resolved", resolution="done")
    assert r.status_code == 409
    assert r.json()["error"]["code"] == "invalid_transition"
    assert "received" in r.json()["error"]["message"]
    assert run_case(db, case_id, Pipeline(), settings, worker_id="w1").status == "triaged"
    assert _move(client, keys, case_id, "in_review").status_code == 200
    assert _move(client, keys, case_id, "awaiting_review").status_code == 200
    assert _move(client, keys, case_id, "escalated").status_code == 422  # reason required
    assert _move(client, keys, case_id, "escalated", reason="needs finance").status_code == 200
    assert _move(client, keys, case_id, "in_review").status_code == 200
    missing = _move(client, keys, case_id, "resolved")
    assert missing.status_code == 422
    assert missing.json()["error"]["fields"][0]["field"] == "resolution"
    done = _move(client, keys, case_id, "resolved", resolution="credited 8 units")
    assert done.status_code == 200 and done.json()["status"] == "resolved"
    again = _move(client, keys, case_id, "in_review")
    assert again.status_code == 409
    assert _actions(db, case_id) == [
        "case.received",
        "case.triaging",
        "suggestion.created",
        "policy.evaluated",
        "case.awaiting_review",
        "case.in_review",
        "case.awaiting_review",
        "case.escalated",
        "case.in_review",
        "case.resolved",
        "action.cancelled",  # the suggested action nobody requested: not taken
    ]
    detail = client.get(f"/v1/cases/{case_id}", headers=bearer(keys["auditor"])).json()
    assert detail["resolution"] == "credited 8 units" and detail["resolved_at"]


def test_the_claimant_holds_the_case_until_release_or_escalation(client, keys, db, settings):
    """``assignee``: set by claiming, cleared by releasing or escalating, the resolver once
    resolved; ``GET /v1/cases?assignee=me`` lists what the caller holds."""
    case_id = _submit(client, keys)
    other = _submit(client, keys, 2)
    for cid in (case_id, other):
        assert run_case(db, cid, Pipeline(), settings, worker_id="w1").status == "triaged"

    def holder() -> str | None:
        r = client.get(f"/v1/cases/{case_id}", headers=bearer(keys["auditor"]))
        return r.json()["assignee"]

    def mine(who: str) -> list[str]:
        r = client.get("/v1/cases?assignee=me", headers=bearer(keys[who]))
        assert r.status_code == 200, r.text
        return [c["id"] for c in r.json()["items"]]

    assert holder() is None and mine("agent") == []
    claimed = _move(client, keys, case_id, "in_review")
    assert claimed.json()["assignee"] == "test-agent"
    assert mine("agent") == [case_id] and mine("admin") == []
    by_name = client.get("/v1/cases?assignee=test-agent", headers=bearer(keys["auditor"]))
    assert [c["id"] for c in by_name.json()["items"]] == [case_id]
    assert _move(client, keys, case_id, "awaiting_review").status_code == 200
    assert holder() is None and mine("agent") == []
    admin_claim = client.post(
        f"/v1/cases/{case_id}/transitions", json={"to": "in_review"}, headers=bearer(keys["admin"])
    )
    assert admin_claim.json()["assignee"] == "test-admin" and mine("admin") == [case_id]
    assert _move(client, keys, case_id, "escalated", reason="needs finance").status_code == 200
    assert holder() is None
    done = _move(client, keys, case_id, "resolved", resolution="credited")
    assert done.json()["assignee"] == "test-agent"  # who resolved it
    assert mine("agent") == [case_id]  # the resolved case stays theirs; the other is nobody's
    with db.read() as s:
        assert cases.get(s, other).assignee is None


def test_system_only_states_are_refused_to_people(client, keys):
    case_id = _submit(client, keys)
    for target in ("triaging", "failed", "awaiting_review"):
        r = _move(client, keys, case_id, target)
        assert r.status_code == 409, target
    assert _move(client, keys, case_id, "bogus").status_code == 422


def test_every_pair_of_states_obeys_the_tables(db, settings):
    with db.write() as s:
        from contracts.case import CaseIn

        res = cases.submit(
            s, CaseIn.model_validate(sample_case()), actor=audit.SYSTEM, settings=settings
        )
    for by_system, table in ((True, SYSTEM_TRANSITIONS), (False, HUMAN_TRANSITIONS)):
        for target in Status:
            allowed = target in table.get(Status.received, frozenset())
            with db.write() as s:
                sp = s.begin_nested()
                try:
                    cases.transition(
                        s, res.case.id, target, actor=audit.SYSTEM, by_system=by_system
                    )
                    ok = True
                except InvalidTransition:
                    ok = False
                sp.rollback()
            assert ok == allowed, (by_system, target)


def test_stale_expected_version_is_409(client, keys, db, settings):
    case_id = _submit(client, keys)
    run_case(db, case_id, Pipeline(), settings, worker_id="w")
    version = client.get(f"/v1/cases/{case_id}", headers=bearer(keys["agent"])).json()["version"]
    assert _move(client, keys, case_id, "in_review", expected_version=version).status_code == 200
    stale = _move(client, keys, case_id, "awaiting_review", expected_version=version)
    assert stale.status_code == 409
    assert stale.json()["error"]["fields"][0]["field"] == "expected_version"


def test_racing_transitions_exactly_one_wins(db, settings, keys, client):
    """Six agents claim the same case at once from the same version: one wins, five get 409."""
    case_id = _submit(client, keys)
    run_case(db, case_id, Pipeline(), settings, worker_id="w")
    with db.read() as s:
        version = cases.get(s, case_id).version
    results: list[str] = []
    barrier = threading.Barrier(6)

    def worker(n: int) -> None:
        barrier.wait()
        try:
            with db.write() as s:
                cases.human_transition(
                    s,
                    case_id,
                    Status.in_review,
                    expected_version=version,
                    actor=audit.Actor(audit.ActorType.human, f"agent-{n}", "agent"),
                )
            results.append("ok")
        except InvalidTransition:
            results.append("conflict")

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == ["conflict"] * 5 + ["ok"]
    with db.read() as s:
        assert cases.get(s, case_id).version == version + 1
        claims = s.scalars(
            select(AuditEvent.seq).where(
                AuditEvent.case_id == case_id, AuditEvent.action == "case.in_review"
            )
        ).all()
        assert len(claims) == 1
        assert audit.verify(s).intact
