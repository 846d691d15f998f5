"""Console page server time at scale: queue page and case page with 100k cases, dashboard over
1M audit events, on SQLite and PostgreSQL.

Set-up (not measured): the schema is built by the migrations, then synthetic but realistically
shaped rows are bulk-inserted: N cases spread over 90 days (statuses, priorities, queues,
customers, warehouses, carriers and milestones drawn at random), a suggestion for every triaged
case, credit notes and approvals on 8% of them, overrides on 5%, and audit events (a valid
hash chain) until the trail holds E events.

Measured: full requests through the ASGI app in process (routing, session lookup, queries and
template rendering; the test client adds well under a millisecond), each page requested many
times; p50/p95 in milliseconds. Targets from issue 6: queue and case page p95 < 100 ms at 100k
cases, dashboard < 500 ms over 1M audit events.

    nice .venv/bin/python bench/console_bench.py --cases 100000 --events 1000000 \
        --db sqlite --db postgres
"""

from __future__ import annotations

import argparse
import random
import re
import secrets
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, insert, select, text

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.intake_bench import PG  # noqa: E402
from triage import audit, dashboard, migrate, users  # noqa: E402
from triage.common import canonical_json, new_id, to_ts  # noqa: E402
from triage.db import Database  # noqa: E402
from triage.models import (  # noqa: E402
    ActionApproval,
    ActionRow,
    AuditEvent,
    Case,
    LabelFeedback,
    Suggestion,
)
from triage.settings import Settings  # noqa: E402

TYPES = [
    "shortage",
    "partial_shipment",
    "pricing_mismatch",
    "return_request",
    "damaged_goods",
    "duplicate_invoice",
    "failed_integration",
    "carrier_delay",
    "address_issue",
]
QUEUES = ["warehouse_ops", "transport", "billing", "returns", "integration_support"]
CATEGORIES = [
    "pick_error",
    "transit_damage",
    "price_master_data",
    "duplicate_billing",
    "customs_hold",
    "endpoint_down",
    "stock_discrepancy",
    "backorder",
]
STATUSES = (
    ["resolved"] * 60
    + ["awaiting_review"] * 25
    + ["in_review"] * 7
    + ["escalated"] * 4
    + ["failed"] * 2
    + ["received"] * 2
)
PRIORITY_HOURS = {"P1": 4, "P2": 24, "P3": 72, "P4": 120}
PASSWORD = "bench-password-123"


def _payload(i: int, etype: str, customer: str, wh: str, carrier: str, occurred: datetime) -> dict:
    shipped = occurred - timedelta(days=random.randint(2, 9))
    return {
        "schema_version": "1.0",
        "source": {"system": "bench", "kind": "wms", "case_id": f"B-{i:07d}"},
        "exception_type": etype,
        "title": f"{etype.replace('_', ' ')} on SO-{i:07d}",
        "references": {
            "customer": {"id": customer, "name": f"Customer {customer[-4:]}", "tier": "B"},
            "order_id": f"SO-{i:07d}",
            "shipment_id": f"SH-{i:07d}",
            "invoice_id": f"INV-{i:07d}",
            "warehouse_id": wh,
            "carrier_id": carrier,
        },
        "lines": [
            {
                "sku": f"SKU-{i % 500:04d}",
                "ordered_qty": "40",
                "shipped_qty": "32",
                "invoiced_qty": "40",
                "unit_price": {"amount": "12.50", "currency": "EUR"},
            }
        ],
        "amount_in_dispute": {"amount": "100.00", "currency": "EUR"},
        "text": {
            "customer_message": "We received 32 units instead of 40 but were billed for 40.",
            "operator_notes": "Pick short at location A-12-3.",
        },
        "occurred_at": occurred.isoformat(),
        "milestones": {
            "shipped_at": shipped.isoformat(),
            "invoiced_at": (shipped + timedelta(hours=random.randint(4, 90))).isoformat(),
        },
        "attributes": {},
    }


