"""Outbox-backed, signed webhook delivery.

A message is written to the ``outbox`` table in the same transaction as the event it reports,
so an event is never lost between commit and send. :func:`deliver_due` claims due messages,
POSTs them outside any transaction, and records the result: delivered, retried with capped
exponential backoff and jitter, or dead-lettered after ``webhook_max_attempts`` (visible to admins,
who can replay it).

Signature (receivers must verify it and de-duplicate on ``X-Triage-Event-Id``)::

    X-Triage-Timestamp: <unix seconds>
    X-Triage-Signature: v1=<hex HMAC-SHA256(secret, "<timestamp>.<raw body>")>

Receivers should refuse timestamps older than five minutes to stop replays.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
import random
import socket
import time
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import httpx
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from triage import audit
from triage.common import canonical_json, error_text, now_ts, to_ts
from triage.db import Database
from triage.errors import Conflict, NotFound
from triage.models import Case, OutboxMessage
from triage.settings import Settings

log = logging.getLogger("triage.webhooks")


def sign(secret: str, timestamp: int, body: str) -> str:
    mac = hmac.new(secret.encode(), f"{timestamp}.{body}".encode(), hashlib.sha256)
    return "v1=" + mac.hexdigest()


def verify_signature(
    secret: str,
    timestamp: str,
    body: str,
    signature: str,
    *,
    tolerance_s: int = 300,
    now: float | None = None,
) -> bool:
    """Receiver-side check, shipped for integrators and used by the tests."""
    try:
        ts = int(timestamp)
    except ValueError:
        return False
    if abs((now or time.time()) - ts) > tolerance_s:
        return False
    return hmac.compare_digest(sign(secret, ts, body), signature)


def enqueue(
    session: Session,
    *,
    event_id: str,
    kind: str,
    case_id: str | None,
    target_url: str,
    body: dict[str, Any],
) -> None:
    """Add a message in the caller's transaction; a repeated event_id is ignored (idempotent)."""
    if session.scalar(select(OutboxMessage.id).where(OutboxMessage.event_id == event_id)):
        return
    now = now_ts()
    session.add(
        OutboxMessage(
            event_id=event_id,
            kind=kind,
            case_id=case_id,
            target_url=target_url,
            body=canonical_json(body),
            status="pending",
            attempts=0,
            next_attempt_at=now,
            created_at=now,
        )
    )


def send(
    session: Session, url: str, event: str, event_id: str, *, case_id: str, **fields: Any
) -> None:
    """Queue ``event`` for ``url`` in the caller's transaction, in the envelope every event
    shares: its name, its id and the case it concerns, then ``fields``."""
    enqueue(
        session,
        event_id=event_id,
        kind=event,
        case_id=case_id,
        target_url=url,
        body={"event": event, "event_id": event_id, "case_id": case_id, **fields},
    )


def _case_event(
    session: Session, row: Case, url: str, event: str, event_id: str, **fields: Any
) -> None:
    """:func:`send` about ``row``, naming its source system and the id it has there."""
    source = {"system": row.source_system, "case_id": row.source_case_id}
    send(session, url, event, event_id, case_id=row.id, source=source, **fields)


def notify_submitter(session: Session, row: Case, event: str, event_id: str, **fields: Any) -> None:
    """Queue ``event`` for the system that submitted ``row``, at its ``callback_url``, in the
    caller's transaction; nothing when the case named none. The body names the event, the
    case and its source, then ``fields``."""
    if row.callback_url:
        _case_event(session, row, row.callback_url, event, event_id, **fields)


def console_link(settings: Settings, path: str) -> str | None:
    """``path`` in the console at ``public_url``, for a notification; None when the product's
    public address is not configured (a link to localhost would mislead)."""
    base = (settings.public_url or "").rstrip("/")
    return f"{base}/console/{path}" if base else None


