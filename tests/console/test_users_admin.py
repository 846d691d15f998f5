"""Console user administration (admins only): list, create, role change, password reset,
disable and enable; CSRF-protected, audited with the admin as actor, no self-lockout."""

from __future__ import annotations

import json
import re

from sqlalchemy import select

from tests.console.conftest import PASSWORD, flash, post, sign_in
from triage.models import AuditEvent, ConsoleUser

URL = "/console/admin/users"
NEW_PW = "a brand new passphrase"


def _events(db, action: str) -> list[dict]:
    with db.read() as s:
        return [
            {"actor": e.actor_id, **json.loads(e.payload)}
            for e in s.scalars(select(AuditEvent).where(AuditEvent.action == action))
        ]


def _user(db, name: str) -> ConsoleUser:
    with db.read() as s:
        row = s.scalar(select(ConsoleUser).where(ConsoleUser.username == name))
        assert row is not None
        s.expunge(row)
        return row


def test_only_admins_see_the_page(client, people, db):
    sign_in(client, "agent")
    r = client.get(URL)
    assert r.status_code == 403 and "admin" in r.text
    assert any(e["path"] == URL for e in _events(db, "auth.forbidden"))
    assert post(client, f"{URL}/fin1/disable").status_code == 403
    assert _user(db, "fin1").disabled_at is None
    sign_in(client, "boss")
    page = client.get(URL)
    assert page.status_code == 200
    assert 'aria-current="page">Users<' in page.text
    for name in ("agent", "fin1", "fin2", "boss", "auditor"):
        assert f'id="u-{name}"' in page.text
    # every visible form control has a label, and ids are unique
    ids = re.findall(r'<(?:input|select|textarea)[^>]*\bid="([^"]+)"', page.text)
    assert ids and len(ids) == len(set(ids))
    for i in ids:
        assert f'<label for="{i}"' in page.text, i
    # the admin's own row offers no disable button
    own = page.text.split('id="u-boss"')[1].split("</tr>")[0]
    assert "/disable" not in own


def test_create_change_role_reset_disable_enable(client, people, db):
    sign_in(client, "boss")
    r = post(
        client,
        URL,
        {
            "username": "Dora",
            "role": "approver",
            "authorities": "finance_approver, inventory_manager",
            "password": PASSWORD,
            "password_confirm": PASSWORD,
        },
    )
    assert flash(client, r).startswith("ok: User dora created")
    assert _user(db, "dora").authorities == ["finance_approver", "inventory_manager"]
    (created,) = [e for e in _events(db, "user.created") if e["username"] == "dora"]
    assert created["actor"] == "boss" and created["role"] == "approver"

    # mismatched passwords, duplicates and bad roles are refused with a message
    bad = {"username": "eve", "role": "agent", "password": PASSWORD, "password_confirm": "x"}
    assert flash(client, post(client, URL, bad)) == "error: The two passwords differ."
    dup = {"username": "dora", "role": "agent", "password": PASSWORD, "password_confirm": PASSWORD}
    assert "already exists" in flash(client, post(client, URL, dup))
    assert "role" in flash(client, post(client, URL, {**dup, "username": "eve", "role": "root"}))

    r = post(client, f"{URL}/dora/role", {"role": "auditor", "authorities": ""})
    assert flash(client, r) == "ok: Role of dora saved."
    assert _user(db, "dora").role == "auditor" and _user(db, "dora").authorities is None
    (changed,) = _events(db, "user.role_changed")
    assert changed["actor"] == "boss"
    assert changed["from"]["role"] == "approver" and changed["to"]["role"] == "auditor"

    # dora signs in; a password reset ends her session at once
    dora = client.__class__(client.app)
    sign_in(dora, "dora")
    assert dora.get("/console/audit").status_code == 200
    r = post(client, f"{URL}/dora/password", {"password": NEW_PW, "password_confirm": NEW_PW})
    assert "Password for dora reset" in flash(client, r)
    assert dora.get("/console/audit", follow_redirects=False).status_code == 303
    assert _events(db, "user.password_set")[-1]["actor"] == "boss"
    sign_in(dora, "dora", NEW_PW)

    r = post(client, f"{URL}/dora/disable")
    assert "dora is disabled" in flash(client, r)
    assert _user(db, "dora").disabled_at is not None
    assert dora.get("/console/audit", follow_redirects=False).status_code == 303
    failed = dora.post(
        "/console/login",
        data={
            "csrf_token": dora.cookies.get("triage_csrf"),
            "username": "dora",
            "password": NEW_PW,
        },
        follow_redirects=False,
    )
    assert failed.status_code == 401
    r = post(client, f"{URL}/dora/enable")
    assert flash(client, r) == "ok: dora is enabled."
    sign_in(dora, "dora", NEW_PW)
    assert [e["actor"] for e in _events(db, "user.disabled")] == ["boss"]
    assert [e["actor"] for e in _events(db, "user.enabled")] == ["boss"]


def test_admins_cannot_lock_themselves_out(client, people, db):
    sign_in(client, "boss")
    r = post(client, f"{URL}/boss/disable")
    assert "cannot disable your own account" in flash(client, r)
    r = post(client, f"{URL}/boss/role", {"role": "agent", "authorities": ""})
    assert "cannot remove the admin role from your own account" in flash(client, r)
    boss = _user(db, "boss")
    assert boss.disabled_at is None and boss.role == "admin"
    assert client.get(URL).status_code == 200
    # changing one's own authorities (keeping the role) is fine
    r = post(client, f"{URL}/boss/role", {"role": "admin", "authorities": "finance_approver"})
    assert flash(client, r) == "ok: Role of boss saved."


def test_forms_need_the_csrf_token(client, people, db):
    sign_in(client, "boss")
    r = client.post(f"{URL}/fin1/disable", data={}, follow_redirects=False)
    assert r.status_code == 403 and "expired" in r.text
    r = client.post(
        f"{URL}/fin1/disable",
        data={"csrf_token": "forged.token"},
        follow_redirects=False,
    )
    assert r.status_code == 403
    assert _user(db, "fin1").disabled_at is None
    assert not _events(db, "user.disabled")
