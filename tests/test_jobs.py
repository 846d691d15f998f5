"""The procrastinate job engine: atomic enqueue with the case, the worker task, retries and the
dead letter, re-drive (API and CLI), reconciliation, stalled jobs, the housekeeping lock, and
the embedded default left as it was. Real PostgreSQL (one schema per test)."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import pytest
from sqlalchemy import func, select, text

from contracts.case import CaseIn
from contracts.suggestion import Suggestion
from tests.support import bearer, sample_case
from triage import audit, cases, intake, jobs, migrate
from triage.db import Database
from triage.models import AuditEvent, Case
from triage.models import Suggestion as SuggestionRow
from triage.pipeline import AdviceInput, Pipeline, RuleAdvisor
from triage.settings import Settings

# The job engine's tests run on PostgreSQL only (the db_url fixture's other variant is SQLite).
pg_only = [pytest.mark.postgres, pytest.mark.parametrize("db_url", ["postgres"], indirect=True)]
ORCH = audit.Actor(audit.ActorType.integration, "orch", "orchestrator")


def _pg(fn: Any) -> Any:
    for mark in pg_only:
        fn = mark(fn)
    return fn


@pytest.fixture
def pg(db_url: str, settings: Settings) -> Settings:
    assert db_url.startswith("postgresql"), "job engine tests are marked PostgreSQL-only"
    return settings.model_copy(
        update={"job_engine": "procrastinate", "job_retry_backoff_seconds": 0}
    )


@pytest.fixture
def jdb(pg: Settings) -> Any:
    migrate.upgrade(pg)  # applies procrastinate's schema too (job_engine=procrastinate)
    database = Database(pg)
    yield database
    database.dispose()


def _jobs(db: Database) -> list[Any]:
    with db.read() as s:
        return list(
            s.execute(
                text(
                    "SELECT id, CAST(status AS text) AS status, queueing_lock, args, priority "
                    "FROM procrastinate_jobs ORDER BY id"
                )
            ).all()
        )


def _case(n: int) -> CaseIn:
    return CaseIn.model_validate(sample_case(n))


class FlakyAdvisor:
    """Fails the first ``failures`` calls, then advises like the rule advisor."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls = 0

    def advise(self, request: AdviceInput) -> Suggestion:
        self.calls += 1
        if self.calls <= self.failures:
            raise RuntimeError(f"advisor down (call {self.calls})")
        return RuleAdvisor().advise(request)


def test_procrastinate_engine_refuses_sqlite(tmp_path):
    with pytest.raises(ValueError, match="TRIAGE_JOB_ENGINE=procrastinate needs PostgreSQL"):
        Settings(job_engine="procrastinate", database_url=f"sqlite:///{tmp_path / 'x.db'}")
    with pytest.raises(ValueError, match="needs PostgreSQL"):
        Settings(job_engine="procrastinate", data_dir=tmp_path)  # the SQLite default


@_pg
def test_schema_apply_is_idempotent(jdb, pg):
    assert jobs.ensure_schema(pg) is False  # already applied by migrate.upgrade
    migrate.upgrade(pg)
    with jdb.read() as s:
        assert jobs.schema_present(s)


@_pg
def test_intake_enqueues_in_the_case_transaction(jdb, pg):
    one = intake.submit_one(jdb, _case(1), actor=ORCH, settings=pg)
    replay = intake.submit_one(jdb, _case(1), actor=ORCH, settings=pg)
    assert replay.replayed
    batch = intake.submit_many(
        jdb, [sample_case(2), {"bad": 1}, sample_case(3), sample_case(1)], actor=ORCH, settings=pg
    )
    assert [r.outcome for r in batch] == ["created", "invalid", "created", "replayed"]
    rows = _jobs(jdb)
    created = [one.case.id, batch[0].case.id, batch[2].case.id]
    assert [r.queueing_lock for r in rows] == [jobs.queueing_lock(c) for c in created]
    assert all(
        r.status == "todo" and r.args == {"case_id": c} for r, c in zip(rows, created, strict=True)
    )
    assert rows[0].priority == jobs.JOB_PRIORITY[cases.rule_priority(_case(1))]

    # A rolled-back intake leaves neither the case nor its job.
    def intake_that_fails_before_commit() -> None:
        with jdb.write() as s:
            res = cases.submit(s, _case(9), actor=ORCH, settings=pg)
            jobs.on_cases_accepted(s, pg, [res.case.id])
            raise RuntimeError("client went away before commit")

    with pytest.raises(RuntimeError):
        intake_that_fails_before_commit()
    with jdb.read() as s:
        assert s.scalar(select(func.count()).select_from(Case)) == 3
    assert len(_jobs(jdb)) == 3


