"""Scale-out job engine: triage jobs on procrastinate (PostgreSQL), for workers on many machines.

With ``TRIAGE_JOB_ENGINE=embedded`` (the default) nothing here runs: the embedded worker
(:mod:`triage.worker`) polls the ``cases`` table. With ``procrastinate``:

* **Atomic enqueue.** Intake calls :func:`on_cases_accepted` inside the transaction that
  inserts the cases; the jobs are inserted through procrastinate's own deferrer on that same
  connection (``connection=`` of :meth:`procrastinate.manager.JobManager.batch_defer_jobs`).
  An accepted case therefore always has its job and a rolled-back intake has none. Each job
  carries the queueing lock ``case:<id>``: a case has at most one waiting (``todo``) job.
* **The task** (:data:`TASK_NAME`) runs :func:`triage.pipeline.run_case`, which is idempotent
  per case (claim with a lease, store only while the lease is held), so a redelivered job is
  harmless. A stage failure that the pipeline will retry raises :class:`TriageRetry` and
  procrastinate re-schedules the job with exponential backoff; when the pipeline gives up
  (``max_triage_attempts``) the case is ``failed`` and the job ends ``failed``: the dead
  letter admins see in ``GET /v1/jobs?status=failed`` and re-drive with :func:`retry_job`.
  Infrastructure errors (database, network) are retried ``job_max_attempts`` times.
* **Housekeeping** (lease recovery, SLA sweeps, webhook delivery, resolved-case indexing,
  re-queueing jobs of dead workers, and the reconciliation sweep that enqueues a job for any
  ``received`` case without one) runs in one thread per worker process, but only one worker
  in the whole deployment runs a round at a time: the round holds a PostgreSQL session
  advisory lock, which the server drops by itself if the holder dies.

procrastinate is imported lazily, so the embedded default never loads it.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

from triage import audit, cases, pipeline
from triage.common import now_ts, parse_ts
from triage.db import Database
from triage.errors import Conflict, NotFound
from triage.lifecycle import Status
from triage.models import Case
from triage.settings import Settings

if TYPE_CHECKING:  # pragma: no cover
    import procrastinate
    from procrastinate.manager import JobManager

log = logging.getLogger("triage.jobs")

PROCRASTINATE = "procrastinate"
QUEUE = "triage"
TASK_NAME = "triage.run_case"
# Session advisory lock key for housekeeping rounds ("triagehk" as 8 bytes, fits a bigint).
HOUSEKEEPING_LOCK = int.from_bytes(b"triagehk", "big") & 0x7FFFFFFFFFFFFFFF
# procrastinate runs higher priorities first; P1 is the most urgent case priority.
JOB_PRIORITY = {"P1": 30, "P2": 20, "P3": 10, "P4": 0}
LIST_STATUSES = ("todo", "doing", "failed", "succeeded", "cancelled", "aborted")


class TriageRetry(Exception):
    """The pipeline put the case back to ``received`` to try again: retry the job later,
    when the case's own backoff (``not_before_seconds``) says so."""

    def __init__(self, message: str, not_before_seconds: float | None = None) -> None:
        super().__init__(message)
        self.not_before_seconds = not_before_seconds


class TriageFailed(Exception):
    """The pipeline gave up on the case (now ``failed``): the job ends ``failed``, no retry."""


def enabled(settings: Settings) -> bool:
    return settings.job_engine == PROCRASTINATE


def require_engine(settings: Settings) -> None:
    """Refuse, with the fix in the message, to run the job engine without PostgreSQL."""
    if not settings.is_postgres:
        raise ValueError(
            "the procrastinate job engine needs PostgreSQL: set TRIAGE_DATABASE_URL="
            "postgresql+psycopg://user:pass@host:5432/db and TRIAGE_JOB_ENGINE=procrastinate"
        )


def queueing_lock(case_id: str) -> str:
    return f"case:{case_id}"


