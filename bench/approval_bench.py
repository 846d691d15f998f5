"""Approval decision end to end: POST /v1/actions/{id}/approve on a running server, from the
API call to the committed outbox row, on SQLite and PostgreSQL.

Set-up (not measured): N cases, each with one pending credit note of 12,400 EUR (tier B, one
finance approver releases it). Measured: one approver approving them one after another over
HTTP (keep-alive); each approval runs can_approve + quorum_status in Cedar, writes the approval,
releases the action and writes its outbox row and audit events in one transaction.

    .venv/bin/python bench/approval_bench.py --n 300 --db sqlite --db postgres
"""

from __future__ import annotations

import argparse
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from sqlalchemy import create_engine, func, select, text

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.intake_bench import PG, _wait  # noqa: E402
from contracts.case import CaseIn  # noqa: E402
from contracts.suggestion import IssueCreditNote  # noqa: E402
from tests.support import sample_case  # noqa: E402
from triage import actions, audit, auth, cases, migrate  # noqa: E402
from triage.db import Database  # noqa: E402
from triage.models import OutboxMessage  # noqa: E402
from triage.pipeline import Pipeline, run_case  # noqa: E402
from triage.settings import Settings  # noqa: E402


def setup(settings: Settings, n: int) -> tuple[list[tuple[str, str]], str]:
    migrate.upgrade(settings)
    db = Database(settings)
    admin = audit.Actor(audit.ActorType.human, "bench", "admin")
    agent = audit.Actor(audit.ActorType.human, "bench-agent", "agent")
    orch = audit.Actor(audit.ActorType.integration, "bench-orch", "orchestrator")
    policy = actions.load_policy(settings)
    with db.write() as s:
        key = auth.create_key(
            s, "fin", "approver", created_by=admin, authorities=["finance_approver"]
        ).key
    out = []
    for i in range(n):
        refs = sample_case()["references"] | {"customer": {"id": f"C{i}", "tier": "B"}}
        with db.write() as s:
            cid = cases.submit(
                s,
                CaseIn.model_validate(sample_case(i, references=refs)),
                actor=orch,
                settings=settings,
            ).case.id
        run_case(db, cid, Pipeline(), settings, worker_id="bench")
        with db.write() as s:
            row = actions.create(
                s,
                cid,
                IssueCreditNote(
                    invoice_id="INV-1", amount="12400", currency="EUR", reason_code="x"
                ),
                actor=agent,
                policy=policy,
                settings=settings,
            )
            assert row.status == actions.PENDING, row.status
            out.append((row.id, row.action_hash or ""))
    db.dispose()
    return out, key


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--db", action="append", choices=["sqlite", "postgres"])
    args = ap.parse_args()
    for kind in args.db or ["sqlite", "postgres"]:
        with tempfile.TemporaryDirectory() as tmp:
            schema = None
            if kind == "sqlite":
                url = f"sqlite:///{tmp}/approvals.db"
            else:
                schema = f"bench_appr_{secrets.token_hex(3)}"
                eng = create_engine(PG, isolation_level="AUTOCOMMIT")
                with eng.connect() as c:
                    c.execute(text(f'CREATE SCHEMA "{schema}"'))
                url = f"{PG}?options=-csearch_path%3D{schema}"
            settings = Settings(
                database_url=url,
                data_dir=Path(tmp),
                action_webhook_url="http://127.0.0.1:9/actions",
            )
            todo, key = setup(settings, args.n)
            env = {
                **os.environ,
                "TRIAGE_DATABASE_URL": url,
                "TRIAGE_DATA_DIR": tmp,
                "TRIAGE_WORKER_ENABLED": "false",
                "TRIAGE_ACTION_WEBHOOK_URL": "http://127.0.0.1:9/actions",
            }
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "uvicorn",
                    "api.asgi:app",
                    "--port",
                    "8703",
                    "--log-level",
                    "warning",
                    "--no-access-log",
                ],
                env=env,
                cwd=ROOT,
            )
            try:
                _wait("http://127.0.0.1:8703/healthz")
                lat = []
                with httpx.Client(
                    base_url="http://127.0.0.1:8703", headers={"Authorization": f"Bearer {key}"}
                ) as c:
                    for action_id, h in todo:
                        t0 = time.perf_counter()
                        r = c.post(f"/v1/actions/{action_id}/approve", json={"action_hash": h})
                        lat.append(time.perf_counter() - t0)
                        assert r.status_code == 200 and r.json()["status"] == "approved", r.text
                db = Database(settings)
                with db.read() as s:
                    released = s.scalar(
                        select(func.count())
                        .select_from(OutboxMessage)
                        .where(OutboxMessage.kind == "action.execute")
                    )
                db.dispose()
                lat.sort()
                print(
                    f"{kind:<8} {len(lat)} approvals -> {released} outbox rows: p50 "
                    f"{statistics.median(lat) * 1000:.1f} ms, p99 "
                    f"{lat[int(len(lat) * 0.99) - 1] * 1000:.1f} ms, max {lat[-1] * 1000:.1f} ms",
                    flush=True,
                )
            finally:
                proc.terminate()
                proc.wait(10)
                if schema:
                    eng = create_engine(PG, isolation_level="AUTOCOMMIT")
                    with eng.connect() as c:
                        c.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))


if __name__ == "__main__":
    main()
