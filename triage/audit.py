"""Append-only, hash-chained audit trail.

Every event's ``hash`` is SHA-256 over its canonical JSON, which includes the previous event's
hash and the event's own sequence number::

    {"action":..,"actor_id":..,"actor_role":..,"actor_type":..,"case_id":..,
     "payload":<canonical JSON>,"prev_hash":"<64 hex>","seq":<int>,"ts":"<UTC ISO>"}

(keys sorted, no spaces, UTF-8; ``payload`` is stored as canonical JSON text and embedded
verbatim). The first event's ``prev_hash`` is 64 zeros. Anyone can re-verify an export with this
rule alone; ``docs/audit.md`` shows a ten-line verifier.

Concurrency contract: appends are serialised so the chain can never fork. On PostgreSQL the
``audit_head`` row is locked (``SELECT ... FOR UPDATE``) right before the append and held to
commit; on SQLite the write session already holds the database write lock
(``BEGIN IMMEDIATE``). Call :func:`append` as late as possible in a transaction: the lock is
held until commit.

Tamper evidence: :func:`verify` walks the chain and reports the first sequence number where it
breaks (edited, deleted, inserted or reordered rows); the ``audit_head`` row catches a truncated
tail. Anchor the head hash outside the database (``triage audit verify`` prints it) to make even
a full rewrite by a database superuser detectable.
"""

from __future__ import annotations

import csv
import enum
import hashlib
import io
import json
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from json.encoder import encode_basestring
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from triage.common import canonical_json, now_ts
from triage.models import AuditEvent, AuditHead

if TYPE_CHECKING:  # pragma: no cover
    from triage.db import Database

logger = logging.getLogger(__name__)

GENESIS = "0" * 64


class ActorType(enum.StrEnum):
    system = "system"
    ai = "ai"
    human = "human"
    integration = "integration"


@dataclass(frozen=True, slots=True)
class Actor:
    """Who did something: a person, an integration, the AI pipeline or the system itself."""

    type: ActorType
    id: str
    role: str | None = None


SYSTEM = Actor(ActorType.system, "system", None)
PIPELINE = Actor(ActorType.ai, "triage-pipeline", None)


def _s(value: str | None) -> str:
    return "null" if value is None else encode_basestring(value)


def canonical_entry(
    seq: int,
    ts: str,
    actor_type: str,
    actor_id: str,
    actor_role: str | None,
    case_id: str | None,
    action: str,
    payload: str,
    prev_hash: str,
) -> str:
    """The event's canonical JSON (see module docstring). Positional, in column order, because
    :func:`verify` calls it once per row and keyword passing would cost a third of its time."""
    return (
        f'{{"action":{_s(action)},"actor_id":{_s(actor_id)},"actor_role":{_s(actor_role)},'
        f'"actor_type":{_s(actor_type)},"case_id":{_s(case_id)},"payload":{payload},'
        f'"prev_hash":"{prev_hash}","seq":{seq},"ts":"{ts}"}}'
    )


def entry_hash(*fields: Any) -> str:
    """SHA-256 hex of :func:`canonical_entry` over the same positional fields."""
    return hashlib.sha256(canonical_entry(*fields).encode("utf-8")).hexdigest()


_HEAD = text("SELECT seq, hash FROM audit_head WHERE id = 1")
_HEAD_FOR_UPDATE = text("SELECT seq, hash FROM audit_head WHERE id = 1 FOR UPDATE")
_COLUMNS = "seq, ts, actor_type, actor_id, actor_role, case_id, action, payload, prev_hash, hash"
_VALUES = (
    ":seq, :ts, :actor_type, :actor_id, :actor_role, :case_id, :action, :payload, :prev_hash, :hash"
)
_INSERT = text(f"INSERT INTO audit_events ({_COLUMNS}) VALUES ({_VALUES})")
_MOVE_HEAD = text("UPDATE audit_head SET seq = :seq, hash = :hash WHERE id = 1")
# PostgreSQL: one round trip for both writes.
_INSERT_AND_MOVE_HEAD = text(
    f"WITH ins AS (INSERT INTO audit_events ({_COLUMNS}) VALUES ({_VALUES})) "
    "UPDATE audit_head SET seq = :seq, hash = :hash WHERE id = 1"
)


