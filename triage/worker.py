"""The embedded background worker: triage, lease recovery, SLA sweeps and webhook delivery.

The durable queue is the ``cases`` table itself (status ``received``): intake commits the case
and then calls :meth:`Worker.notify` as a wake-up hint, so nothing accepted can be lost between
commit and enqueue. The worker polls as a safety net. Several workers (threads or processes)
may run against one database: claims are atomic and the store step checks the lease.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable

import httpx

from triage import actions, cases, dashboard, pipeline, webhooks
from triage.db import Database
from triage.pipeline import Pipeline
from triage.settings import Settings

log = logging.getLogger("triage.worker")


def index_resolved(db: Database, pipe: Pipeline) -> int:
    """Feed resolved cases to the pipeline's similar-case index, when it has one."""
    from triage.stages import RetrievalStage, index_resolved_cases

    stage = pipe.retriever
    return index_resolved_cases(db, stage) if isinstance(stage, RetrievalStage) else 0


def sweep(db: Database, settings: Settings, pipe: Pipeline) -> dict[str, int]:
    """The periodic part of housekeeping that both job engines run (after recovering expired
    leases): flag SLA breaches, sweep approval SLAs, index resolved cases and bring the
    dashboard roll-ups up to date."""
    with db.write() as s:
        flagged = cases.flag_sla_breaches(s, settings=settings)
        actions.sweep_sla(s, settings)
    indexed = index_resolved(db, pipe)
    dashboard.refresh_recent(db)
    return {"sla_flagged": flagged, "indexed": indexed}


def _crash_hook(stage_to_crash: str | None) -> Callable[[str], None]:
    def hook(stage: str) -> None:
        if stage_to_crash and stage == stage_to_crash:
            log.error("fault injection: crashing at stage %s", stage)
            os._exit(17)

    return hook


class Worker:
    """Runs triage in background threads until :meth:`stop` is called."""

    def __init__(self, db: Database, settings: Settings, pipe: Pipeline | None = None) -> None:
        self.db = db
        self.settings = settings
        self.pipeline = pipe or Pipeline()
        self.id = f"{socket.gethostname()}:{os.getpid()}:{id(self):x}"
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._crash = _crash_hook(settings.fault_crash_at_stage)
        self.triaged = 0

    def notify(self) -> None:
        """Wake the workers: new cases were committed."""
        self._wake.set()

    def warm_up(self) -> None:
        """Load models and open stores before the first case arrives."""
        for stage in (self.pipeline.classifier, self.pipeline.retriever):
            warm = getattr(stage, "warm_up", None)
            if callable(warm):
                warm()

    def start(self) -> None:
        self.warm_up()
        for n in range(max(1, self.settings.worker_threads)):
            t = threading.Thread(target=self._triage_loop, name=f"triage-worker-{n}", daemon=True)
            t.start()
            self._threads.append(t)
        t = threading.Thread(
            target=self._housekeeping_loop, name="triage-housekeeping", daemon=True
        )
        t.start()
        self._threads.append(t)

    def stop(self, timeout: float = 10.0) -> None:
        """Graceful: finish the case in hand, then exit (unfinished claims expire and retry)."""
        self._stop.set()
        self._wake.set()
        for t in self._threads:
            t.join(timeout)
        self._threads.clear()

    def run_once(self) -> int:
        """Triage every case that is due now; returns how many were triaged (used by CLI/tests)."""
        pipeline.recover_expired_leases(self.db)
        done = 0
        while not self._stop.is_set():
            due = pipeline.next_due(self.db, limit=self.settings.worker_batch_size)
            if not due:
                return done
            outs = pipeline.run_batch(
                self.db,
                due,
                self.pipeline,
                self.settings,
                worker_id=self.id,
                crash_hook=self._crash,
            )
            done += sum(o.status == "triaged" for o in outs)
        return done

    def index_resolved(self) -> int:
        """Feed resolved cases to the similar-case index, when the pipeline has one."""
        return index_resolved(self.db, self.pipeline)

    def _triage_loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.triaged += self.run_once()
            except Exception:  # keep the worker alive; the case's lease will expire and retry
                log.exception("triage loop error")
                time.sleep(1)
            self._wake.wait(self.settings.worker_poll_seconds)
            self._wake.clear()

    def _housekeeping_loop(self) -> None:
        last_sweep = 0.0
        with httpx.Client(follow_redirects=False) as client:
            while not self._stop.is_set():
                try:
                    if time.monotonic() - last_sweep >= self.settings.sla_sweep_seconds:
                        pipeline.recover_expired_leases(self.db)
                        sweep(self.db, self.settings, self.pipeline)
                        last_sweep = time.monotonic()
                    webhooks.deliver_due(self.db, self.settings, client)
                except Exception:
                    log.exception("housekeeping error")
                self._stop.wait(1.0)
