"""Small shared helpers: sortable ids, canonical timestamps and canonical JSON."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def new_id() -> str:
    """A 26-character ULID: 48-bit millisecond time + 80 random bits, Crockford base32.

    Ids sort by creation time, which keeps B-tree inserts local and makes ids readable in logs.
    """
    value = (int(time.time() * 1000) << 80) | int.from_bytes(os.urandom(10), "big")
    out = []
    for _ in range(26):
        out.append(_CROCKFORD[value & 31])
        value >>= 5
    return "".join(reversed(out))


def to_ts(dt: datetime) -> str:
    """Canonical UTC timestamp text, microsecond precision: ``2026-11-26T16:20:37.123456Z``."""
    if dt.tzinfo is None:
        raise ValueError("naive datetime")
    return dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# Offset of this context's clock from the wall clock; set only by :func:`replayed_at`.
_CLOCK_OFFSET: ContextVar[timedelta | None] = ContextVar("triage_clock_offset", default=None)


def utcnow() -> datetime:
    """The current time in UTC: the wall clock, shifted in a :func:`replayed_at` block."""
    now = datetime.now(UTC)
    offset = _CLOCK_OFFSET.get()
    return now if offset is None else now + offset


@contextmanager
def replayed_at(when: datetime) -> Iterator[None]:
    """Inside the block, in this context only (not other threads), the clock reads ``when``
    and runs on from there: what is written is stamped as if it had happened then.

    For loading history that happened in the past (the demo's weeks of closed cases), never
    for serving requests. Covers what cases, the pipeline, actions and the audit trail stamp
    (:func:`now_ts`, :func:`utcnow`); ids (:func:`new_id`) keep the wall clock.
    """
    token = _CLOCK_OFFSET.set(when - datetime.now(UTC))
    try:
        yield
    finally:
        _CLOCK_OFFSET.reset(token)


def now_ts() -> str:
    return to_ts(utcnow())


def parse_ts(value: str) -> datetime:
    return datetime.strptime(value, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)


def _default(obj: Any) -> Any:
    if isinstance(obj, Decimal):
        return str(obj)
    if isinstance(obj, datetime):
        return to_ts(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def canonical_json(obj: Any) -> str:
    """Deterministic JSON: sorted keys, no spaces, UTF-8 kept, Decimals as strings."""
    return json.dumps(
        obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=_default
    )


def storable_text(text: str) -> str:
    """``text`` with any NUL written as ``\\x00``: PostgreSQL cannot store U+0000 in a text
    column. For text the product composes from foreign sources (exception messages quoting an
    LLM's reply, a data file or a receiver); client input with a NUL is refused instead."""
    return text.replace("\x00", "\\x00")


def error_text(exc: BaseException, limit: int = 500) -> str:
    """``"ExcType: message"``, storable (see :func:`storable_text`), cut to ``limit``."""
    return storable_text(f"{type(exc).__name__}: {exc}")[:limit]