def append(
    session: Session,
    actor: Actor,
    action: str,
    payload: dict[str, Any] | None = None,
    *,
    case_id: str | None = None,
) -> int:
    """Append one event inside the caller's transaction and return its sequence number.

    On PostgreSQL the head row is read ``FOR UPDATE``: the row lock serialises appenders until
    the transaction ends, so two transactions can never chain onto the same predecessor.
    """
    # Serialised now: a caller may reuse or change its payload dict after a queued append.
    body = canonical_json(payload or {})
    queue = session.info.get(_DEFERRED)
    if queue is not None:
        queue.append((actor, action, body, case_id, now_ts()))
        return 0
    return _append_now(session, actor, action, body, case_id, now_ts())


def with_event(
    db: Database, actor: Actor, action: str, step: Callable[[], dict[str, Any]]
) -> dict[str, Any]:
    """Run ``step``, a change outside the database (the model registry's files), inside the
    write transaction that appends its audit event, and return the event's payload (what
    ``step`` returned). The database is reached before the step, so one that cannot be written
    refuses the step (SQLAlchemy's error) instead of leaving it unrecorded; a step that raises
    writes no event. Files are not rows: a commit that fails after the step leaves the step
    without its event, the one window this cannot close."""
    with db.write() as session:
        session.execute(text("select 1"))
        payload = step()
        append(session, actor, action, payload)
    return payload


@dataclass(frozen=True, slots=True)
class Intent:
    """The three events of a long change (:func:`with_intent`): ``started`` with ``payload``
    before it, then ``done`` (the step's payload) or ``failed`` (the error) after it."""

    started: str
    done: str
    failed: str
    payload: dict[str, Any]


def with_intent(
    db: Database, actor: Actor, intent: Intent, step: Callable[[], dict[str, Any]]
) -> dict[str, Any]:
    """Run ``step``, a long change outside the database (a knowledge-base ingest or re-index
    that encodes for seconds or minutes), between two audit events, and return its payload.

    ``intent.started`` is appended and committed first, so the trail names the change before
    it happens and a database that cannot be written refuses it (SQLAlchemy's error, nothing
    changed). The step then runs with no transaction open: :func:`with_event` would hold
    SQLite's write lock throughout, and every writer (intake included) would wait for the
    encoder. Afterwards ``intent.done`` carries the step's payload, or ``intent.failed`` the
    error's type and message (the step's exception propagates), each with ``started_seq``. If
    ``done`` cannot be written, :class:`~triage.errors.Unavailable` says so: the change happened
    and the trail shows it started without an outcome, which is visible, unlike
    :func:`with_event`'s window (an unwritable ``failed`` is logged; the step's error is raised).
    """
    from sqlalchemy.exc import SQLAlchemyError

    from triage.errors import Unavailable

    with db.write() as session:
        seq = append(session, actor, intent.started, intent.payload)

    def finish(action: str, payload: dict[str, Any]) -> None:
        try:
            with db.write() as session:
                append(session, actor, action, {"started_seq": seq, **payload})
        except SQLAlchemyError as exc:
            raise Unavailable(
                f"the change ran, but its audit outcome could not be written "
                f"({type(exc).__name__}); the trail shows it started (event {seq}, "
                f"{intent.started})",
                started_seq=seq,
            ) from exc

    try:
        result = step()
    except Exception as exc:
        try:
            finish(intent.failed, {"error": f"{type(exc).__name__}: {exc}"[:2000]})
        except Unavailable:  # the step's own error is the one to report
            logger.exception("audit: %s (event %d) has no outcome event", intent.started, seq)
        raise
    finish(intent.done, result)
    return result


_DEFERRED = "triage.audit.deferred"


@contextmanager
def deferred(session: Session) -> Iterator[None]:
    """Queue the appends made inside the block and write them, in order and with the times
    they were made, when the block ends (still inside the caller's transaction).

    Why: on PostgreSQL the first append locks the chain head until commit, which serialises
    every auditing transaction; a block that stores many cases would hold it throughout.
    Queued, the lock is held only for the appends themselves. If the block raises, nothing is
    written (the transaction is rolled back anyway). :func:`append` returns 0 for a queued
    event. Nested blocks queue into the outermost one.
    """
    if session.info.get(_DEFERRED) is not None:
        yield
        return
    queue: list[tuple[Actor, str, str, str | None, str]] = []
    session.info[_DEFERRED] = queue
    try:
        yield
    finally:
        session.info.pop(_DEFERRED, None)
    for actor, action, body, case_id, ts in queue:
        _append_now(session, actor, action, body, case_id, ts)


