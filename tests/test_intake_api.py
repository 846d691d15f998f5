"""Intake over HTTP: idempotency, batches, bad input, reads, filters and pagination."""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import func, select

from tests.support import bearer, sample_case
from triage.models import AuditEvent, Case


def _count(db: Any, model: Any) -> int:
    with db.read() as s:
        return int(s.scalar(select(func.count()).select_from(model)))


def test_submit_returns_202_with_status_url_and_audit(client, keys, db):
    r = client.post("/v1/cases", json=sample_case(), headers=bearer(keys["orchestrator"]))
    assert r.status_code == 202, r.text
    body = r.json()
    assert body["status"] == "received" and body["replayed"] is False
    assert body["status_url"].endswith(f"/v1/cases/{body['case_id']}")
    assert r.headers["Location"] == body["status_url"]
    got = client.get(f"/v1/cases/{body['case_id']}", headers=bearer(keys["agent"]))
    assert got.status_code == 200
    detail = got.json()
    assert detail["case"]["references"]["order_id"] == "SO-1"
    assert detail["case"]["amount_in_dispute"] == {"amount": "100.00", "currency": "EUR"}
    assert detail["priority"] == "P2" and detail["sla"]["triage_breached"] is False
    with db.read() as s:
        actions = s.scalars(select(AuditEvent.action).where(AuditEvent.case_id == body["case_id"]))
        assert list(actions) == ["case.received"]


def test_idempotency_key_replay_and_conflict(client, keys, db):
    h = {**bearer(keys["orchestrator"]), "Idempotency-Key": "abc-1"}
    first = client.post("/v1/cases", json=sample_case(1), headers=h)
    again = client.post("/v1/cases", json=sample_case(1), headers=h)
    assert first.status_code == 202 and again.status_code == 200
    assert again.json()["replayed"] is True and again.headers["Idempotent-Replayed"] == "true"
    assert again.json()["case_id"] == first.json()["case_id"]
    changed = sample_case(1, exception_type="carrier_delay")
    conflict = client.post("/v1/cases", json=changed, headers=h)
    assert conflict.status_code == 409
    err = conflict.json()["error"]
    assert err["code"] == "idempotency_conflict"
    assert err["fields"][0]["field"] == "Idempotency-Key"
    assert err["existing_case_id"] == first.json()["case_id"]
    assert _count(db, Case) == 1


def test_same_source_ids_replay_without_key_and_conflict_on_change(client, keys, db):
    h = bearer(keys["orchestrator"])
    a = client.post("/v1/cases", json=sample_case(7), headers=h)
    # key order and number formatting differ, content is the same: still a replay
    reordered = json.loads(json.dumps(sample_case(7), sort_keys=True))
    b = client.post("/v1/cases", json=reordered, headers=h)
    assert (a.status_code, b.status_code) == (202, 200)
    c = client.post("/v1/cases", json=sample_case(7, title="changed"), headers=h)
    assert c.status_code == 409
    assert c.json()["error"]["fields"][0]["field"] == "source.case_id"
    assert _count(db, Case) == 1


def test_batch_with_mixed_items(client, keys, db):
    h = bearer(keys["orchestrator"])
    client.post("/v1/cases", json=sample_case(3), headers=h)
    bad = sample_case(4)
    bad["lines"][0]["ordered_qty"] = "-5"
    items = [
        sample_case(1),
        bad,
        sample_case(3),
        sample_case(3, title="different"),
        {"not": "a case"},
        sample_case(5),
    ]
    r = client.post("/v1/cases/batch", json={"items": items}, headers=h)
    assert r.status_code == 202, r.text
    body = r.json()
    outcomes = [i["outcome"] for i in body["items"]]
    assert outcomes == ["created", "invalid", "replayed", "conflict", "invalid", "created"]
    assert (body["created"], body["invalid"], body["replayed"], body["conflict"]) == (2, 2, 1, 1)
    qty_err = body["items"][1]["errors"][0]
    assert qty_err["field"] == "lines[0].ordered_qty"
    assert "greater than or equal to 0" in qty_err["problem"]
    assert {e["field"] for e in body["items"][4]["errors"]} >= {"source", "not", "references"}
    assert _count(db, Case) == 3  # 1 before + 2 created; nothing from invalid/conflict items