def conninfo(settings: Settings) -> str:
    """The database URL as a libpq connection string for psycopg (driver name dropped, query
    options such as ``options=-csearch_path=...`` kept)."""
    url = make_url(settings.resolved_database_url).set(drivername="postgresql")
    return url.render_as_string(hide_password=False)


# ------------------------------------------------------------------ schema


def schema_present(session: Session) -> bool:
    return session.scalar(text("SELECT to_regclass('procrastinate_jobs') IS NOT NULL")) is True


def ensure_schema(settings: Settings) -> bool:
    """Apply procrastinate's schema if it is missing; True if it was applied now.

    Idempotent and safe when several deploy steps run it at once (a transaction-scoped
    advisory lock serialises them). Upgrading procrastinate itself to a version with a new
    schema needs its migration files (``procrastinate schema --migrations-path``); see
    docs/deployment.md.
    """
    import psycopg
    from procrastinate.schema import SchemaManager

    require_engine(settings)
    with psycopg.connect(conninfo(settings)) as conn:
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (HOUSEKEEPING_LOCK - 1,))
        row = conn.execute("SELECT to_regclass('procrastinate_jobs') IS NOT NULL").fetchone()
        if row and row[0]:
            return False
        conn.execute(SchemaManager.get_schema())
        # The reconciliation sweep and the admin listing look jobs up by queueing lock in any
        # status; procrastinate only indexes it for waiting jobs.
        conn.execute(
            "CREATE INDEX IF NOT EXISTS triage_jobs_queueing_lock_idx "
            "ON procrastinate_jobs (queueing_lock)"
        )
        return True


# ------------------------------------------------------------------ enqueue


def _manager() -> JobManager:
    """A job manager for deferring on a caller's connection (its own pool is never opened)."""
    from procrastinate import SyncPsycopgConnector
    from procrastinate.manager import JobManager

    return JobManager(SyncPsycopgConnector())


def _raw(session: Session) -> Any:
    # The psycopg connection under the session's transaction: jobs written through it commit
    # or roll back with the case rows.
    return session.connection().connection.driver_connection


def _job(case_id: str, priority: str | None, not_before: str | None = None) -> Any:
    from procrastinate import jobs as pjobs

    scheduled = parse_ts(not_before) if not_before and not_before > now_ts() else None
    return pjobs.Job(
        id=None,
        queue=QUEUE,
        task_name=TASK_NAME,
        lock=None,
        queueing_lock=queueing_lock(case_id),
        task_kwargs={"case_id": case_id},
        priority=JOB_PRIORITY.get(priority or "", 0),
        scheduled_at=scheduled,
    )


def on_cases_accepted(session: Session, settings: Settings, case_ids: Sequence[str]) -> None:
    """Intake hook: enqueue a triage job per new case in the caller's transaction.

    A no-op with the embedded engine (its worker reads the cases table). Raises if the jobs
    cannot be written, which rolls the intake back: a case is never accepted without its job.
    """
    if not enabled(settings) or not case_ids:
        return
    rows = session.execute(
        text("SELECT id, priority FROM cases WHERE id = ANY(:ids)"), {"ids": list(case_ids)}
    ).all()
    priority = {r.id: r.priority for r in rows}
    _manager().batch_defer_jobs(
        [_job(cid, priority.get(cid)) for cid in case_ids], connection=_raw(session)
    )