def _suggestion(i: int, queue: str, category: str, priority: str) -> dict:
    def pred(target: str, label: str) -> dict:
        return {
            "target": target,
            "label": label,
            "confidence": 0.91,
            "runner_up": None,
            "runner_up_confidence": None,
            "abstained": False,
            "abstain_reason": None,
            "probabilities": {label: 0.91, "other": 0.09},
        }

    return {
        "schema_version": "1.0",
        "summary": f"Customer reports a shortage on SO-{i:07d}: 8 units missing, billed in full.",
        "routing": {
            "queue": queue,
            "rationale": "classifier",
            "confidence": 0.91,
            "source": "classifier",
        },
        "category": category,
        "priority": priority,
        "proposed_actions": [
            {
                "type": "issue_credit_note",
                "invoice_id": f"INV-{i:07d}",
                "amount": "100.00",
                "currency": "EUR",
                "reason_code": "shortage",
                "rationale": "credit the shortage",
                "evidence": ["SOP-SHT-001:1"],
            }
        ],
        "next_steps": ["Check the pick confirmation", "Issue the credit note"],
        "customer_message": "Dear customer,\n\nwe are sorry about the missing units ...",
        "citations": [
            {
                "chunk_id": "SOP-SHT-001:1",
                "document_id": "SOP-SHT-001",
                "title": "Shortage handling SOP",
                "chunk_hash": "ab" * 32,
                "quote": "Compare ordered, picked, shipped and invoiced quantities.",
            }
        ],
        "similar_cases": [],
        "classifier": {
            "model_version": "bench-model",
            "category": pred("category", category),
            "queue": pred("queue", queue),
            "priority": pred("priority", priority),
        },
        "injection_flags": [],
        "provenance": {
            "engine": "offline",
            "fallback_reason": None,
            "retrieved_chunk_ids": ["SOP-SHT-001:1"],
            "contract_violations": [],
        },
    }


def populated_database(
    kind: str, tmp: Path, name: str, size: int, **overrides: Any
) -> tuple[Settings, Database, str | None]:
    """A fresh migrated database (``kind`` sqlite or postgres) filled by :func:`populate` with
    ``size`` cases (about three audit events each), analysed on PostgreSQL; prints the load
    time. Returns its settings, an open ``Database`` and the schema for ``_drop``."""
    from bench.intake_bench import _db_url

    url, schema = _db_url(kind, tmp, name)
    settings = Settings(
        data_dir=tmp,
        database_url=url,
        worker_enabled=False,
        retrieval_enabled=False,
        **overrides,
    )
    migrate.upgrade(settings)
    db = Database(settings)
    started = time.perf_counter()
    populate(db, size, size * 3)
    if kind == "postgres":
        with db.write_engine.connect() as c:
            c.exec_driver_sql("ANALYZE")
            c.commit()
    print(
        f"{kind}: {size:,} cases loaded in {time.perf_counter() - started:.0f} s",
        file=sys.stderr,
        flush=True,
    )
    return settings, db, schema


class Chain:
    """Builds audit rows with a valid hash chain, in insert order."""

    def __init__(self) -> None:
        self.seq = 0
        self.prev = audit.GENESIS
        self.rows: list[dict] = []

    def add(
        self,
        ts: datetime,
        actor: tuple[str, str, str | None],
        action: str,
        payload: dict,
        case_id: str | None,
    ) -> None:
        self.seq += 1
        body = canonical_json(payload)
        t = to_ts(ts)
        digest = audit.entry_hash(
            self.seq, t, actor[0], actor[1], actor[2], case_id, action, body, self.prev
        )
        self.rows.append(
            {
                "seq": self.seq,
                "ts": t,
                "actor_type": actor[0],
                "actor_id": actor[1],
                "actor_role": actor[2],
                "case_id": case_id,
                "action": action,
                "payload": body,
                "prev_hash": self.prev,
                "hash": digest,
            }
        )
        self.prev = digest


