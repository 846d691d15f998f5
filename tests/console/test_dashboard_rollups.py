"""The dashboard's daily roll-ups give exactly the figures of the direct computation.

A random data set (cases over three weeks up to today, suggestions, overrides, messages,
actions with approvals and rejections, and their audit events with historical timestamps) is
built on SQLite and PostgreSQL; the roll-up path is compared with ``process_stats`` (one pass
over the range) on first build, on reuse, after changes to old and new cases, and on ranges
that start or end mid-way.
"""

from __future__ import annotations

import random
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import insert, select, text, update

from triage import audit, dashboard
from triage.common import canonical_json, new_id, to_ts
from triage.db import Database
from triage.models import ActionRow, AuditHead, Case, DashboardDay, LabelFeedback

TYPES = ["shortage", "damaged_goods", "pricing_mismatch", "carrier_delay"]
CATEGORIES = ["pick_error", "transit_damage", "price_master_data", None]
PRIOS = ["P1", "P2", "P3", "P4"]
HUMAN = ("human", "agent", "agent")
APPROVER = ("human", "approver", "approver")
PIPE = ("ai", "triage-pipeline", None)


def _events(s: Any, events: list[tuple[datetime, tuple[str, str, str | None], str, dict, str]]):
    """Append events with the given timestamps to the chain (valid hashes, head moved)."""
    seq, prev = s.execute(text("SELECT seq, hash FROM audit_head WHERE id = 1")).one()
    rows = []
    for ts, actor, action, payload, case_id in events:
        seq += 1
        body, t = canonical_json(payload), to_ts(ts)
        digest = audit.entry_hash(seq, t, *actor, case_id, action, body, prev)
        rows.append(
            {
                "seq": seq,
                "ts": t,
                "actor_type": actor[0],
                "actor_id": actor[1],
                "actor_role": actor[2],
                "case_id": case_id,
                "action": action,
                "payload": body,
                "prev_hash": prev,
                "hash": digest,
            }
        )
        prev = digest
    if rows:
        s.execute(insert(audit.AuditEvent), rows)
        s.execute(update(AuditHead).where(AuditHead.id == 1).values(seq=seq, hash=prev))


def _case_row(rnd: random.Random, created: datetime, status: str) -> dict[str, Any]:
    cid = new_id()
    triaged = status != "received"
    shipped = created - timedelta(days=rnd.randint(1, 5), minutes=rnd.randint(0, 999))
    milestones = (
        {
            "shipped_at": shipped.isoformat(),
            "invoiced_at": (shipped + timedelta(hours=7)).isoformat(),
        }
        if rnd.random() < 0.7
        else {}
    )
    return {
        "id": cid,
        "source_system": "t",
        "source_case_id": cid,
        "idempotency_key": None,
        "request_hash": "0" * 64,
        "schema_version": "1.0",
        "exception_type": rnd.choice(TYPES),
        "customer_id": f"C-{rnd.randint(1, 12)}",
        "customer_tier": "B",
        "warehouse_id": rnd.choice(["WH-1", "WH-2", None]),
        "carrier_id": rnd.choice(["DHL", "GLS", "UPS", None]),
        "order_id": None,
        "invoice_id": None,
        "amount": None,
        "currency": None,
        "payload": {"milestones": milestones},
        "callback_url": None,
        "status": status,
        "status_reason": None,
        "priority": rnd.choice(PRIOS),
        "category": rnd.choice(CATEGORIES) if triaged else None,
        "queue": "billing" if triaged else None,
        "created_at": to_ts(created),
        "updated_at": to_ts(created),
        "occurred_at": to_ts(created),
        "triaged_at": to_ts(created + timedelta(seconds=rnd.uniform(1, 900))) if triaged else None,
        "resolved_at": to_ts(created + timedelta(hours=rnd.uniform(1, 50)))
        if status == "resolved"
        else None,
        "triage_due_at": to_ts(created + timedelta(hours=1)),
        "resolution_due_at": to_ts(created + timedelta(hours=24)),
        "triage_sla_breached": rnd.random() < 0.1,
        "resolution_sla_breached": rnd.random() < 0.2,
        "resolution": None,
        "triage_attempts": 1,
        "lease_owner": None,
        "lease_expires_at": None,
        "suggestion_revision": 1 if triaged else 0,
        "model_version": None,
        "abstain_reasons": rnd.choice([None, None, None, {"priority": "low"}, {"queue": "x"}]),
        "injection_flags": None,
        "indexed_at": None,
        "submitted_by": "t",
        "version": 1,
    }