def test_batch_limits(client, keys, settings, db):
    h = bearer(keys["orchestrator"])
    too_many = {"items": [sample_case(i) for i in range(settings.max_batch_items + 1)]}
    r = client.post("/v1/cases/batch", json=too_many, headers=h)
    # 501 full cases are over 256 KiB: the body limit answers before any parsing
    assert r.status_code == 413
    assert r.json()["error"]["fields"][0]["field"] == "body"
    empty = client.post("/v1/cases/batch", json={"items": []}, headers=h)
    assert empty.status_code == 422 and empty.json()["error"]["fields"][0]["field"] == "items"
    assert _count(db, Case) == 0


def test_batch_of_501_items_is_refused_by_count(client, keys, settings, db):
    small = {
        "source": {"system": "s", "case_id": "x"},
        "exception_type": "other",
        "references": {"customer": {"id": "c"}},
        "occurred_at": "2026-01-01T00:00:00Z",
    }
    r = client.post(
        "/v1/cases/batch", json={"items": [small] * 501}, headers=bearer(keys["orchestrator"])
    )
    assert r.status_code == 422
    assert r.json()["error"]["fields"] == [{"field": "items", "problem": "at most 500 items"}]
    assert _count(db, Case) == 0


def test_bad_input_gets_field_level_4xx_and_writes_nothing(client, keys, db):
    h = bearer(keys["orchestrator"])
    cases: list[tuple[Any, str]] = [
        (sample_case(exception_type="lost_parcel"), "exception_type"),
        (sample_case(occurred_at="2026-11-20T09:15:00"), "occurred_at"),
        (
            sample_case(amount_in_dispute={"amount": "10", "currency": "EURO"}),
            "amount_in_dispute.currency",
        ),
        (
            sample_case(amount_in_dispute={"amount": "10", "currency": "ABC"}),
            "amount_in_dispute.currency",
        ),
        (
            sample_case(amount_in_dispute={"amount": "-1", "currency": "EUR"}),
            "amount_in_dispute.amount",
        ),
        (sample_case(lines=[{"sku": "A", "ordered_qty": "many"}]), "lines[0].ordered_qty"),
        (sample_case(surprise=1), "surprise"),
        (sample_case(callback_url="not a url"), "callback_url"),
    ]
    for payload, field in cases:
        r = client.post("/v1/cases", json=payload, headers=h)
        assert r.status_code == 422, (field, r.text)
        fields = [f["field"] for f in r.json()["error"]["fields"]]
        assert field in fields, (field, fields)
    mixed = sample_case(
        lines=[{"sku": "A", "ordered_qty": "1", "unit_price": {"amount": "1", "currency": "USD"}}]
    )
    r = client.post("/v1/cases", json=mixed, headers=h)
    assert r.status_code == 422 and "one currency" in r.json()["error"]["message"]
    assert _count(db, Case) == 0


def test_nul_characters_are_refused_with_their_field_before_any_lookup(client, keys, db):
    """PostgreSQL can neither store nor compare text holding U+0000, so a NUL anywhere a
    client can put text (a JSON field or key, a query or path parameter) is a 422 naming
    the field on both engines, and nothing is written; an escaped backslash before "u0000"
    is ordinary text."""
    h = bearer(keys["orchestrator"])
    refusals = [
        (
            "POST",
            "/v1/cases",
            {"json": sample_case(text={"customer_message": "a\x00b"})},
            "text.customer_message",
        ),
        (
            "POST",
            "/v1/cases",
            {"json": sample_case(lines=[{"sku": "A\x00", "ordered_qty": "1"}])},
            "lines[0].sku",
        ),
        ("POST", "/v1/cases", {"json": sample_case(metadata={"k\x00": "v"})}, "metadata.k\\u0000"),
        ("GET", "/v1/cases", {"params": {"q": "x\x00"}}, "q"),
        ("GET", "/v1/cases/01M8%00", {}, "case_id"),
        ("POST", "/v1/keys", {"json": {"name": "n\x00", "role": "agent"}}, "name"),
    ]
    admin = bearer(keys["admin"])
    for method, url, kwargs, field in refusals:
        headers = admin if url == "/v1/keys" else h
        r = client.request(method, url, headers=headers, **kwargs)
        assert r.status_code == 422, (url, r.text)
        assert r.json()["error"]["fields"][0]["field"] == field, r.text
        assert "NUL" in r.json()["error"]["message"]
    assert _count(db, Case) == 0
    ok = sample_case(text={"customer_message": "a path C:\\u0000 is text"})
    r = client.post("/v1/cases", json=ok, headers=h)
    assert r.status_code == 202, r.text
    assert _count(db, Case) == 1