def populate(db: Database, n_cases: int, n_events: int, seed: int = 11) -> dict[str, Any]:
    random.seed(seed)
    now = datetime.now(UTC)
    customers = [f"CUST-{i:04d}" for i in range(1, 501)]
    whs = [f"WH-{c}" for c in ("RTM-1", "HAM-2", "MAD-3", "LYS-1", "MIL-1")]
    carriers = ["DHL", "DSV", "KUEHNE", "GLS", "UPS", "DBSCHENKER"]
    pipeline = ("ai", "triage-pipeline", None)
    system = ("system", "system", None)
    agent = ("human", "agent", "agent")
    approver = ("human", "approver", "approver")
    orch = ("integration", "bench-orchestrator", "orchestrator")
    chain = Chain()
    case_rows, sugg_rows, action_rows, approval_rows, label_rows = [], [], [], [], []
    ids = []
    base_events_per_case = max(1, n_events // max(1, n_cases))
    started = time.perf_counter()
    # Cases arrive in time order, as they do in production: rows of a date range sit together.
    arrivals = sorted(now - timedelta(days=90 * random.random()) for _ in range(n_cases))
    for i, created in enumerate(arrivals):
        cid = new_id()
        ids.append(cid)
        etype = random.choice(TYPES)
        status = random.choice(STATUSES)
        priority = random.choices(["P1", "P2", "P3", "P4"], [1, 3, 4, 2])[0]
        queue, category = random.choice(QUEUES), random.choice(CATEGORIES)
        triaged = status != "received"
        triaged_at = created + timedelta(seconds=random.uniform(1, 600)) if triaged else None
        resolved_at = (
            created + timedelta(hours=random.uniform(1, 96)) if status == "resolved" else None
        )
        customer, wh, carrier = (
            random.choice(customers),
            random.choice(whs),
            random.choice(carriers),
        )
        case_rows.append(
            {
                "id": cid,
                "source_system": "bench",
                "source_case_id": f"B-{i:07d}",
                "idempotency_key": None,
                "request_hash": "0" * 64,
                "schema_version": "1.0",
                "exception_type": etype,
                "customer_id": customer,
                "customer_tier": "B",
                "warehouse_id": wh,
                "carrier_id": carrier,
                "order_id": f"SO-{i:07d}",
                "invoice_id": f"INV-{i:07d}",
                "amount": 100,
                "currency": "EUR",
                "payload": _payload(i, etype, customer, wh, carrier, created - timedelta(hours=2)),
                "callback_url": None,
                "status": status,
                "status_reason": None,
                "priority": priority,
                "category": category if triaged else None,
                "queue": queue if triaged else None,
                "created_at": to_ts(created),
                "updated_at": to_ts(created),
                "occurred_at": to_ts(created - timedelta(hours=2)),
                "triaged_at": to_ts(triaged_at) if triaged_at else None,
                "resolved_at": to_ts(resolved_at) if resolved_at else None,
                "triage_due_at": to_ts(created + timedelta(hours=PRIORITY_HOURS[priority] / 8)),
                "resolution_due_at": to_ts(created + timedelta(hours=PRIORITY_HOURS[priority])),
                "triage_sla_breached": random.random() < 0.03,
                "resolution_sla_breached": random.random() < 0.08,
                "resolution": "credited" if resolved_at else None,
                "triage_attempts": 1,
                "lease_owner": None,
                "lease_expires_at": None,
                "suggestion_revision": 1 if triaged else 0,
                "model_version": "bench-model" if triaged else None,
                # the classifier's labels as the suggestion below states them (migration 0008)
                "predicted_category": category if triaged else None,
                "predicted_queue": queue if triaged else None,
                "predicted_priority": priority if triaged else None,
                "abstain_reasons": {"priority": "close_runner_up"}
                if random.random() < 0.2
                else None,
                "injection_flags": None,
                "indexed_at": None,
                "submitted_by": orch[1],
                # who holds it (migration 0009): 20 agents share the claimed and resolved cases;
                # derived from i so the random stream, and every other column, stay as before
                "assignee": f"agent-{i % 20:02d}" if status in ("in_review", "resolved") else None,
                "version": 3,
            }
        )
        chain.add(
            created, orch, "case.received", {"priority": priority, "exception_type": etype}, cid
        )
        if triaged:
            assert triaged_at is not None
            sugg_rows.append(
                {
                    "case_id": cid,
                    "revision": 1,
                    "created_at": to_ts(triaged_at),
                    "engine": "offline",
                    "schema_version": "1.0",
                    "model_version": "bench-model",
                    "body": _suggestion(i, queue, category, priority),
                    "decisions": {"items": []},
                }
            )
            chain.add(
                triaged_at,
                pipeline,
                "suggestion.created",
                {
                    "revision": 1,
                    "engine": "offline",
                    "fallback_reason": None,
                    "elapsed_ms": round(random.uniform(20, 400), 2),
                },
                cid,
            )
            chain.add(
                triaged_at,
                pipeline,
                "case.awaiting_review",
                {"from": "triaging", "to": "awaiting_review"},
                cid,
            )
        if triaged and random.random() < 0.05:
            label_rows.append(
                {
                    "case_id": cid,
                    "target": "queue",
                    "predicted": queue,
                    "final": "billing",
                    "model_version": "bench-model",
                    "actor_id": "agent",
                    "reason": "bench",
                    "created_at": to_ts(triaged_at + timedelta(minutes=30)),
                }
            )
            chain.add(
                triaged_at + timedelta(minutes=30),
                agent,
                "case.overridden",
                {"reason": "bench"},
                cid,
            )
        if triaged and random.random() < 0.08:
            aid = new_id()
            act_status = random.choice(["pending_approval", "approved", "executed", "rejected"])
            t0 = triaged_at + timedelta(minutes=40)
            action_rows.append(
                {
                    "id": aid,
                    "case_id": cid,
                    "customer_id": customer,
                    "origin": "suggestion",
                    "suggestion_revision": 1,
                    "action_type": "issue_credit_note",
                    "body": {
                        "type": "issue_credit_note",
                        "invoice_id": f"INV-{i:07d}",
                        "amount": "6000.00",
                        "currency": "EUR",
                        "reason_code": "shortage",
                        "rationale": "",
                        "evidence": [],
                    },
                    "amount": 6000,
                    "currency": "EUR",
                    "material": True,
                    "status": act_status,
                    "requested_by": "agent",
                    "proposed_by": "triage-pipeline",
                    "last_edited_by": None,
                    "accepted_by": "agent",
                    "policy_version": "bench",
                    "action_hash": "cd" * 32,
                    "decision": {
                        "outcome": "needs_approval",
                        "reasons": [
                            {
                                "policy_id": "billing.credit_note.tier_b",
                                "explanation": "above 5,000 EUR",
                            }
                        ],
                        "approval": {"min_approvals": 1},
                    },
                    "due_at": to_ts(t0 + timedelta(hours=24))
                    if act_status == "pending_approval"
                    else None,
                    "reminded_at": None,
                    "escalation_level": 0,
                    "escalated_to": None,
                    "outcome_reason": None,
                    "executed_at": None,
                    "created_at": to_ts(t0),
                    "updated_at": to_ts(t0),
                    "version": 2,
                }
            )
            chain.add(
                t0, agent, "action.decided", {"action_id": aid, "outcome": "needs_approval"}, cid
            )
            if act_status in ("approved", "executed"):
                t1 = t0 + timedelta(hours=random.uniform(0.2, 20))
                approval_rows.append(
                    {
                        "action_id": aid,
                        "approver_id": "approver",
                        "approver_roles": ["finance_approver"],
                        "decision": "approved",
                        "reason": None,
                        "action_hash": "cd" * 32,
                        "created_at": to_ts(t1),
                    }
                )
                chain.add(
                    t1, approver, "action.approved", {"action_id": aid, "released": True}, cid
                )
        # pad the trail with ordinary events until it holds ~n_events
        extra = base_events_per_case - 3
        for k in range(max(0, extra)):
            chain.add(
                created + timedelta(minutes=50 + k),
                system,
                "policy.evaluated",
                {"index": k, "outcome": "auto_execute"},
                cid,
            )
    while chain.seq < n_events:
        chain.add(now, system, "sla.sweep", {"n": chain.seq}, None)
    chain.rows.sort(key=lambda r: r["seq"])
    gen = time.perf_counter() - started
    started = time.perf_counter()
    with db.write() as s:
        for table, rows in (
            (Case, case_rows),
            (Suggestion, sugg_rows),
            (ActionRow, action_rows),
            (ActionApproval, approval_rows),
            (LabelFeedback, label_rows),
        ):
            for j in range(0, len(rows), 5000):
                s.execute(insert(table), rows[j : j + 5000])
        # keep the events already in the trail (migration-time policy events) ahead of ours
        offset = int(s.execute(text("SELECT seq FROM audit_head WHERE id = 1")).scalar() or 0)
        if offset:
            raise SystemExit("bench needs an empty audit trail")
        for j in range(0, len(chain.rows), 20000):
            s.execute(insert(AuditEvent), chain.rows[j : j + 20000])
        s.execute(
            text("UPDATE audit_head SET seq = :seq, hash = :h WHERE id = 1"),
            {"seq": chain.seq, "h": chain.prev},
        )
        users.create_user(s, "bench-agent", PASSWORD, "agent", created_by=audit.SYSTEM)
        users.create_user(s, "bench-auditor", PASSWORD, "auditor", created_by=audit.SYSTEM)
    return {
        "cases": len(case_rows),
        "events": chain.seq,
        "ids": ids,
        "gen_s": gen,
        "insert_s": time.perf_counter() - started,
    }


def _signed_in(app: Any, username: str) -> Any:
    from fastapi.testclient import TestClient

    c = TestClient(app)
    page = c.get("/console/login")
    token = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)  # type: ignore[union-attr]
    r = c.post(
        "/console/login",
        data={"csrf_token": token, "username": username, "password": PASSWORD},
        follow_redirects=False,
    )
    assert r.status_code == 303, r.text
    return c