def _populate(db: Database, rnd: random.Random, n: int, now: datetime, days: float) -> list[str]:
    """``n`` cases received over the last ``days`` days, with their history."""
    cases_, actions_, labels, events = [], [], [], []
    for _ in range(n):
        created = now - timedelta(days=days * rnd.random())
        status = rnd.choice(["received", "awaiting_review", "in_review", "resolved", "resolved"])
        row = _case_row(rnd, created, status)
        cases_.append(row)
        cid = row["id"]
        events.append((created, ("integration", "orch", "orchestrator"), "case.received", {}, cid))
        if row["triaged_at"] is None:
            continue
        t = created + timedelta(minutes=20)
        engine = rnd.choice(["offline", "llm", "llm"])
        fallback = rnd.choice([None, None, "timeout"]) if engine == "llm" else None
        events.append(
            (t, PIPE, "suggestion.created", {"engine": engine, "fallback_reason": fallback}, cid)
        )
        if rnd.random() < 0.3:
            when = t + timedelta(hours=rnd.uniform(0, 30))
            labels.append(
                {
                    "case_id": cid,
                    "target": "queue",
                    "predicted": "billing",
                    "final": "returns",
                    "model_version": None,
                    "actor_id": "agent",
                    "reason": "r",
                    "created_at": to_ts(when),
                }
            )
            events.append((when, HUMAN, "case.overridden", {"reason": "r"}, cid))
        if rnd.random() < 0.4:
            edited = rnd.random() < 0.5
            when = t + timedelta(hours=rnd.uniform(0, 30))
            events.append((when, HUMAN, "case.message_sent", {"edited": edited}, cid))
        if rnd.random() < 0.3:
            when = t + timedelta(hours=rnd.uniform(0, 20))
            events.append((when, HUMAN, "case.in_review", {}, cid))
        if rnd.random() < 0.35:
            aid = new_id()
            a_created = t + timedelta(minutes=rnd.uniform(1, 600))
            a_status = rnd.choice(["pending_approval", "approved", "executed", "rejected"])
            actions_.append(
                {
                    "id": aid,
                    "case_id": cid,
                    "customer_id": row["customer_id"],
                    "origin": rnd.choice(["suggestion", "suggestion", "agent"]),
                    "suggestion_revision": 1,
                    "action_type": rnd.choice(["issue_credit_note", "write_off"]),
                    "body": {},
                    "amount": rnd.choice(["125.50", "9000.00", "42.0001"]),
                    "currency": rnd.choice(["EUR", "USD"]),
                    "material": True,
                    "status": a_status,
                    "requested_by": "agent",
                    "proposed_by": "triage-pipeline",
                    "last_edited_by": "agent" if rnd.random() < 0.2 else None,
                    "accepted_by": "agent",
                    "policy_version": "t",
                    "action_hash": "ab" * 32,
                    "decision": None,
                    "due_at": None,
                    "reminded_at": None,
                    "escalation_level": 0,
                    "escalated_to": None,
                    "outcome_reason": None,
                    "executed_at": None,
                    "created_at": to_ts(a_created),
                    "updated_at": to_ts(a_created),
                    "version": 1,
                }
            )
            events.append(
                (
                    a_created,
                    HUMAN,
                    "action.decided",
                    {"action_id": aid, "outcome": "needs_approval"},
                    cid,
                )
            )
            closed = a_created + timedelta(hours=rnd.uniform(0.1, 40))
            if a_status in ("approved", "executed"):
                if rnd.random() < 0.3:  # a first approval that did not reach quorum
                    events.append(
                        (
                            closed,
                            APPROVER,
                            "action.approved",
                            {"action_id": aid, "released": False},
                            cid,
                        )
                    )
                    closed += timedelta(hours=1)
                events.append(
                    (closed, APPROVER, "action.approved", {"action_id": aid, "released": True}, cid)
                )
            elif a_status == "rejected":
                events.append((closed, APPROVER, "action.rejected", {"action_id": aid}, cid))
    events.sort(key=lambda e: e[0])  # the trail is appended in time order
    with db.write() as s:
        s.execute(insert(Case), cases_)
        if actions_:
            s.execute(insert(ActionRow), actions_)
        if labels:
            s.execute(insert(LabelFeedback), labels)
        _events(s, events)
    return [c["id"] for c in cases_]


