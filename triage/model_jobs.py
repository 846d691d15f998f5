"""Model jobs (training, retraining, background evaluation) recorded in the database.

A job's row is its state: ``GET /v1/models/train`` (and the console) read the newest row of a
kind, so the state survives a restart of the API and every API process sees the same one.

* **One running job per kind in the whole deployment.** A partial unique index on ``kind``
  over ``status = 'running'`` (SQLite and PostgreSQL both have them) makes a second start
  fail inside the database, whichever process or host tries: :func:`start` turns that into
  :class:`~triage.errors.Conflict`. No in-process lock can give that across processes.
* **A dead runner does not block the slot for ever.** The runner refreshes ``heartbeat_at``
  while it works (:func:`beat`); a running row whose heartbeat is older than the lease is read
  as ``interrupted`` (:func:`state`) and closed as such by the next :func:`start` of its kind,
  in the same transaction that inserts the new row.
* **The outcome and its audit event commit together** (:func:`finish` runs in the caller's
  transaction, beside ``audit.append``).

Timestamps are canonical UTC text (see :mod:`triage.models`), so "older than the lease" is a
string comparison that reads the same on both databases.
"""

from __future__ import annotations

import math
import os
import socket
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from triage.common import now_ts, to_ts
from triage.db import Database
from triage.errors import Conflict, NotFound
from triage.models import ModelJobRow

KINDS = ("train", "retrain", "evaluate")
RUNNING, DONE, FAILED, INTERRUPTED = "running", "done", "failed", "interrupted"
STATUSES = (RUNNING, DONE, FAILED, INTERRUPTED)
PROGRESS_MAX = 500  # characters kept of a progress line
ERROR_MAX = 4000


def runner_id() -> str:
    """Who runs a job: ``host:pid``, so an admin can tell which process to look at."""
    return f"{socket.gethostname()}:{os.getpid()}"[:128]


def _stale_before(lease_seconds: float) -> str:
    return to_ts(datetime.now(UTC) - timedelta(seconds=lease_seconds))


def _interrupted_error(row: ModelJobRow) -> str:
    return (
        f"interrupted: {row.runner} stopped reporting (last heartbeat {row.heartbeat_at}); "
        "the process running it ended or hangs; start the job again"
    )