def _time(client: Any, urls: list[str], before: Any = None) -> dict[str, float]:
    samples = []
    for url in urls:
        if before is not None:
            before()
        t = time.perf_counter()
        r = client.get(url)
        samples.append((time.perf_counter() - t) * 1000)
        assert r.status_code == 200, (url, r.status_code, r.text[:500])
    samples.sort()
    return {
        "n": len(samples),
        "p50": statistics.median(samples),
        "p95": samples[min(len(samples) - 1, int(0.95 * len(samples)))],
        "max": samples[-1],
    }


def _time_call(fn: Any, n: int) -> dict[str, float]:
    samples = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t) * 1000)
    samples.sort()
    return {
        "n": n,
        "p50": statistics.median(samples),
        "p95": samples[min(n - 1, int(0.95 * n))],
        "max": samples[-1],
    }


def _direct(db: Database, r: Any) -> None:
    with db.read() as s:
        dashboard.process_stats(s, r)


ACTIVITY = (
    ("human", "agent", "agent", "case.in_review"),
    ("human", "agent", "agent", "case.overridden"),
    ("human", "agent", "agent", "case.resolved"),
    ("ai", "triage-pipeline", None, "suggestion.created"),
)


def _activity(db: Database, rnd: random.Random, n: int) -> None:
    """``n`` audit events now, on random cases received in the last four days."""
    since = to_ts(datetime.now(UTC) - timedelta(days=4))
    with db.read() as s:
        recent = list(s.scalars(select(Case.id).where(Case.created_at >= since).limit(5000)))
    with db.write() as s:
        for _ in range(n):
            kind, name, role, action = rnd.choice(ACTIVITY)
            payload = {"engine": "offline", "fallback_reason": None} if kind == "ai" else {}
            audit.append(
                s,
                audit.Actor(audit.ActorType(kind), name, role),
                action,
                payload,
                case_id=rnd.choice(recent),
            )