def _same(db: Database, r: dashboard.DateRange, today: str) -> dashboard.RollupRun:
    run = dashboard.RollupRun()
    rolled = dashboard.rollup_stats(db, r, today=today, run=run)
    with db.read() as s:
        direct = dashboard.process_stats(s, r)
    assert asdict(rolled) == asdict(direct)
    return run


def test_rollups_equal_the_direct_computation(db: Database):
    rnd = random.Random(20261129)
    today = datetime.now(UTC).strftime("%Y-%m-%d")
    # History ends three days ago (its follow-ups end within ~2.2 days): today's events below
    # are then today's only change, so the event-keyed figures (approval dwell) must make the
    # day dirty on their own.
    now = datetime.strptime(today, "%Y-%m-%d").replace(tzinfo=UTC) - timedelta(days=3)
    ids = _populate(db, rnd, 260, now, days=21)
    r = dashboard.DateRange.from_dates((now - timedelta(days=24)).strftime("%Y-%m-%d"), today)
    with db.read() as s:
        direct = dashboard.process_stats(s, r)
        assert not dashboard.process_stats(s, dashboard.day_range(today)).cases
    # the data set exercises every figure
    assert direct.cases == 260 and direct.triaged and direct.resolved and direct.overridden
    assert direct.approval_dwell.n and direct.money_by_cause and direct.llm.get("fallback")
    assert direct.stage_times["intake_to_decision"].n
    assert direct.stage_times["shipment_to_invoice"].n
    assert 0 < direct.touchless < direct.resolved

    first = _same(db, r, today)
    assert first.computed == len(r.days) and first.stored == len(r.days) and not first.raced
    again = _same(db, r, today)
    assert again.reused == len(r.days) and again.computed == 0

    # Changes to old cases (resolve, override, approve, edit a message) and new cases today:
    # exactly the touched days are recomputed.
    old = ids[:12]
    with db.write() as s:
        created = dict(s.execute(select(Case.id, Case.created_at).where(Case.id.in_(old))).all())
        stamp = datetime.now(UTC)
        for cid in old[:6]:
            s.execute(
                update(Case)
                .where(Case.id == cid)
                .values(status="resolved", resolved_at=to_ts(stamp), resolution_sla_breached=True)
            )
        s.execute(
            insert(LabelFeedback),
            [
                {
                    "case_id": cid,
                    "target": "priority",
                    "predicted": "P3",
                    "final": "P1",
                    "model_version": None,
                    "actor_id": "agent",
                    "reason": "later",
                    "created_at": to_ts(stamp),
                }
                for cid in old[6:9]
            ],
        )
        pending = s.scalars(select(ActionRow).where(ActionRow.status == "pending_approval")).first()
        assert pending is not None
        pending.status = "approved"
        evs = [(stamp, HUMAN, "case.resolved", {}, cid) for cid in old[:6]]
        evs += [(stamp, HUMAN, "case.overridden", {}, cid) for cid in old[6:9]]
        evs += [(stamp, HUMAN, "case.message_sent", {"edited": True}, cid) for cid in old[9:12]]
        evs.append(
            (
                stamp,
                APPROVER,
                "action.approved",
                {"action_id": pending.id, "released": True},
                pending.case_id,
            )
        )
        _events(s, evs)
        touched_days = {c[:10] for c in created.values()} | {pending.created_at[:10], today}
        # ... and the days the touched cases were received and their actions created
        changed = [*old, pending.case_id]
        touched_days |= {
            c[:10] for c in s.scalars(select(Case.created_at).where(Case.id.in_(changed)))
        }
        touched_days |= {
            c[:10]
            for c in s.scalars(select(ActionRow.created_at).where(ActionRow.case_id.in_(changed)))
        }
    after = _same(db, r, today)
    assert after.computed == len(touched_days & set(r.days))
    assert after.reused == len(r.days) - after.computed
    # new cases today: spread over at most the part of today that has passed, so that a run
    # just after midnight UTC does not put some of them on yesterday
    stamp_now = datetime.now(UTC)
    elapsed = (stamp_now - stamp_now.replace(hour=0, minute=0, second=0, microsecond=0)).seconds
    _populate(db, rnd, 15, stamp_now, days=min(0.01, max(elapsed - 1, 0) / 86_400))
    newer = _same(db, r, today)
    assert newer.computed == 1 and newer.stored == 1

    # Ranges that start and end mid-way, and one that reaches past today (not stored).
    for a, b in ((20, 9), (6, 0), (3, -5)):
        sub = dashboard.DateRange.from_dates(
            (now - timedelta(days=a)).strftime("%Y-%m-%d"),
            (now - timedelta(days=b)).strftime("%Y-%m-%d"),
        )
        _same(db, sub, today)
    with db.read() as s:
        assert s.scalar(select(DashboardDay.day).where(DashboardDay.day > today)) is None


