"""The demo loader: four weeks of closed history lived through with a replayed clock
(overrides where the classifier was wrong, paid-back cases approved and executed, resolved
with the simulator's resolution, indexed), then live cases whose suggestions cite that
history; loading again changes nothing."""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select

from triage import audit, demo
from triage.common import now_ts, parse_ts, replayed_at, to_ts, utcnow
from triage.models import ActionApproval, ActionRow, AuditEvent, Case, LabelFeedback
from triage.models import Suggestion as SuggestionRow
from triage.simulator import RESOLUTIONS, ROOT_CAUSES, SimConfig, Simulator

N_CASES = 25


def test_every_root_cause_has_a_resolution_that_formats() -> None:
    assert set(RESOLUTIONS) == {c for causes in ROOT_CAUSES.values() for c, _, _ in causes}
    seen = set()
    for sim in Simulator(SimConfig(seed=3)).cases(400):
        assert sim.resolution and "{" not in sim.resolution, sim.resolution
        seen.add(sim.labels["category"])
    assert seen == set(RESOLUTIONS)


def test_replayed_clock_is_local_to_its_context() -> None:
    when = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    seen: list[datetime] = []
    with replayed_at(when):
        inside = utcnow()
        stamp = now_ts()
        other = threading.Thread(target=lambda: seen.append(utcnow()))
        other.start()
        other.join()
    assert timedelta(0) <= inside - when < timedelta(seconds=5)
    assert stamp.startswith("2026-03-01T12:00:")
    # another thread (a server worker, say) and the code after the block keep the wall clock
    assert abs(seen[0] - datetime.now(UTC)) < timedelta(seconds=5)
    assert abs(utcnow() - datetime.now(UTC)) < timedelta(seconds=5)