def _append_now(
    session: Session,
    actor: Actor,
    action: str,
    body: str,
    case_id: str | None,
    ts: str,
) -> int:
    postgres = session.get_bind().dialect.name == "postgresql"
    # Core statements on the session's connection: same transaction, none of the ORM's
    # per-statement bookkeeping (this runs for every state change in the product).
    conn = session.connection()
    head = conn.execute(_HEAD_FOR_UPDATE if postgres else _HEAD).one()
    head_seq: int = head[0]
    head_hash: str = head[1]
    seq = head_seq + 1
    digest = entry_hash(
        seq, ts, actor.type.value, actor.id, actor.role, case_id, action, body, head_hash
    )
    params = {
        "seq": seq,
        "ts": ts,
        "actor_type": actor.type.value,
        "actor_id": actor.id,
        "actor_role": actor.role,
        "case_id": case_id,
        "action": action,
        "payload": body,
        "prev_hash": head_hash,
        "hash": digest,
    }
    if postgres:
        conn.execute(_INSERT_AND_MOVE_HEAD, params)
    else:
        conn.execute(_INSERT, params)
        conn.execute(_MOVE_HEAD, {"seq": seq, "hash": digest})
    return seq


@dataclass(frozen=True)
class VerifyResult:
    intact: bool
    events: int
    head_seq: int
    head_hash: str
    first_bad_seq: int | None = None
    problem: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "intact": self.intact,
            "events": self.events,
            "head_seq": self.head_seq,
            "head_hash": self.head_hash,
            "first_bad_seq": self.first_bad_seq,
            "problem": self.problem,
        }


_VERIFY_SQL = (
    "SELECT seq, ts, actor_type, actor_id, actor_role, case_id, action, payload, prev_hash, hash"
    " FROM audit_events ORDER BY seq"
)


def head(session: Session) -> tuple[int, str]:
    """The chain's head: the last event's sequence number and hash (0 and 64 zeros when empty)."""
    row = session.execute(select(AuditHead.seq, AuditHead.hash).where(AuditHead.id == 1)).one()
    return row.seq, row.hash


def verify(session: Session, *, batch: int = 20_000) -> VerifyResult:
    """Walk the whole chain; report intact or the first sequence number where it breaks.

    Runs on the raw DB-API cursor in batches: SQLAlchemy row objects would cost more than the
    hashing at a million events. ``tests/test_audit.py`` pins the inlined encoding to
    :func:`canonical_entry`.
    """
    head_row = session.execute(select(AuditHead.seq, AuditHead.hash).where(AuditHead.id == 1)).one()
    raw = session.connection().connection.dbapi_connection
    assert raw is not None
    # A named cursor streams from the server on PostgreSQL; SQLite cursors stream anyway.
    postgres = session.get_bind().dialect.name == "postgresql"
    cur = raw.cursor(name="audit_verify") if postgres else raw.cursor()
    cur.execute(_VERIFY_SQL)
    expected_seq = 1
    prev = GENESIS
    count = 0
    sha = hashlib.sha256
    esc = encode_basestring
    try:
        while rows := cur.fetchmany(batch):
            for seq, ts, a_type, a_id, a_role, case_id, action, payload, prev_hash, digest in rows:
                if seq != expected_seq:
                    return _broken(
                        count, head_row, expected_seq, f"sequence {expected_seq} is missing"
                    )
                if prev_hash != prev:
                    return _broken(
                        count, head_row, seq, "prev_hash does not match the previous event"
                    )
                # canonical_entry() inlined: this loop is the whole cost of verification.
                doc = (
                    f'{{"action":{esc(action)},"actor_id":{esc(a_id)},'
                    f'"actor_role":{"null" if a_role is None else esc(a_role)},'
                    f'"actor_type":{esc(a_type)},'
                    f'"case_id":{"null" if case_id is None else esc(case_id)},'
                    f'"payload":{payload},"prev_hash":"{prev_hash}","seq":{seq},"ts":"{ts}"}}'
                )
                if sha(doc.encode()).hexdigest() != digest:
                    return _broken(count, head_row, seq, "content does not match its hash")
                prev = digest
                expected_seq += 1
                count += 1
    finally:
        cur.close()
    if head_row.seq != count or head_row.hash != prev:
        return _broken(
            count,
            head_row,
            count + 1 if head_row.seq > count else head_row.seq,
            f"chain ends at {count} but the head records {head_row.seq}",
        )
    return VerifyResult(True, count, head_row.seq, head_row.hash)


def _broken(count: int, head: Any, seq: int, problem: str) -> VerifyResult:
    return VerifyResult(False, count, head.seq, head.hash, first_bad_seq=seq, problem=problem)


