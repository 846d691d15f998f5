"""Console sign-in, sessions, CSRF, roles, and the user service."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from tests.console.conftest import PASSWORD, csrf, post, put_cookie, sign_in
from triage import users
from triage.errors import AuthenticationFailed, Conflict, ValidationFailed
from triage.models import AuditEvent


def _actions(db) -> list[str]:
    with db.read() as s:
        return list(s.scalars(select(AuditEvent.action).order_by(AuditEvent.seq)))


def test_pages_need_sign_in_and_redirect_back(client, people):
    r = client.get("/console/queue?priority=P1", follow_redirects=False)
    assert r.status_code == 303
    assert r.headers["location"] == "/console/login?next=%2Fconsole%2Fqueue%3Fpriority%3DP1"
    page = client.get(r.headers["location"])
    assert 'name="next" value="/console/queue?priority=P1"' in page.text
    assert '<label for="username">' in page.text and '<label for="password">' in page.text


def test_sign_in_sets_hardened_cookies_and_is_audited(client, people, db):
    r = client.post(
        "/console/login",
        data={
            "csrf_token": csrf(client),
            "username": "agent",
            "password": PASSWORD,
            "next": "/console/queue",
        },
        follow_redirects=False,
    )
    assert r.status_code == 303 and r.headers["location"] == "/console/queue"
    cookies = r.headers.get_list("set-cookie")
    session = next(c for c in cookies if c.startswith("triage_session="))
    assert "HttpOnly" in session and "SameSite=lax" in session and "Path=/console" in session
    assert "Secure" not in session  # plain http in the test client
    assert "console.signed_in" in _actions(db)
    assert client.get("/console/queue").status_code == 200


def test_cookies_are_secure_over_https(app, people):
    from fastapi.testclient import TestClient

    with TestClient(app, base_url="https://testserver") as c:
        r = c.post(
            "/console/login",
            data={"csrf_token": csrf(c), "username": "agent", "password": PASSWORD},
            follow_redirects=False,
        )
        session = next(x for x in r.headers.get_list("set-cookie") if "triage_session" in x)
        assert "Secure" in session


def test_wrong_password_and_unknown_user_look_the_same(client, people, db):
    bodies = []
    for username, password in (("agent", "not the password!"), ("nobody", PASSWORD)):
        r = client.post(
            "/console/login",
            data={"csrf_token": csrf(client), "username": username, "password": password},
        )
        assert r.status_code == 401
        bodies.append(r.text.count("Unknown username or wrong password"))
    assert bodies == [1, 1]
    assert _actions(db).count("console.sign_in_failed") == 2
    assert "triage_session" not in client.cookies


def test_repeated_failures_are_throttled(client, people):
    for _ in range(5):
        client.post(
            "/console/login",
            data={"csrf_token": csrf(client), "username": "fin1", "password": "wrong-wrong"},
        )
    r = client.post(
        "/console/login",
        data={"csrf_token": csrf(client), "username": "fin1", "password": PASSWORD},
    )
    assert r.status_code == 429
    assert "Too many failed attempts" in r.text


def test_nul_in_a_form_query_or_path_is_an_error_page_and_writes_nothing(
    client, people, case_ids, db
):
    """A NUL character (which PostgreSQL cannot store or compare) in a console form field, a
    query parameter or a path segment is refused with a page naming the field, on both
    engines, before the handler runs."""
    sign_in(client, "agent")
    before = _actions(db)
    url = f"/console/cases/{case_ids[0]}/message"
    r = post(client, url, {"message": "hello\x00", "channel": "email"})
    assert r.status_code == 422 and "message: contains a NUL character" in r.text
    r = client.get("/console/queue", params={"q": "x\x00"})
    assert r.status_code == 422 and "q: contains a NUL character" in r.text
    r = client.get("/console/cases/%00")
    assert r.status_code == 422 and "case_id: contains a NUL character" in r.text
    assert _actions(db) == before
    assert post(client, url, {"message": "hello", "channel": "email"}).status_code == 303


def test_post_without_or_with_foreign_csrf_token_is_refused(client, people, case_ids):
    sign_in(client, "agent")
    url = f"/console/cases/{case_ids[0]}/message"
    r = client.post(url, data={"message": "hello"}, follow_redirects=False)
    assert r.status_code == 403 and "The form has expired" in r.text
    # A token minted for a different session (here: for no session) does not verify.
    r = client.get("/console/login")  # signed-in users are redirected; still no new token
    foreign = "abc.def"
    put_cookie(client, "triage_csrf", foreign)
    r = client.post(url, data={"csrf_token": foreign, "message": "hello"}, follow_redirects=False)
    assert r.status_code == 403
    sign_in(client, "agent")
    r = client.post(
        url,
        data={"csrf_token": csrf(client), "message": "hello"},
        headers={"Origin": "https://evil.example"},
        follow_redirects=False,
    )
    assert r.status_code == 403


def test_csrf_token_of_another_session_is_refused(client, people, case_ids):
    sign_in(client, "agent")
    old_token = csrf(client)
    sign_in(client, "agent")  # a second session: its own token
    put_cookie(client, "triage_csrf", old_token)
    r = post(client, f"/console/cases/{case_ids[0]}/message", {"message": "hi"})
    assert r.status_code == 403


def test_sign_out_revokes_the_session_server_side(client, people, db):
    sign_in(client, "agent")
    session_cookie = client.cookies.get("triage_session")
    r = post(client, "/console/logout")
    assert r.status_code == 303
    put_cookie(client, "triage_session", session_cookie)
    r = client.get("/console/queue", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"].startswith("/console/login")
    assert "console.signed_out" in _actions(db)


def test_forged_session_cookie_is_ignored(client, people):
    put_cookie(client, "triage_session", "guess.signature")
    assert client.get("/console/queue", follow_redirects=False).status_code == 303


def test_roles_are_enforced_and_refusals_audited(client, people, db):
    sign_in(client, "agent")
    r = client.get("/console/audit")
    assert r.status_code == 403 and "This page is for: admin, auditor" in r.text
    assert client.get("/console/approvals").status_code == 403
    sign_in(client, "auditor")
    assert client.get("/console/queue").status_code == 403
    assert client.get("/console/audit").status_code == 200
    assert _actions(db).count("auth.forbidden") == 3
    sign_in(client, "fin1")
    assert client.get("/console/approvals").status_code == 200
    r = client.get("/console/", follow_redirects=False)
    assert r.headers["location"] == "/console/approvals"


@pytest.mark.parametrize(
    "target", ["//evil.example/x", "https://evil.example", "/v1/cases", "/console\\@evil"]
)
def test_no_open_redirect_after_sign_in(client, people, target):
    r = client.post(
        "/console/login",
        data={
            "csrf_token": csrf(client),
            "username": "agent",
            "password": PASSWORD,
            "next": target,
        },
        follow_redirects=False,
    )
    assert r.headers["location"] == "/console/"


def test_user_service_rules(db):
    admin = users.DEMO_CREATOR
    with db.write() as s:
        with pytest.raises(ValidationFailed) as exc:
            users.create_user(s, "Bad Name!", "short", "orchestrator", created_by=admin)
        assert set(exc.value.details["fields"]) == {"username", "password", "role"}
        users.create_user(
            s, "ann", PASSWORD, "approver", created_by=admin, authorities=["finance_approver"]
        )
        with pytest.raises(Conflict):
            users.create_user(s, "ANN", PASSWORD, "agent", created_by=admin)
        row = s.scalar(select(users.ConsoleUser).where(users.ConsoleUser.username == "ann"))
        assert row.password_hash.startswith("$argon2id$") and PASSWORD not in row.password_hash
    with db.write() as s:
        signed = users.sign_in(s, "Ann", PASSWORD, ttl=timedelta(hours=1))
    assert signed.principal.authorities == ("finance_approver",)
    with db.read() as s:
        assert users.resolve(s, signed.token).name == "ann"
        with pytest.raises(AuthenticationFailed):
            users.resolve(s, signed.token, now="2999-01-01T00:00:00.000000Z")  # expired
    with db.write() as s:
        users.disable_user(s, "ann", by=admin)
    with db.read() as s, pytest.raises(AuthenticationFailed):
        users.resolve(s, signed.token)
    with db.write() as s, pytest.raises(AuthenticationFailed):
        users.sign_in(s, "ann", PASSWORD, ttl=timedelta(hours=1))
    with db.read() as s:
        payloads = list(s.scalars(select(AuditEvent.payload)))
    assert all(PASSWORD not in p for p in payloads)


def test_demo_users_are_created_once(settings, db):
    first = users.ensure_demo_users(settings)
    assert set(first) == {"agent", "approver", "controller", "auditor", "admin"}
    assert users.ensure_demo_users(settings) == first
    assert oct((settings.data_dir / "demo-users.json").stat().st_mode & 0o777) == "0o600"


def test_cli_creates_users_from_stdin(settings, db, monkeypatch):
    from api.console import cli

    monkeypatch.setattr(cli, "get_settings", lambda: settings)
    runner = CliRunner()
    r = runner.invoke(
        cli.users_app,
        [
            "create",
            "--username",
            "carol",
            "--role",
            "approver",
            "--authority",
            "finance_approver",
            "--password-stdin",
        ],
        input=PASSWORD + "\n",
    )
    assert r.exit_code == 0, r.output
    assert "created carol (role approver, authorities: finance_approver)" in r.output
    r = runner.invoke(
        cli.users_app,
        ["create", "--username", "dave", "--role", "agent", "--password-stdin"],
        input="short\n",
    )
    assert r.exit_code == 2 and "password" in r.output
    r = runner.invoke(cli.users_app, ["list"])
    assert "carol" in r.output and "dave" not in r.output