def reconcile(db: Database, limit: int = 500) -> int:
    """Enqueue a job for every ``received`` case that has none; returns how many were queued.

    Covers cases accepted before the engine was switched on, cases people sent back to
    ``received``, and cases whose job was lost with a dead worker. A case counts as covered
    while it has a waiting or running job, or a dead-lettered job that failed after the case
    last changed (so the sweep never undoes a dead letter; an admin re-drives it).
    """
    from procrastinate.exceptions import AlreadyEnqueued

    queued = 0
    with db.write() as s:
        rows = s.execute(
            text(
                """
                SELECT c.id, c.priority, c.lease_expires_at FROM cases c
                WHERE c.status = 'received' AND NOT EXISTS (
                    SELECT 1 FROM procrastinate_jobs j
                    WHERE j.queueing_lock = 'case:' || c.id AND (
                        j.status IN ('todo', 'doing')
                        OR (j.status = 'failed' AND EXISTS (
                            SELECT 1 FROM procrastinate_events e
                            WHERE e.job_id = j.id AND e.type = 'failed'
                              AND e.at >= CAST(c.updated_at AS timestamptz)))))
                ORDER BY c.priority, c.created_at LIMIT :limit
                """
            ),
            {"limit": limit},
        ).all()
        manager = _manager()
        for r in rows:
            try:
                with s.begin_nested():
                    manager.defer_job(
                        _job(r.id, r.priority, r.lease_expires_at), connection=_raw(s)
                    )
                queued += 1
            except AlreadyEnqueued:
                continue  # queued meanwhile (intake or another sweep): covered
    if queued:
        log.info("reconciliation: queued %d received cases without a job", queued)
    return queued


def requeue_stalled(db: Database, settings: Settings) -> int:
    """Put jobs of dead workers (no heartbeat for ``job_stalled_seconds``) back in the queue.

    The case itself comes back through its expired lease; its job must follow, or the case
    would stay covered by a job nobody runs. If the case already has another waiting job,
    the stalled one is ended as ``aborted`` instead.
    """
    from procrastinate import SyncPsycopgConnector, sql
    from procrastinate.exceptions import UniqueViolation

    conn = SyncPsycopgConnector()
    done = 0
    with db.write() as s:
        stalled = conn.execute_query_all_with_connection(
            _raw(s),
            sql.queries["select_stalled_jobs_by_heartbeat"],
            queue=QUEUE,
            task_name=TASK_NAME,
            seconds_since_heartbeat=settings.job_stalled_seconds,
        )
        for job in stalled:
            try:
                with s.begin_nested():
                    conn.execute_query_one_with_connection(
                        _raw(s),
                        sql.queries["retry_job"],
                        job_id=job["id"],
                        retry_at=datetime.now(UTC),
                        new_priority=None,
                        new_queue_name=None,
                        new_lock=None,
                    )
            except UniqueViolation:
                with s.begin_nested():
                    conn.execute_query_one_with_connection(
                        _raw(s),
                        sql.queries["finish_job"],
                        job_id=job["id"],
                        status="aborted",
                        delete_job=False,
                    )
            done += 1
    if done:
        log.warning("re-queued %d jobs of workers without a heartbeat", done)
    return done


# ------------------------------------------------------------------ admin: list and re-drive


@dataclass(frozen=True)
class JobView:
    id: int
    status: str
    task_name: str
    queue: str
    priority: int
    attempts: int
    case_id: str | None
    case_status: str | None
    scheduled_at: datetime | None
    updated_at: datetime | None


_LIST_SQL = """
SELECT j.id, CAST(j.status AS text) AS status, j.task_name, j.queue_name AS queue, j.priority,
       j.attempts, j.args->>'case_id' AS case_id, c.status AS case_status, j.scheduled_at,
       (SELECT max(e.at) FROM procrastinate_events e WHERE e.job_id = j.id) AS updated_at
FROM procrastinate_jobs j LEFT JOIN cases c ON c.id = j.args->>'case_id'
"""


def list_jobs(
    session: Session, status: str | None, limit: int, after_id: int | None = None
) -> list[JobView]:
    """Jobs by id (oldest first), optionally of one status, after a cursor (a job id)."""
    where: list[str] = []
    params: dict[str, Any] = {"limit": limit}
    if status:
        where.append("j.status = CAST(:status AS procrastinate_job_status)")
        params["status"] = status
    if after_id is not None:
        where.append("j.id > :after")
        params["after"] = after_id
    sql = _LIST_SQL + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY j.id"
    rows = session.execute(text(sql + " LIMIT :limit"), params).mappings().all()
    return [JobView(**dict(r)) for r in rows]


