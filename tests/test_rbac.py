"""The whole matrix of endpoints by roles (plus no key and a revoked key) against expectations."""

from __future__ import annotations

from typing import Any

from fastapi.routing import APIRoute
from sqlalchemy import select

from api.deps import RoleGuard
from tests.support import bearer, sample_case
from triage import auth
from triage.models import AuditEvent

ALL = {"orchestrator", "agent", "approver", "auditor", "admin"}

# The expected policy, written out independently of the code: if a route's declared roles
# drift from this table, the test fails.
EXPECTED: dict[tuple[str, str], set[str]] = {
    ("POST", "/v1/cases"): {"orchestrator", "admin"},
    ("POST", "/v1/cases/batch"): {"orchestrator", "admin"},
    ("GET", "/v1/cases"): ALL,
    ("GET", "/v1/cases/{case_id}"): ALL,
    ("GET", "/v1/cases/{case_id}/explanation"): ALL,
    ("POST", "/v1/cases/{case_id}/transitions"): {"agent", "admin"},
    ("POST", "/v1/cases/{case_id}/overrides"): {"agent", "admin"},
    # work notes: everyone who works a case or decides on it writes; auditors only read
    ("POST", "/v1/cases/{case_id}/notes"): {"orchestrator", "agent", "approver", "admin"},
    ("GET", "/v1/cases/{case_id}/notes"): ALL,
    # assignment: the roles that work cases give them to each other
    ("GET", "/v1/cases/assignees"): {"agent", "admin"},
    ("POST", "/v1/cases/{case_id}/assignment"): {"agent", "admin"},
    # figures: the people who use the console's dashboard (the team's rows depend on the role)
    ("GET", "/v1/stats/process"): {"agent", "approver", "auditor", "admin"},
    ("GET", "/v1/stats/team"): {"agent", "approver", "auditor", "admin"},
    ("GET", "/v1/models"): {"admin", "auditor"},
    ("GET", "/v1/actions"): ALL,
    ("GET", "/v1/actions/{action_id}"): ALL,
    ("POST", "/v1/cases/{case_id}/actions"): {"agent", "admin"},
    ("POST", "/v1/actions/{action_id}/request"): {"agent", "admin"},
    ("PATCH", "/v1/actions/{action_id}"): {"agent", "admin"},
    ("POST", "/v1/actions/{action_id}/cancel"): {"agent", "admin"},
    ("POST", "/v1/actions/{action_id}/approve"): {"approver", "admin"},
    ("POST", "/v1/actions/{action_id}/reject"): {"approver", "admin"},
    ("POST", "/v1/actions/{action_id}/outcome"): {"orchestrator", "admin"},
    ("GET", "/v1/approvals"): {"approver", "admin"},
    ("GET", "/v1/policy"): {"approver", "auditor", "admin"},
    ("POST", "/v1/policy/recheck"): {"admin"},
    ("PUT", "/v1/fx-rates"): {"admin"},
    ("GET", "/v1/fx-rates"): {"approver", "auditor", "admin"},
    ("POST", "/v1/models/{version}/activate"): {"admin"},
    ("GET", "/v1/models/{version}/profile"): {"admin", "auditor"},
    ("GET", "/v1/models/{version}/operating-points"): {"admin", "auditor"},
    ("POST", "/v1/models/{version}/operating-points"): {"admin"},
    ("POST", "/v1/models/rollback"): {"admin"},
    ("POST", "/v1/models/{version}/evaluate"): {"admin"},
    ("GET", "/v1/models/evaluate"): {"admin"},
    ("POST", "/v1/models/train"): {"admin"},
    ("GET", "/v1/models/train"): {"admin"},
    ("POST", "/v1/models/retrain"): {"admin"},
    ("GET", "/v1/models/retrain"): {"admin"},
    ("GET", "/v1/models/jobs"): {"admin", "auditor"},
    ("GET", "/v1/models/jobs/{job_id}"): {"admin", "auditor"},
    ("POST", "/v1/models/jobs/{job_id}/cancel"): {"admin"},
    ("GET", "/v1/knowledge"): {"agent", "approver", "auditor", "admin"},
    ("POST", "/v1/knowledge/documents"): {"admin"},
    ("DELETE", "/v1/knowledge/documents/{doc_id}"): {"admin"},
    ("GET", "/v1/audit"): {"auditor", "admin"},
    ("GET", "/v1/audit/verify"): {"auditor", "admin"},
    ("GET", "/v1/audit/export"): {"auditor", "admin"},
    ("POST", "/v1/keys"): {"admin"},
    ("GET", "/v1/keys"): {"admin"},
    ("DELETE", "/v1/keys/{key_id}"): {"admin"},
    ("GET", "/v1/outbox"): {"admin"},
    ("POST", "/v1/outbox/{message_id}/replay"): {"admin"},
    ("GET", "/v1/jobs"): {"admin"},
    ("POST", "/v1/jobs/{job_id}/retry"): {"admin"},
}
PUBLIC = {("GET", "/healthz"), ("GET", "/readyz"), ("GET", "/metrics")}


def _guard(route: APIRoute) -> RoleGuard | None:
    stack = list(route.dependant.dependencies)
    while stack:
        dep = stack.pop()
        if isinstance(dep.call, RoleGuard):
            return dep.call
        stack.extend(dep.dependencies)
    return None


def _api_routes(routes: Any) -> Any:
    # FastAPI >= 0.16x keeps included routers as wrappers; walk into them.
    for r in routes:
        if isinstance(r, APIRoute):
            yield r
        elif hasattr(r, "original_router"):
            yield from _api_routes(r.original_router.routes)