def notify_team(
    session: Session, settings: Settings | None, row: Case, event: str, event_id: str, **fields: Any
) -> None:
    """Queue ``event`` about ``row`` for the service team's relay (``team_webhook_url``: a
    chat channel, say), in the caller's transaction; nothing when none is set. Ids, routing,
    priority, holder and due time only, no case text (the relay may be a shared channel), and
    a link to the case page when ``public_url`` is set."""
    if settings is None or not settings.team_webhook_url:
        return
    _case_event(
        session,
        row,
        settings.team_webhook_url,
        event,
        event_id,
        exception_type=row.exception_type,
        customer_id=row.customer_id,
        priority=row.priority,
        queue=row.queue,
        status=row.status,
        assignee=row.assignee,
        resolution_due_at=row.resolution_due_at,
        case_url=console_link(settings, f"cases/{row.id}"),
        **fields,
    )


def backoff_seconds(settings: Settings, attempts: int) -> float:
    base = settings.webhook_backoff_base_seconds * (2 ** max(0, attempts - 1))
    capped = min(settings.webhook_backoff_max_seconds, base)
    return capped * random.uniform(0.8, 1.2)  # jitter: spread retries of many receivers


def _claim(db: Database, settings: Settings, limit: int) -> list[OutboxMessage]:
    now = datetime.now(UTC)
    lease = to_ts(now + timedelta(seconds=settings.webhook_timeout_seconds * 3))
    with db.write() as s:
        stmt = (
            select(OutboxMessage)
            .where(OutboxMessage.status == "pending", OutboxMessage.next_attempt_at <= to_ts(now))
            .order_by(OutboxMessage.next_attempt_at)
            .limit(limit)
        )
        if not db.is_sqlite:
            stmt = stmt.with_for_update(skip_locked=True)
        rows = list(s.scalars(stmt))
        for r in rows:
            # Push the due time past the send timeout: a second dispatcher will not take it.
            r.next_attempt_at = lease
        return rows


def _renew(db: Database, settings: Settings, msg: OutboxMessage) -> bool:
    """Right before sending, extend this message's lease if we still hold it.

    The claim leases a whole batch, which is then sent one message after another; with slow
    receivers the lease of a later message can run out and another dispatcher may take it.
    Compare-and-set on the lease we wrote: if it changed, the message is no longer ours.
    """
    held = msg.next_attempt_at
    until = datetime.now(UTC) + timedelta(seconds=settings.webhook_timeout_seconds * 3)
    fresh = to_ts(until)
    if fresh == held:  # same microsecond as the claim: keep the new lease distinguishable
        fresh = to_ts(until + timedelta(microseconds=1))
    with db.write() as s:
        res = s.execute(
            update(OutboxMessage)
            .where(
                OutboxMessage.id == msg.id,
                OutboxMessage.status == "pending",
                OutboxMessage.next_attempt_at == held,
            )
            .values(next_attempt_at=fresh)
            .execution_options(synchronize_session=False)
        )
        if res.rowcount != 1:  # type: ignore[attr-defined]
            return False
    msg.next_attempt_at = fresh
    return True


def private_target(url: str) -> str | None:
    """Why ``url`` points into a private network (loopback, RFC 1918, link-local...), or None."""
    host = urlsplit(url).hostname or ""
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError as exc:
        return f"cannot resolve {host}: {exc}"
    for info in infos:
        addr = ipaddress.ip_address(info[4][0])
        if addr.is_private or addr.is_loopback or addr.is_link_local or addr.is_reserved:
            return f"{host} resolves to a non-public address ({addr})"
    return None


