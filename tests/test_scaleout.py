"""Scale-out for real: a Chroma server, the API and two procrastinate workers as separate
processes on PostgreSQL (a fresh schema), ~200 cases submitted over HTTP.

Checks that every accepted case is triaged exactly once (one suggestion, one
``suggestion.created`` audit event), that both workers did work, that the audit chain
verifies, and that SIGTERM stops a worker gracefully (exit code 0, nothing left in hand) while
the other one finishes the rest.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from cli import kb as kb_cli
from tests.conftest import _pg_url
from tests.support import fresh_pg_schema
from triage import audit
from triage.db import Database
from triage.models import AuditEvent, Case
from triage.models import Suggestion as SuggestionRow
from triage.settings import Settings
from triage.simulator import SimConfig, Simulator

pytestmark = [pytest.mark.integration, pytest.mark.postgres, pytest.mark.slow]
ADMIN = audit.Actor(audit.ActorType.human, "test-admin", "admin")

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
CASES = 200
# Generous upper bounds for a shared 2-core machine: a hang fails the test, nothing is timed.
START_TIMEOUT = 240.0
DRAIN_TIMEOUT = 300.0


def _free_ports(n: int) -> list[int]:
    """``n`` distinct free ports. The sockets are held open together while the kernel picks:
    two one-at-a-time picks can return the same port, and then the API's port check succeeds
    against Chroma listening there (seen once in CI: every POST /v1/cases answered 404)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