def _routes(app: Any) -> dict[tuple[str, str], APIRoute]:
    """The JSON API's routes (the console has its own session-based checks and tests)."""
    out = {}
    for r in _api_routes(app.routes):
        if r.path.startswith("/console"):
            continue
        for m in r.methods:
            out[(m, r.path)] = r
    return out


def test_every_route_declares_the_expected_roles(app):
    routes = _routes(app)
    assert set(routes) == set(EXPECTED) | PUBLIC, "a route was added without an RBAC entry"
    for key, route in routes.items():
        guard = _guard(route)
        if key in PUBLIC:
            assert guard is None
            continue
        assert guard is not None, f"{key} has no role guard"
        assert {r.value for r in guard.roles} == EXPECTED[key], key


def _call(client, method, path, headers):
    path = (
        path.replace("{case_id}", "NOCASE")
        .replace("{key_id}", "NOKEY")
        .replace("{message_id}", "999999")
        .replace("{job_id}", "999999")
        .replace("{action_id}", "NOACTION")
        .replace("{doc_id}", "NODOC")
        .replace("{version}", "v20990101T000000000000Z-deadbeef")
    )
    body: Any = None
    if method == "POST" and path == "/v1/cases":
        body = sample_case(99)
    elif method == "POST" and path.endswith("/batch"):
        body = {"items": [sample_case(98)]}
    elif method == "POST" and path == "/v1/keys":
        body = {"name": "made-in-test", "role": "agent"}
    elif method == "POST" and path.endswith("/transitions"):
        body = {"to": "in_review"}
    elif path.endswith("/actions") or method == "PATCH":
        body = {"action": {"type": "refund", "amount": "1", "currency": "EUR"}}
    elif path.endswith(("/approve", "/reject")):
        body = {"action_hash": "0" * 64, "reason": "matrix"}
    elif path.endswith("/cancel"):
        body = {"reason": "matrix"}
    elif path.endswith("/outcome"):
        body = {"status": "done"}
    elif path == "/v1/fx-rates" and method == "PUT":
        body = {"currency": "USD", "rate": "0.9", "valid_from": "2026-01-01"}
    elif method == "POST" and path.endswith("/overrides"):
        body = {"queue": "billing", "reason": "matrix"}
    elif method == "POST" and path.endswith("/notes"):
        body = {"text": "matrix"}
    elif method == "POST" and path.endswith("/assignment"):
        body = {"assignee": "test-agent"}
    elif method == "POST" and path.endswith("/evaluate"):
        body = {"records": [{"text": "x", "queue": "billing"}]}
    elif method == "POST" and path.endswith("/operating-points"):
        body = {"target_precision": 0.9}
    return client.request(method, path, json=body, headers=headers)


def test_matrix_of_roles_no_key_and_revoked_key(client, keys, db):
    with db.write() as s:
        revoked_id = next(k.id for k in auth.list_keys(s) if k.name == "test-agent")
        auth.revoke_key(s, revoked_id, by=auth.Principal("x", "test", auth.Role.admin).actor)
    unknown = {"Authorization": "Bearer trg_00000000_not-a-real-key"}
    for (method, path), allowed in EXPECTED.items():
        for role in sorted(ALL):
            if role == "agent":
                continue  # revoked above: checked separately below
            r = _call(client, method, path, bearer(keys[role]))
            if role in allowed:
                assert r.status_code not in (401, 403), (method, path, role, r.text)
            else:
                assert r.status_code == 403, (method, path, role, r.status_code)
                assert r.json()["error"]["code"] == "forbidden"
        for headers in ({}, unknown, bearer(keys["agent"]), {"Authorization": "Basic abc"}):
            r = _call(client, method, path, headers)
            assert r.status_code == 401, (method, path, headers, r.status_code)
            assert r.headers["WWW-Authenticate"] == "Bearer"
    assert client.get("/healthz").status_code == 200
    assert client.get("/readyz").json()["database"] == "ok"


def test_denials_are_audited(client, keys, db):
    client.get("/v1/audit", headers=bearer(keys["agent"]))
    client.get("/v1/audit", headers={"Authorization": "Bearer nope"})
    with db.read() as s:
        rows = s.scalars(
            select(AuditEvent).where(AuditEvent.action.like("auth.%")).order_by(AuditEvent.seq)
        ).all()
        assert [r.action for r in rows] == ["auth.forbidden", "auth.unauthenticated"]
        assert rows[0].actor_id == "test-agent" and rows[0].actor_role == "agent"
        assert '"path":"/v1/audit"' in rows[0].payload
        assert rows[1].actor_id == "anonymous"


def test_rate_limit_per_key_answers_429_with_retry_after(settings, db, keys):
    from fastapi.testclient import TestClient

    from api.app import create_app

    # One token per 100 s: a slow, loaded machine cannot refill the bucket between requests.
    settings.rate_limit_per_second = 0.01
    settings.rate_limit_burst = 3
    with TestClient(create_app(settings, db=db, start_worker=False)) as c:
        codes = [c.get("/v1/cases", headers=bearer(keys["agent"])).status_code for _ in range(5)]
        assert codes[:3] == [200, 200, 200] and codes[3:] == [429, 429]
        r = c.get("/v1/cases", headers=bearer(keys["agent"]))
        assert r.json()["error"]["code"] == "rate_limited"
        assert int(r.headers["Retry-After"]) >= 1
        # another key has its own bucket
        assert c.get("/v1/cases", headers=bearer(keys["auditor"])).status_code == 200
