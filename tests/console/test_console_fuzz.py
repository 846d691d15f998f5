"""Hostile input for the web console, as tests/test_fuzz_api.py does for the API.

The API's fuzzer works from the OpenAPI schema; the console's pages and forms are not in it
(forms are read field by field in the handlers). So this test enumerates the console's routes
from the app itself, and for every route, every console role and a signed-out visitor sends
generated requests: path parameters half the time real (seeded cases, actions, a user) and
otherwise hostile strings; the route's declared query parameters; and for forms every field
name any console template or handler uses, with values chosen from a list of hostile and
plausible ones (empty, huge, negative, non-finite, unicode digits, markup, NUL, traversal,
real ids, status and role names), sometimes repeated, sometimes with an uploaded file.

Contract checked: no response is a 5xx, no exception escapes the app, and no response
reflects the hostile markup value unescaped (cross-site scripting). It runs on both
engines: PostgreSQL refuses text that SQLite takes (a NUL character, found by this test, made
lookups with it a server error there). The run is deterministic (seeded; ``TRIAGE_FUZZ_SEED``
picks another seed for a local bug hunt, ``TRIAGE_FUZZ_EXAMPLES`` more requests), counts what
it sent and asserts that every route was reached by every role and that most routes answered
something other than a refusal, so it cannot pass having tested nothing.
"""

from __future__ import annotations

import os
import random
import re
import zlib
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from fastapi.routing import APIRoute

from tests.console.conftest import PASSWORD, csrf, sign_in
from tests.support import fuzz_settings
from triage import classification, users
from triage.settings import Settings

pytestmark = [pytest.mark.slow, pytest.mark.integration]

SEED = int(os.environ.get("TRIAGE_FUZZ_SEED", "20261201"))
EXAMPLES = int(os.environ.get("TRIAGE_FUZZ_EXAMPLES", "12"))  # per (route, role)
ROLES = ["agent", "fin1", "boss", "auditor", "controller", None]  # None: signed out
TEMPLATES = Path(__file__).resolve().parents[2] / "api" / "console" / "templates"
CONSOLE_CODE = Path(__file__).resolve().parents[2] / "api" / "console"

MARKUP = "<script>alert(1)</script>"
HOSTILE = [
    "",
    " ",
    "0",
    "-1",
    "1",
    "3",
    "0.95",
    "1.5",
    "-0.0",
    "1e309",
    "nan",
    "inf",
    "99999999999999999999999999",
    "²",
    "١٢",
    "true",
    "on",
    "none",
    "null",
    "[]",
    "{}",
    "x" * 20_000,
    MARKUP,
    "' OR '1'='1",
    "../../etc/passwd",
    "%2e%2e%2f",
    "\x00",
    "é😀",
    "a,b,,c",
    "category=order",
    "category:order=0.9",
    "order=2",
    "received",
    "triaged",
    "closed",
    "resolved",
    "refund",
    "credit_note",
    "EUR",
    "2026-02-30",
    "v20990101T000000000000Z-deadbeef",
    "case",
    "job",
    "webhook",
    "agent",
    "admin",
    "approver",
    "finance_approver",
    "builtin:none",
    "balanced",
    "/console/queue",
    "//evil.example/",
    "https://evil.example/",
]


def _form_fields() -> list[str]:
    """Every form field name a console template renders or a console handler reads."""
    names: set[str] = set()
    for path in TEMPLATES.glob("*.html"):
        names |= set(re.findall(r'name="([A-Za-z_][\w]*)"', path.read_text(encoding="utf-8")))
    for path in CONSOLE_CODE.glob("*.py"):
        code = path.read_text(encoding="utf-8")
        names |= set(re.findall(r'(?:_text|_columns|_money|_number)\(form, "(\w+)"', code))
        names |= set(re.findall(r'form\.get(?:list)?\("(\w+)"', code))
    names.discard("csrf_token")
    return sorted(names)


@pytest.fixture
def settings(db_url: str, tmp_path: Path) -> Settings:
    return fuzz_settings(db_url, tmp_path)


def _real_values(db: Any, case_ids: list[str]) -> dict[str, list[str]]:
    """Real ids for path parameters (the users op targets a victim, never a fuzzing account)."""
    from sqlalchemy import select

    from tests.console.conftest import ADMIN
    from triage.models import ActionRow

    with db.write() as s:
        users.create_user(s, "victim", PASSWORD, "agent", created_by=ADMIN)
        users.create_user(
            s,
            "controller",
            PASSWORD,
            "approver",
            created_by=ADMIN,
            authorities=["finance_controller"],
        )
    with db.read() as s:
        action_ids = list(s.scalars(select(ActionRow.id)))
    assert action_ids, "the seeded cases should have suggested actions"
    return {
        "case_id": case_ids,
        "action_id": action_ids,
        "username": ["victim"],
        "op": ["disable", "enable", "password", "role"],
        "kind": ["case", "job", "webhook"],
        "item_id": [*case_ids, "1"],
        "job_id": ["1"],
        "name": ["console.css", "console.js"],
        "version": ["v20990101T000000000000Z-deadbeef"],
    }


def _params(dependant: Any, kind: str) -> list[str]:
    """Names of the ``kind`` ("path_params", "query_params") parameters of a route, its
    dependencies' included."""
    names = [p.alias for p in getattr(dependant, kind)]
    for sub in dependant.dependencies:
        names += [n for n in _params(sub, kind) if n not in names]
    return names