@_pg
def test_queueing_lock_allows_one_waiting_job_per_case(jdb, pg):
    from procrastinate.exceptions import AlreadyEnqueued

    res = intake.submit_one(jdb, _case(1), actor=ORCH, settings=pg)
    with pytest.raises(AlreadyEnqueued), jdb.write() as s:
        jobs.on_cases_accepted(s, pg, [res.case.id])
    assert jobs.reconcile(jdb) == 0
    assert len(_jobs(jdb)) == 1


@_pg
def test_reconcile_enqueues_received_cases_without_a_job(jdb, pg, settings):
    embedded = settings.model_copy(update={"job_engine": "embedded"})
    old = [intake.submit_one(jdb, _case(i), actor=ORCH, settings=embedded).case.id for i in (1, 2)]
    assert _jobs(jdb) == []  # accepted before the engine was switched on
    assert jobs.reconcile(jdb) == 2
    assert jobs.reconcile(jdb) == 0
    assert sorted(r.args["case_id"] for r in _jobs(jdb)) == sorted(old)


@_pg
def test_worker_runs_jobs_and_deletes_succeeded_ones(jdb, pg):
    ids = [intake.submit_one(jdb, _case(i), actor=ORCH, settings=pg).case.id for i in range(3)]
    w = jobs.JobWorker(jdb, pg, Pipeline())
    w.run(once=True)
    assert w.triaged == 3
    assert _jobs(jdb) == []  # succeeded jobs are deleted
    with jdb.read() as s:
        for cid in ids:
            assert cases.get(s, cid).status == "awaiting_review"
            assert (
                s.scalar(
                    select(func.count())
                    .select_from(SuggestionRow)
                    .where(SuggestionRow.case_id == cid)
                )
                == 1
            )
    # A redelivered job for a triaged case is harmless.
    with jdb.write() as s:
        jobs.on_cases_accepted(s, pg, [ids[0]])
    w.run(once=True)
    with jdb.read() as s:
        n = s.scalar(
            select(func.count())
            .select_from(AuditEvent)
            .where(AuditEvent.case_id == ids[0], AuditEvent.action == "suggestion.created")
        )
        assert n == 1
        assert audit.verify(s).intact


@_pg
def test_stage_failures_retry_then_dead_letter_then_redrive(jdb, pg, keys):
    from fastapi.testclient import TestClient

    from api.app import create_app

    pg = pg.model_copy(update={"max_triage_attempts": 2})
    cid = intake.submit_one(jdb, _case(1), actor=ORCH, settings=pg).case.id
    flaky = FlakyAdvisor(failures=10)
    jobs.JobWorker(jdb, pg, Pipeline(advisor=flaky)).run(once=True)
    [job] = _jobs(jdb)
    assert flaky.calls == 1 and job.status == "todo"  # retried later, on the case's backoff
    with jdb.write() as s:
        assert s.scalar(text("SELECT scheduled_at > now() FROM procrastinate_jobs")) is True
        s.execute(text("UPDATE procrastinate_jobs SET scheduled_at = now()"))  # time passes
    jobs.JobWorker(jdb, pg, Pipeline(advisor=flaky)).run(once=True)
    assert flaky.calls == 2  # attempt 1 retried by the job engine, attempt 2 final
    [job] = _jobs(jdb)
    assert job.status == "failed"
    with jdb.read() as s:
        assert cases.get(s, cid).status == "failed"
    assert jobs.reconcile(jdb) == 0  # the sweep never undoes a dead letter

    with TestClient(create_app(pg, db=jdb, start_worker=False)) as c:
        page = c.get("/v1/jobs?status=failed", headers=bearer(keys["admin"])).json()
        assert page["engine"] == "procrastinate"
        [item] = page["items"]
        assert item["id"] == job.id and item["case_id"] == cid and item["case_status"] == "failed"
        assert c.get("/v1/jobs?status=todo", headers=bearer(keys["admin"])).json()["items"] == []
        assert c.post(f"/v1/jobs/{job.id}/retry", headers=bearer(keys["agent"])).status_code == 403
        r = c.post(f"/v1/jobs/{job.id}/retry", headers=bearer(keys["admin"]))
        assert r.status_code == 200, r.text
        assert r.json()["status"] == "todo" and r.json()["case_status"] == "received"
        again = c.post(f"/v1/jobs/{job.id}/retry", headers=bearer(keys["admin"]))
        assert again.status_code == 409
        assert c.post("/v1/jobs/424242/retry", headers=bearer(keys["admin"])).status_code == 404
    with jdb.read() as s:
        row = cases.get(s, cid)
        assert row.status == "received" and row.triage_attempts == 0
        retried = s.scalars(select(AuditEvent).where(AuditEvent.action == "job.retried")).all()
        assert [e.actor_role for e in retried] == ["admin"] and retried[0].case_id == cid

    jobs.JobWorker(jdb, pg, Pipeline()).run(once=True)  # the cause is fixed: re-driven job runs
    assert _jobs(jdb) == []
    with jdb.read() as s:
        assert cases.get(s, cid).status == "awaiting_review"
        assert audit.verify(s).intact