@pytest.mark.integration
def test_demo_history_feeds_similar_cases_and_override_labels(settings, db, with_model) -> None:
    summary = demo.load(settings, N_CASES)
    assert summary.created == N_CASES and summary.total_cases == N_CASES
    simulated = list(Simulator(SimConfig(seed=7)).cases(N_CASES))
    n_history = int(N_CASES * demo.HISTORY_SHARE)
    assert 0 < n_history < N_CASES
    with db.read() as s:
        rows = {r.source_case_id: r for r in s.scalars(select(Case))}
        feedback = {(f.case_id, f.target): f for f in s.scalars(select(LabelFeedback))}
        history_ids = {rows[sim.case["source"]["case_id"]].id for sim in simulated[:n_history]}

        for sim in simulated[:n_history]:
            row = rows[sim.case["source"]["case_id"]]
            assert row.status == "resolved" and row.resolution == sim.resolution
            assert row.assignee == "demo-agent"  # who resolved it
            # closed with the true values; a label row only where the case held another value
            # (a wrong prediction; an abstention whose rule-based fallback was also wrong)
            for target, truth in sim.labels.items():
                assert getattr(row, target) == truth
                predicted = getattr(row, f"predicted_{target}")
                label = feedback.get((row.id, target))
                if predicted == truth:
                    assert label is None
                elif label is not None:
                    assert label.final == truth and label.predicted == predicted
                    assert label.actor_id == "demo-agent"
        overridden_events = s.scalar(
            select(func.count())
            .select_from(AuditEvent)
            .where(AuditEvent.action == "case.overridden")
        )
        assert overridden_events == len({case_id for case_id, _ in feedback})
        assert feedback, "the test model gets some of this history wrong: the path above ran"

        # the live cases are open: the ones the demo agent requested a payback on are held by
        # it (in review), the rest wait unclaimed
        live_ids = {rows[sim.case["source"]["case_id"]].id for sim in simulated[n_history:]}
        worked = set(
            s.scalars(
                select(ActionRow.case_id).where(
                    ActionRow.case_id.in_(live_ids), ActionRow.requested_by == "demo-agent"
                )
            )
        )
        assert worked, "the demo agent requested something on a live case"
        noted = s.execute(
            select(AuditEvent.case_id, AuditEvent.actor_id).where(
                AuditEvent.action == "case.note_added"
            )
        ).all()
        assert {c for c, _ in noted} == worked and {a for _, a in noted} == {"demo-agent"}
        # the lead handed the most urgent of the others to the console's agent
        dispatched = {
            c: json.loads(p)
            for c, a, p in s.execute(
                select(AuditEvent.case_id, AuditEvent.actor_id, AuditEvent.payload).where(
                    AuditEvent.action == "case.assigned"
                )
            ).all()
            if a == "demo-admin"
        }
        assert len(dispatched) == demo.DISPATCHED and not set(dispatched) & worked
        assert all(p["to"] == "agent" and p["from"] is None for p in dispatched.values())
        left = [
            rows[sim.case["source"]["case_id"]]
            for sim in simulated[n_history:]
            if rows[sim.case["source"]["case_id"]].id not in worked | set(dispatched)
        ]
        most_urgent = max(
            (r.priority, r.resolution_due_at) for r in rows.values() if r.id in dispatched
        )
        assert all((r.priority, r.resolution_due_at) >= most_urgent for r in left)
        for sim in simulated[n_history:]:
            row = rows[sim.case["source"]["case_id"]]
            if row.id in worked:
                assert (row.status, row.assignee) == ("in_review", "demo-agent")
            elif row.id in dispatched:
                assert (row.status, row.assignee) == ("in_review", "agent")
            else:
                assert (row.status, row.assignee) == ("awaiting_review", None)
            body = s.scalars(
                select(SuggestionRow.body)
                .where(SuggestionRow.case_id == row.id)
                .order_by(SuggestionRow.revision.desc())
            ).first()
            assert body is not None
            similar = body["similar_cases"]
            assert similar, sim.case["source"]["case_id"]
            assert {c["case_id"] for c in similar} <= history_ids
            assert all(c["resolution"] for c in similar)
        # history cases are settled: what paid the customer back was requested, approved by
        # someone other than the requester and executed; nothing else is open
        history_actions = s.scalars(
            select(ActionRow).where(ActionRow.case_id.in_(history_ids))
        ).all()
        assert {a.status for a in history_actions} <= {"executed", "cancelled"}
        paid = [a for a in history_actions if a.status == "executed"]
        paid_cases = {
            rows[sim.case["source"]["case_id"]].id
            for sim in simulated[:n_history]
            if sim.labels["category"] in demo.PAID_BACK
        }
        assert paid and {a.case_id for a in paid} <= paid_cases
        assert all(a.requested_by == "demo-agent" for a in paid)
        approvals = s.scalars(
            select(ActionApproval).where(ActionApproval.action_id.in_([a.id for a in paid]))
        ).all()
        # (the seed's history holds material amounts: some needed an approver)
        assert approvals and {a.approver_id for a in approvals} <= {
            "demo-approver",
            "demo-controller",
        }

        # the history was lived through in the weeks before, the live cases arrived over the
        # last hours: stamped then, on a trail whose times rise with its sequence and whose
        # chain holds
        live_times = sorted(
            rows[sim.case["source"]["case_id"]].created_at for sim in simulated[n_history:]
        )
        last = parse_ts(live_times[-1])
        assert parse_ts(live_times[0]) < last - timedelta(hours=demo.LIVE_HOURS * 0.8)
        oldest = to_ts(last - timedelta(days=demo.HISTORY_DAYS))
        history = simulated[:n_history]
        for sim in history:
            row = rows[sim.case["source"]["case_id"]]
            assert oldest < row.created_at < row.triaged_at < row.resolved_at < live_times[-1]
        stamps = s.scalars(select(AuditEvent.ts).order_by(AuditEvent.seq)).all()
        first_arrival = min(rows[sim.case["source"]["case_id"]].created_at for sim in history)
        assert stamps == sorted(stamps) and stamps[0] < first_arrival
        assert audit.verify(s).intact
        events = s.scalar(select(func.count()).select_from(AuditEvent))
        requested = s.scalar(
            select(func.count()).select_from(ActionRow).where(ActionRow.status != "proposed")
        )

    again = demo.load(settings, N_CASES)
    assert (again.created, again.triaged, again.total_cases) == (0, 0, N_CASES)
    with db.read() as s:
        assert s.scalar(select(func.count()).select_from(AuditEvent)) == events
        assert (
            s.scalar(
                select(func.count()).select_from(ActionRow).where(ActionRow.status != "proposed")
            )
            == requested
        )
