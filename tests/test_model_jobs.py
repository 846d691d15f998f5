"""Model jobs in the database (``triage.model_jobs``), on SQLite and PostgreSQL: one running
job per kind whichever process starts it, a dead runner's job reads interrupted and frees the
slot, outcomes and history survive the process."""

from __future__ import annotations

import json
import threading

import pytest
from sqlalchemy import select, update

from tests.support import cli_runner
from triage import model_jobs
from triage.db import Database
from triage.errors import Conflict, NotFound
from triage.models import ModelJobRow

LEASE = 60.0


def _stored(db: Database, job_id: int) -> dict:
    """The row as stored (not as ``state`` reads it)."""
    with db.read() as s:
        row = s.get(ModelJobRow, job_id)
        assert row is not None
        return {"status": row.status, "error": row.error, "finished_at": row.finished_at}


def _age_heartbeat(db: Database, job_id: int, ts: str = "2026-01-01T00:00:00.000000Z") -> None:
    with db.write() as s:
        s.execute(update(ModelJobRow).where(ModelJobRow.id == job_id).values(heartbeat_at=ts))


def _state(db: Database, kind: str) -> dict:
    with db.read() as s:
        return model_jobs.state(s, kind, lease_seconds=LEASE)


def test_one_running_job_per_kind_then_done_with_its_result(db):
    assert _state(db, "train") == {"status": "idle"}
    job = model_jobs.start(db, "train", "ana", lease_seconds=LEASE)
    assert job["status"] == "running" and job["started_by"] == "ana"
    assert job["runner"] == model_jobs.runner_id()
    with pytest.raises(Conflict, match="already running"):
        model_jobs.start(db, "train", "bo", lease_seconds=LEASE)
    other = model_jobs.start(db, "evaluate", "bo", lease_seconds=LEASE)  # another kind may run

    model_jobs.beat(db, job["id"], "encoding texts: 10/20")
    state = _state(db, "train")
    assert state["status"] == "running" and state["progress"] == "encoding texts: 10/20"
    assert state["progress_at"] >= job["started_at"]

    with db.write() as s:
        model_jobs.finish(s, job["id"], result={"version": "v1", "ece": float("nan"), "n": [1.5]})
    state = _state(db, "train")
    assert state["status"] == "done" and state["id"] == job["id"]
    # NaN stored as null: PostgreSQL's JSON refuses NaN, and the outcome must not be lost
    assert state["result"] == {"version": "v1", "ece": None, "n": [1.5]}
    assert "progress" not in state and state["finished_at"] >= state["started_at"]
    assert _state(db, "evaluate")["id"] == other["id"]

    again = model_jobs.start(db, "train", "bo", lease_seconds=LEASE)  # the slot is free
    with db.write() as s:
        model_jobs.finish(s, again["id"], error="no base training data")
    state = _state(db, "train")
    assert state["status"] == "failed" and state["error"] == "no base training data"
    assert "result" not in state


