"""Fault tests under load (issue 7, item 3), PostgreSQL only, real processes.

1. A 1,000-case load over HTTP (batches, Idempotency-Key, retried on connection errors and
   5xx) into ``triage serve --no-worker`` with two ``triage worker`` processes, during which a
   worker is SIGKILLed mid-triage (a new one is started), the API is SIGKILLed while a batch is
   in flight (restarted; the client retries with the same key), and PostgreSQL is restarted
   (the API and the workers stay up and reconnect on their own: ``pool_pre_ping`` plus the
   worker loops that survive a failed transaction). Afterwards every accepted case exists
   once, is triaged once in effect (one suggestion, one ``suggestion.created``, one outbox
   row, every callback event seen by the receiver), and ``triage audit verify`` passes.
2. The LLM endpoint down: with ``llm_unavailable=fallback`` cases are triaged by the offline
   engine with the reason recorded; with ``llm_unavailable=wait`` they wait in the queue and
   are triaged by the LLM once it answers again.

The worker command comes from the ``worker_cmd`` fixture (one place), so another worker
engine can be run through the same faults.
"""

from __future__ import annotations

import os
import secrets
import shutil
import statistics
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, func, select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError

from contracts.case import CaseIn
from tests.conftest import _pg_url
from tests.faults_support import (
    CLI_CMD,
    DEFAULT_WORKER_CMD,
    Api,
    BatchClient,
    Proc,
    StubLLM,
    WebhookReceiver,
    product_env,
)
from tests.support import fresh_pg_schema, sample_case, wait_until
from triage import audit, auth, cases, migrate
from triage.db import Database
from triage.models import AuditEvent, Case, OutboxMessage
from triage.models import Suggestion as SuggestionRow
from triage.settings import Settings

pytestmark = [pytest.mark.integration, pytest.mark.postgres, pytest.mark.slow]

LOAD_CASES = 1000
BATCH = 50
WEBHOOK_SECRET = "faults-webhook-secret"
# "Down for a minute" in the issue; shorter by default to keep the suite's wall time.
# The issue asks for a minute; TRIAGE_FAULTS_LLM_DOWN_SECONDS shortens it for a quick local run.
LLM_DOWN_SECONDS = float(os.environ.get("TRIAGE_FAULTS_LLM_DOWN_SECONDS", "60"))