def test_rollups_rebuild_when_the_format_changes(db: Database, monkeypatch):
    rnd = random.Random(7)
    now = datetime.now(UTC) - timedelta(hours=1)
    today = now.strftime("%Y-%m-%d")
    _populate(db, rnd, 40, now, days=5)
    r = dashboard.DateRange.last_days(7, now)
    _same(db, r, today)
    monkeypatch.setattr(dashboard, "ROLLUP_FORMAT", dashboard.ROLLUP_FORMAT + 1)
    rebuilt = _same(db, r, today)
    assert rebuilt.reused == 0 and rebuilt.computed == len(r.days)


def test_concurrent_refreshes_agree(db: Database):
    """Two views refreshing at once: neither fails, both show the direct figures, and the
    stored roll-ups stay consistent for the next view."""
    import threading

    rnd = random.Random(3)
    now = datetime.now(UTC) - timedelta(hours=1)
    today = now.strftime("%Y-%m-%d")
    _populate(db, rnd, 60, now, days=6)
    r = dashboard.DateRange.last_days(8, now)
    with db.read() as s:
        direct = asdict(dashboard.process_stats(s, r))

    def view(start: Any, results: list[Any], errors: list[BaseException]) -> None:
        try:
            start.wait()
            results.append(asdict(dashboard.rollup_stats(db, r, today=today)))
        except BaseException as exc:
            errors.append(exc)

    for round_ in range(2):
        results: list[Any] = []
        errors: list[BaseException] = []
        start = threading.Barrier(2)
        threads = [threading.Thread(target=view, args=(start, results, errors)) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == [] and results == [direct, direct], round_
        _populate(db, rnd, 5, datetime.now(UTC), days=0.01)
        with db.read() as s:
            direct = asdict(dashboard.process_stats(s, r))
    _same(db, r, today)