def test_malformed_json_wrong_type_and_content_type(client, keys, db):
    h = bearer(keys["orchestrator"])
    r = client.post(
        "/v1/cases", content=b'{"source": ', headers={**h, "Content-Type": "application/json"}
    )
    assert r.status_code == 400 and r.json()["error"]["code"] == "malformed_json"
    r = client.post(
        "/v1/cases", content=b"[1, 2]", headers={**h, "Content-Type": "application/json"}
    )
    assert r.status_code == 422
    r = client.post(
        "/v1/cases",
        content=b"source=x",
        headers={**h, "Content-Type": "application/x-www-form-urlencoded"},
    )
    assert r.status_code == 415 and r.json()["error"]["fields"][0]["field"] == "Content-Type"
    assert _count(db, Case) == 0


def test_payload_over_256_kib_is_413(client, keys, db):
    big = sample_case(attributes={"blob": "x" * (256 * 1024)})
    r = client.post("/v1/cases", json=big, headers=bearer(keys["orchestrator"]))
    assert r.status_code == 413 and r.json()["error"]["code"] == "payload_too_large"

    def chunks():  # no Content-Length: the streaming counter must catch it
        yield b'{"attributes": {"blob": "'
        for _ in range(300):
            yield b"y" * 1024
        yield b'"}}'

    r = client.post(
        "/v1/cases",
        content=chunks(),
        headers={**bearer(keys["orchestrator"]), "Content-Type": "application/json"},
    )
    assert r.status_code == 413
    assert _count(db, Case) == 0


def test_get_unknown_case_is_404(client, keys):
    r = client.get("/v1/cases/NOPE", headers=bearer(keys["agent"]))
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"


