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
* **Cancelling is cooperative.** :func:`request_cancel` marks the row; the runner sees the mark
  at its next heartbeat and the job stops at its next progress line (:class:`JobCancelled`),
  ending ``cancelled``. A step that reports nothing (a model fit) finishes first; a job that
  completes before it notices ends ``done``, since its work (a registered version) exists. A
  job whose runner is gone is closed as ``cancelled`` at once, which frees its slot.

Timestamps are canonical UTC text (see :mod:`triage.models`), so "older than the lease" is a
string comparison that reads the same on both databases.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from triage import audit
from triage.common import now_ts, storable_text, to_ts
from triage.db import Database
from triage.errors import Conflict, NotFound, TriageError
from triage.models import ModelJobRow
from triage.settings import Settings

log = logging.getLogger("triage.model_jobs")
Progress = Callable[[str], None]
Work = Callable[[Progress], dict[str, Any]]

KINDS = ("train", "retrain", "evaluate")
RUNNING, DONE, FAILED, INTERRUPTED, CANCELLED = (
    "running",
    "done",
    "failed",
    "interrupted",
    "cancelled",
)
STATUSES = (RUNNING, DONE, FAILED, INTERRUPTED, CANCELLED)
PROGRESS_MAX = 500  # characters kept of a progress line
MAX_ID = 2**63 - 1  # ids are bigints: a larger number names no job (and would overflow)
ERROR_MAX = 4000


class JobCancelled(TriageError):
    """Raised into a job's work at its next progress line once a cancel was requested."""

    code = "cancelled"


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
        raise Conflict(_already_running(db, kind), field="status") from exc


def _already_running(db: Database, kind: str) -> str:
    with db.read() as s:
        row = s.scalars(
            select(ModelJobRow).where(ModelJobRow.kind == kind, ModelJobRow.status == RUNNING)
        ).first()
        if row is None:  # it ended in between: the caller may simply try again
            return f"a {kind} job was already running; try again"
        return (
            f"a {kind} job is already running (job {row.id}, started by {row.started_by} at "
            f"{row.started_at} on {row.runner})"
        )


def beat(db: Database, job_id: int, progress: str | None = None) -> str | None:
    """Refresh the heartbeat (and the progress line, when given) of a running job; returns
    who asked to cancel it, if anyone has."""
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
        return s.scalar(select(ModelJobRow.cancel_requested_by).where(ModelJobRow.id == job_id))


def request_cancel(
    db: Database, job_id: int, actor: audit.Actor, *, lease_seconds: float
) -> dict[str, Any]:
    """Ask a running job to stop and return its state: the runner stops it at its next
    progress line (``cancel_requested_by`` shows meanwhile). A job whose runner stopped
    reporting is closed as ``cancelled`` at once. Audited ``model.job_cancel_requested`` in
    the same transaction (once: asking again changes nothing). NotFound for an unknown id,
    Conflict (field ``job_id``) for a job that has ended."""
    actor_id = actor.id
    ts = now_ts()
    with db.write() as s:
        row = s.get(ModelJobRow, job_id, with_for_update=True) if 0 < job_id <= MAX_ID else None
        if row is None:
            raise NotFound(f"model job {job_id} not found", field="job_id")
        if row.status != RUNNING:
            raise Conflict(
                f"model job {job_id} has ended ({row.status}); only a running job can be cancelled",
                field="job_id",
            )
        if row.cancel_requested_by is not None:  # asked before: the runner will see it
            return _state(row, lease_seconds)
        row.cancel_requested_by, row.cancel_requested_at = actor_id, ts
        detail: dict[str, Any] = {"job_id": job_id, "kind": row.kind}
        if row.heartbeat_at < _stale_before(lease_seconds):  # nobody left to notice
            row.status, row.finished_at = CANCELLED, ts
            row.progress = row.progress_at = None
            row.error = f"cancelled by {actor_id}; {_interrupted_error(row)}"[:ERROR_MAX]
            detail["closed"] = True
        audit.append(s, actor, "model.job_cancel_requested", detail)
        s.flush()
        return _state(row, lease_seconds)