def run(kind: str, n_cases: int, n_events: int, repeat: int, keep: Path | None = None) -> None:
    schema = None
    tmp = Path(tempfile.mkdtemp(prefix="console-bench-"))
    drop = True
    if kind == "postgres":
        schema = f"bench_console_{secrets.token_hex(3)}"
        if keep is not None:
            schema, drop = f"bench_console_keep_{n_cases}_{n_events}", False
        admin = create_engine(PG, isolation_level="AUTOCOMMIT")
        with admin.connect() as c:
            c.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{schema}"'))
        url = f"{PG}?options=-csearch_path%3D{schema}"
    else:
        path = tmp / "bench.db"
        if keep is not None:
            keep.mkdir(parents=True, exist_ok=True)
            path = keep / f"bench-{n_cases}-{n_events}.db"
        url = f"sqlite:///{path}"
    settings = Settings(environment="test", data_dir=tmp, database_url=url, worker_enabled=False)
    try:
        migrate.upgrade(settings)
        db = Database(settings)
        with db.read() as s:
            loaded = s.execute(text("SELECT count(*) FROM cases")).scalar()
        if keep is not None and loaded:
            with db.read() as s:
                ids = list(s.scalars(text("SELECT id FROM cases")))
                events = int(s.execute(text("SELECT seq FROM audit_head")).scalar() or 0)
            info = {"cases": len(ids), "events": events, "ids": ids, "gen_s": 0.0, "insert_s": 0.0}
            with db.write() as s:  # the roll-ups are rebuilt below, like the first time
                s.execute(text("DELETE FROM dashboard_days"))
                s.execute(text("DELETE FROM dashboard_rollup_state"))
        else:
            with db.write() as s:  # start from an empty trail (the bench builds its own chain)
                s.execute(text("DELETE FROM audit_events"))
                s.execute(
                    text("UPDATE audit_head SET seq = 0, hash = :g WHERE id = 1"),
                    {"g": audit.GENESIS},
                )
            info = populate(db, n_cases, n_events)
        if kind == "postgres":
            # What autovacuum does after a bulk load: statistics, and the visibility map that
            # lets the queue's status counts run as index-only scans.
            with db.write_engine.connect().execution_options(isolation_level="AUTOCOMMIT") as c:
                c.execute(text("VACUUM ANALYZE"))
        print(
            f"\n== {kind}: {info['cases']:,} cases, {info['events']:,} audit events "
            f"(generated in {info['gen_s']:.0f} s, inserted in {info['insert_s']:.0f} s)"
        )
        from api.app import create_app

        app = create_app(settings, db=db, start_worker=False)
        # Measure the dashboard cold: the figures are recomputed on every request.
        app.state.console.settings.console_dashboard_cache_seconds = 0
        # The policy bundle is activated on start-up (lifespan): enter it once.
        from fastapi.testclient import TestClient

        with TestClient(app):
            agent = _signed_in(app, "bench-agent")
            auditor = _signed_in(app, "bench-auditor")
            rnd = random.Random(5)
            queue_urls = ["/console/queue"] * repeat
            filtered = [
                f"/console/queue?priority=P{rnd.randint(1, 4)}&queue={rnd.choice(QUEUES)}"
                for _ in range(repeat)
            ]
            search = [f"/console/queue?q=SO-{rnd.randrange(n_cases):07d}" for _ in range(repeat)]
            first = agent.get("/console/queue").text
            nxt = re.search(r'href="(\?[^"]*cursor=[^"]+)"', first)
            page2 = [f"/console/queue{nxt.group(1).replace('&amp;', '&')}"] * repeat if nxt else []
            cases_urls = [f"/console/cases/{rnd.choice(info['ids'])}" for _ in range(repeat)]
            for url in ("/console/queue", cases_urls[0]):
                agent.get(url)  # warm-up: template compilation, connection pool
            results = {
                "queue (all open, page 1)": _time(agent, queue_urls),
                "queue (priority + queue filter)": _time(agent, filtered),
                "queue (search by order id)": _time(agent, search),
                "queue (page 2, keyset cursor)": _time(agent, page2) if page2 else None,
                "case page (random case)": _time(agent, cases_urls),
                # the twentieth session's additions to the queue page: the cases of one holder,
                # and the per-holder counts it runs on every view (timed alone)
                "queue (held by one person)": _time(
                    agent, [f"/console/queue?held=agent-{k % 20:02d}" for k in range(repeat)]
                ),
            }
            with db.read() as s:
                results["queue: per-holder counts query alone"] = _time_call(
                    lambda: dashboard.holder_counts(s), repeat
                )
            start = (datetime.now(UTC) - timedelta(days=89)).strftime("%Y-%m-%d")
            end = datetime.now(UTC).strftime("%Y-%m-%d")
            r30 = dashboard.DateRange.last_days(30)
            results["dashboard direct, 30 d (no roll-ups)"] = _time_call(
                lambda: _direct(db, r30), 5
            )
            # the twenty-first session's Team page (not from the roll-ups: it groups the
            # trail's human events of the range on every view)
            with db.read() as s:
                results["team figures query alone, 30 d"] = _time_call(
                    lambda: dashboard.team_figures(s, r30), 10
                )
            results["team page, 30 d"] = _time(auditor, ["/console/team"] * 20)
            # The first view ever builds the roll-up of every day of its range.
            results["dashboard roll-up build, 90 d (once)"] = _time(
                auditor, [f"/console/dashboard?from={start}&to={end}"]
            )
            results["dashboard 30 d, roll-ups current"] = _time(
                auditor, ["/console/dashboard"] * 20
            )
            results["dashboard 90 d, roll-ups current"] = _time(
                auditor, [f"/console/dashboard?from={start}&to={end}"] * 10
            )
            # Steady state: between two views, activity on cases of the last few days (and so
            # on today): each view recomputes the days that activity touched.
            results["dashboard 30 d, 50 new events before each"] = _time(
                auditor, ["/console/dashboard"] * 20, before=lambda: _activity(db, rnd, 50)
            )
            app.state.console.settings.console_dashboard_cache_seconds = 60
            results["dashboard (30 days, cached 60 s)"] = _time(
                auditor, ["/console/dashboard"] * 10
            )
            results["audit search (by action)"] = _time(
                auditor, ["/console/audit?action=case.overridden"] * repeat
            )
        for name, r in results.items():
            if r is None:
                print(f"  {name:<44} n/a")
                continue
            print(
                f"  {name:<44} n={r['n']:<4} p50 {r['p50']:7.1f} ms   p95 {r['p95']:7.1f} ms"
                f"   max {r['max']:7.1f} ms"
            )
        db.dispose()
    finally:
        if schema and drop:
            admin = create_engine(PG, isolation_level="AUTOCOMMIT")
            with admin.connect() as c:
                c.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
            admin.dispose()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--cases", type=int, default=100_000)
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=60, help="requests per page kind")
    ap.add_argument("--db", action="append", choices=["sqlite", "postgres"])
    ap.add_argument(
        "--keep",
        type=Path,
        help="keep the loaded data (SQLite file in this directory, a named PostgreSQL schema) "
        "and reuse it on the next run with the same sizes",
    )
    args = ap.parse_args()
    for kind in args.db or ["sqlite", "postgres"]:
        run(kind, args.cases, args.events, args.repeat, args.keep)


if __name__ == "__main__":
    main()