def test_concurrent_starts_let_exactly_one_job_run(db):
    """Starts racing from several threads (each its own connection): the partial unique index
    lets one insert win; the others get Conflict, not a second running row."""
    barrier = threading.Barrier(4)
    outcomes: list[str] = []

    def race() -> None:
        barrier.wait()
        try:
            model_jobs.start(db, "retrain", "racer", lease_seconds=LEASE)
            outcomes.append("started")
        except Conflict:
            outcomes.append("conflict")

    threads = [threading.Thread(target=race) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(outcomes) == ["conflict"] * 3 + ["started"]
    with db.read() as s:
        statuses = s.scalars(select(ModelJobRow.status)).all()
    assert statuses == ["running"]


def test_a_runner_that_stopped_reporting_reads_interrupted_and_frees_the_slot(db):
    job = model_jobs.start(db, "train", "ana", lease_seconds=LEASE)
    model_jobs.beat(db, job["id"], "fitting")
    assert _state(db, "train")["status"] == "running"  # beating recently
    _age_heartbeat(db, job["id"])
    state = _state(db, "train")
    assert state["status"] == "interrupted" and "progress" not in state
    assert model_jobs.runner_id() in state["error"] and "2026-01-01T00:00:00" in state["error"]
    assert _stored(db, job["id"])["status"] == "running"  # reading changes nothing

    new = model_jobs.start(db, "train", "bo", lease_seconds=LEASE)
    old = _stored(db, job["id"])
    assert old["status"] == "interrupted" and old["finished_at"] is not None
    assert old["error"].startswith("interrupted:")
    assert _state(db, "train")["id"] == new["id"]
    # a late beat from the old runner does not revive its row
    model_jobs.beat(db, job["id"], "still here")
    assert _stored(db, job["id"])["status"] == "interrupted"


def test_interrupt_closes_a_running_job_only(db):
    running = model_jobs.start(db, "evaluate", "ana", lease_seconds=LEASE)
    model_jobs.interrupt(db, running["id"], "the API process running it shut down")
    state = _state(db, "evaluate")
    assert state["status"] == "interrupted"
    assert state["error"] == "interrupted: the API process running it shut down"
    done = model_jobs.start(db, "evaluate", "ana", lease_seconds=LEASE)
    with db.write() as s:
        model_jobs.finish(s, done["id"], result={"ok": True})
    model_jobs.interrupt(db, done["id"], "too late")
    assert _state(db, "evaluate")["status"] == "done"


def test_history_pages_newest_first_with_filters(db):
    ids = []
    for i in range(5):
        kind = "train" if i % 2 == 0 else "evaluate"
        job = model_jobs.start(db, kind, f"user{i}", lease_seconds=LEASE)
        with db.write() as s:
            model_jobs.finish(s, job["id"], result={"i": i}, error="boom" if i == 3 else None)
        ids.append(job["id"])

    seen, before = [], None
    while True:
        with db.read() as s:
            page, before = model_jobs.history(s, lease_seconds=LEASE, before=before, limit=2)
        assert len(page) <= 2 and all("result" not in j for j in page)
        seen += [j["id"] for j in page]
        if before is None:
            break
    assert seen == ids[::-1]
    with db.read() as s:
        trains, cursor = model_jobs.history(s, lease_seconds=LEASE, kind="train")
        failed, _ = model_jobs.history(s, lease_seconds=LEASE, status="failed")
        assert model_jobs.get(s, ids[2], lease_seconds=LEASE)["result"] == {"i": 2}
        with pytest.raises(NotFound):
            model_jobs.get(s, 10**9, lease_seconds=LEASE)
    assert [j["id"] for j in trains] == [ids[4], ids[2], ids[0]] and cursor is None
    assert [(j["id"], j["error"]) for j in failed] == [(ids[3], "boom")]


def test_unknown_kind_is_refused(db):
    with pytest.raises(ValueError, match="unknown model job kind"):
        model_jobs.start(db, "deploy", "ana", lease_seconds=LEASE)


def test_a_running_job_keeps_beating_while_its_work_reports_nothing(
    db, settings, keys, monkeypatch
):
    """A training step that reports no progress for several leases (a long fit) still reads
    running: the runner's own thread refreshes the heartbeat (fails if nothing beats), and the
    last progress line shows even when it came too soon after the previous one to be written."""
    from fastapi.testclient import TestClient

    from api.app import create_app
    from tests.support import bearer, wait_until
    from triage import classification

    release = threading.Event()

    def silent_train(records, *, progress, **_kw):
        progress("preparing")
        progress("fitting the model")  # within the second: held back, written by the beat
        assert release.wait(30), "the test never released the job"
        raise ValueError("stopped by the test")

    monkeypatch.setattr(classification, "train_model", silent_train)
    # beats every 0.3 s; a 0.4 s lease (0.1 s beats) read "interrupted" once on a loaded
    # machine when one beat's SQLite write waited longer than the whole lease
    quick = settings.model_copy(update={"model_job_lease_seconds": 1.2})
    admin = bearer(keys["admin"])
    body = {
        "records": [{"text": f"parcel {i} late", "label": "a" if i % 2 else "b"} for i in range(8)],
        "text_columns": ["text"],
        "label_columns": ["label"],
    }
    with TestClient(create_app(quick, db=db, start_worker=False)) as client:
        try:
            assert client.post("/v1/models/train", headers=admin, json=body).status_code == 202
            beats = set()
            for _ in range(15):  # 4.5 s, almost four leases
                state = client.get("/v1/models/train", headers=admin).json()
                assert state["status"] == "running", state
                beats.add(state["heartbeat_at"])
                threading.Event().wait(0.3)
            assert len(beats) >= 5, beats
            assert state["progress"] == "fitting the model", state
        finally:
            release.set()

        def ended() -> dict | None:
            state = client.get("/v1/models/train", headers=admin).json()
            return state if state["status"] != "running" else None

        state = wait_until(ended, deadline_s=30, what="the job to end")
        assert state["status"] == "failed" and state["error"] == "stopped by the test"


def test_a_job_run_in_the_callers_thread_records_failure_and_ctrl_c(db, settings):
    """``JobKind.run`` (the CLI's way): a failing job is recorded failed and audited, then its
    exception re-raised; Ctrl-C leaves the job interrupted, not running for a lease."""
    from triage import audit
    from triage.models import AuditEvent

    actor = audit.Actor(audit.ActorType.human, "cli-admin", "admin")
    lines: list[str] = []

    def failing(progress):
        progress("loading base data")
        raise ValueError("no base training data")

    with pytest.raises(ValueError, match="no base training data"):
        model_jobs.RETRAINING.run(db, settings, actor, failing, echo=lines.append)
    state = model_jobs.RETRAINING.state(db, settings)
    assert state["status"] == "failed" and state["error"] == "no base training data"
    assert lines == ["loading base data"]
    with db.read() as s:
        actions = s.scalars(select(AuditEvent.action)).all()
    assert actions.count("model.retrain_failed") == 1

    def stopped(progress):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        model_jobs.RETRAINING.run(db, settings, actor, stopped)
    state = model_jobs.RETRAINING.state(db, settings)
    assert state["status"] == "interrupted"
    assert state["error"] == "interrupted: the command running it stopped"
    assert model_jobs.RETRAINING.run(db, settings, actor, lambda progress: {"ok": 1}) == {"ok": 1}


def _until_cancelled(progress) -> dict:
    """Work that reports a line every 20 ms for up to 30 s (ends done if never cancelled)."""
    import time

    for i in range(1500):
        progress(f"step {i}")
        time.sleep(0.02)
    return {"finished": True}


def test_cancel_stops_a_running_job_at_its_next_progress_line(db, settings):
    from tests.support import wait_until
    from triage import audit
    from triage.models import AuditEvent

    starter = audit.Actor(audit.ActorType.human, "ana", "admin")
    canceller = audit.Actor(audit.ActorType.human, "bo", "admin")
    running: set[int] = set()

    def wrapping(progress) -> dict:  # work that wraps every error in its own
        try:
            return _until_cancelled(progress)
        except Exception as exc:
            raise RuntimeError(f"training failed: {exc}") from exc

    for work in (_until_cancelled, wrapping):
        job = model_jobs.TRAINING.start(db, settings, starter, work, running=running)
        asked = model_jobs.request_cancel(db, job["id"], canceller, lease_seconds=LEASE)
        assert asked["status"] == "running" and asked["cancel_requested_by"] == "bo", asked
        again = model_jobs.request_cancel(db, job["id"], canceller, lease_seconds=LEASE)
        assert again["cancel_requested_at"] == asked["cancel_requested_at"]  # asked once

        def ended() -> dict | None:
            state = model_jobs.TRAINING.state(db, settings)
            return state if state["status"] != "running" else None

        state = wait_until(ended, deadline_s=20, what="the job to stop")
        assert state["status"] == "cancelled" and state["error"] == "cancelled by bo", state
        assert "result" not in state
        wait_until(lambda: not running or None, deadline_s=10, what="the thread to end")
        with pytest.raises(Conflict, match="has ended \\(cancelled\\)"):
            model_jobs.request_cancel(db, job["id"], canceller, lease_seconds=LEASE)

    with db.read() as s:
        events = [
            (e.action, e.actor_id, json.loads(e.payload))
            for e in s.scalars(select(AuditEvent).order_by(AuditEvent.seq))
            if e.action.startswith("model.")
        ]
    assert [(a, who) for a, who, _ in events] == [
        ("model.job_cancel_requested", "bo"),
        ("model.job_cancelled", "ana"),
    ] * 2
    assert events[1][2]["cancelled_by"] == "bo" and events[1][2]["kind"] == "train"
    with pytest.raises(NotFound):
        model_jobs.request_cancel(db, 10**9, canceller, lease_seconds=LEASE)


def test_cancelling_a_job_whose_runner_is_gone_closes_it_at_once(db, settings):
    from triage import audit

    admin = audit.Actor(audit.ActorType.human, "bo", "admin")
    job = model_jobs.start(db, "evaluate", "ana", lease_seconds=LEASE)
    _age_heartbeat(db, job["id"])
    state = model_jobs.request_cancel(db, job["id"], admin, lease_seconds=LEASE)
    assert state["status"] == "cancelled" and state["error"].startswith("cancelled by bo; ")
    assert _stored(db, job["id"])["status"] == "cancelled"
    model_jobs.start(db, "evaluate", "bo", lease_seconds=LEASE)  # the slot is free


def test_a_cancelled_command_line_job_raises_job_cancelled(db, settings):
    from triage import audit

    actor = audit.Actor(audit.ActorType.human, "cli-admin", "admin")
    outcome: list[BaseException] = []

    def cli() -> None:
        try:
            model_jobs.RETRAINING.run(db, settings, actor, _until_cancelled)
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=cli)
    thread.start()
    from tests.support import wait_until

    def started() -> dict | None:
        # A start that failed ends the thread: fail with its exception, not after the deadline.
        assert not outcome, f"the command-line job did not start: {outcome!r}"
        state = model_jobs.RETRAINING.state(db, settings)
        return state if state["status"] == "running" else None

    job = wait_until(started, deadline_s=30, what="the job to start")
    model_jobs.request_cancel(
        db, job["id"], audit.Actor(audit.ActorType.human, "bo", "admin"), lease_seconds=LEASE
    )
    thread.join(20)
    assert len(outcome) == 1 and isinstance(outcome[0], model_jobs.JobCancelled), outcome
    assert outcome[0].message == "cancelled by bo"
    assert model_jobs.RETRAINING.state(db, settings)["status"] == "cancelled"