def finish(
    session: Session,
    job_id: int,
    *,
    result: dict[str, Any] | None = None,
    error: str | None = None,
    cancelled: bool = False,
) -> None:
    """Close a job as ``done`` (with ``result``), ``failed`` (with ``error``) or ``cancelled``
    in the caller's transaction. Closes it even if another process has meanwhile declared it
    interrupted: the work did finish, and the row should say how."""
    row = session.get(ModelJobRow, job_id)
    if row is None:  # pragma: no cover - rows are never deleted
        raise NotFound(f"model job {job_id} not found")
    row.status = CANCELLED if cancelled else FAILED if error is not None else DONE
    row.finished_at = now_ts()
    row.progress = row.progress_at = None
    row.result = json_safe(result) if result is not None else None
    row.error = storable_text(error)[:ERROR_MAX] if error is not None else None


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
    if row.cancel_requested_by is not None:
        out.update(
            cancel_requested_by=row.cancel_requested_by,
            cancel_requested_at=row.cancel_requested_at,
        )
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
    running / done / failed / interrupted / cancelled, who started it, when and where
    (``runner``), who asked to cancel it if anyone did, the progress line while it runs,
    ``result`` or ``error`` once it ended."""
    row = session.scalars(
        select(ModelJobRow).where(ModelJobRow.kind == kind).order_by(ModelJobRow.id.desc()).limit(1)
    ).first()
    return {"status": "idle"} if row is None else _state(row, lease_seconds)


def get(session: Session, job_id: int, *, lease_seconds: float) -> dict[str, Any]:
    """One job by id, with its result; NotFound if there is none."""
    row = session.get(ModelJobRow, job_id) if 0 < job_id <= MAX_ID else None
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
        query = query.where(ModelJobRow.id < min(before, MAX_ID))
    rows = list(session.scalars(query))
    page = rows[:limit]
    cursor = page[-1].id if len(rows) > limit and page else None
    return [_state(r, lease_seconds, with_result=False) for r in page], cursor


def prune(
    db: Database, actor: audit.Actor, *, older_than_days: float, dry_run: bool = False
) -> int:
    """Delete ended jobs that finished more than ``older_than_days`` ago (their results go;
    the audit events of their outcomes stay) and return how many; running jobs are never
    touched. Audited ``model.jobs_pruned`` in the same transaction unless ``dry_run``."""
    if older_than_days < 0:
        raise ValueError("older_than_days must not be negative")
    cutoff = to_ts(datetime.now(UTC) - timedelta(days=older_than_days))
    ended = (ModelJobRow.status != RUNNING) & (ModelJobRow.finished_at < cutoff)
    with db.write() as s:
        count = s.scalar(select(func.count()).select_from(ModelJobRow).where(ended)) or 0
        if dry_run or count == 0:
            return int(count)
        s.execute(delete(ModelJobRow).where(ended))
        audit.append(s, actor, "model.jobs_pruned", {"deleted": count, "finished_before": cutoff})
        return int(count)


class Reporter:
    """Writes a running job's progress and heartbeat: a progress line at most once a second
    (the encoder reports every batch), and a heartbeat every ``heartbeat_seconds`` from its own
    thread, so a step that reports nothing for minutes (a model fit) does not read as dead.
    A failed write is logged and skipped: the job itself goes on. ``echo`` also receives
    every line (the CLI prints them)."""

    MIN_INTERVAL = 1.0

    def __init__(
        self,
        db: Database,
        job_id: int,
        *,
        heartbeat_seconds: float,
        echo: Progress | None = None,
    ) -> None:
        self.db, self.job_id, self.echo = db, job_id, echo
        self._lock = threading.Lock()
        self._last_write = 0.0
        self._pending: str | None = None
        self._stopped = threading.Event()
        self.cancelled_by: str | None = None  # set once the database says cancel
        threading.Thread(
            target=self._beat, args=(heartbeat_seconds,), daemon=True, name=f"beat-{job_id}"
        ).start()

    def progress(self, message: str) -> None:
        """Report a progress line; raises JobCancelled once a cancel was requested."""
        if self.cancelled_by is not None:
            raise JobCancelled(f"cancelled by {self.cancelled_by}")
        if self.echo is not None:
            self.echo(message)
        with self._lock:
            self._pending = message
            if time.monotonic() - self._last_write < self.MIN_INTERVAL:
                return  # the heartbeat thread writes it within the second
            self._write()

    def _write(self) -> None:
        message, self._pending = self._pending, None
        self._last_write = time.monotonic()
        try:
            self.cancelled_by = beat(self.db, self.job_id, message) or self.cancelled_by
        except Exception:
            log.warning("model job %s: progress not recorded", self.job_id, exc_info=True)

    def _beat(self, every: float) -> None:
        # Wakes often (cheap), writes only when a held-back progress line waits or a heartbeat
        # is due: a line that arrived within a second of the last write shows a second later.
        while not self._stopped.wait(min(every, self.MIN_INTERVAL)):
            with self._lock:
                since = time.monotonic() - self._last_write
                if not self._stopped.is_set() and (
                    since >= every or (self._pending is not None and since >= self.MIN_INTERVAL)
                ):
                    self._write()

    def stop(self) -> None:
        with self._lock:
            self._stopped.set()


class JobKind:
    """A kind of model job and how its outcome is audited: ``action`` / ``failed_action``,
    ``audit_detail`` picks what of a result goes on the trail (default: all of it; the
    result itself is kept on the job's row). The API runs jobs in a thread (:meth:`start`),
    the CLI in its own (:meth:`run`); both take the same slot and record the same way."""

    def __init__(
        self,
        kind: str,
        action: str,
        failed_action: str,
        audit_detail: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
    ) -> None:
        if kind not in KINDS:
            raise ValueError(f"unknown model job kind {kind!r}")
        self.kind, self.action, self.failed_action = kind, action, failed_action
        self.audit_detail = audit_detail or (lambda out: out)

    def state(self, db: Database, settings: Settings) -> dict[str, Any]:
        """The newest job of this kind (see :func:`state`)."""
        with db.read() as s:
            return state(s, self.kind, lease_seconds=settings.model_job_lease_seconds)

    def start(
        self,
        db: Database,
        settings: Settings,
        actor: audit.Actor,
        work: Work,
        *,
        running: set[int],
    ) -> dict[str, Any]:
        """Take the slot (Conflict while a job of this kind runs anywhere) and run ``work``
        in a daemon thread; returns the new job's state. ``running`` holds the job's id while
        its thread runs (the API closes those at shutdown)."""
        lease = settings.model_job_lease_seconds
        job = start(db, self.kind, actor.id, lease_seconds=lease)
        job_id: int = job["id"]
        running.add(job_id)
        reporter = Reporter(db, job_id, heartbeat_seconds=lease / 4)

        def thread() -> None:
            try:
                self._execute(db, actor, job_id, work, reporter)
            except Exception:  # the database failed us: the row reads interrupted later
                log.exception("model job %s (%s) could not record its outcome", job_id, self.kind)
            finally:
                running.discard(job_id)

        threading.Thread(target=thread, daemon=True, name=f"model-job-{job_id}").start()
        return job

    def run(
        self,
        db: Database,
        settings: Settings,
        actor: audit.Actor,
        work: Work,
        *,
        echo: Progress | None = None,
    ) -> dict[str, Any]:
        """Take the slot and run ``work`` in the caller's thread (the CLI), recording it as
        :meth:`start` does; returns the result, or re-raises the work's exception once the
        failure is recorded."""
        lease = settings.model_job_lease_seconds
        job_id: int = start(db, self.kind, actor.id, lease_seconds=lease)["id"]
        reporter = Reporter(db, job_id, heartbeat_seconds=lease / 4, echo=echo)
        try:
            out, error = self._execute(db, actor, job_id, work, reporter)
        except BaseException:  # Ctrl-C or a database failure: do not leave it "running"
            interrupt(db, job_id, "the command running it stopped")
            raise
        if error is not None:
            raise error
        return out

    def _execute(
        self, db: Database, actor: audit.Actor, job_id: int, work: Work, reporter: Reporter
    ) -> tuple[dict[str, Any], Exception | None]:
        # The outcome and its audit event commit in one transaction.
        out: dict[str, Any] = {}
        error: Exception | None = None
        try:
            out = work(reporter.progress)
        except Exception as exc:  # reported through the job's state, and audited
            error = exc
        finally:
            reporter.stop()  # also on Ctrl-C: no heartbeat after the work
        who = reporter.cancelled_by
        message: str | None = None  # None: done
        if error is not None and who is not None:  # whatever the work wrapped JobCancelled in
            message = f"cancelled by {who}"
            error = JobCancelled(message)
            action = "model.job_cancelled"
            detail: dict[str, Any] = {"kind": self.kind, "cancelled_by": who}
        elif error is not None:
            message = str(error) or type(error).__name__
            action, detail = self.failed_action, {"error": message}
        else:
            action, detail = self.action, self.audit_detail(out)
        with db.write() as s:
            if message is None:
                finish(s, job_id, result=out)
            else:
                finish(s, job_id, error=message, cancelled=isinstance(error, JobCancelled))
            audit.append(s, actor, action, {**detail, "job_id": job_id})
        return out, error


TRAINING = JobKind("train", "model.trained", "model.train_failed")
RETRAINING = JobKind("retrain", "model.retrained", "model.retrain_failed")
# the audit event is the one a synchronous evaluation writes, without the metrics
EVALUATION = JobKind(
    "evaluate",
    "model.evaluated",
    "model.evaluate_failed",
    lambda out: {k: v for k, v in out.items() if k != "metrics"},
)
