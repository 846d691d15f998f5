"""Triage pipeline seams: one idempotent run per case, retries, failure, lease recovery, SLA."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta

from sqlalchemy import func, select

from contracts.case import CaseIn
from contracts.suggestion import Suggestion
from tests.support import sample_case, submit_simulated
from triage import audit, cases
from triage.common import to_ts
from triage.lifecycle import Status
from triage.models import AuditEvent, Case, OutboxMessage
from triage.models import Suggestion as SuggestionRow
from triage.pipeline import (
    Pipeline,
    RuleAdvisor,
    RuleClassifier,
    recover_expired_leases,
    run_batch,
    run_case,
)
from triage.simulator import Simulator
from triage.worker import Worker

ORCH = audit.Actor(audit.ActorType.integration, "orch", "orchestrator")


def _submit(db, settings, **overrides) -> str:
    with db.write() as s:
        return cases.submit(
            s, CaseIn.model_validate(sample_case(**overrides)), actor=ORCH, settings=settings
        ).case.id


def _count(db, model, **where) -> int:
    with db.read() as s:
        stmt = select(func.count()).select_from(model)
        for k, v in where.items():
            stmt = stmt.where(getattr(model, k) == v)
        return int(s.scalar(stmt))


def test_run_case_stores_suggestion_and_is_idempotent(db, settings):
    case_id = _submit(db, settings, callback_url="http://127.0.0.1:9/hook")
    out = run_case(db, case_id, Pipeline(), settings, worker_id="w1")
    assert out.status == "triaged"
    again = run_case(db, case_id, Pipeline(), settings, worker_id="w2")
    assert again.status == "skipped"
    with db.read() as s:
        row = cases.get(s, case_id)
        assert row.status == Status.awaiting_review.value
        assert (row.queue, row.category, row.priority) == (
            "warehouse_ops",
            "fulfilment_error",
            "P2",
        )
        sugg = cases.current_suggestion(s, row)
        assert sugg is not None and sugg.revision == 1
        body = Suggestion.model_validate(sugg.body)
        assert body.proposed_actions[0].type.value == "issue_credit_note"
        assert str(body.proposed_actions[0].amount) == "100.00"
        assert sugg.decisions["items"][0]["outcome"] == "needs_approval"
        created = s.scalars(
            select(AuditEvent).where(
                AuditEvent.case_id == case_id, AuditEvent.action == "suggestion.created"
            )
        )
        events = list(created)
        assert len(events) == 1 and '"model_version":"rules-1"' in events[0].payload
    assert _count(db, SuggestionRow, case_id=case_id) == 1
    assert _count(db, OutboxMessage, case_id=case_id) == 1


class Boom:
    def __init__(self, times: int) -> None:
        self.left = times

    def advise(self, request):
        if self.left > 0:
            self.left -= 1
            raise RuntimeError("advisor exploded")
        return RuleAdvisor().advise(request)


def test_failure_retries_then_succeeds(db, settings):
    case_id = _submit(db, settings)
    pipe = Pipeline(advisor=Boom(1))
    out = run_case(db, case_id, pipe, settings, worker_id="w")
    assert out.status == "retry" and "advisor exploded" in (out.detail or "")
    with db.read() as s:
        row = cases.get(s, case_id)
        assert row.status == "received" and row.lease_expires_at is not None  # backoff
    with db.write() as s:  # pretend the backoff elapsed
        s.get(Case, case_id).lease_expires_at = to_ts(datetime.now(UTC) - timedelta(seconds=1))
    assert run_case(db, case_id, pipe, settings, worker_id="w").status == "triaged"
    assert _count(db, SuggestionRow, case_id=case_id) == 1


def test_failure_after_max_attempts_marks_failed_with_reason(db, settings):
    settings.max_triage_attempts = 2
    case_id = _submit(db, settings)
    pipe = Pipeline(advisor=Boom(10))
    assert run_case(db, case_id, pipe, settings, worker_id="w").status == "retry"
    with db.write() as s:
        s.get(Case, case_id).lease_expires_at = None
    assert run_case(db, case_id, pipe, settings, worker_id="w").status == "failed"
    with db.read() as s:
        row = cases.get(s, case_id)
        assert row.status == "failed" and "advisor exploded" in (row.status_reason or "")
    # a person can send it back for another try, which starts the attempt count afresh
    with db.write() as s:
        cases.human_transition(s, case_id, Status.received, actor=ORCH, reason="fixed")
    assert run_case(db, case_id, Pipeline(), settings, worker_id="w").status == "triaged"


def test_a_failure_quoting_a_nul_is_stored_on_both_engines(db, settings):
    """An exception message may quote foreign text (an LLM's reply) holding a NUL, which
    PostgreSQL cannot store: the failure is recorded with the NUL written out, not lost in a
    second error that would leave the case leased and retried for ever."""

    class Quoting:
        def advise(self, request):
            raise ValueError("model replied 'ok\x00'")

    settings.max_triage_attempts = 1
    case_id = _submit(db, settings)
    assert run_case(db, case_id, Pipeline(advisor=Quoting()), settings, worker_id="w").status == (
        "failed"
    )
    with db.read() as s:
        row = cases.get(s, case_id)
        assert row.status_reason == "ValueError: model replied 'ok\\x00'"


def test_expired_lease_is_recovered_and_triaged_once(db, settings):
    case_id = _submit(db, settings)
    # a worker claimed it and died: status triaging, lease in the past
    with db.write() as s:
        row = s.get(Case, case_id)
        row.status, row.lease_owner = "triaging", "dead-worker"
        row.lease_expires_at = to_ts(datetime.now(UTC) - timedelta(seconds=5))
    assert run_case(db, case_id, Pipeline(), settings, worker_id="w").status == "skipped"
    assert recover_expired_leases(db) == [case_id]
    assert run_case(db, case_id, Pipeline(), settings, worker_id="w").status == "triaged"
    assert _count(db, SuggestionRow, case_id=case_id) == 1


def test_lease_lost_to_another_worker_does_not_store(db, settings):
    case_id = _submit(db, settings)

    class Slow:
        def advise(self, request):
            # meanwhile, the lease expired and another worker took over
            with db.write() as s:
                s.get(Case, case_id).lease_owner = "other-worker"
            return RuleAdvisor().advise(request)

    out = run_case(db, case_id, Pipeline(advisor=Slow()), settings, worker_id="w")
    assert out.status == "lease_lost"
    assert _count(db, SuggestionRow, case_id=case_id) == 0


def test_worker_drains_simulated_cases_with_all_exception_types(db, settings):
    submit_simulated(db, settings, 60)
    assert Worker(db, settings).run_once() == 60
    assert _count(db, Case, status="awaiting_review") == 60
    assert _count(db, SuggestionRow) == 60
    with db.read() as s:
        assert audit.verify(s).intact


def test_sla_breaches_flagged_once_and_audited(db, settings):
    case_id = _submit(db, settings)
    later = to_ts(datetime.now(UTC) + timedelta(days=30))
    with db.write() as s:
        assert cases.flag_sla_breaches(s, now=later) == 2  # triage and resolution
    with db.write() as s:
        assert cases.flag_sla_breaches(s, now=later) == 0
    with db.read() as s:
        row = cases.get(s, case_id)
        assert row.triage_sla_breached and row.resolution_sla_breached
        kinds = s.scalars(
            select(AuditEvent.payload).where(AuditEvent.action == "case.sla_breached")
        ).all()
        assert sorted('"kind":"triage"' in k for k in kinds) == [False, True]


def test_two_racing_sla_sweepers_audit_each_breach_once(db, settings):
    """Two sweepers (two worker processes) read the same unflagged case concurrently."""
    import threading

    _submit(db, settings)
    later = to_ts(datetime.now(UTC) + timedelta(days=30))
    results: list[int] = []
    first_read = threading.Event()

    def second() -> None:
        first_read.wait(10)
        with db.write() as s:
            results.append(cases.flag_sla_breaches(s, now=later))

    t = threading.Thread(target=second)
    t.start()
    with db.write() as s:
        # on PostgreSQL the second sweeper reads the same unflagged row now and then waits on
        # our row lock; on SQLite it waits for the write lock before reading
        results.append(cases.flag_sla_breaches(s, now=later))
        first_read.set()
        time.sleep(0.3)
    t.join(20)
    assert sorted(results) == [0, 2]
    assert _count(db, AuditEvent, action="case.sla_breached") == 2
    with db.read() as s:
        assert audit.verify(s).intact


def test_tier_a_and_large_amount_raise_priority(db, settings):
    refs = sample_case()["references"] | {"customer": {"id": "C9", "tier": "A"}}
    case_id = _submit(
        db, settings, references=refs, amount_in_dispute={"amount": "25000", "currency": "EUR"}
    )
    with db.read() as s:
        row = cases.get(s, case_id)
        assert row.priority == "P1"  # shortage P2, tier A and large amount bump it
        assert row.triage_due_at < row.resolution_due_at


def _submit_many(db, settings, n: int) -> list[str]:
    return [_submit(db, settings, n=i) for i in range(n)]


def test_batch_confines_a_failing_case_and_stores_the_rest(db, settings):
    ids = _submit_many(db, settings, 5)
    bad = ids[2]

    class Picky:
        """Batch classification raises (one poisoned case); case by case only that one does."""

        def __init__(self) -> None:
            self.batches = 0

        def classify_many(self, cases_):
            self.batches += 1
            raise RuntimeError("batch refused")

        def classify(self, case):
            if case.source.case_id == "EX-00002":
                raise ValueError("poisoned case")
            return RuleClassifier().classify(case)

    picky = Picky()
    outs = run_batch(db, ids, Pipeline(classifier=picky), settings, worker_id="w")
    assert picky.batches == 1
    assert [o.case_id for o in outs] == ids
    assert {o.case_id: o.status for o in outs} == {
        **{cid: "triaged" for cid in ids if cid != bad},
        bad: "retry",
    }
    assert _count(db, SuggestionRow) == 4
    with db.read() as s:
        assert cases.get(s, bad).status == Status.received.value
        assert audit.verify(s).intact
        # one claim event per case, one suggestion.created per stored case
        assert _count(db, AuditEvent, action="case.triaging") == 5
        assert _count(db, AuditEvent, action="suggestion.created") == 4


def test_batch_skips_cases_already_claimed_and_records_stage_timings(db, settings):
    ids = _submit_many(db, settings, 3)
    assert run_case(db, ids[1], Pipeline(), settings, worker_id="other").status == "triaged"
    outs = run_batch(db, ids, Pipeline(), settings, worker_id="w")
    assert [o.status for o in outs] == ["triaged", "skipped", "triaged"]
    assert _count(db, SuggestionRow) == 3
    with db.read() as s:
        payload = s.scalars(
            select(AuditEvent.payload).where(
                AuditEvent.action == "suggestion.created", AuditEvent.case_id == ids[0]
            )
        ).one()
    stages = json.loads(payload)["stage_ms"]
    assert set(stages) == {"classify", "retrieve", "advise", "policy"}
    assert all(v >= 0 for v in stages.values())


def test_batch_store_failure_falls_back_to_one_transaction_per_case(db, settings):
    ids = _submit_many(db, settings, 3)

    class Gate:
        """Policy decisions whose second case cannot be serialised into the audit payload."""

        def __init__(self) -> None:
            self.inner = Pipeline().policy

        def evaluate(self, case, actions_):
            got = self.inner.evaluate(case, actions_)
            if case.source.case_id == "EX-00001" and got:
                bad = got[0]
                got[0] = type(bad)(
                    bad.action_index, bad.action_type, bad.outcome, [{"x": object()}], "v"
                )
            return got

    outs = run_batch(db, ids, Pipeline(policy=Gate()), settings, worker_id="w")
    statuses = {o.case_id: o.status for o in outs}
    assert statuses[ids[0]] == statuses[ids[2]] == "triaged"
    assert statuses[ids[1]] == "retry"
    assert _count(db, SuggestionRow) == 2
    with db.read() as s:
        assert audit.verify(s).intact


def test_cedar_gate_batch_preview_equals_one_case_at_a_time(settings):
    from triage.actions import CedarGate
    from triage.pipeline import AdviceInput, RuleClassifier

    gate = CedarGate(settings)
    items = []
    for rec in Simulator().cases(40):
        case = CaseIn.model_validate(rec.case)
        view = RuleClassifier().classify(case)
        sugg = RuleAdvisor().advise(AdviceInput("c", case, view, None, settings.queues))
        items.append((case, list(sugg.proposed_actions)))
    assert sum(len(a) for _, a in items) > 20
    batch = gate.evaluate_batch(items)
    single = [gate.evaluate(c, a) for c, a in items]
    assert batch == single
    outcomes = {d.outcome for ds in batch for d in ds}
    assert {"needs_approval", "auto_execute"} <= outcomes


def test_worker_housekeeping_keeps_dashboard_rollups_current(db, settings):
    from triage.dashboard import refresh_recent
    from triage.models import DashboardRollupState

    submit_simulated(db, settings, 5)
    assert Worker(db, settings).run_once() == 5
    refresh_recent(db)
    with db.read() as s:
        head = s.scalar(select(func.max(AuditEvent.seq)))
        state = s.get(DashboardRollupState, 1)
        assert state is not None
        assert state.through_seq == head