def get_job(session: Session, job_id: int) -> JobView:
    rows = session.execute(text(_LIST_SQL + " WHERE j.id = :id"), {"id": job_id}).mappings().all()
    if not rows:
        raise NotFound(f"job {job_id} not found")
    return JobView(**dict(rows[0]))


def retry_job(session: Session, job_id: int, *, actor: audit.Actor) -> JobView:
    """Re-drive a dead-lettered (``failed``) job, audited, in the caller's transaction.

    If the pipeline had given up on the case (``failed``), the case goes back to ``received``
    with its attempt counter reset, so the job gets the full ``max_triage_attempts`` again.
    """
    from procrastinate import SyncPsycopgConnector, sql

    job = get_job(session, job_id)
    if job.status != "failed":
        raise Conflict(
            f"only failed (dead-lettered) jobs can be retried; job {job_id} is {job.status}",
            field="status",
        )
    reset_from: int | None = None
    if job.case_id and job.case_status == Status.failed.value:
        row = cases.human_transition(
            session,
            job.case_id,
            Status.received,
            actor=actor,
            reason=f"job {job_id} re-driven by an admin",
        )
        reset_from, row.triage_attempts = row.triage_attempts, 0
    SyncPsycopgConnector().execute_query_one_with_connection(
        _raw(session),
        sql.queries["retry_job"],
        job_id=job_id,
        retry_at=datetime.now(UTC),
        new_priority=None,
        new_queue_name=None,
        new_lock=None,
    )
    audit.append(
        session,
        actor,
        "job.retried",
        {"job_id": job_id, "task": job.task_name, "attempts_reset_from": reset_from},
        case_id=job.case_id,
    )
    session.flush()
    return get_job(session, job_id)


# ------------------------------------------------------------------ the worker process


def _retry_strategy(settings: Settings) -> Any:
    from procrastinate import RetryStrategy
    from procrastinate.retry import RetryDecision

    cap = settings.job_retry_max_seconds

    class TriageRetryStrategy(RetryStrategy):
        """Exponential backoff, capped. Pipeline retries are bounded by the case's own
        attempt counter (it ends in TriageFailed), other errors by ``max_attempts``."""

        def get_retry_decision(self, *, exception: BaseException, job: Any) -> Any:
            if isinstance(exception, TriageFailed):
                return None
            if (
                not isinstance(exception, TriageRetry)
                and self.max_attempts
                and job.attempts >= self.max_attempts
            ):
                return None
            if isinstance(exception, TriageRetry) and exception.not_before_seconds is not None:
                # The pipeline already chose the backoff (exponential per case attempt, or the
                # LLM wait interval): one schedule for the case and its job.
                return RetryDecision(retry_in={"seconds": int(exception.not_before_seconds)})
            base = self.exponential_wait
            wait = min(cap, base ** (job.attempts + 1)) if base else 0
            return RetryDecision(retry_in={"seconds": wait})

    return TriageRetryStrategy(
        max_attempts=settings.job_max_attempts,
        exponential_wait=settings.job_retry_backoff_seconds,
    )


def build_app(settings: Settings) -> procrastinate.App:
    """The procrastinate app of a worker process, with the triage task registered.

    The task finds its database, pipeline and settings in the worker's ``additional_context``
    (key ``"triage"``, a :class:`JobWorker`), so nothing is global.
    """
    from procrastinate import App, JobContext, PsycopgConnector

    require_engine(settings)
    app = App(
        connector=PsycopgConnector(
            conninfo=conninfo(settings), min_size=1, max_size=settings.job_concurrency + 2
        )
    )

    @app.task(name=TASK_NAME, queue=QUEUE, retry=_retry_strategy(settings), pass_context=True)
    def triage_case(context: JobContext, case_id: str) -> str:
        runtime: JobWorker = context.additional_context["triage"]
        return runtime.run_case(case_id)

    return app