def test_model_jobs_on_the_command_line(db, settings, monkeypatch):
    """``triage models jobs`` lists the history (filters, paging hint, --json, refusals);
    ``triage models cancel`` cancels (at once when the runner is gone) or refuses an ended job."""
    triage = cli_runner(monkeypatch, settings)
    done = model_jobs.start(db, "train", "ana", lease_seconds=LEASE)
    with db.write() as s:
        model_jobs.finish(s, done["id"], result={"version": "v1"})
    gone = model_jobs.start(db, "evaluate", "bo", lease_seconds=LEASE)
    _age_heartbeat(db, gone["id"])
    live = model_jobs.start(db, "retrain", "cy", lease_seconds=LEASE)
    model_jobs.beat(db, live["id"], "fitting target 'queue'")

    listed = triage("models", "jobs")
    assert listed.exit_code == 0, listed.output
    lines = listed.stdout.splitlines()
    assert [int(line.split()[0]) for line in lines] == [live["id"], gone["id"], done["id"]]
    assert "running" in lines[0] and "fitting target 'queue'" in lines[0]
    assert "interrupted" in lines[1] and "stopped reporting" in lines[1]
    assert "3 jobs" in listed.stderr
    page = triage("models", "jobs", "--limit", "1")
    assert f"1 job; older: --before {live['id']}" in page.stderr
    as_json = triage("models", "jobs", "--kind", "train", "--json")
    (row,) = [json.loads(line) for line in as_json.stdout.splitlines()]
    assert row["id"] == done["id"] and row["status"] == "done" and "result" not in row
    bad = triage("models", "jobs", "--kind", "deploy")
    assert bad.exit_code == 2 and "--kind must be one of train, retrain, evaluate" in bad.output

    closed = triage("models", "cancel", str(gone["id"]))
    assert closed.exit_code == 0 and "cancelled: its runner was gone" in closed.stdout
    asked = triage("models", "cancel", str(live["id"]))
    assert asked.exit_code == 0 and "cancel requested" in asked.stdout
    state = model_jobs.RETRAINING.state(db, settings)
    assert state["status"] == "running" and state["cancel_requested_by"] == "cli-admin"
    ended = triage("models", "cancel", str(done["id"]))
    assert ended.exit_code == 2 and "has ended (done)" in ended.output