@_pg
def test_jobs_list_pages_with_a_cursor(jdb, pg, keys):
    from fastapi.testclient import TestClient

    from api.app import create_app

    intake.submit_many(jdb, [sample_case(i) for i in range(5)], actor=ORCH, settings=pg)
    seen: list[int] = []
    cursor = ""
    with TestClient(create_app(pg, db=jdb, start_worker=False)) as c:
        for _ in range(5):
            page = c.get(f"/v1/jobs?status=todo&limit=2{cursor}", headers=bearer(keys["admin"]))
            body = page.json()
            seen += [j["id"] for j in body["items"]]
            if body["next_cursor"] is None:
                break
            cursor = f"&cursor={body['next_cursor']}"
    assert seen == [r.id for r in _jobs(jdb)] and len(seen) == 5


@_pg
def test_jobs_of_a_dead_worker_are_requeued(jdb, pg):
    cid = intake.submit_one(jdb, _case(1), actor=ORCH, settings=pg).case.id
    with jdb.write() as s:  # a worker took the job, then vanished (no heartbeat for an hour)
        wid = s.scalar(
            text(
                "INSERT INTO procrastinate_workers (last_heartbeat) "
                "VALUES (now() - interval '1 hour') RETURNING id"
            )
        )
        s.execute(
            text("UPDATE procrastinate_jobs SET status = 'doing', worker_id = :w"), {"w": wid}
        )
    assert jobs.reconcile(jdb) == 0  # a running job covers the case...
    assert jobs.requeue_stalled(jdb, pg) == 1  # ...until its worker is found dead
    assert [r.status for r in _jobs(jdb)] == ["todo"]
    assert jobs.requeue_stalled(jdb, pg) == 0
    jobs.JobWorker(jdb, pg, Pipeline()).run(once=True)
    with jdb.read() as s:
        assert cases.get(s, cid).status == "awaiting_review"


@_pg
def test_one_housekeeping_round_at_a_time_across_workers(jdb, pg):
    import httpx

    a, b = jobs.JobWorker(jdb, pg, Pipeline()), jobs.JobWorker(jdb, pg, Pipeline())
    with httpx.Client() as client, a._housekeeping_lock() as got:
        assert got
        assert b.housekeeping_round(client, full=True) is None  # another worker holds it
    with httpx.Client() as client:
        out = b.housekeeping_round(client, full=True)
    assert out is not None and out["webhooks_delivered"] == 0


def test_embedded_engine_has_no_jobs(client, keys, settings):
    assert settings.job_engine == "embedded"
    r = client.get("/v1/jobs?status=failed", headers=bearer(keys["admin"]))
    assert r.status_code == 200
    assert r.json()["engine"] == "embedded" and r.json()["items"] == []
    assert "embedded" in r.json()["message"]
    r = client.post("/v1/jobs/1/retry", headers=bearer(keys["admin"]))
    assert r.status_code == 409 and "embedded" in r.json()["error"]["message"]