def _request(
    rng: random.Random,
    route: APIRoute,
    method: str,
    real: dict[str, list[str]],
    fields: list[str],
    own_fields: set[str],
) -> tuple[str, dict[str, Any]]:
    path = route.path
    for name in _params(route.dependant, "path_params"):
        pool = real.get(name)
        value = rng.choice(pool) if pool and rng.random() < 0.5 else rng.choice(HOSTILE)
        path = path.replace("{" + name + "}", quote(value or "x", safe=""))
    query = {
        name: rng.choice(HOSTILE)
        for name in _params(route.dependant, "query_params")
        if rng.random() < 0.6
    }
    kwargs: dict[str, Any] = {"params": query, "follow_redirects": False}
    if method == "POST":
        data: dict[str, Any] = {}
        for name in fields:
            if rng.random() < (0.8 if name in own_fields else 0.15):
                pool = real.get(name, [])
                if pool and rng.random() < 0.5:
                    data[name] = rng.choice(pool)
                elif rng.random() < 0.1:
                    data[name] = [rng.choice(HOSTILE), rng.choice(HOSTILE)]
                else:
                    data[name] = rng.choice(HOSTILE)
        kwargs["data"] = data
        if "file" in own_fields and rng.random() < 0.5:
            body = rng.choice([b"", b"\xff\xfe\x00bad", b"text,label\n", b"a,b\n1,2\n" * 50])
            kwargs["files"] = {"file": ("upload.csv", body, "text/csv")}
    return path, kwargs


def _own_fields(route: APIRoute, fields: list[str]) -> set[str]:
    """The form fields this route's handler reads itself (from its source)."""
    import inspect

    source = inspect.getsource(route.endpoint)
    return {name for name in fields if f'"{name}"' in source} | (
        {"category", "queue", "priority"} if "override" in route.path else set()
    )


def test_fuzz_every_console_route_with_every_role(
    app, client, db, case_ids, people, with_model, monkeypatch
):
    def no_training(*_a: Any, **_k: Any) -> Any:
        raise RuntimeError("training is disabled in the fuzz run")

    monkeypatch.setattr(classification, "retrain_from_feedback", no_training)
    monkeypatch.setattr(classification, "train_model", no_training)
    from api.console.routes import SignInThrottle

    # the fuzzer's failed sign-ins would lock its own client out (throttling: test_auth)
    app.state.console_throttle = SignInThrottle(limit=10**9)
    real = _real_values(db, case_ids)
    real["version"].append(with_model)  # a registered model: its pages get past the 404
    fields = _form_fields()
    assert {"reason", "case_id", "target_precision", "username"} <= set(fields), fields
    from api.console import model_pages
    from api.console import routes as console_routes

    # the console's own routers (the app's route list nests them in version-specific types)
    routes = [
        r
        for r in [*console_routes.router.routes, *model_pages.router.routes]
        if isinstance(r, APIRoute)
    ]
    assert len(routes) >= 35, "the console lost its routes"

    sent: Counter[tuple[str, str]] = Counter()
    handled: Counter[str] = Counter()
    failures: list[str] = []
    for role in ROLES:
        who = role or "signed-out"
        for route in routes:
            own = _own_fields(route, fields)
            for method in sorted(route.methods - {"HEAD"}):
                label = f"{method} {route.path}"
                rng = random.Random(SEED ^ zlib.crc32(f"{label} {who}".encode()))
                for _ in range(EXAMPLES):
                    if role is None:
                        client.cookies.clear()
                    elif client.cookies.get("triage_session") is None:
                        sign_in(client, role)
                    path, kwargs = _request(rng, route, method, real, fields, own)
                    if method == "POST":
                        token = csrf(client) if rng.random() < 0.95 else "forged"
                        kwargs["data"] = {"csrf_token": token, **kwargs["data"]}
                    try:
                        response = client.request(method, path, **kwargs)
                    except Exception as exc:  # raised through the app: a server error
                        failures.append(f"{label} as {who}: {type(exc).__name__}: {exc}"[:600])
                        continue
                    sent[(label, who)] += 1
                    location = response.headers.get("location", "")
                    if role is not None and (
                        response.status_code == 200
                        or (response.status_code == 303 and "/console/login" not in location)
                    ):
                        handled[label] += 1  # a page or a form's redirect back, not a refusal
                    if response.status_code >= 500:
                        failures.append(
                            f"{label} as {who} -> {response.status_code}: {path} "
                            f"{str(kwargs.get('params'))[:200]} "
                            f"{str(kwargs.get('data'))[:300]}\n{response.text[:300]}"
                        )
                    if MARKUP in response.text:  # reflected unescaped: cross-site scripting
                        failures.append(
                            f"{label} as {who} -> {response.status_code}: reflects {MARKUP!r} "
                            f"unescaped: {path} {str(kwargs.get('data'))[:300]}"
                        )
                    if route.path == "/console/logout" and role is not None:
                        client.cookies.clear()  # signed out: sign in again for the next one
    total = sum(sent.values())
    print(f"console fuzz: {total} requests over {len(routes)} routes, seed {SEED}")
    distinct = {f.split(" -> ")[0].split(": ")[0]: f for f in failures}
    assert not failures, f"{len(failures)} failing requests, {len(distinct)} distinct:\n\n" + (
        "\n\n".join(list(distinct.values())[:15])
    )
    labels = {f"{m} {r.path}" for r in routes for m in r.methods - {"HEAD"}}
    assert {lab for lab, _ in sent} == labels, "every route must have been called"
    assert {who for _, who in sent} == {r or "signed-out" for r in ROLES}
    assert total >= len(labels) * len(ROLES) * EXAMPLES
    # depth: with real ids and plausible values most routes must get past their refusals
    assert len(handled) >= 0.8 * len(labels), sorted(labels - set(handled))