def deliver_due(db: Database, settings: Settings, client: httpx.Client, *, limit: int = 50) -> int:
    """Send every due message once; returns how many were delivered.

    Case callbacks (``case.triaged``, ``case.resolved``) go where callers said: unless
    ``callback_allow_private_hosts`` is set, one that resolves to a private address is
    dead-lettered at once (SSRF guard), checked at send time so a DNS change after intake
    cannot get around it. Only messages to an address the operator configured
    (``action_webhook_url``, ``approval_webhook_url``, ``team_webhook_url``) are trusted;
    anything else is guarded, so a new kind of caller-addressed event cannot slip past by
    kind.
    """
    trusted = {
        u
        for u in (
            settings.action_webhook_url,
            settings.approval_webhook_url,
            settings.team_webhook_url,
        )
        if u
    }
    delivered = 0
    for msg in _claim(db, settings, limit):
        if not _renew(db, settings, msg):
            continue  # our batch lease ran out while earlier sends were slow; another took it
        ts = int(time.time())
        error: str | None = None
        if msg.target_url not in trusted and not settings.callback_allow_private_hosts:
            refused = private_target(msg.target_url)
            if refused is not None:
                _record(db, settings, msg.id, f"refused: {refused}", final=True)
                continue
        try:
            resp = client.post(
                msg.target_url,
                content=msg.body.encode(),
                headers={
                    "Content-Type": "application/json",
                    "X-Triage-Event-Id": msg.event_id,
                    "X-Triage-Event": msg.kind,
                    "X-Triage-Timestamp": str(ts),
                    "X-Triage-Signature": sign(settings.webhook_secret, ts, msg.body),
                },
                timeout=settings.webhook_timeout_seconds,
            )
            if not 200 <= resp.status_code < 300:
                error = f"HTTP {resp.status_code}"
        except httpx.HTTPError as exc:
            error = error_text(exc)
        delivered += _record(db, settings, msg.id, error)
    return delivered


def _record(
    db: Database, settings: Settings, msg_id: int, error: str | None, *, final: bool = False
) -> int:
    with db.write() as s:
        msg = s.get(OutboxMessage, msg_id)
        if msg is None or msg.status != "pending":
            return 0
        msg.attempts += 1
        if error is None:
            msg.status = "delivered"
            msg.delivered_at = now_ts()
            msg.last_error = None
            audit.append(
                s,
                audit.SYSTEM,
                "webhook.delivered",
                {"event_id": msg.event_id, "attempts": msg.attempts},
                case_id=msg.case_id,
            )
            return 1
        msg.last_error = error
        if final or msg.attempts >= settings.webhook_max_attempts:
            msg.status = "dead"
            audit.append(
                s,
                audit.SYSTEM,
                "webhook.dead_lettered",
                {"event_id": msg.event_id, "attempts": msg.attempts, "error": error},
                case_id=msg.case_id,
            )
        else:
            msg.next_attempt_at = to_ts(
                datetime.now(UTC) + timedelta(seconds=backoff_seconds(settings, msg.attempts))
            )
        return 0


def list_messages(
    session: Session, status: str | None, limit: int, after_id: int | None = None
) -> list[OutboxMessage]:
    stmt = select(OutboxMessage)
    if status:
        stmt = stmt.where(OutboxMessage.status == status)
    if after_id is not None:
        stmt = stmt.where(OutboxMessage.id > after_id)
    return list(session.scalars(stmt.order_by(OutboxMessage.id).limit(limit)))


def replay(session: Session, msg_id: int, *, actor: audit.Actor) -> OutboxMessage:
    """Re-arm a dead-lettered message for delivery (admin action, audited)."""
    msg = session.get(OutboxMessage, msg_id)
    if msg is None:
        raise NotFound(f"outbox message {msg_id} not found")
    if msg.status != "dead":
        raise Conflict(
            f"only dead-lettered messages can be replayed; this one is {msg.status}", field="status"
        )
    session.execute(
        update(OutboxMessage)
        .where(OutboxMessage.id == msg_id)
        .values(status="pending", attempts=0, next_attempt_at=now_ts(), last_error=None)
    )
    audit.append(
        session, actor, "webhook.replayed", {"event_id": msg.event_id}, case_id=msg.case_id
    )
    session.refresh(msg)
    return msg
