"""Console fixtures: console users for every role, triaged cases, and a signed-in client helper.

Runs on the shared ``db`` fixture (SQLite, and PostgreSQL when reachable), built by the
migrations. Cases are triaged with the rule classifier and the rule advisor (no model training,
no retrieval) so the tests stay fast; the policy preview is the real Cedar gate.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import pytest

from contracts.case import CaseIn
from tests.support import sample_case
from triage import actions, audit, cases, users
from triage.db import Database
from triage.pipeline import Pipeline, run_case
from triage.settings import Settings

ADMIN = audit.Actor(audit.ActorType.human, "test-admin", "admin")
PASSWORD = "correct horse battery staple"
ORCH = audit.Actor(audit.ActorType.integration, "test-orchestrator", "orchestrator")

# username -> (role, authorities). "boss" is an admin with approval authority: it may request
# an action and is then refused as its approver (segregation of duties).
PEOPLE: dict[str, tuple[str, list[str]]] = {
    "agent": ("agent", []),
    "fin1": ("approver", ["finance_approver"]),
    "fin2": ("approver", ["finance_approver"]),
    "boss": ("admin", ["finance_controller"]),
    "auditor": ("auditor", []),
}


@pytest.fixture
def people(db: Database) -> dict[str, str]:
    with db.write() as s:
        for name, (role, auths) in PEOPLE.items():
            users.create_user(s, name, PASSWORD, role, created_by=ADMIN, authorities=auths)
    return dict.fromkeys(PEOPLE, PASSWORD)


def triaged_case(db: Database, settings: Settings, n: int, **overrides: Any) -> str:
    """Submit one case and run the pipeline on it; returns the case id."""
    with db.write() as s:
        ref = cases.submit(
            s, CaseIn.model_validate(sample_case(n, **overrides)), actor=ORCH, settings=settings
        )
    pipe = Pipeline(policy=actions.CedarGate(settings))
    assert run_case(db, ref.case.id, pipe, settings, worker_id="w").status == "triaged"
    return ref.case.id


@pytest.fixture
def case_ids(db: Database, settings: Settings, people: dict[str, str]) -> list[str]:
    """Three triaged cases (a tier-A return, two tier-B shortages); the shortages' suggested
    credit notes (7,500 EUR) need an approval under the default policy."""
    out = []
    for n, tier, etype in ((1, "A", "return_request"), (2, "B", "shortage"), (3, "B", "shortage")):
        refs = sample_case()["references"] | {"customer": {"id": f"CUST-{n}", "tier": tier}}
        money = {"amount": "7500.00", "currency": "EUR"}  # above the tier-B credit limit
        out.append(
            triaged_case(
                db, settings, n, references=refs, exception_type=etype, amount_in_dispute=money
            )
        )
    return out


def csrf(client: Any) -> str:
    token = client.cookies.get("triage_csrf")
    if token is None:
        page = client.get("/console/login")
        token = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)
    return str(token)


def put_cookie(client: Any, name: str, value: str) -> None:
    """Replace a console cookie the way a browser would hold it."""
    client.cookies.delete(name)
    client.cookies.set(name, value, domain="testserver.local", path="/console")


def sign_in(client: Any, username: str, password: str = PASSWORD) -> Any:
    client.cookies.clear()
    r = client.post(
        "/console/login",
        data={"csrf_token": csrf(client), "username": username, "password": password},
        follow_redirects=False,
    )
    assert r.status_code == 303, r.text
    return client


def post(client: Any, url: str, data: dict[str, Any] | None = None) -> Any:
    """POST a console form with the CSRF token; returns the (not followed) response."""
    return client.post(
        url, data={"csrf_token": csrf(client), **(data or {})}, follow_redirects=False
    )


def flash(client: Any, response: Any) -> str:
    """Follow a post/redirect/get and return the flash message text shown on the page."""
    assert response.status_code == 303, response.text
    page = client.get(response.headers["location"])
    m = re.search(r'class="flash flash-(ok|error)"[^>]*>([^<]*)<', page.text)
    return f"{m.group(1)}: {m.group(2)}" if m else ""


@pytest.fixture
def login(client: Any, people: dict[str, str]) -> Callable[[str], Any]:
    return lambda username: sign_in(client, username)