@dataclass(frozen=True, slots=True)
class Unfinished:
    """A long change whose start event (:func:`with_intent`) has no outcome event: still
    running, or its process stopped (crashed, killed) before it could say how it ended."""

    seq: int
    ts: str
    action: str
    actor_id: str

    def as_dict(self) -> dict[str, Any]:
        return {"seq": self.seq, "ts": self.ts, "action": self.action, "actor_id": self.actor_id}


_STARTED = text(
    "SELECT seq, ts, action, actor_id FROM audit_events WHERE action LIKE '%!_started' "
    "ESCAPE '!' ORDER BY seq"
)
_OUTCOMES = text(
    "SELECT payload FROM audit_events WHERE seq > :after AND payload LIKE '%\"started_seq\":%'"
)


def unfinished(session: Session) -> list[Unfinished]:
    """Start events of :func:`with_intent` (actions ending ``_started``) that no later event
    names as its ``started_seq``, oldest first. For auditors beside :func:`verify`: the chain
    can be intact while a change's outcome is missing."""
    started = [
        Unfinished(int(seq), str(ts), str(action), str(actor))
        for seq, ts, action, actor in session.execute(_STARTED).tuples()
    ]
    if not started:
        return []
    closed = {
        json.loads(str(payload)).get("started_seq")
        for (payload,) in session.execute(_OUTCOMES, {"after": started[0].seq}).tuples()
    }
    return [u for u in started if u.seq not in closed]


@dataclass(frozen=True)
class AuditFilter:
    case_id: str | None = None
    actor_id: str | None = None
    action: str | None = None
    since: str | None = None
    until: str | None = None
    after_seq: int | None = None


def _filtered(f: AuditFilter) -> Any:
    stmt = select(AuditEvent)
    if f.case_id:
        stmt = stmt.where(AuditEvent.case_id == f.case_id)
    if f.actor_id:
        stmt = stmt.where(AuditEvent.actor_id == f.actor_id)
    if f.action:
        stmt = stmt.where(AuditEvent.action == f.action)
    if f.since:
        stmt = stmt.where(AuditEvent.ts >= f.since)
    if f.until:
        stmt = stmt.where(AuditEvent.ts < f.until)
    if f.after_seq is not None:
        stmt = stmt.where(AuditEvent.seq > f.after_seq)
    return stmt


def event_dict(e: AuditEvent) -> dict[str, Any]:
    return {
        "seq": e.seq,
        "ts": e.ts,
        "actor_type": e.actor_type,
        "actor_id": e.actor_id,
        "actor_role": e.actor_role,
        "case_id": e.case_id,
        "action": e.action,
        "payload": json.loads(e.payload),
        "prev_hash": e.prev_hash,
        "hash": e.hash,
    }


def list_events(session: Session, f: AuditFilter, limit: int) -> list[AuditEvent]:
    return list(session.scalars(_filtered(f).order_by(AuditEvent.seq).limit(limit)))


def count_events(session: Session) -> int:
    return int(session.scalar(select(func.count()).select_from(AuditEvent)) or 0)


def iter_events(session: Session, f: AuditFilter, *, batch: int = 5_000) -> Iterator[AuditEvent]:
    """Every matching event in sequence order, fetched in keyset pages (constant memory)."""
    after = f.after_seq or 0
    while True:
        page = list_events(
            session,
            AuditFilter(f.case_id, f.actor_id, f.action, f.since, f.until, after),
            batch,
        )
        if not page:
            return
        yield from page
        after = page[-1].seq


CSV_COLUMNS = [
    "seq",
    "ts",
    "actor_type",
    "actor_id",
    "actor_role",
    "case_id",
    "action",
    "payload",
    "prev_hash",
    "hash",
]


def export_lines(events: Iterator[AuditEvent], fmt: str) -> Iterator[str]:
    """Render events as JSONL (one canonical object per line) or CSV (with a header row).

    The payload is exported exactly as stored, so an export can be re-verified offline.
    """
    if fmt == "jsonl":
        for e in events:
            d = event_dict(e)
            d["payload"] = e.payload
            yield json.dumps(d, ensure_ascii=False) + "\n"
        return
    if fmt != "csv":
        raise ValueError(f"unknown export format {fmt!r}; use jsonl or csv")
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(CSV_COLUMNS)
    yield buf.getvalue()
    for e in events:
        buf.seek(0)
        buf.truncate()
        writer.writerow(
            [
                e.seq,
                e.ts,
                e.actor_type,
                e.actor_id,
                e.actor_role or "",
                e.case_id or "",
                e.action,
                e.payload,
                e.prev_hash,
                e.hash,
            ]
        )
        yield buf.getvalue()
