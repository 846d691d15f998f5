"""Signed webhook delivery from the outbox against a real local HTTP receiver."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from sqlalchemy import select

from tests.support import bearer, sample_case
from triage import webhooks
from triage.models import AuditEvent, OutboxMessage
from triage.pipeline import Pipeline, run_case
from triage.settings import Settings


class Receiver:
    """Answers with the queued status codes (then 204), recording every request."""

    def __init__(self, statuses: list[int]) -> None:
        self.statuses = list(statuses)
        self.requests: list[tuple[dict[str, str], bytes]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                outer.requests.append((dict(self.headers), body))
                code = outer.statuses.pop(0) if outer.statuses else 204
                self.send_response(code)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    made: list[Receiver] = []

    def make(statuses: list[int]) -> Receiver:
        made.append(Receiver(statuses))
        return made[-1]

    yield make
    for r in made:
        r.close()


def _triage_with_callback(client, keys, db, settings, url: str) -> str:
    r = client.post(
        "/v1/cases", json=sample_case(callback_url=url), headers=bearer(keys["orchestrator"])
    )
    case_id = r.json()["case_id"]
    assert run_case(db, case_id, Pipeline(), settings, worker_id="w").status == "triaged"
    return case_id


def _verified(settings, headers: dict[str, str], body: bytes) -> dict:
    """The delivered JSON body, after checking its signature with the configured secret."""
    assert webhooks.verify_signature(
        settings.webhook_secret,
        headers["X-Triage-Timestamp"],
        body.decode(),
        headers["X-Triage-Signature"],
    )
    return json.loads(body)


def _drain(db, settings, rounds: int) -> int:
    delivered = 0
    with httpx.Client() as c:
        for _ in range(rounds):
            delivered += webhooks.deliver_due(db, settings, c)
    return delivered


def test_delivery_is_signed_and_retried_until_success(client, keys, db, settings, receiver):
    rx = receiver([500, 503])
    case_id = _triage_with_callback(client, keys, db, settings, rx.url)
    assert _drain(db, settings, 3) == 1
    assert len(rx.requests) == 3
    headers, body = rx.requests[-1]
    payload = _verified(settings, headers, body)
    assert not webhooks.verify_signature(
        "wrong-secret", headers["X-Triage-Timestamp"], body.decode(), headers["X-Triage-Signature"]
    )
    assert payload["case_id"] == case_id and payload["event"] == "case.triaged"
    assert headers["X-Triage-Event-Id"] == payload["event_id"]
    # every retry carried the same event id, so the receiver can de-duplicate
    assert {h["X-Triage-Event-Id"] for h, _ in rx.requests} == {payload["event_id"]}
    assert _drain(db, settings, 2) == 0 and len(rx.requests) == 3  # delivered exactly once


def test_dead_letter_then_admin_replay(client, keys, db, settings, receiver):
    rx = receiver([500, 500, 500])  # webhook_max_attempts is 3 in tests
    _triage_with_callback(client, keys, db, settings, rx.url)
    assert _drain(db, settings, 5) == 0
    admin = bearer(keys["admin"])
    dead = client.get("/v1/outbox", params={"status": "dead"}, headers=admin).json()["items"]
    assert len(dead) == 1 and dead[0]["attempts"] == 3 and dead[0]["last_error"] == "HTTP 500"
    again = client.post(f"/v1/outbox/{dead[0]['id']}/replay", headers=admin)
    assert again.status_code == 200 and again.json()["status"] == "pending"
    twice = client.post(f"/v1/outbox/{dead[0]['id']}/replay", headers=admin)
    assert twice.status_code == 409
    assert _drain(db, settings, 1) == 1
    with db.read() as s:
        actions = s.scalars(
            select(AuditEvent.action)
            .where(AuditEvent.action.like("webhook.%"))
            .order_by(AuditEvent.seq)
        ).all()
        assert actions == ["webhook.dead_lettered", "webhook.replayed", "webhook.delivered"]
        assert s.scalar(select(OutboxMessage.status)) == "delivered"


def test_unreachable_receiver_is_retried_with_backoff(client, keys, db, settings):
    settings.webhook_backoff_base_seconds = 60
    _triage_with_callback(client, keys, db, settings, "http://127.0.0.1:9/closed")
    assert _drain(db, settings, 3) == 0
    with db.read() as s:
        msg = s.scalars(select(OutboxMessage)).one()
        assert msg.attempts == 1 and msg.status == "pending"  # next try is ~60 s away
        assert "ConnectError" in (msg.last_error or "")


def test_backoff_grows_and_is_capped():
    settings = Settings(webhook_backoff_base_seconds=2, webhook_backoff_max_seconds=30)
    values = [webhooks.backoff_seconds(settings, n) for n in range(1, 8)]
    assert values[0] >= 1.5 and values[0] <= 2.5 and 3 <= values[1] <= 5
    assert max(values) <= 36 and values[-1] >= 24


def test_private_callback_targets_refused_when_configured(client, keys, db, settings, receiver):
    settings.callback_allow_private_hosts = False
    rx = receiver([])
    _triage_with_callback(client, keys, db, settings, rx.url)
    assert _drain(db, settings, 2) == 0
    assert rx.requests == []  # nothing was sent into the private network
    with db.read() as s:
        msg = s.scalars(select(OutboxMessage)).one()
        assert msg.status == "dead" and "non-public address" in (msg.last_error or "")


def test_outbox_ids_beyond_bigint_are_4xx_not_500(client, keys):
    # found by tests/test_fuzz_api.py: the driver overflowed on a huge id and the API said 500
    admin = bearer(keys["admin"])
    huge = 2**63
    assert client.post(f"/v1/outbox/{huge}/replay", headers=admin).status_code == 422
    assert client.post(f"/v1/outbox/{huge - 1}/replay", headers=admin).status_code == 404
    assert client.get("/v1/outbox", params={"cursor": huge}, headers=admin).status_code == 422


def test_a_message_taken_over_after_its_batch_lease_ran_out_is_not_sent_twice(
    client, keys, db, settings, receiver
):
    """Dispatcher A claims a batch, is slow; the lease of a later message runs out and
    dispatcher B takes and delivers it. A must skip it instead of sending it again."""
    rx = receiver([])
    _triage_with_callback(client, keys, db, settings, rx.url)
    held_by_a = webhooks._claim(db, settings, 50)
    assert len(held_by_a) == 1
    with db.write() as s:  # A's lease runs out
        s.get(OutboxMessage, held_by_a[0].id).next_attempt_at = "2000-01-01T00:00:00.000000Z"
    held_by_b = webhooks._claim(db, settings, 50)  # B takes it over
    assert [m.id for m in held_by_b] == [held_by_a[0].id]
    assert webhooks._renew(db, settings, held_by_a[0]) is False  # A no longer holds it
    assert webhooks._renew(db, settings, held_by_b[0]) is True
    with db.write() as s:  # B's lease runs out too; a normal dispatch round then delivers once
        s.get(OutboxMessage, held_by_b[0].id).next_attempt_at = "2000-01-01T00:00:00.000000Z"
    assert _drain(db, settings, 1) == 1
    assert webhooks._renew(db, settings, held_by_b[0]) is False  # delivered: nothing to hold
    assert len(rx.requests) == 1


def test_the_submitter_hears_how_its_case_ended(client, keys, db, settings, receiver):
    """Resolving sends ``case.resolved`` to the case's callback: resolution, resolver, final
    routing and each action's outcome, signed, once."""
    rx = receiver([])
    case_id = _triage_with_callback(client, keys, db, settings, rx.url)
    agent = bearer(keys["agent"])
    move = f"/v1/cases/{case_id}/transitions"
    assert client.post(move, json={"to": "in_review"}, headers=agent).status_code == 200
    resolved = client.post(
        move, json={"to": "resolved", "resolution": "carrier claim filed"}, headers=agent
    )
    assert resolved.status_code == 200, resolved.text
    assert _drain(db, settings, 2) == 2  # case.triaged, then case.resolved
    headers, body = rx.requests[-1]
    payload = _verified(settings, headers, body)
    case = client.get(f"/v1/cases/{case_id}", headers=agent).json()
    assert payload["event"] == "case.resolved" and payload["case_id"] == case_id
    assert payload["event_id"] == headers["X-Triage-Event-Id"] == f"case.resolved:{case_id}"
    assert payload["source"] == {"system": case["source_system"], "case_id": case["source_case_id"]}
    assert payload["resolution"] == "carrier claim filed"
    assert payload["resolved_by"] == "test-agent" and payload["resolved_at"] == case["resolved_at"]
    assert (payload["queue"], payload["category"], payload["priority"]) == (
        case["queue"],
        case["category"],
        case["priority"],
    )
    listed = client.get("/v1/actions", params={"case_id": case_id}, headers=agent).json()
    assert payload["actions"] and {a["action_id"]: a["status"] for a in payload["actions"]} == {
        a["id"]: a["status"] for a in listed["items"]
    }
    assert {a["status"] for a in payload["actions"]} == {"cancelled"}  # nobody requested them


def test_a_case_without_a_callback_sends_nothing_when_resolved(client, keys, db, settings):
    r = client.post("/v1/cases", json=sample_case(), headers=bearer(keys["orchestrator"]))
    case_id = r.json()["case_id"]
    run_case(db, case_id, Pipeline(), settings, worker_id="w")
    move = f"/v1/cases/{case_id}/transitions"
    body = {"to": "resolved", "resolution": "nothing to do"}
    assert client.post(move, json=body, headers=bearer(keys["agent"])).status_code == 200
    with db.read() as s:
        assert s.scalars(select(OutboxMessage)).all() == []