def test_list_filters_and_cursor_pagination(client, keys):
    h = bearer(keys["orchestrator"])
    for i in range(7):
        etype = "shortage" if i % 2 == 0 else "carrier_delay"
        refs = sample_case()["references"] | {"warehouse_id": f"WH-{i % 3}"}
        r = client.post(
            "/v1/cases", json=sample_case(i, exception_type=etype, references=refs), headers=h
        )
        assert r.status_code == 202
    a = bearer(keys["agent"])
    seen: list[str] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 3}
        if cursor:
            params["cursor"] = cursor
        page = client.get("/v1/cases", params=params, headers=a).json()
        seen += [c["id"] for c in page["items"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert len(seen) == 7 and len(set(seen)) == 7
    assert seen == sorted(seen, reverse=True)  # newest first (ids are time-ordered)
    only = client.get("/v1/cases", params={"exception_type": "carrier_delay"}, headers=a).json()
    assert len(only["items"]) == 3
    assert {c["exception_type"] for c in only["items"]} == {"carrier_delay"}
    wh = client.get("/v1/cases", params={"warehouse_id": "WH-0"}, headers=a).json()
    assert len(wh["items"]) == 3
    status = client.get(
        "/v1/cases", params={"status": "received", "customer_id": "CUST-1"}, headers=a
    ).json()
    assert len(status["items"]) == 7
    future = client.get(
        "/v1/cases", params={"created_from": "2099-01-01T00:00:00Z"}, headers=a
    ).json()
    assert future["items"] == []
    bad = client.get("/v1/cases", params={"created_from": "2026-01-01T00:00:00"}, headers=a)
    assert bad.status_code == 422 and bad.json()["error"]["fields"][0]["field"] == "created_from"
    bad_cursor = client.get("/v1/cases", params={"cursor": "zzz"}, headers=a)
    assert bad_cursor.status_code == 422
    bad_enum = client.get("/v1/cases", params={"status": "lost"}, headers=a)
    assert bad_enum.status_code == 422


def test_list_filters_on_routing(client, keys, db, settings):
    """``queue``, ``priority`` and ``category`` filter on the case's current values."""
    from triage.pipeline import Pipeline, run_case

    h = bearer(keys["orchestrator"])
    types = ["shortage", "carrier_delay", "duplicate_invoice", "shortage"]
    for i, etype in enumerate(types):
        r = client.post("/v1/cases", json=sample_case(i, exception_type=etype), headers=h)
        run_case(db, r.json()["case_id"], Pipeline(), settings, worker_id="w1")
    a = bearer(keys["agent"])
    everything = client.get("/v1/cases", headers=a).json()["items"]
    assert len(everything) == 4
    for field in ("queue", "priority", "category"):
        values = {c[field] for c in everything}
        assert None not in values, (field, values)
        for value in values:
            got = client.get("/v1/cases", params={field: value}, headers=a).json()["items"]
            assert {c["id"] for c in got} == {c["id"] for c in everything if c[field] == value}
    assert len({c["queue"] for c in everything}) > 1  # the filter had something to tell apart
    assert client.get("/v1/cases", params={"queue": "nowhere"}, headers=a).json()["items"] == []
    bad = client.get("/v1/cases", params={"priority": "P9"}, headers=a)
    assert bad.status_code == 422
    assert bad.json()["error"]["fields"][0]["field"] == "query.priority"


def test_openapi_documents_case_schema_with_example(client):
    spec = client.get("/openapi.json").json()
    case_schema = spec["components"]["schemas"]["CaseIn"]
    assert case_schema["examples"][0]["exception_type"] == "shortage"
    assert "schema_version" in case_schema["properties"]
    assert "/v1/cases/batch" in spec["paths"]


def test_openapi_documents_the_replay_200_and_the_rate_limit_429(client):
    # found by tests/test_fuzz_api.py: a replay answered 200, which the schema did not list
    responses = client.get("/openapi.json").json()["paths"]["/v1/cases"]["post"]["responses"]
    assert {"200", "202", "429"} <= set(responses)
    assert responses["200"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/IntakeResponse"
    }


def test_database_outage_answers_503_with_retry_after_not_500(client, keys, monkeypatch):
    from sqlalchemy.exc import OperationalError

    from triage import cases as cases_mod

    def down(*_a, **_k):
        raise OperationalError("SELECT 1", {}, ConnectionRefusedError("connection refused"))

    monkeypatch.setattr(cases_mod, "list_cases", down)
    r = client.get("/v1/cases", headers=bearer(keys["agent"]))
    assert r.status_code == 503
    assert r.headers["Retry-After"] == "5"
    assert r.json()["error"]["code"] == "service_unavailable"
    assert "503" in client.app.openapi()["paths"]["/v1/cases"]["get"]["responses"]


def test_request_without_body_needs_no_content_type(client, keys, db):
    """`curl -X POST` sends neither Content-Length nor Transfer-Encoding: no body, so no
    Content-Type is needed and the route's own validation answers (here: the body is missing).
    """
    request = client.build_request("POST", "/v1/cases", headers=bearer(keys["orchestrator"]))
    del request.headers["content-length"]
    r = client.send(request)
    assert r.status_code == 422, r.text
    assert r.json()["error"]["fields"][0]["field"] == "body"
    chunked = client.build_request(
        "POST",
        "/v1/cases",
        content=iter([b"source=x"]),
        headers={**bearer(keys["orchestrator"]), "Content-Type": "text/plain"},
    )
    assert "content-length" not in chunked.headers
    assert client.send(chunked).status_code == 415  # a streamed body still needs JSON
    assert _count(db, Case) == 0


def test_http2_request_without_length_still_needs_json():
    """HTTP/2 can stream a body with no Content-Length or Transfer-Encoding: the Content-Type
    check cannot assume such a request is empty there."""
    import asyncio

    from api.middleware import RequestLimits

    reached: list[str] = []

    async def app(scope, receive, send):
        reached.append(scope["path"])

    sent: list[dict] = []

    async def send(message):
        sent.append(message)

    async def receive():
        return {"type": "http.request", "body": b"source=x", "more_body": False}

    limits = RequestLimits(app, max_bytes=1024)
    for version, expected in (("2", 415), ("1.1", None)):
        sent.clear()
        reached.clear()
        scope = {
            "type": "http",
            "http_version": version,
            "method": "POST",
            "path": "/v1/cases",
            "headers": [(b"content-type", b"text/plain")],
        }
        asyncio.run(limits(scope, receive, send))
        if expected is None:
            assert reached == ["/v1/cases"] and not sent  # HTTP/1.1: no body to check
        else:
            assert not reached and sent[0]["status"] == expected
