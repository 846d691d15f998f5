"""Console accounts: usernames with argon2id password hashes, and server-side sign-in sessions.

Contract:
- A console user has one role (the API key roles that people hold: agent, approver, auditor,
  admin; ``orchestrator`` is an integration role and has no console) and, for approvers, the
  policy ``authorities`` (e.g. ``finance_approver``) that the policy layer's authority matrix
  and quorum rules read. A signed-in user acts as ``Actor(human, <username>, <role>)``, so
  segregation of duties compares usernames exactly as it compares API key names.
- Passwords are hashed with argon2id (argon2-cffi defaults, RFC 9106 "low memory" profile);
  hashes with outdated parameters are re-hashed on the next successful sign-in.
- A session is a 256-bit random token held by the browser; only its SHA-256 is stored, so a
  database read does not yield usable sessions. Sessions expire, and signing out or disabling
  the user revokes them server-side at once (a stateless signed cookie could not be revoked).
- Every account change and every sign-in, failed sign-in and sign-out is an audit event.

Services never commit: the caller owns the transaction.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from triage import audit
from triage.audit import Actor, ActorType
from triage.auth import Principal, Role
from triage.common import new_id, now_ts, to_ts
from triage.db import Database
from triage.errors import AuthenticationFailed, Conflict, NotFound, ValidationFailed
from triage.models import ConsoleSession, ConsoleUser
from triage.settings import Settings

CONSOLE_ROLES = (Role.agent, Role.approver, Role.auditor, Role.admin)
USERNAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{1,63}$")
MIN_PASSWORD = 12
MAX_PASSWORD = 1024
AUTHORITY_RE = re.compile(r"^[a-z][a-z0-9_]{1,63}$")

_hasher = PasswordHasher()


@functools.cache
def _dummy_hash() -> str:
    """Verified against when the username is unknown, so a failed sign-in costs the same time
    whether or not the account exists (no username enumeration by timing). Built on first use,
    not at import (the CLI imports this module)."""
    return _hasher.hash(secrets.token_urlsafe(16))


@dataclass(frozen=True, slots=True)
class CreatedUser:
    id: str
    username: str
    role: Role
    authorities: tuple[str, ...]


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def principal_of(user: ConsoleUser) -> Principal:
    """The principal a signed-in user acts as (same shape as an API key's)."""
    return Principal(user.id, user.username, Role(user.role), tuple(user.authorities or ()))


def _validate(username: str, password: str, role: str, authorities: list[str]) -> Role:
    problems: dict[str, str] = {}
    if not USERNAME_RE.match(username):
        problems["username"] = "2-64 characters: lower-case letters, digits, '.', '_' or '-'"
    if not MIN_PASSWORD <= len(password) <= MAX_PASSWORD:
        problems["password"] = f"{MIN_PASSWORD}-{MAX_PASSWORD} characters"
    allowed = ", ".join(r.value for r in CONSOLE_ROLES)
    role_value: Role | None = None
    try:
        role_value = Role(role)
    except ValueError:
        problems["role"] = f"one of {allowed}"
    if role_value is not None and role_value not in CONSOLE_ROLES:
        problems["role"] = f"one of {allowed} (orchestrators are integrations: use an API key)"
    bad = [a for a in authorities if not AUTHORITY_RE.match(a)]
    if bad:
        problems["authorities"] = f"not policy role names: {', '.join(bad)}"
    if problems:
        raise ValidationFailed("invalid user: " + "; ".join(problems), fields=problems)
    assert role_value is not None
    return role_value


def create_user(
    session: Session,
    username: str,
    password: str,
    role: str,
    *,
    created_by: Actor,
    authorities: list[str] | None = None,
) -> CreatedUser:
    """Create a console user; the password is hashed (argon2id) and never stored or audited."""
    username = username.strip().lower()
    auths = sorted(set(authorities or []))
    role_value = _validate(username, password, role, auths)
    if session.scalar(select(ConsoleUser.id).where(ConsoleUser.username == username)):
        raise Conflict(f"user {username!r} already exists", field="username")
    now = now_ts()
    user = ConsoleUser(
        id=new_id(),
        username=username,
        password_hash=_hasher.hash(password),
        role=role_value.value,
        authorities=auths or None,
        created_at=now,
        created_by=created_by.id,
        password_changed_at=now,
    )
    session.add(user)
    session.flush()
    audit.append(
        session,
        created_by,
        "user.created",
        {"user_id": user.id, "username": username, "role": role_value.value, "authorities": auths},
    )
    return CreatedUser(user.id, username, role_value, tuple(auths))


def set_password(session: Session, username: str, password: str, *, by: Actor) -> None:
    """Replace a user's password and revoke all of their sessions."""
    user = _by_name(session, username)
    _validate(user.username, password, user.role, list(user.authorities or []))
    user.password_hash = _hasher.hash(password)
    user.password_changed_at = now_ts()
    _revoke_all(session, user.id)
    audit.append(session, by, "user.password_set", {"user_id": user.id, "username": user.username})


def _not_self(user: ConsoleUser, by: Actor, what: str) -> None:
    """People may not lock themselves out: an admin cannot disable their own account or take
    away their own admin role (another admin, or the CLI, can)."""
    if by.type == ActorType.human and by.id == user.username:
        raise Conflict(f"you cannot {what} your own account; ask another admin", field="username")


def disable_user(session: Session, username: str, *, by: Actor) -> None:
    """Disable an account and end its sessions at once (not one's own)."""
    user = _by_name(session, username)
    _not_self(user, by, "disable")
    if user.disabled_at is None:
        user.disabled_at = now_ts()
        _revoke_all(session, user.id)
        audit.append(session, by, "user.disabled", {"user_id": user.id, "username": user.username})


def enable_user(session: Session, username: str, *, by: Actor) -> None:
    """Re-enable a disabled account (its old sessions stay ended: the user signs in again)."""
    user = _by_name(session, username)
    if user.disabled_at is not None:
        user.disabled_at = None
        audit.append(session, by, "user.enabled", {"user_id": user.id, "username": user.username})


def set_role(
    session: Session, username: str, role: str, authorities: list[str], *, by: Actor
) -> None:
    """Change a user's role and policy authorities; effective on their next request (sessions
    resolve the user row every time). An admin cannot remove their own admin role."""
    user = _by_name(session, username)
    auths = sorted(set(authorities))
    # the password is not being changed: validate the rest with a placeholder of legal length
    role_value = _validate(user.username, "x" * MIN_PASSWORD, role, auths)
    if role_value.value != user.role and user.role == Role.admin.value:
        _not_self(user, by, "remove the admin role from")
    before = {"role": user.role, "authorities": list(user.authorities or [])}
    after = {"role": role_value.value, "authorities": auths}
    if before == after:
        return
    user.role, user.authorities = role_value.value, auths or None
    audit.append(
        session,
        by,
        "user.role_changed",
        {"user_id": user.id, "username": user.username, "from": before, "to": after},
    )


def list_users(session: Session) -> list[ConsoleUser]:
    return list(session.scalars(select(ConsoleUser).order_by(ConsoleUser.username)))


def _by_name(session: Session, username: str) -> ConsoleUser:
    user = session.scalar(select(ConsoleUser).where(ConsoleUser.username == username.lower()))
    if user is None:
        raise NotFound(f"user {username!r} not found")
    return user


def _revoke_all(session: Session, user_id: str) -> None:
    session.execute(
        update(ConsoleSession)
        .where(ConsoleSession.user_id == user_id, ConsoleSession.revoked_at.is_(None))
        .values(revoked_at=now_ts())
        .execution_options(synchronize_session=False)
    )


# ---------------------------------------------------------------- sign-in and sessions


@dataclass(frozen=True, slots=True)
class SignedIn:
    token: str
    """The raw session token for the browser's cookie; returned once, stored only hashed."""
    principal: Principal
    expires_at: str


def sign_in(
    session: Session,
    username: str,
    password: str,
    *,
    ttl: timedelta,
    client: str | None = None,
) -> SignedIn:
    """Check the password and open a session; raises AuthenticationFailed with one message
    for every failure (unknown user, wrong password, disabled), so the page reveals nothing.

    The failure is audited by the caller in its own transaction (this one rolls back).
    """
    name = username.strip().lower()
    user = session.scalar(select(ConsoleUser).where(ConsoleUser.username == name))
    stored = user.password_hash if user is not None else _dummy_hash()
    try:
        _hasher.verify(stored, password)
        ok = user is not None and user.disabled_at is None
    except (VerificationError, InvalidHashError):
        ok = False
    if not ok or user is None:
        raise AuthenticationFailed("unknown username or wrong password", username=name)
    if _hasher.check_needs_rehash(user.password_hash):
        user.password_hash = _hasher.hash(password)
    token = secrets.token_urlsafe(32)
    now = datetime.now(UTC)
    expires = to_ts(now + ttl)
    session.add(
        ConsoleSession(
            token_hash=_token_hash(token),
            user_id=user.id,
            created_at=to_ts(now),
            expires_at=expires,
        )
    )
    user.last_sign_in_at = to_ts(now)
    principal = principal_of(user)
    audit.append(
        session,
        principal.actor,
        "console.signed_in",
        {"user_id": user.id, "client": client, "expires_at": expires},
    )
    return SignedIn(token, principal, expires)


def audit_failed_sign_in(session: Session, username: str, client: str | None) -> None:
    """Record a failed sign-in (the attempted username is data, never an identity)."""
    audit.append(
        session,
        Actor(ActorType.human, "anonymous", None),
        "console.sign_in_failed",
        {"username": username.strip().lower()[:64], "client": client},
    )


def resolve(session: Session, token: str, *, now: str | None = None) -> Principal:
    """The principal behind a session token; AuthenticationFailed if unknown, expired,
    revoked or the user is disabled. One indexed join, no write."""
    now = now or now_ts()
    row = session.execute(
        select(ConsoleUser, ConsoleSession.expires_at, ConsoleSession.revoked_at)
        .join(ConsoleSession, ConsoleSession.user_id == ConsoleUser.id)
        .where(ConsoleSession.token_hash == _token_hash(token))
    ).one_or_none()
    if row is None:
        raise AuthenticationFailed("not signed in")
    user, expires_at, revoked_at = row
    if revoked_at is not None or expires_at <= now or user.disabled_at is not None:
        raise AuthenticationFailed("session ended; sign in again")
    return principal_of(user)


def sign_out(session: Session, token: str) -> None:
    """Revoke one session (idempotent) and audit it."""
    row = session.get(ConsoleSession, _token_hash(token))
    if row is None or row.revoked_at is not None:
        return
    row.revoked_at = now_ts()
    user = session.get(ConsoleUser, row.user_id)
    if user is not None:
        audit.append(session, principal_of(user).actor, "console.signed_out", {"user_id": user.id})


# ---------------------------------------------------------------- demo accounts

# (username, role, policy authorities): two approvers with different authority so quorum and
# the authority matrix can be shown, mirroring the demo API keys.
DEMO_USERS: list[tuple[str, str, list[str]]] = [
    ("agent", "agent", []),
    ("approver", "approver", ["finance_approver", "inventory_manager"]),
    ("controller", "approver", ["finance_controller"]),
    ("auditor", "auditor", []),
    # An admin may request actions and holds approval authority, so the console can show the
    # segregation-of-duties refusal on the admin's own request.
    ("admin", "admin", ["finance_controller"]),
]
DEMO_CREATOR = Actor(ActorType.system, "demo-loader", "admin")


def ensure_demo_users(settings: Settings) -> dict[str, str]:
    """Create the demo console users once; returns ``{username: password}``.

    Passwords are random and kept in ``<data_dir>/demo-users.json`` (mode 0600) so a second
    ``triage demo`` prints the same ones; users that already exist keep their password.
    """
    path = Path(settings.data_dir) / "demo-users.json"
    stored: dict[str, str] = json.loads(path.read_text()) if path.exists() else {}
    db = Database(settings)
    try:
        with db.write() as s:
            existing = set(s.scalars(select(ConsoleUser.username)))
            for username, role, authorities in DEMO_USERS:
                if username in existing:
                    continue
                password = stored.get(username) or secrets.token_urlsafe(12)
                create_user(
                    s, username, password, role, created_by=DEMO_CREATOR, authorities=authorities
                )
                stored[username] = password
    finally:
        db.dispose()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(stored, fh, indent=2)
    return {name: stored[name] for name, _r, _a in DEMO_USERS if name in stored}