def test_prune_deletes_old_ended_jobs_only(db, settings, monkeypatch):
    """``triage models prune-jobs --older-than-days N``: ended jobs that finished before the
    cutoff go (counted first with --dry-run), running and recent ones stay; audited once."""
    from triage.models import AuditEvent

    old_done = model_jobs.start(db, "train", "ana", lease_seconds=LEASE)
    with db.write() as s:
        model_jobs.finish(s, old_done["id"], result={"v": 1})
    old_failed = model_jobs.start(db, "evaluate", "ana", lease_seconds=LEASE)
    with db.write() as s:
        model_jobs.finish(s, old_failed["id"], error="boom")
    with db.write() as s:  # both finished long ago
        s.execute(
            update(ModelJobRow)
            .where(ModelJobRow.id.in_([old_done["id"], old_failed["id"]]))
            .values(finished_at="2026-01-01T00:00:00.000000Z")
        )
    recent = model_jobs.start(db, "train", "bo", lease_seconds=LEASE)
    with db.write() as s:
        model_jobs.finish(s, recent["id"], result={"v": 2})
    running = model_jobs.start(db, "retrain", "cy", lease_seconds=LEASE)
    _age_heartbeat(db, running["id"])  # even a dead runner's job is not pruned while running

    cli = cli_runner(monkeypatch, settings)

    def triage(*args: str):
        return cli("models", "prune-jobs", *args)

    dry = triage("--older-than-days", "30", "--dry-run")
    assert dry.exit_code == 0 and "would delete 2 model jobs" in dry.stdout, dry.output
    assert triage("--older-than-days", "-1").exit_code == 2
    done = triage("--older-than-days", "30")
    assert done.exit_code == 0 and "deleted 2 model jobs" in done.stdout, done.output
    with db.read() as s:
        left = sorted(s.scalars(select(ModelJobRow.id)).all())
        events = [
            json.loads(e.payload)
            for e in s.scalars(select(AuditEvent).where(AuditEvent.action == "model.jobs_pruned"))
        ]
    assert left == sorted([recent["id"], running["id"]])
    assert [e["deleted"] for e in events] == [2]
    again = triage("--older-than-days", "30")
    assert "deleted 0 model jobs" in again.stdout
    with db.read() as s:  # nothing deleted, nothing audited
        pruned = select(AuditEvent.seq).where(AuditEvent.action == "model.jobs_pruned")
        assert len(s.scalars(pruned).all()) == 1