@pytest.fixture
def worker_cmd() -> tuple[str, ...]:
    """The worker process command; parametrise this fixture to run another engine."""
    return DEFAULT_WORKER_CMD


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh schema on the local PostgreSQL, dropped afterwards. The admin engine pings
    its connections: the load test restarts the server under it."""
    base = _pg_url()
    if base is None:
        pytest.skip("PostgreSQL not reachable on 127.0.0.1:5432")
    with fresh_pg_schema(base, "faults") as url:
        yield url


@pytest.fixture
def procs() -> Iterator[list[Proc]]:
    """Every process a test starts; all stopped at the end whatever happened."""
    started: list[Proc] = []
    yield started
    for p in started:
        p.stop()


def _prepare(pg_url: str, tmp_path: Path, job_engine: str = "embedded") -> tuple[Settings, str]:
    settings = Settings(
        environment="test", data_dir=tmp_path, database_url=pg_url, job_engine=job_engine
    )
    migrate.upgrade(settings)
    db = Database(settings)
    with db.write() as s:
        key = auth.create_key(
            s,
            "faults-orchestrator",
            "orchestrator",
            created_by=audit.Actor(audit.ActorType.human, "faults-admin", "admin"),
        ).key
    db.dispose()
    return settings, key


def _engine(pg_url: str) -> Engine:
    return create_engine(pg_url, pool_pre_ping=True, pool_size=2)


def _scalar(engine: Engine, stmt: Any) -> Any:
    """One query that tolerates the database being restarted (None while it is down)."""
    try:
        with engine.connect() as conn:
            return conn.execute(stmt).scalar()
    except DBAPIError:
        return None


def _claimed_by(engine: Engine, pid: int) -> int:
    n = _scalar(
        engine,
        select(func.count())
        .select_from(Case)
        .where(Case.status == "triaging", Case.lease_owner.like(f"%:{pid}:%")),
    )
    return int(n or 0)


# ------------------------------------------------------------------------------- the load


def _pg_cluster_or_skip() -> str:
    """The local cluster's version, if this test may stop and start it (checked before the
    load starts); skip with the reason otherwise."""
    if not shutil.which("pg_ctlcluster") or not Path("/etc/postgresql").is_dir():
        pytest.skip("restarting PostgreSQL needs pg_ctlcluster and /etc/postgresql (Debian)")
    versions = sorted(os.listdir("/etc/postgresql"))
    if not versions:
        pytest.skip("no PostgreSQL cluster under /etc/postgresql")
    if os.geteuid() != 0:
        pytest.skip("restarting PostgreSQL needs root (pg_ctlcluster): not permitted here")
    return versions[-1]


def _pg_ctl(version: str, action: str) -> None:
    """``pg_ctlcluster <version> main stop|start``: the restart in two halves, so the test can
    send intake while the database is down (``restart`` would race the client)."""
    command = ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", action]
    if action == "stop":
        # a fast shutdown waits for every backend to exit; under this load that once took just
        # over pg_ctl's default 60 s wait, so the stop "failed" a second before the cluster did
        command += ["--", "-t", "180"]
    res = subprocess.run(command, capture_output=True, text=True, timeout=240, check=False)
    if res.returncode != 0:
        if action == "start" and "already running" in res.stderr + res.stdout:
            return
        if "permission" in (res.stderr + res.stdout).lower():
            pytest.skip(f"pg_ctlcluster {action} not permitted: {res.stderr.strip()[:300]}")
        raise AssertionError(f"pg_ctlcluster {action} failed: {res.stderr}{res.stdout}")


@pytest.mark.timeout(900)  # process start-ups dominate on a loaded machine
@pytest.mark.parametrize("job_engine", ["embedded", "procrastinate"])
def test_load_with_worker_api_and_postgres_faults(
    pg_url: str,
    tmp_path: Path,
    procs: list[Proc],
    worker_cmd: tuple[str, ...],
    job_engine: str,
) -> None:
    """The same faults on both engines: the embedded queue (the cases table, any number of
    ``triage worker`` processes) and procrastinate (jobs enqueued in the intake transaction)."""
    pg_version = _pg_cluster_or_skip()
    engine_env: dict[str, str] = {"TRIAGE_JOB_ENGINE": job_engine}
    if job_engine == "procrastinate":
        worker_cmd = (*worker_cmd, "--engine", "procrastinate")
        # a killed worker's jobs come back after 5 s without a heartbeat
        engine_env["TRIAGE_JOB_STALLED_SECONDS"] = "5"
    _, key = _prepare(pg_url, tmp_path, job_engine)
    receiver = WebhookReceiver(WEBHOOK_SECRET)
    # The rule pipeline (no retrieval): these faults are about the queue, the leases, the
    # outbox and the audit chain; the LLM faults are tested separately below.
    env = product_env(
        pg_url,
        tmp_path,
        TRIAGE_WEBHOOK_SECRET=WEBHOOK_SECRET,
        TRIAGE_RETRIEVAL_ENABLED="false",
        **engine_env,
    )
    logs = tmp_path / "logs"
    logs.mkdir()
    engine = _engine(pg_url)

    def worker(n: int) -> Proc:
        p = Proc(f"worker-{n}", worker_cmd, env, logs / f"worker-{n}.log").start()
        procs.append(p)
        return p

    workers = [worker(1), worker(2)]  # they start up while the API does
    api = Api(env, logs / "api.log")
    procs.append(api.proc)
    api.start()

    system = f"faults-{secrets.token_hex(3)}"
    payloads = [
        sample_case(
            i,
            source={"system": system, "kind": "wms", "case_id": f"EX-{i:05d}"},
            callback_url=receiver.url,
        )
        for i in range(LOAD_CASES)
    ]
    batches = [payloads[i : i + BATCH] for i in range(0, LOAD_CASES, BATCH)]
    client = BatchClient(lambda: api.base, key, batches, key_prefix=system)
    t0 = time.monotonic()
    phases: dict[str, float] = {}
    client.start()
    try:
        # (a) kill -9 a worker while it holds claimed cases; start a replacement.
        client.release(8)
        victim = workers[0]
        wait_until(
            lambda: _claimed_by(engine, victim.pid) > 0,
            deadline_s=120,
            what="worker 1 claiming cases",
            every=0.02,
        )
        victim.kill9()
        orphaned = _claimed_by(engine, victim.pid)
        workers.append(worker(3))
        phases["worker killed"] = time.monotonic() - t0

        # (b) kill -9 the API while a batch request is in flight; restart it.
        errors_before = len(client.errors)
        client.release(4)
        wait_until(
            lambda: client.in_flight is not None and client.in_flight >= 8,
            deadline_s=60,
            what="a batch in flight",
            every=0.005,
        )
        # Half a typical batch's round trip: the server is inside the batch when it dies.
        time.sleep(statistics.median(client.durations) / 2)
        api.proc.kill9()
        wait_until(
            lambda: len(client.errors) > errors_before,
            deadline_s=30,
            what="the client seeing the API go away",
        )
        api_errors = client.errors[errors_before:]
        phases["api killed"] = time.monotonic() - t0
        api.start()
        phases["api back"] = time.monotonic() - t0

        # (c) restart PostgreSQL while batches are being sent and cases triaged.
        client.release(4)
        wait_until(lambda: client.sent >= 14, deadline_s=120, what="batch 14 answered")
        errors_before = len(client.errors)
        phases["pg stop"] = time.monotonic() - t0
        try:
            _pg_ctl(pg_version, "stop")
            client.release(len(batches))
            wait_until(
                lambda: len(client.errors) > errors_before,
                deadline_s=60,
                what="the client seeing intake fail while PostgreSQL is down",
            )
        finally:  # whatever happens, the shared cluster comes back
            _pg_ctl(pg_version, "start")
        pg_errors = client.errors[errors_before:]
        phases["pg started"] = time.monotonic() - t0
        client.join(timeout=240)
        phases["load sent"] = time.monotonic() - t0
        assert client.failure is None

        accepted = dict(client.accepted)
        wait_until(
            lambda: (
                _scalar(
                    engine,
                    select(func.count())
                    .select_from(Case)
                    .where(Case.source_system == system, Case.triaged_at.is_not(None)),
                )
                == len(accepted)
            ),
            deadline_s=300,
            what="every accepted case triaged",
            every=1,
        )
        wait_until(
            lambda: len(receiver.event_counts()) >= len(accepted),
            deadline_s=120,
            what="every callback delivered",
            every=1,
        )
        phases["all triaged and delivered"] = time.monotonic() - t0
        time.sleep(2)  # let in-flight duplicate deliveries, if any, land before counting
        alive = {p.name: p.alive() for p in [api.proc, *workers[1:]]}
    finally:
        client.release(len(batches))

    # ---------------------------------------------------------------- the faults happened
    assert not workers[0].alive()
    assert orphaned > 0, "worker 1 was killed holding no claimed case"
    # The request was on the wire when the API died: the server dropped it unanswered.
    assert any(e.startswith(("RemoteProtocolError", "ReadError")) for _, e in api_errors), (
        api_errors
    )
    # While the database was down the API answered (5xx) rather than dying.
    assert any(e.startswith("HTTP 5") for _, e in pg_errors), pg_errors
    assert alive == {"api": True, "worker-2": True, "worker-3": True}, (
        "a process died after the PostgreSQL restart (it must reconnect on its own)",
        {p.name: p.log_tail(1500) for p in procs if not p.alive()},
    )

    # ---------------------------------------------------------------- nothing lost, no dupes
    assert len(accepted) == LOAD_CASES
    assert client.outcomes["invalid"] == client.outcomes["conflict"] == 0
    with engine.connect() as conn:
        rows = conn.execute(
            select(Case.source_case_id, Case.id, Case.status, Case.triage_attempts).where(
                Case.source_system == system
            )
        ).all()
        suggestions = dict(
            conn.execute(
                select(SuggestionRow.case_id, func.count())
                .join(Case, Case.id == SuggestionRow.case_id)
                .where(Case.source_system == system)
                .group_by(SuggestionRow.case_id)
            ).all()
        )
        created_events = dict(
            conn.execute(
                select(AuditEvent.case_id, func.count())
                .where(AuditEvent.action == "suggestion.created")
                .group_by(AuditEvent.case_id)
            ).all()
        )
        outbox = conn.execute(
            select(OutboxMessage.case_id, OutboxMessage.event_id, OutboxMessage.status).where(
                OutboxMessage.kind == "case.triaged"
            )
        ).all()
        recovered = conn.execute(
            select(func.count())
            .select_from(AuditEvent)
            .where(
                AuditEvent.action == "case.received",
                AuditEvent.payload.like("%triage lease expired%"),
            )
        ).scalar()
    by_source: dict[str, list[str]] = {}
    for r in rows:
        by_source.setdefault(r.source_case_id, []).append(r.id)
    assert set(by_source) == set(accepted)
    assert all(len(ids) == 1 for ids in by_source.values())
    assert {sid: ids[0] for sid, ids in by_source.items()} == accepted
    case_ids = set(accepted.values())
    assert {r.status for r in rows} <= {"awaiting_review", "in_progress", "resolved", "closed"}
    assert set(suggestions) == case_ids and set(suggestions.values()) == {1}
    assert {c: created_events.get(c, 0) for c in case_ids} == dict.fromkeys(case_ids, 1)
    outbox_by_case: dict[str, list[str]] = {}
    for o in outbox:
        outbox_by_case.setdefault(o.case_id, []).append(o.event_id)
    assert set(outbox_by_case) == case_ids
    assert all(len(v) == 1 for v in outbox_by_case.values())
    assert {o.status for o in outbox} == {"delivered"}
    assert recovered and recovered >= orphaned  # the killed worker's claims were recovered

    # The receiver: each event at least once, de-duplicated by event id exactly the outbox's.
    seen = receiver.event_counts()
    assert set(seen) == {o.event_id for o in outbox}
    assert all(ok for _, _, ok in receiver.deliveries), "a delivery with a bad signature"
    assert all(body["event_id"] == eid for eid, body, _ in receiver.deliveries)
    duplicates = sum(n - 1 for n in seen.values())
    receiver.close()
    engine.dispose()

    verify = subprocess.run(
        [*CLI_CMD, "audit", "verify"], env=env, capture_output=True, text=True, timeout=300
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert verify.stdout.startswith("intact")
    print(
        f"\nfaults: {len(accepted)} accepted, {orphaned} orphaned by kill -9 worker, "
        f"{len(api_errors)} client errors at API kill, {len(client.errors)} client retries in "
        f"all, max triage attempts {max(r.triage_attempts for r in rows)}, "
        f"{len(receiver.deliveries)} deliveries for {len(seen)} events "
        f"({duplicates} duplicate), {verify.stdout.strip()}\n"
        f"phases (s from the first batch): {', '.join(f'{k} {v:.0f}' for k, v in phases.items())}"
    )


# ------------------------------------------------------------------------------- the LLM


ORCH = audit.Actor(audit.ActorType.integration, "orch", "orchestrator")


def _submit(settings: Settings, system: str, ns: range) -> list[str]:
    db = Database(settings)
    try:
        with db.write() as s:
            return [
                cases.submit(
                    s,
                    CaseIn.model_validate(
                        sample_case(n, source={"system": system, "kind": "wms", "case_id": f"L{n}"})
                    ),
                    actor=ORCH,
                    settings=settings,
                ).case.id
                for n in ns
            ]
    finally:
        db.dispose()


def _triage_state(settings: Settings, ids: list[str]) -> dict[str, Any]:
    db = Database(settings)
    try:
        with db.read() as s:
            rows = s.execute(
                select(Case.id, Case.status, Case.triage_attempts).where(Case.id.in_(ids))
            ).all()
            sugg = s.execute(
                select(SuggestionRow.case_id, SuggestionRow.engine, SuggestionRow.body).where(
                    SuggestionRow.case_id.in_(ids)
                )
            ).all()
            events = s.execute(
                select(AuditEvent.case_id, AuditEvent.payload).where(
                    AuditEvent.case_id.in_(ids), AuditEvent.action == "suggestion.created"
                )
            ).all()
        return {"cases": rows, "suggestions": sugg, "events": events}
    finally:
        db.dispose()


def _llm_env(pg_url: str, tmp_path: Path, stub: StubLLM, mode: str) -> dict[str, str]:
    return product_env(
        pg_url,
        tmp_path,
        TRIAGE_LLM_BASE_URL=stub.base_url,
        TRIAGE_LLM_MODEL="stub-model",
        TRIAGE_LLM_API_KEY="stub-key",
        TRIAGE_LLM_TIMEOUT_SECONDS="3",
        TRIAGE_LLM_MAX_RETRIES="1",
        TRIAGE_LLM_UNAVAILABLE=mode,
        TRIAGE_LLM_WAIT_RETRY_SECONDS="2",
    )


def _all_triaged(settings: Settings, ids: list[str]) -> dict[str, Any] | None:
    state = _triage_state(settings, ids)
    return state if len({s.case_id for s in state["suggestions"]}) == len(ids) else None


def test_llm_down_falls_back_to_offline_engine_then_recovers(
    pg_url: str, tmp_path: Path, procs: list[Proc], worker_cmd: tuple[str, ...]
) -> None:
    settings, _ = _prepare(pg_url, tmp_path)
    stub = StubLLM()  # not up: connection refused
    env = _llm_env(pg_url, tmp_path, stub, "fallback")
    procs.append(Proc("worker", worker_cmd, env, tmp_path / "worker.log").start())
    try:
        down = _submit(settings, "llm-fallback", range(8))
        state = wait_until(
            lambda: _all_triaged(settings, down), deadline_s=180, what="cases triaged, LLM down"
        )
        assert stub.calls == 0
        for row in state["suggestions"]:
            assert row.engine == "offline"
            assert row.body["provenance"]["fallback_reason"].startswith("llm_unavailable")
        for ev in state["events"]:
            assert '"fallback_reason":"llm_unavailable' in ev.payload

        stub.up()
        back = _submit(settings, "llm-fallback", range(100, 108))
        state = wait_until(
            lambda: _all_triaged(settings, back), deadline_s=180, what="cases triaged, LLM up"
        )
        assert {row.engine for row in state["suggestions"]} == {"llm"}
        assert all(
            row.body["provenance"]["fallback_reason"] is None for row in state["suggestions"]
        )
        assert stub.calls >= len(back)
    finally:
        stub.down()


def test_llm_down_cases_wait_and_are_triaged_by_the_llm_when_it_returns(
    pg_url: str, tmp_path: Path, procs: list[Proc], worker_cmd: tuple[str, ...]
) -> None:
    settings, _ = _prepare(pg_url, tmp_path)
    stub = StubLLM()
    # A small failure budget: waiting for the LLM must not use it up.
    env = {**_llm_env(pg_url, tmp_path, stub, "wait"), "TRIAGE_MAX_TRIAGE_ATTEMPTS": "3"}
    procs.append(Proc("worker", worker_cmd, env, tmp_path / "worker.log").start())
    try:
        ids = _submit(settings, "llm-wait", range(8))
        wait_until(
            lambda: all(c.triage_attempts >= 1 for c in _triage_state(settings, ids)["cases"]),
            deadline_s=180,
            what="the worker trying every case",
        )
        went_down = time.monotonic()  # the outage as the worker sees it
        # Every case is tried and put back more often than the failure budget allows.
        wait_until(
            lambda: all(c.triage_attempts > 3 for c in _triage_state(settings, ids)["cases"]),
            deadline_s=180,
            what="cases retried while the LLM is down",
        )
        time.sleep(max(0.0, LLM_DOWN_SECONDS - (time.monotonic() - went_down)))
        state = _triage_state(settings, ids)
        down_for = time.monotonic() - went_down
        tries = max(c.triage_attempts for c in state["cases"])
        assert state["suggestions"] == []
        assert {c.status for c in state["cases"]} <= {"received", "triaging"}  # none failed

        stub.up()
        state = wait_until(
            lambda: _all_triaged(settings, ids), deadline_s=180, what="cases triaged after LLM up"
        )
        assert len(state["suggestions"]) == len(ids)  # one each
        assert {row.engine for row in state["suggestions"]} == {"llm"}
        assert all(
            row.body["provenance"]["fallback_reason"] is None for row in state["suggestions"]
        )
        assert stub.calls >= len(ids)
        assert len(state["events"]) == len(ids)
        print(
            f"\nLLM down {down_for:.0f}s: {len(ids)} cases waited (up to {tries} attempts), "
            f"then all triaged by the LLM ({stub.calls} calls)"
        )
    finally:
        stub.down()
