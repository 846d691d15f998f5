"""API keys and roles.

Keys look like ``trg_<8 char prefix>_<43 char secret>``; only their SHA-256 is stored. SHA-256
(not a slow password hash) is right here because keys carry 256 bits of entropy: brute force is
hopeless either way, and a fast hash keeps per-request authentication cheap.
"""

from __future__ import annotations

import enum
import hashlib
import secrets
import threading
import time
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from triage import audit
from triage.audit import Actor, ActorType
from triage.common import new_id, now_ts
from triage.db import Database
from triage.errors import AuthenticationFailed, NotFound, ValidationFailed
from triage.models import ApiKey


class Role(enum.StrEnum):
    orchestrator = "orchestrator"
    agent = "agent"
    approver = "approver"
    auditor = "auditor"
    admin = "admin"


ACTOR_TYPE_BY_ROLE = {
    Role.orchestrator: ActorType.integration,
    Role.agent: ActorType.human,
    Role.approver: ActorType.human,
    Role.auditor: ActorType.human,
    Role.admin: ActorType.human,
}


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller."""

    key_id: str
    name: str
    role: Role
    authorities: tuple[str, ...] = ()
    """Policy roles held for approvals (e.g. finance_approver); see policies/default."""

    @property
    def actor(self) -> Actor:
        return Actor(ACTOR_TYPE_BY_ROLE[self.role], self.name, self.role.value)


FORMULA_LEADS = "=+-@"
"""First characters that make a spreadsheet read a CSV cell as a formula."""


def hash_key(raw: str) -> str:
    return hashlib.sha256(raw.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class CreatedKey:
    id: str
    name: str
    role: Role
    key: str
    created_at: str


def create_key(
    session: Session,
    name: str,
    role: str,
    *,
    created_by: Actor,
    authorities: list[str] | None = None,
) -> CreatedKey:
    """Create a key; the raw key is returned once and never stored."""
    name = name.strip()
    if not name or len(name) > 128:
        raise ValidationFailed("name must be 1-128 characters", fields={"name": "length 1-128"})
    if name[0] in FORMULA_LEADS or any(ord(c) < 32 or ord(c) == 127 for c in name):
        # the name is the actor id on every audit event its key causes, and the audit log is
        # exported as CSV for auditors: a cell starting with = + - @ is run as a formula by
        # spreadsheets (CSV injection); the export stays byte-exact, so refuse it here
        raise ValidationFailed(
            "name must not start with = + - @ or hold control characters",
            fields={"name": "no leading = + - @, no control characters"},
        )
    try:
        role_value = Role(role)
    except ValueError as exc:
        allowed = ", ".join(r.value for r in Role)
        raise ValidationFailed(
            f"unknown role {role!r}; allowed: {allowed}", fields={"role": f"one of {allowed}"}
        ) from exc
    prefix = secrets.token_hex(4)
    raw = f"trg_{prefix}_{secrets.token_urlsafe(32)}"
    row = ApiKey(
        id=new_id(),
        name=name,
        role=role_value.value,
        prefix=prefix,
        key_hash=hash_key(raw),
        created_at=now_ts(),
        created_by=created_by.id,
        authorities=sorted(set(authorities or [])) or None,
    )
    session.add(row)
    session.flush()
    audit.append(
        session,
        created_by,
        "api_key.created",
        {
            "key_id": row.id,
            "name": name,
            "role": role_value.value,
            "prefix": prefix,
            "authorities": row.authorities,
        },
    )
    return CreatedKey(row.id, name, role_value, raw, row.created_at)


def authenticate(session: Session, raw: str) -> Principal:
    """Resolve a raw key to its principal; raises AuthenticationFailed for unknown/revoked keys."""
    row = session.execute(
        select(ApiKey.id, ApiKey.name, ApiKey.role, ApiKey.revoked_at, ApiKey.authorities).where(
            ApiKey.key_hash == hash_key(raw)
        )
    ).one_or_none()
    if row is None:
        raise AuthenticationFailed("unknown API key")
    if row.revoked_at is not None:
        raise AuthenticationFailed("API key has been revoked")
    return Principal(row.id, row.name, Role(row.role), tuple(row.authorities or ()))


def revoke_key(session: Session, key_id: str, *, by: Actor) -> ApiKey:
    row = session.get(ApiKey, key_id)
    if row is None:
        raise NotFound(f"API key {key_id} not found")
    if row.revoked_at is None:
        row.revoked_at = now_ts()
        audit.append(session, by, "api_key.revoked", {"key_id": key_id, "name": row.name})
    return row


def list_keys(session: Session) -> list[ApiKey]:
    return list(session.scalars(select(ApiKey).order_by(ApiKey.created_at)))


class KeyCache:
    """Process-local cache of authenticated keys, so a request costs no key lookup query.

    Entries live ``ttl`` seconds. A revocation made through this process invalidates the cache
    at once; one made elsewhere (another API replica, the CLI) takes effect within ``ttl``.
    ``ttl=0`` disables caching. Only successful lookups are cached.
    """

    def __init__(self, ttl: float, max_entries: int = 10_000) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self._entries: dict[str, tuple[float, Principal]] = {}
        self._lock = threading.Lock()

    def authenticate(self, db: Database, raw: str) -> Principal:
        digest = hash_key(raw)
        now = time.monotonic()
        hit = self._entries.get(digest)
        if hit is not None and hit[0] > now:
            return hit[1]
        with db.read() as s:
            principal = authenticate(s, raw)
        if self.ttl > 0:
            with self._lock:
                if len(self._entries) >= self.max_entries:
                    self._entries.clear()
                self._entries[digest] = (now + self.ttl, principal)
        return principal

    def invalidate(self) -> None:
        with self._lock:
            self._entries.clear()


class RateLimiter:
    """Token bucket per API key, in this process (each API replica limits on its own).

    ``allow`` returns 0 when the request may proceed, else the seconds until a token is free.
    """

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = max(1, burst)
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def allow(self, key_id: str) -> float:
        if self.rate <= 0:
            return 0.0
        now = time.monotonic()
        with self._lock:
            tokens, last = self._buckets.get(key_id, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - last) * self.rate)
            if tokens >= 1:
                self._buckets[key_id] = (tokens - 1, now)
                return 0.0
            self._buckets[key_id] = (tokens, now)
            return (1 - tokens) / self.rate