def _wait_for_port(port: int, proc: subprocess.Popen[Any], what: str, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"{what} exited with {proc.returncode}: {log.read_text()[-3000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.3)
    pytest.fail(f"{what} did not listen on {port}: {log.read_text()[-3000:]}")


class Procs:
    """Child processes with their logs; all terminated at teardown."""

    def __init__(self, tmp: Path, env: dict[str, str]) -> None:
        self.tmp, self.env, self.procs = tmp, env, []  # type: ignore[var-annotated]

    def start(self, name: str, *args: str, **env: str) -> tuple[subprocess.Popen[Any], Path]:
        log = self.tmp / f"{name}.log"
        proc = subprocess.Popen(
            list(args),
            cwd=ROOT,
            env={**self.env, **env},
            stdout=log.open("w"),
            stderr=subprocess.STDOUT,
        )
        self.procs.append(proc)
        return proc, log

    def run(self, *args: str) -> str:
        out = subprocess.run(
            [sys.executable, "-m", "cli.main", *args],
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert out.returncode == 0, (args, out.stdout[-2000:], out.stderr[-3000:])
        return out.stdout

    def stop_all(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
        for p in self.procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()


@pytest.fixture
def pg_schema_url() -> Iterator[str]:
    base = _pg_url()
    if base is None:
        pytest.skip("PostgreSQL not reachable on 127.0.0.1:5432 and TRIAGE_TEST_POSTGRES_URL unset")
    with fresh_pg_schema(base, "scale") as url:
        yield url


def _key(out: str) -> str:
    return next(line.split()[-1] for line in out.splitlines() if line.startswith("key:"))


def _worker_ids(db: Database) -> dict[str, str]:
    """case id -> id of the worker that claimed it last (from the audit trail)."""
    with db.read() as s:
        rows = s.execute(
            select(AuditEvent.case_id, AuditEvent.payload)
            .where(AuditEvent.action == "case.triaging")
            .order_by(AuditEvent.seq)
        ).all()
    return {case_id: json.loads(payload)["worker"] for case_id, payload in rows}


def _wait_all_triaged(db: Database, expected: int, procs: list[subprocess.Popen[Any]]) -> None:
    deadline = time.monotonic() + DRAIN_TIMEOUT
    while time.monotonic() < deadline:
        with db.read() as s:
            done = s.scalar(
                select(func.count()).select_from(Case).where(Case.status == "awaiting_review")
            )
            states = dict(s.execute(select(Case.status, func.count()).group_by(Case.status)).all())
        if done == expected:
            return
        assert not set(states) - {"received", "triaging", "awaiting_review"}, states
        for p in procs:
            assert p.poll() is None, f"a worker died with {p.returncode}"
        time.sleep(1.0)
    pytest.fail(f"not all {expected} cases triaged in time: {states}")


def _assert_exactly_once(db: Database, expected: int) -> None:
    with db.read() as s:
        assert s.scalar(select(func.count()).select_from(Case)) == expected
        per_case = dict(
            s.execute(
                select(SuggestionRow.case_id, func.count()).group_by(SuggestionRow.case_id)
            ).all()
        )
        created = dict(
            s.execute(
                select(AuditEvent.case_id, func.count())
                .where(AuditEvent.action == "suggestion.created")
                .group_by(AuditEvent.case_id)
            ).all()
        )
        ids = set(s.scalars(select(Case.id)))
        assert set(per_case) == ids and set(per_case.values()) == {1}
        assert set(created) == ids and set(created.values()) == {1}
        verified = audit.verify(s)
        assert verified.intact, verified.as_dict()


def test_api_and_two_workers_on_postgres_and_a_chroma_server(tmp_path, pg_schema_url):
    chroma_port, api_port = _free_ports(2)
    env = {
        **os.environ,
        "ANONYMIZED_TELEMETRY": "False",
        "PYTHONUNBUFFERED": "1",
        "TRIAGE_ENVIRONMENT": "test",
        "TRIAGE_DATA_DIR": str(tmp_path / "data"),
        "TRIAGE_DATABASE_URL": pg_schema_url,
        "TRIAGE_JOB_ENGINE": "procrastinate",
        "TRIAGE_WORKER_ENABLED": "false",
        "TRIAGE_CHROMA_URL": f"http://127.0.0.1:{chroma_port}",
        "TRIAGE_RATE_LIMIT_PER_SECOND": "0",
        "TRIAGE_SLA_SWEEP_SECONDS": "2",
        "TRIAGE_JOB_STALLED_SECONDS": "10",
    }
    procs = Procs(tmp_path, env)
    settings = Settings(environment="test", data_dir=tmp_path / "data", database_url=pg_schema_url)
    db = Database(settings)
    try:
        chroma, chroma_log = procs.start(
            "chroma",
            str(BIN / "chroma"),
            "run",
            "--path",
            str(tmp_path / "chroma"),
            "--host",
            "127.0.0.1",
            "--port",
            str(chroma_port),
        )
        _wait_for_port(chroma_port, chroma, "chroma", chroma_log)
        assert "database at" in procs.run("db", "upgrade")  # Alembic + procrastinate's schema
        procs.run("kb", "ingest", str(ROOT / "knowledge"), "--chroma-url", env["TRIAGE_CHROMA_URL"])
        orch = _key(procs.run("keys", "create", "--name", "erp", "--role", "orchestrator"))
        admin = _key(procs.run("keys", "create", "--name", "ops", "--role", "admin"))

        api, api_log = procs.start(
            "api",
            sys.executable,
            "-m",
            "cli.main",
            "serve",
            "--no-worker",
            "--no-upgrade",
            "--port",
            str(api_port),
        )
        workers = [
            procs.start(
                f"worker{n}",
                sys.executable,
                "-m",
                "cli.main",
                "worker",
                "--engine",
                "procrastinate",
                "--concurrency",
                "2",
            )[0]
            for n in (1, 2)
        ]
        _wait_for_port(chroma_port, chroma, "chroma", chroma_log)
        kb_cli.ingest(
            [ROOT / "knowledge"],
            chroma_path=tmp_path / "unused",
            chroma_url=env["TRIAGE_CHROMA_URL"],
            encoder=settings.encoder,
        )
        _wait_for_port(api_port, api, "api", api_log)

        sim = [r.case for r in Simulator(SimConfig(seed=7)).cases(CASES + 40)]
        first, later = sim[:CASES], sim[CASES:]
        headers = {"Authorization": f"Bearer {orch}"}
        with httpx.Client(base_url=f"http://127.0.0.1:{api_port}", timeout=60) as http:
            for i in range(0, 40):  # one by one...
                r = http.post("/v1/cases", json=first[i], headers=headers)
                assert r.status_code == 202, r.text
            for i in range(40, CASES, 20):  # ...and in batches
                r = http.post("/v1/cases/batch", json={"items": first[i : i + 20]}, headers=headers)
                assert r.status_code == 202 and r.json()["created"] == 20, r.text

            _wait_all_triaged(db, CASES, workers)
            _assert_exactly_once(db, CASES)
            by_worker = _worker_ids(db)
            pids = {w.pid for w in workers}
            assert {int(wid.split(":")[1]) for wid in by_worker.values()} == pids, (
                "both workers must have triaged cases"
            )

            # SIGTERM a worker while there is work: it finishes what it holds, then exits 0.
            r = http.post("/v1/cases/batch", json={"items": later}, headers=headers)
            assert r.status_code == 202 and r.json()["created"] == len(later), r.text
            stopping = workers[0]
            stopping.send_signal(signal.SIGTERM)
            assert stopping.wait(timeout=120) == 0, (tmp_path / "worker1.log").read_text()[-3000:]
            with db.read() as s:
                held = s.scalar(
                    select(func.count())
                    .select_from(Case)
                    .where(Case.status == "triaging", Case.lease_owner.like(f"%:{stopping.pid}:%"))
                )
            assert held == 0  # nothing left half-done by the stopped worker
            _wait_all_triaged(db, CASES + len(later), workers[1:])
            _assert_exactly_once(db, CASES + len(later))

            admin_h = {"Authorization": f"Bearer {admin}"}
            for status in ("failed", "todo", "doing"):
                page = http.get(f"/v1/jobs?status={status}", headers=admin_h).json()
                assert page["engine"] == "procrastinate" and page["items"] == [], (status, page)
    finally:
        procs.stop_all()
        db.dispose()