class JobWorker:
    """One ``triage worker --engine procrastinate`` process: the triage task's runtime plus a
    housekeeping thread. :meth:`run` blocks until SIGTERM/SIGINT, then finishes the jobs in
    hand (procrastinate's graceful shutdown) and stops housekeeping."""

    def __init__(
        self,
        db: Database,
        settings: Settings,
        pipe: pipeline.Pipeline | None = None,
        *,
        concurrency: int | None = None,
    ) -> None:
        from triage.worker import _crash_hook

        require_engine(settings)
        self.db = db
        self.settings = settings
        self.pipeline = pipe or pipeline.Pipeline()
        self.concurrency = concurrency or settings.job_concurrency
        self.id = f"{socket.gethostname()}:{os.getpid()}:pq"
        self._crash = _crash_hook(settings.fault_crash_at_stage)
        self._stop = threading.Event()
        self._stop_requested = threading.Event()
        self._pq_worker: Any = None
        self.triaged = 0
        self._count = threading.Lock()

    # -------------------------------------------------------------- the task body

    def run_case(self, case_id: str) -> str:
        out = pipeline.run_case(
            self.db,
            case_id,
            self.pipeline,
            self.settings,
            worker_id=self.id,
            crash_hook=self._crash,
        )
        if out.status == "retry":
            raise TriageRetry(out.detail or "stage failure", self._not_before(case_id))
        if out.status == "failed":
            raise TriageFailed(out.detail or "triage failed")
        if out.status == "triaged":
            with self._count:
                self.triaged += 1
        # skipped / lease_lost: another worker holds or finished the case (a redelivery).
        return out.status

    def _not_before(self, case_id: str) -> float | None:
        with self.db.read() as s:
            row = s.get(Case, case_id)
            until = row.lease_expires_at if row and row.status == Status.received.value else None
        if until is None:
            return None
        return max(0.0, (parse_ts(until) - datetime.now(UTC)).total_seconds())

    # -------------------------------------------------------------- housekeeping

    @contextmanager
    def _housekeeping_lock(self) -> Iterator[bool]:
        with self.db.write_engine.connect() as raw:
            conn = raw.execution_options(isolation_level="AUTOCOMMIT")
            got = bool(
                conn.execute(
                    text("SELECT pg_try_advisory_lock(:k)"), {"k": HOUSEKEEPING_LOCK}
                ).scalar()
            )
            try:
                yield got
            finally:
                if got:
                    conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": HOUSEKEEPING_LOCK})

    def housekeeping_round(self, client: Any, *, full: bool) -> dict[str, int] | None:
        """One round, or None when another worker holds the housekeeping lock.

        Every round delivers due webhooks; a ``full`` round also recovers expired leases,
        re-queues jobs of dead workers, reconciles received cases without a job, flags SLA
        breaches, sweeps approval SLAs and indexes resolved cases.
        """
        from triage import webhooks
        from triage.worker import sweep

        with self._housekeeping_lock() as got:
            if not got:
                return None
            out: dict[str, int] = {}
            if full:
                out["leases_recovered"] = len(pipeline.recover_expired_leases(self.db))
                out["stalled_requeued"] = requeue_stalled(self.db, self.settings)
                out["reconciled"] = reconcile(self.db)
                out.update(sweep(self.db, self.settings, self.pipeline))
            out["webhooks_delivered"] = webhooks.deliver_due(self.db, self.settings, client)
            return out

    def _housekeeping_loop(self) -> None:
        import httpx

        last_full = 0.0
        with httpx.Client(follow_redirects=False) as client:
            while not self._stop.is_set():
                full = time.monotonic() - last_full >= self.settings.sla_sweep_seconds
                try:
                    if self.housekeeping_round(client, full=full) is not None and full:
                        last_full = time.monotonic()
                except Exception:  # keep housekeeping alive across database restarts
                    log.exception("housekeeping error")
                self._stop.wait(1.0)

    # -------------------------------------------------------------- run

    def warm_up(self) -> None:
        for stage in (self.pipeline.classifier, self.pipeline.retriever):
            warm = getattr(stage, "warm_up", None)
            if callable(warm):
                warm()

    def request_stop(self, *_: Any) -> None:
        """SIGTERM/SIGINT: stop fetching, finish the jobs in hand, then :meth:`run` returns."""
        self._stop_requested.set()
        worker = self._pq_worker
        if worker is not None:
            worker.stop()  # thread-safe in procrastinate 3.x (schedules on the worker's loop)

    async def _run_async(self, app: Any, options: dict[str, Any]) -> None:
        import asyncio
        import signal

        from procrastinate.worker import Worker as PqWorker

        async with app.open_async():
            self._pq_worker = PqWorker(app=app, install_signal_handlers=False, **options)
            loop = asyncio.get_running_loop()
            if options.get("wait", True):
                for sig in (signal.SIGTERM, signal.SIGINT):
                    loop.add_signal_handler(sig, self.request_stop)
            try:
                if self._stop_requested.is_set():
                    return
                await self._pq_worker.run()
            finally:
                self._pq_worker = None

    def run(self, *, once: bool = False) -> None:
        """Run jobs until SIGTERM/SIGINT (``once``: until nothing is due, without the
        housekeeping thread, after one reconciliation so older received cases are included).

        If procrastinate's worker stops on its own (it does when it loses the database, e.g. a
        PostgreSQL restart), it is started again after ``worker_poll_seconds`` x 5: the
        process only exits on a stop request, so a supervisor sees exit code 0 only for a
        graceful stop.
        """
        import asyncio
        import signal

        self.warm_up()
        app = build_app(self.settings)
        options: dict[str, Any] = {
            "queues": [QUEUE],
            "name": self.id,
            "concurrency": self.concurrency,
            "additional_context": {"triage": self},
            "delete_jobs": "successful",
            "stalled_worker_timeout": self.settings.job_stalled_seconds,
            "update_heartbeat_interval": max(1.0, self.settings.job_stalled_seconds / 3),
        }
        thread: threading.Thread | None = None
        if once:
            pipeline.recover_expired_leases(self.db)
            requeue_stalled(self.db, self.settings)
            reconcile(self.db)
            options["wait"] = False
            # One at a time: with more, procrastinate stops fetching as soon as the queue looks
            # empty while a job is still running, and that job's immediate retry would be left.
            options["concurrency"] = 1
        else:
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, self.request_stop)
            thread = threading.Thread(
                target=self._housekeeping_loop, name="triage-housekeeping", daemon=True
            )
            thread.start()
        try:
            while True:
                try:
                    asyncio.run(self._run_async(app, options))
                except Exception:
                    if once:
                        raise
                    log.exception("job worker failed")
                if once or self._stop_requested.is_set():
                    return
                # asyncio.run removed its signal handlers: ours again while we wait.
                for sig in (signal.SIGTERM, signal.SIGINT):
                    signal.signal(sig, self.request_stop)
                log.warning("job worker stopped without a stop request; restarting")
                self._stop_requested.wait(self.settings.worker_poll_seconds * 5)
                if self._stop_requested.is_set():
                    return
        finally:
            self._stop.set()
            if thread is not None:
                thread.join(self.settings.webhook_timeout_seconds * 3)


__all__ = [
    "JobView",
    "JobWorker",
    "TriageFailed",
    "TriageRetry",
    "build_app",
    "ensure_schema",
    "get_job",
    "list_jobs",
    "on_cases_accepted",
    "reconcile",
    "requeue_stalled",
    "retry_job",
]