def json_safe(value: Any) -> Any:
    """``value`` with NaN and infinities as ``None``: PostgreSQL's JSON refuses them."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def start(db: Database, kind: str, started_by: str, *, lease_seconds: float) -> dict[str, Any]:
    """Insert a ``running`` row for ``kind`` and return its state; Conflict (field ``status``)
    while another job of the kind runs anywhere. A running row whose heartbeat is older than
    ``lease_seconds`` is closed as ``interrupted`` first, in the same transaction."""
    if kind not in KINDS:
        raise ValueError(f"unknown model job kind {kind!r}")
    ts = now_ts()
    try:
        with db.write() as s:
            stale = s.scalars(
                select(ModelJobRow).where(
                    ModelJobRow.kind == kind,
                    ModelJobRow.status == RUNNING,
                    ModelJobRow.heartbeat_at < _stale_before(lease_seconds),
                )
            ).all()
            for row in stale:
                row.status, row.finished_at = INTERRUPTED, ts
                row.error, row.progress, row.progress_at = _interrupted_error(row), None, None
            s.flush()
            row = ModelJobRow(
                kind=kind,
                status=RUNNING,
                started_by=started_by,
                started_at=ts,
                heartbeat_at=ts,
                runner=runner_id(),
            )
            s.add(row)
            s.flush()
            return _state(row, lease_seconds)
    except IntegrityError as exc:  # the partial unique index: one running row per kind
        raise Conflict("a job of this kind is already running", field="status") from exc


def beat(db: Database, job_id: int, progress: str | None = None) -> None:
    """Refresh the heartbeat (and the progress line, when given) of a running job."""
    ts = now_ts()
    values: dict[str, Any] = {"heartbeat_at": ts}
    if progress is not None:
        values.update(progress=progress[:PROGRESS_MAX], progress_at=ts)
    with db.write() as s:
        s.execute(
            update(ModelJobRow)
            .where(ModelJobRow.id == job_id, ModelJobRow.status == RUNNING)
            .values(**values)
        )


def finish(
    session: Session,
    job_id: int,
    *,
    result: dict[str, Any] | None = None,
    error: str | None = None,
) -> None:
    """Close a job as ``done`` (with ``result``) or ``failed`` (with ``error``) in the
    caller's transaction. Closes it even if another process has meanwhile declared it
    interrupted: the work did finish, and the row should say how."""
    row = session.get(ModelJobRow, job_id)
    if row is None:  # pragma: no cover - rows are never deleted
        raise NotFound(f"model job {job_id} not found")
    row.status = FAILED if error is not None else DONE
    row.finished_at = now_ts()
    row.progress = row.progress_at = None
    row.result = json_safe(result) if result is not None else None
    row.error = error[:ERROR_MAX] if error is not None else None


def interrupt(db: Database, job_id: int, reason: str) -> None:
    """Close a still-running job as ``interrupted`` with ``reason`` (its runner is going
    away); a job that has ended is left as it is."""
    with db.write() as s:
        s.execute(
            update(ModelJobRow)
            .where(ModelJobRow.id == job_id, ModelJobRow.status == RUNNING)
            .values(
                status=INTERRUPTED,
                finished_at=now_ts(),
                error=f"interrupted: {reason}"[:ERROR_MAX],
                progress=None,
                progress_at=None,
            )
        )


def _state(row: ModelJobRow, lease_seconds: float, *, with_result: bool = True) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": row.id,
        "kind": row.kind,
        "status": row.status,
        "started_by": row.started_by,
        "started_at": row.started_at,
        "runner": row.runner,
    }
    if row.status == RUNNING and row.heartbeat_at < _stale_before(lease_seconds):
        # read-only: the next start of this kind closes the row for good
        out.update(status=INTERRUPTED, error=_interrupted_error(row))
    elif row.status == RUNNING:
        out["heartbeat_at"] = row.heartbeat_at
        if row.progress is not None:
            out.update(progress=row.progress, progress_at=row.progress_at)
    else:
        out["finished_at"] = row.finished_at
        if row.error is not None:
            out["error"] = row.error
        if with_result and row.result is not None:
            out["result"] = row.result
    return out


def state(session: Session, kind: str, *, lease_seconds: float) -> dict[str, Any]:
    """The newest job of ``kind`` (``{"status": "idle"}`` if there never was one): ``status``
    running / done / failed / interrupted, who started it and when, the progress line while
    it runs, ``result`` or ``error`` once it ended."""
    row = session.scalars(
        select(ModelJobRow).where(ModelJobRow.kind == kind).order_by(ModelJobRow.id.desc()).limit(1)
    ).first()
    return {"status": "idle"} if row is None else _state(row, lease_seconds)


def get(session: Session, job_id: int, *, lease_seconds: float) -> dict[str, Any]:
    """One job by id, with its result; NotFound if there is none."""
    row = session.get(ModelJobRow, job_id)
    if row is None:
        raise NotFound(f"model job {job_id} not found", field="job_id")
    return _state(row, lease_seconds)


def history(
    session: Session,
    *,
    lease_seconds: float,
    kind: str | None = None,
    status: str | None = None,
    before: int | None = None,
    limit: int = 50,
) -> tuple[list[dict[str, Any]], int | None]:
    """Jobs newest first, without their results (``get`` has them), and the cursor for the
    next page (the ``before`` to pass), ``None`` on the last page. ``status`` filters on the
    stored status (a job whose runner died reads ``interrupted`` but is stored ``running``
    until the next start of its kind closes it)."""
    query = select(ModelJobRow).order_by(ModelJobRow.id.desc()).limit(limit + 1)
    if kind is not None:
        query = query.where(ModelJobRow.kind == kind)
    if status is not None:
        query = query.where(ModelJobRow.status == status)
    if before is not None:
        query = query.where(ModelJobRow.id < before)
    rows = list(session.scalars(query))
    page = rows[:limit]
    cursor = page[-1].id if len(rows) > limit and page else None
    return [_state(r, lease_seconds, with_result=False) for r in page], cursor