@_pg
def test_cli_jobs_list_and_retry(jdb, pg):
    pg2 = pg.model_copy(update={"max_triage_attempts": 1})
    cid = intake.submit_one(jdb, _case(1), actor=ORCH, settings=pg2).case.id
    jobs.JobWorker(jdb, pg2, Pipeline(advisor=FlakyAdvisor(failures=1))).run(once=True)
    [job] = _jobs(jdb)
    env = {
        **os.environ,
        "TRIAGE_DATABASE_URL": pg.resolved_database_url,
        "TRIAGE_DATA_DIR": str(pg.data_dir),
        "TRIAGE_ENVIRONMENT": "test",
        "TRIAGE_JOB_ENGINE": "procrastinate",
    }

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "cli.main", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )

    listed = cli("jobs", "list", "--status", "failed")
    assert listed.returncode == 0, listed.stderr[-2000:]
    assert str(job.id) in listed.stdout and cid in listed.stdout
    retried = cli("jobs", "retry", str(job.id))
    assert retried.returncode == 0, retried.stderr[-2000:]
    assert "todo" in retried.stdout
    assert cli("jobs", "retry", str(job.id)).returncode != 0  # no longer failed
    worked = cli("worker", "--engine", "procrastinate", "--once")
    assert worked.returncode == 0, worked.stderr[-2000:]
    assert "triaged 1 cases" in worked.stdout
    refused = subprocess.run(
        [sys.executable, "-m", "cli.main", "worker", "--engine", "procrastinate", "--once"],
        env={**env, "TRIAGE_DATABASE_URL": f"sqlite:///{pg.data_dir / 'x.db'}"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert refused.returncode != 0 and "PostgreSQL" in refused.stderr


@_pg
@pytest.mark.integration
def test_worker_process_survives_losing_its_database_connections(jdb, pg):
    """PostgreSQL dropping every connection of a worker (as in a restart) must not end it:
    it reconnects, keeps triaging, and still stops gracefully on SIGTERM."""
    import signal
    import time

    app_name = f"triage-w-{os.getpid()}"
    url = pg.resolved_database_url + f"&application_name={app_name}"
    env = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "TRIAGE_DATABASE_URL": url,
        "TRIAGE_DATA_DIR": str(pg.data_dir),
        "TRIAGE_ENVIRONMENT": "test",
        "TRIAGE_JOB_ENGINE": "procrastinate",
        "TRIAGE_RETRIEVAL_ENABLED": "false",
        "TRIAGE_WORKER_POLL_SECONDS": "0.2",
    }
    log = pg.data_dir / "worker.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "cli.main", "worker", "--engine", "procrastinate"],
        env=env,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
    )

    def triaged(cid: str) -> bool:
        deadline = time.monotonic() + 180  # a hang guard on a loaded machine, not a timing check
        while time.monotonic() < deadline:
            assert proc.poll() is None, log.read_text()[-3000:]
            with jdb.read() as s:
                if cases.get(s, cid).status == "awaiting_review":
                    return True
            time.sleep(0.5)
        return False

    try:
        first = intake.submit_one(jdb, _case(1), actor=ORCH, settings=pg).case.id
        assert triaged(first), log.read_text()[-3000:]
        with jdb.write() as s:
            killed = s.scalar(
                text(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE application_name = :n"
                ),
                {"n": app_name},
            )
        assert killed >= 1
        second = intake.submit_one(jdb, _case(2), actor=ORCH, settings=pg).case.id
        assert triaged(second), log.read_text()[-3000:]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=120) == 0, log.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@_pg
@pytest.mark.integration
def test_worker_killed_mid_triage_case_is_triaged_once_after_restart(jdb, pg):
    """kill -9 equivalent (TRIAGE_FAULT_CRASH_AT_STAGE, os._exit) inside a job: the case's lease
    expires, the dead worker's job is re-queued, and the restarted worker triages it once."""
    import time

    ids = [intake.submit_one(jdb, _case(i), actor=ORCH, settings=pg).case.id for i in range(2)]
    env = {
        **os.environ,
        "TRIAGE_DATABASE_URL": pg.resolved_database_url,
        "TRIAGE_DATA_DIR": str(pg.data_dir),
        "TRIAGE_ENVIRONMENT": "test",
        "TRIAGE_JOB_ENGINE": "procrastinate",
        "TRIAGE_RETRIEVAL_ENABLED": "false",
        "TRIAGE_LEASE_SECONDS": "1",
        "TRIAGE_JOB_STALLED_SECONDS": "1",
    }
    args = [sys.executable, "-m", "cli.main", "worker", "--engine", "procrastinate", "--once"]
    crashed = subprocess.run(
        args,
        env={**env, "TRIAGE_FAULT_CRASH_AT_STAGE": "advise"},
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert crashed.returncode == 17, crashed.stderr[-2000:]
    assert [r.status for r in _jobs(jdb)] == ["doing", "todo"]
    time.sleep(1.5)  # the dead worker's lease and heartbeat age past their limits
    restarted = subprocess.run(args, env=env, capture_output=True, text=True, timeout=180)
    assert restarted.returncode == 0, restarted.stderr[-2000:]
    assert "triaged 2 cases" in restarted.stdout
    assert _jobs(jdb) == []
    with jdb.read() as s:
        for cid in ids:
            assert cases.get(s, cid).status == "awaiting_review"
            n = s.scalar(
                select(func.count())
                .select_from(AuditEvent)
                .where(AuditEvent.case_id == cid, AuditEvent.action == "suggestion.created")
            )
            assert n == 1
        assert audit.verify(s).intact


@_pg
def test_api_replica_never_runs_the_embedded_worker_beside_a_job_engine(pg, jdb):
    from api.app import create_app

    settings = pg.model_copy(update={"worker_enabled": True})
    app = create_app(settings, db=jdb)
    assert app.state.ctx.worker is None
    embedded = create_app(settings.model_copy(update={"job_engine": "embedded"}), db=jdb)
    assert embedded.state.ctx.worker is not None
