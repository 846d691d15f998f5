"""The classifier stage wired into triage: active model, abstentions on the case, overrides as
labels, per-model override rate and precision-at-close, activation, retraining."""

from __future__ import annotations

import json
import re
import shutil
from typing import Any

import pytest
from sqlalchemy import select

from classifiers.registry import ARTIFACT_NAME
from contracts.case import CaseIn
from tests.support import bearer, cli_runner, sample_case, submit_simulated, wait_until
from triage import audit, cases, classification, model_jobs
from triage.models import AuditEvent, LabelFeedback
from triage.stages import default_pipeline
from triage.worker import Worker

ORCH = audit.Actor(audit.ActorType.integration, "orch", "orchestrator")


def _finished_job(client, path: str, headers: dict[str, str], seconds: float) -> dict:
    """A model job's state once it has stopped running (fails after ``seconds``)."""

    def stopped() -> dict | None:
        state = client.get(path, headers=headers).json()
        return state if state["status"] != "running" else None

    return wait_until(stopped, deadline_s=seconds, what=f"{path} to stop running", every=0.1)


def test_active_model_classifies_and_is_named_on_case_and_audit(db, settings, with_model):
    ids = submit_simulated(db, settings, 30, seed=9)
    assert Worker(db, settings, default_pipeline(settings)).run_once() == 30
    with db.read() as s:
        rows = [cases.get(s, i) for i in ids]
        assert {r.model_version for r in rows} == {with_model}
        assert sum(r.queue is not None for r in rows) >= 20
        events = s.scalars(
            select(AuditEvent.payload).where(AuditEvent.action == "suggestion.created")
        ).all()
        assert len(events) == 30 and all(with_model in e for e in events)


def _odd_case(client, keys) -> str:
    """Submit a case unlike anything in training (out of distribution for every target: the
    model abstains on it); its id."""
    odd = sample_case(
        901,
        exception_type="other",
        title="Zebra quantum poetry recital",
        text={
            "customer_message": "Xylophone lunar banquet, purple "
            "hieroglyphs tango, marzipan volcano."
        },
        references={
            "customer": {"id": "NEW-1", "tier": "C"},
            "warehouse_id": "WH-MARS",
            "carrier_id": "ROCKET",
        },
    )
    r = client.post("/v1/cases", json=odd, headers=bearer(keys["orchestrator"]))
    return r.json()["case_id"]


def test_abstention_leaves_queue_empty_with_reason_visible(client, keys, db, settings, with_model):
    case_id = _odd_case(client, keys)
    Worker(db, settings, default_pipeline(settings)).run_once()
    detail = client.get(f"/v1/cases/{case_id}", headers=bearer(keys["agent"])).json()
    assert detail["queue"] is None
    assert detail["abstain_reasons"]["queue"] in {
        "out_of_distribution",
        "low_confidence",
        "close_runner_up",
    }
    assert detail["suggestion"]["classifier"]["queue"]["abstained"] is True
    assert detail["model_version"] == with_model


def test_override_becomes_label_and_shows_in_override_rate(client, keys, db, settings, with_model):
    ids = submit_simulated(db, settings, 10, seed=9)
    Worker(db, settings, default_pipeline(settings)).run_once()
    agent = bearer(keys["agent"])
    r = client.post(
        f"/v1/cases/{ids[0]}/overrides",
        json={"queue": "billing", "priority": "P1", "reason": "customer escalated"},
        headers=agent,
    )
    assert r.status_code == 200, r.text
    assert r.json()["queue"] == "billing" and r.json()["priority"] == "P1"
    bad = client.post(
        f"/v1/cases/{ids[1]}/overrides", json={"queue": "nowhere", "reason": "x"}, headers=agent
    )
    assert bad.status_code == 422 and bad.json()["error"]["fields"][0]["field"] == "queue"
    empty = client.post(f"/v1/cases/{ids[1]}/overrides", json={"reason": "x"}, headers=agent)
    assert empty.status_code == 422
    no_reason = client.post(
        f"/v1/cases/{ids[1]}/overrides", json={"queue": "billing"}, headers=agent
    )
    assert no_reason.status_code == 422
    with db.read() as s:
        labels = s.scalars(select(LabelFeedback).order_by(LabelFeedback.target)).all()
        assert [(lb.target, lb.final, lb.actor_id, lb.model_version) for lb in labels] == [
            ("priority", "P1", "test-agent", with_model),
            ("queue", "billing", "test-agent", with_model),
        ]
        feedback = classification.feedback_records(s)
        assert len(feedback) == 1 and feedback[0]["queue"] == "billing"
    # resolve two cases: one overridden, one as predicted
    for cid in ids[:2]:
        client.post(
            f"/v1/cases/{cid}/transitions",
            json={"to": "resolved", "resolution": "ok"},
            headers=agent,
        )
    models = client.get("/v1/models", headers=bearer(keys["admin"])).json()
    (info,) = models
    assert info["active"] is True and info["version"] == with_model
    assert info["classified"] == 10 and info["override_rate"] == pytest.approx(0.1)
    assert info["closed"] == 2
    # expected from first principles: predicted queue (not abstained) == queue at close
    hits = []
    for cid in ids[:2]:
        d = client.get(f"/v1/cases/{cid}", headers=agent).json()
        pred = d["suggestion"]["classifier"]["queue"]
        if not pred["abstained"]:
            hits.append(pred["label"] == d["queue"])
    assert hits, "both cases abstained on queue; pick another seed"
    assert info["precision_at_close"]["queue"] == pytest.approx(sum(hits) / len(hits))
    assert info["precision_at_close"]["queue"] < 1.0  # the override to billing was a miss


def test_retraining_holds_no_database_connection_while_it_trains(
    db, settings, with_model, monkeypatch
):
    """Reviewer labels are read in one short transaction; training (minutes with a transformer
    encoder) runs with no connection checked out, so none sits idle in a transaction."""
    case_id = submit_simulated(db, settings, 1, seed=4)[0]
    assert Worker(db, settings, default_pipeline(settings)).run_once() == 1
    with db.write() as s:
        classification.override(
            s,
            case_id,
            actor=audit.Actor(audit.ActorType.human, "agent-1", "agent"),
            reason="seen this before",
            settings=settings,
            queue="billing",
        )
    engines = {db.read_engine, db.write_engine}
    during: list[int] = []
    real_retrain = classification.retrain

    def watching(base_rows, feedback, *args, **kwargs):
        during.append(sum(e.pool.checkedout() for e in engines))
        assert [f["case_id"] for f in feedback] == [case_id]
        return real_retrain(base_rows, feedback, *args, **kwargs)

    monkeypatch.setattr(classification, "retrain", watching)
    result = classification.retrain_from_feedback(settings, db)
    assert during == [0]
    assert result.n_feedback == 1 and result.active_version == with_model


def test_triage_retrain_prints_timed_progress_and_audits(db, settings, with_model, monkeypatch):
    """``triage retrain`` on the command line: timed progress lines on stderr (as ``triage
    train`` prints them), the decision on stdout, and a ``model.retrained`` audit event."""
    triage = cli_runner(monkeypatch, settings)
    result = triage("retrain")
    assert result.exit_code == 0, result.output
    progress = [line for line in result.stderr.splitlines() if line.strip()]
    assert progress, "retrain printed no progress"
    assert all(re.match(r"^\[\s*\d+\.\ds\] \S", line) for line in progress), progress
    assert re.search(r"^candidate \S+: ", result.stdout, re.M), result.stdout
    with db.read() as s:
        actions = s.scalars(select(AuditEvent.action)).all()
        (payload,) = s.scalars(
            select(AuditEvent.payload).where(AuditEvent.action == "model.retrained")
        ).all()
    assert actions.count("model.retrained") == 1
    # recorded as a retrain job, like POST /v1/models/retrain: same slot, same history
    state = model_jobs.RETRAINING.state(db, settings)
    assert state["status"] == "done" and state["started_by"] == "cli-admin", state
    assert json.loads(payload)["job_id"] == state["id"]
    assert state["result"]["candidate_version"] in result.stdout

    # while another retraining runs (here: the row another process's running job leaves),
    # the command refuses with exit 2 naming it, and trains nothing
    running = model_jobs.start(db, "retrain", "ana", lease_seconds=600)
    refused = triage("retrain")
    assert refused.exit_code == 2, refused.output
    assert f"a retrain job is already running (job {running['id']}, started by ana" in (
        refused.output
    )
    with db.read() as s:
        assert s.scalars(select(AuditEvent.action)).all().count("model.retrained") == 1


def test_activation_rollback_and_retrain_over_the_api(client, keys, db, settings, with_model):
    admin = bearer(keys["admin"])
    assert (
        client.post(
            "/v1/models/v20990101T000000000000Z-deadbeef/activate", headers=admin
        ).status_code
        == 404
    )
    assert client.post("/v1/models/not-a-version/activate", headers=admin).status_code == 404
    r = client.post("/v1/models/retrain", headers=admin)
    assert r.status_code == 202, r.text
    assert client.post("/v1/models/retrain", headers=admin).status_code == 409  # one at a time
    state = _finished_job(client, "/v1/models/retrain", admin, seconds=60)
    assert state["status"] == "done", state
    body = state["result"]
    assert body["previous_version"] == with_model
    assert isinstance(body["activated"], bool) and body["reason"]
    reg = classification.registry(settings)
    if body["activated"]:
        assert reg.active_version() == body["candidate_version"]
        back = client.post("/v1/models/rollback", headers=admin)
        assert back.status_code == 200 and reg.active_version() == with_model
    else:
        assert reg.active_version() == with_model
    with db.read() as s:
        acts = s.scalars(select(AuditEvent.action).where(AuditEvent.action.like("model.%"))).all()
        assert "model.retrained" in acts
    ev_body = {
        "records": [
            classification.case_record(CaseIn.model_validate(sample_case()))
            | {"queue": "warehouse_ops", "category": "pick_error", "priority": "P2"}
        ]
    }
    ev = client.post(f"/v1/models/{with_model}/evaluate", headers=admin, json=ev_body)
    assert ev.status_code == 200, ev.text
    assert ev.json()["metrics"]["targets"]["queue"]["accuracy"] in (0.0, 1.0)
    assert client.get("/v1/models", headers=bearer(keys["agent"])).status_code == 403
    # a tampered artifact exists but is refused: 409 with the reason, not "not found"
    artifact = reg.root / "versions" / with_model / ARTIFACT_NAME
    artifact.write_bytes(artifact.read_bytes() + b"\0")
    for url, body in ((f"{with_model}/activate", None), (f"{with_model}/evaluate", ev_body)):
        r = client.post(f"/v1/models/{url}", headers=admin, json=body)
        assert r.status_code == 409, r.text
        assert "does not match the recorded" in r.json()["error"]["message"]


def _labelled_case_records() -> list[dict]:
    """Six case records labelled with all three targets (two labels each)."""
    labels = [("warehouse_ops", "pick_error", "P2"), ("billing", "pricing_mismatch", "P3")]
    return [
        classification.case_record(CaseIn.model_validate(sample_case(i)))
        | {"queue": q, "category": c, "priority": p}
        for i, (q, c, p) in enumerate(labels * 3, start=1)
    ]


def _hold_evaluations(monkeypatch):
    """Make background evaluations report a progress line, then wait for the returned event
    (set it to let them finish)."""
    import threading

    from api.routes import models as model_routes

    release = threading.Event()
    real_evaluate = model_routes.evaluate_model

    def held(model, rows, *, targets, progress):
        progress("encoding texts with builtin:test: 2/6 (1/s, about 4s left)")
        assert release.wait(30), "the test never released the job"
        return real_evaluate(model, rows, targets=targets, progress=progress)

    monkeypatch.setattr(model_routes, "evaluate_model", held)
    return release


def test_background_evaluation_over_the_api(client, keys, db, settings, with_model, monkeypatch):
    """``POST /v1/models/{v}/evaluate?background=true`` checks the request as the synchronous
    call does (404 / 422, nothing starts), answers 202, runs one job at a time (409 while it
    runs, with its progress in ``GET /v1/models/evaluate``), and ends with the same figures as
    the synchronous call and a ``model.evaluated`` audit event without the metrics."""
    admin = bearer(keys["admin"])
    records = _labelled_case_records()
    url = f"/v1/models/{with_model}/evaluate"
    for path, body, status, word in (
        ("/v1/models/v-nope/evaluate", {"records": records}, 404, "v-nope"),
        (url, {"records": records, "label_columns": ["route"]}, 422, "route"),
        (url, {"records": [{"text": "x"}]}, 422, "label_columns"),
        (
            url,
            {"records": [r | {"queue": "", "category": None} for r in records]},
            422,
            '"field":"records","problem":"no record has a label for category, queue"',
        ),
    ):
        r = client.post(path, params={"background": "true"}, headers=admin, json=body)
        assert r.status_code == status, r.text
        assert word in r.text
    assert client.get("/v1/models/evaluate", headers=admin).json() == {"status": "idle"}

    sync = client.post(url, headers=admin, json={"records": records})
    assert sync.status_code == 200, sync.text
    release = _hold_evaluations(monkeypatch)
    try:
        r = client.post(
            url, params={"background": "true"}, headers=admin, json={"records": records}
        )
        assert r.status_code == 202, r.text
        assert r.json()["status"] == "running"

        def progressed() -> dict | None:
            state = client.get("/v1/models/evaluate", headers=admin).json()
            return state if state.get("progress") else None

        state = wait_until(progressed, deadline_s=30, what="evaluation progress", every=0.05)
        assert state["status"] == "running" and "2/6" in state["progress"]
        again = client.post(
            url, params={"background": "true"}, headers=admin, json={"records": records}
        )
        assert again.status_code == 409, again.text
    finally:
        release.set()
    state = _finished_job(client, "/v1/models/evaluate", admin, seconds=60)
    assert state["status"] == "done", state
    result = state["result"]
    assert result["metrics"] == sync.json()["metrics"]
    assert result["version"] == with_model and result["records"] == 6
    assert sorted(result["targets"]) == ["category", "priority", "queue"]
    with db.read() as s:
        events = s.scalars(
            select(AuditEvent.payload).where(AuditEvent.action == "model.evaluated")
        ).all()
    payloads = [json.loads(e) for e in events]
    assert len(payloads) == 2  # the synchronous call and the job; the refused ones wrote nothing
    assert all("metrics" not in p for p in payloads)
    assert {p["records"] for p in payloads} == {6}
    assert client.get("/v1/models/evaluate", headers=bearer(keys["agent"])).status_code == 403


def test_job_state_is_shared_by_api_processes_and_survives_a_restart(
    db, settings, keys, with_model, monkeypatch
):
    """Two API processes on one database (two apps, each with its own engine): a background
    evaluation started on one shows running, with its progress, on the other, which cannot
    start a second; its outcome is still there for a third app started afterwards (a restart),
    in the jobs list and by id; the audit event names the job. Stopping the API that runs a
    job closes it as interrupted at once."""
    from fastapi.testclient import TestClient

    from api.app import create_app
    from triage.db import Database

    admin, auditor = bearer(keys["admin"]), bearer(keys["auditor"])
    url, body = f"/v1/models/{with_model}/evaluate", {"records": _labelled_case_records()}
    release = _hold_evaluations(monkeypatch)

    def api() -> TestClient:
        return TestClient(create_app(settings, db=Database(settings), start_worker=False))

    with api() as one, api() as two:
        started = one.post(url, params={"background": "true"}, headers=admin, json=body)
        assert started.status_code == 202, started.text
        job_id = started.json()["id"]
        try:

            def progressed() -> dict | None:
                state = two.get("/v1/models/evaluate", headers=admin).json()
                return state if state.get("progress") else None

            state = wait_until(progressed, deadline_s=30, what="progress on the other API")
            assert state["status"] == "running" and state["id"] == job_id
            assert "2/6" in state["progress"]
            refused = two.post(url, params={"background": "true"}, headers=admin, json=body)
            assert refused.status_code == 409, refused.text
            assert refused.json()["error"]["fields"][0]["field"] == "status"
        finally:
            release.set()
        state = _finished_job(two, "/v1/models/evaluate", admin, seconds=60)
        assert state["status"] == "done" and state["id"] == job_id
        figures = state["result"]["metrics"]

    with api() as restarted:
        state = restarted.get("/v1/models/evaluate", headers=admin).json()
        assert state["status"] == "done" and state["result"]["metrics"] == figures
        listed = restarted.get("/v1/models/jobs", headers=auditor, params={"kind": "evaluate"})
        assert listed.status_code == 200, listed.text
        assert [j["id"] for j in listed.json()["items"]] == [job_id]
        assert "result" not in listed.json()["items"][0] and listed.json()["next_before"] is None
        one_job = restarted.get(f"/v1/models/jobs/{job_id}", headers=auditor).json()
        assert one_job["result"]["metrics"] == figures and one_job["started_by"] == "test-admin"
        for path, params in (
            ("/v1/models/jobs", {"kind": "deploy"}),
            ("/v1/models/jobs", {"limit": 0}),
            ("/v1/models/jobs", {"before": 2**63}),  # past a bigint: 422, not a 500
            ("/v1/models/jobs/abc", {}),
            (f"/v1/models/jobs/{2**63}", {}),
        ):
            r = restarted.get(path, headers=admin, params=params)
            assert r.status_code == 422, r.text
        assert restarted.get("/v1/models/jobs/999999", headers=admin).status_code == 404
    with db.read() as s:
        events = s.scalars(
            select(AuditEvent.payload).where(AuditEvent.action == "model.evaluated")
        ).all()
    assert [json.loads(e)["job_id"] for e in events] == [job_id]

    # stopping the API that runs a job closes it at once (its thread dies with the process)
    release.clear()
    with api() as stopping:
        r = stopping.post(url, params={"background": "true"}, headers=admin, json=body)
        assert r.status_code == 202, r.text
    try:
        with api() as after:
            state = after.get("/v1/models/evaluate", headers=admin).json()
            assert state["id"] == r.json()["id"] and state["status"] == "interrupted", state
            assert "shut down" in state["error"]
    finally:
        release.set()


def test_cancel_a_background_job_over_the_api(client, keys, db, with_model, monkeypatch):
    """``POST /v1/models/jobs/{id}/cancel``: 202 with the request on the state while the job
    winds down, then ``cancelled`` at its next progress line; 409 once it has ended, 404 for no
    such job; both events audited."""
    import time

    from api.routes import models as model_routes

    def reporting(model, rows, *, targets, progress):
        for i in range(1500):  # a progress line every 20 ms for up to 30 s
            progress(f"encoding texts with builtin:test: {i}/1500")
            time.sleep(0.02)
        return {"targets": {}}

    monkeypatch.setattr(model_routes, "evaluate_model", reporting)
    admin = bearer(keys["admin"])
    r = client.post(
        f"/v1/models/{with_model}/evaluate",
        params={"background": "true"},
        headers=admin,
        json={"records": _labelled_case_records()},
    )
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]
    asked = client.post(f"/v1/models/jobs/{job_id}/cancel", headers=admin)
    assert asked.status_code == 202, asked.text
    assert asked.json()["cancel_requested_by"] == "test-admin"
    state = _finished_job(client, "/v1/models/evaluate", admin, seconds=30)
    assert state["status"] == "cancelled" and state["error"] == "cancelled by test-admin"
    late = client.post(f"/v1/models/jobs/{job_id}/cancel", headers=admin)
    assert late.status_code == 409 and late.json()["error"]["fields"][0]["field"] == "job_id"
    assert client.post("/v1/models/jobs/999999/cancel", headers=admin).status_code == 404
    listed = client.get("/v1/models/jobs", headers=admin, params={"status": "cancelled"})
    assert [j["id"] for j in listed.json()["items"]] == [job_id]
    with db.read() as s:
        actions = s.scalars(select(AuditEvent.action)).all()
    assert actions.count("model.job_cancel_requested") == 1
    assert actions.count("model.job_cancelled") == 1 and "model.evaluated" not in actions


def test_each_case_is_encoded_once_for_classifier_and_retrieval(
    db, settings, with_model, monkeypatch
):
    """The demo model takes the retrieval encoder's vectors as features; the pipeline encodes a
    case once and hands the same vector to the classifier and to both Chroma collections."""
    from retrieval.embeddings import StaticEncoder

    loaded = classification.registry(settings).load(with_model)
    spec = loaded.model.feature_spec()
    assert spec.embedding_encoder == settings.encoder == "builtin:minilm-static-v2"
    encoded: list[int] = []
    original = StaticEncoder.encode

    def counting(self, texts):
        encoded.append(len(texts))
        return original(self, texts)

    monkeypatch.setattr(StaticEncoder, "encode", counting)
    ids = submit_simulated(db, settings, 20, seed=11)
    pipe = default_pipeline(settings)
    assert Worker(db, settings, pipe).run_once() == 20
    assert sum(encoded) == 20  # not 40: the classifier reused the retrieval vectors
    with db.read() as s:
        rows = [cases.get(s, i) for i in ids]
        assert {r.model_version for r in rows} == {with_model}
        assert sum(r.queue is not None for r in rows) >= 15


def test_model_refuses_vectors_of_another_encoder_version(settings, with_model):
    """A model records its encoder's fingerprint; if the encoder behind the name changes, the
    model refuses to score rather than read vectors from another space."""
    from dataclasses import replace

    from classifiers import embed_texts

    spec = classification.registry(settings).load(with_model).model.feature_spec()
    assert embed_texts(spec, ["damaged pallet"]).shape == (1, spec.embedding_dim)
    with pytest.raises(ValueError, match="retrain the model"):
        embed_texts(replace(spec, embedding_fingerprint="static-0000000000000000"), ["x"])


def test_train_a_new_version_over_the_api(client, keys, db, settings):
    """Admins train on posted records as `triage train` does on a file: bad requests are refused
    field by field before anything trains; a good one trains in the background, registers a
    (not yet active) version, audits it, and the version evaluates over the API."""
    import csv

    admin = bearer(keys["admin"])
    with classification.BITEXT_SAMPLE.open(encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    records = [{"text": r["text"], "triage_category": r["triage_category"]} for r in rows[::12]]
    held_out = [{"text": r["text"], "triage_category": r["triage_category"]} for r in rows[5::40]]
    base = {"records": records, "text_columns": ["text"], "label_columns": ["triage_category"]}
    bad = [
        ({**base, "label_columns": ["intent"]}, "intent"),
        ({**base, "records": [{"text": "a", "y": "x"}, {"text": "b", "y": "x"}],
          "label_columns": ["y"]}, "one"),
        ({**base, "encoder": "/etc/passwd"}, "encoder"),
        ({**base, "target_precision": 1.5}, "target_precision"),
        ({**base, "class_weight": "heavy"}, "class_weight"),
        ({**base, "threshold_pooling": "maybe"}, "threshold_pooling"),
        ({**base, "records": records[:1]}, "records"),
    ]  # fmt: skip
    for body, word in bad:
        r = client.post("/v1/models/train", headers=admin, json=body)
        assert r.status_code == 422, (word, r.text)
        assert word in r.text.lower()
    nested = [*records[:3], {"text": "a", "triage_category": ["order", "payment"]}]
    r = client.post("/v1/models/train", headers=admin, json={**base, "records": nested})
    assert r.status_code == 422, r.text
    assert r.json()["error"]["fields"][0]["field"] == "records[3].triage_category"
    schema = client.app.openapi()["components"]["schemas"]["TrainRequest"]
    assert schema["properties"]["class_weight"]["default"] == "balanced"
    assert schema["properties"]["threshold_pooling"]["default"] is True
    assert client.get("/v1/models/train", headers=admin).json()["status"] == "idle"
    assert classification.registry(settings).versions() == []

    r = client.post(
        "/v1/models/train",
        headers=admin,
        json={**base, "name": "bitext sample", "class_weight": "none"},
    )
    assert r.status_code == 202, r.text
    state = _finished_job(client, "/v1/models/train", admin, seconds=120)
    assert state["status"] == "done", state
    version = state["result"]["version"]
    assert state["result"]["encoder"] == settings.encoder
    reg = classification.registry(settings)
    assert [m["version"] for m in reg.versions()] == [version]
    assert reg.active_version() is None  # activate defaults to false
    assert reg.verify(version)["training_data_name"] == "bitext sample"
    assert reg.load(version).model.class_weight is None  # unweighted on request
    assert reg.load(version).model.threshold_pooling is True  # the default
    with db.read() as s:
        trained = s.scalars(
            select(AuditEvent.payload).where(AuditEvent.action == "model.trained")
        ).all()
    assert len(trained) == 1 and version in trained[0]
    scored = client.post(
        f"/v1/models/{version}/evaluate", headers=admin, json={"records": held_out}
    )
    assert scored.status_code == 200, scored.text
    assert scored.json()["metrics"]["targets"]["triage_category"]["accuracy"] > 0.8


def test_a_model_trained_on_the_previous_encoder_keeps_classifying(db, settings, monkeypatch):
    """Upgrade path: the deployment's encoder moved to v2 while the active model was trained
    with v1's vectors. The pipeline does not hand it v2 vectors (other fingerprint); the model
    encodes with v1, which still ships, and classifies."""
    from retrieval.embeddings import StaticEncoder

    trained_on = settings.model_copy(update={"encoder": "builtin:minilm-static-v1"})
    version = classification.train_default_model(trained_on, n_train=300, n_eval=100)
    spec = classification.registry(settings).load(version).model.feature_spec()
    assert spec.embedding_encoder == "builtin:minilm-static-v1"
    assert settings.encoder == "builtin:minilm-static-v2"
    encoded: list[str] = []
    original = StaticEncoder.encode

    def counting(self, texts):
        encoded.append(self.fingerprint)
        return original(self, texts)

    monkeypatch.setattr(StaticEncoder, "encode", counting)
    ids = submit_simulated(db, settings, 10, seed=12)
    assert Worker(db, settings, default_pipeline(settings)).run_once() == 10
    with db.read() as s:
        rows = [cases.get(s, i) for i in ids]
        assert {r.model_version for r in rows} == {version}
        assert {r.status for r in rows} == {"awaiting_review"}  # triaged, none failed
        assert sum(r.queue is not None for r in rows) >= 5
    assert len(set(encoded)) == 2  # v2 for retrieval, v1 for the model


def _explanation(client, case_id: str, key: str, **params: Any):
    return client.get(f"/v1/cases/{case_id}/explanation", params=params, headers=bearer(key))


def test_explanation_of_a_model_prediction_over_the_api(client, keys, db, settings, with_model):
    """An agent (and an auditor) reads why the model routed a case: per target, the top label
    against the runner-up as an exact sum of evidence, recomputed with the model version that
    classified the case and checked against the stored probabilities."""
    ids = submit_simulated(db, settings, 6, seed=21)
    Worker(db, settings, default_pipeline(settings)).run_once()
    for case_id in ids:
        r = _explanation(client, case_id, keys["agent"], top=5)
        assert r.status_code == 200, r.text
        body = r.json()
        assert (body["source"], body["model_version"]) == ("model", with_model)
        assert set(body["targets"]) == {"category", "queue", "priority"}
        assert body["reproduced"] == {"category": True, "queue": True, "priority": True}
        stored = client.get(f"/v1/cases/{case_id}", headers=bearer(keys["agent"])).json()
        for target, exp in body["targets"].items():
            # a simulated case has far more than five non-zero features: exactly `top` listed,
            # strongest first, the rest summed in `other`
            weights = [abs(e["weight"]) for e in exp["evidence"]]
            assert len(weights) == 5 and weights == sorted(weights, reverse=True)
            assert exp["other"] != 0.0
            total = exp["baseline"] + sum(e["weight"] for e in exp["evidence"]) + exp["other"]
            assert total == pytest.approx(exp["log_odds"], abs=1e-3)
            pred = stored["suggestion"]["classifier"][target]
            top_label = max(pred["probabilities"], key=pred["probabilities"].__getitem__)
            assert exp["label"] == top_label
            assert exp["versus"] == pred["runner_up"]
            if not pred["abstained"]:
                assert pred["label"] == exp["label"]
    assert _explanation(client, ids[0], keys["auditor"]).status_code == 200


def test_explanation_refusals(client, keys, db, settings, with_model):
    ids = submit_simulated(db, settings, 2, seed=22)
    for bad in ("0", "51", "x"):
        r = _explanation(client, ids[0], keys["agent"], top=bad)
        assert r.status_code == 422 and "top" in r.text
    assert _explanation(client, "01NOSUCHCASE", keys["agent"]).status_code == 404
    r = _explanation(client, ids[0], keys["agent"])  # not triaged yet
    assert r.status_code == 409 and "no classification yet" in r.json()["error"]["message"]
    Worker(db, settings, default_pipeline(settings)).run_once()
    # the version that classified the case is gone from the registry: said so, not a 500
    shutil.rmtree(settings.data_dir / "models" / "versions" / with_model)
    r = _explanation(client, ids[1], keys["agent"])
    assert r.status_code == 409
    assert with_model in r.json()["error"]["message"] and "no longer in the registry" in r.text


def test_explanation_detects_a_stored_answer_the_model_did_not_give(
    client, keys, db, settings, with_model
):
    (case_id,) = submit_simulated(db, settings, 1, seed=23)
    Worker(db, settings, default_pipeline(settings)).run_once()
    with db.write() as s:
        row = cases.get(s, case_id)
        stored = cases.current_suggestion(s, row)
        body = json.loads(json.dumps(stored.body))
        probs = body["classifier"]["queue"]["probabilities"]
        top = max(probs, key=probs.__getitem__)
        probs[top] = round(probs[top] - 0.01, 6)
        stored.body = body
    r = _explanation(client, case_id, keys["auditor"])
    assert r.json()["reproduced"] == {"category": True, "queue": False, "priority": True}


def test_explanation_of_the_fixed_rules(client, keys, db, settings):
    """Without an active model the rules classify; the explanation lists the rules applied."""
    case = sample_case(
        exception_type="pricing_mismatch",
        references={"customer": {"id": "C-1", "tier": "A"}},
        amount_in_dispute={"amount": "25000", "currency": "EUR"},
    )
    case_id = client.post("/v1/cases", json=case, headers=bearer(keys["orchestrator"])).json()[
        "case_id"
    ]
    Worker(db, settings, default_pipeline(settings)).run_once()
    body = _explanation(client, case_id, keys["agent"]).json()
    assert (body["source"], body["model_version"], body["targets"]) == ("rules", "rules-1", {})
    assert body["rules"]["queue"] == ["pricing mismatch cases go to queue billing (fixed rule)"]
    assert body["rules"]["priority"] == [
        "pricing mismatch cases start at P3",
        "tier A customer: one level higher",
        "amount in dispute of 10,000 or more: one level higher",
    ]
    detail = client.get(f"/v1/cases/{case_id}", headers=bearer(keys["agent"])).json()
    assert detail["priority"] == "P1"


def test_explanation_when_the_encoder_changed_since_training(
    client, keys, db, settings, with_model, monkeypatch
):
    """The encoder behind the model's embedding features now gives other vectors (another
    fingerprint): the model cannot score the case again, and the explanation says so (409)."""
    from classifiers import features

    (case_id,) = submit_simulated(db, settings, 1, seed=24)
    Worker(db, settings, default_pipeline(settings)).run_once()
    original = features._embedder

    def changed(name, texts):
        vectors, _ = original(name, texts)
        return vectors, "static-0000000000000000"

    monkeypatch.setattr(features, "_embedder", changed)
    r = _explanation(client, case_id, keys["agent"])
    assert r.status_code == 409
    assert "cannot recompute this case now" in r.text and "retrain the model" in r.text
    error = r.json()["error"]
    assert error["fields"] == [{"field": "model_version", "problem": error["message"]}]


def test_triage_models_explain_on_the_command_line(
    client, keys, db, settings, with_model, monkeypatch
):
    """``triage models explain CASE`` prints what the API returns (text and --json), exit 2
    naming the problem for an unknown or untriaged case."""
    triage = cli_runner(monkeypatch, settings)
    (first,) = submit_simulated(db, settings, 1, seed=25)
    Worker(db, settings, default_pipeline(settings)).run_once()
    api = _explanation(client, first, keys["auditor"], top=3).json()
    out = triage("models", "explain", first, "--top", "3", "--json")
    assert out.exit_code == 0, out.output
    assert json.loads(out.stdout) == api
    text = triage("models", "explain", first, "--top", "3")
    assert text.exit_code == 0
    assert f"classified by {with_model} (model)" in text.stdout
    queue = api["targets"]["queue"]
    assert f"queue: {queue['label']} " in text.stdout
    assert f"{queue['evidence'][0]['weight']:+7.2f}" in text.stdout
    missing = triage("models", "explain", "01NOSUCHCASE")
    assert missing.exit_code == 2 and "01NOSUCHCASE" in missing.output
    with db.write() as s:  # a case submitted after the worker ran: not classified yet
        later = cases.submit(
            s, CaseIn.model_validate(sample_case(77)), actor=ORCH, settings=settings
        )
    pending = triage("models", "explain", later.case.id)
    assert pending.exit_code == 2 and "no classification yet" in pending.output


def test_the_default_models_meaning_vector_splits_over_the_words(settings, with_model):
    """The demo model's embedding (the static table: a normalised sum of word vectors) is
    explained word by word: no opaque "meaning" item, and each word's weight gains exactly its
    share of what the meaning item weighs when the split is not available."""
    from classifiers import features

    model = classification.registry(settings).load(with_model).model
    case = sample_case(5)
    text = case["text"]
    text["customer_message"] = "Where is it?! Pallet short, again... " + text["customer_message"]
    record = classification.case_record(CaseIn.model_validate(case))
    split = model.explain([record], top=50)[0]
    saved = features._word_splitter
    features.set_word_splitter(None)
    try:
        whole = model.explain([record], top=50)[0]
    finally:
        features.set_word_splitter(saved)
    for target in ("category", "queue", "priority"):
        with_words = {(e.kind, e.feature): e.weight for e in split[target].evidence}
        without = {(e.kind, e.feature): e.weight for e in whole[target].evidence}
        assert not any(kind == "meaning" for kind, _ in with_words)
        meaning = without.pop(("meaning", "builtin:minilm-static-v2"))
        assert abs(meaning) > 0.05  # the embedding does carry weight in this model
        assert len(with_words) < 50  # all listed: `other` holds the punctuation and rounding
        assert abs(whole[target].other) < 1e-4
        # "?", "!", "," and "." are words to the static table but never listed rows: their
        # share of the meaning stays in `other`
        assert all(any(ch.isalnum() for ch in f) for kind, f in with_words if kind == "word")
        assert abs(split[target].other) > 1e-6
        gained = sum(w - without.get(key, 0.0) for key, w in with_words.items())
        assert gained + split[target].other == pytest.approx(meaning, abs=1e-4)
        assert split[target].log_odds == pytest.approx(whole[target].log_odds, abs=1e-6)
        total = split[target].baseline + sum(with_words.values()) + split[target].other
        assert total == pytest.approx(split[target].log_odds, abs=1e-4)


def _labels_in_bodies(db) -> dict[str, dict[str, str | None]]:
    """Each classified case's current classifier labels, read from the suggestion bodies."""
    from triage.models import Case
    from triage.models import Suggestion as SuggestionRow

    with db.read() as s:
        rows = s.execute(
            select(Case.id, SuggestionRow.body).join(
                SuggestionRow,
                (SuggestionRow.case_id == Case.id)
                & (SuggestionRow.revision == Case.suggestion_revision),
            )
        ).all()
    return {
        cid: {t: body["classifier"][t]["label"] for t in classification.TARGETS}
        for cid, body in rows
    }


def _labels_on_rows(db) -> dict[str, dict[str, str | None]]:
    from triage.models import Case

    with db.read() as s:
        rows = s.scalars(select(Case).where(Case.suggestion_revision > 0)).all()
        return {
            r.id: {t: getattr(r, f"predicted_{t}") for t in classification.TARGETS} for r in rows
        }


def test_model_stats_equal_a_count_over_the_suggestion_bodies(
    client, keys, db, settings, with_model
):
    """Override rate and precision-at-close come from aggregates over the case rows' predicted
    labels; they equal the definition computed from every suggestion body (overrides on each
    target, resolved and open cases, an abstention)."""
    from triage.models import Case

    ids = [*submit_simulated(db, settings, 24, seed=27), _odd_case(client, keys)]
    Worker(db, settings, default_pipeline(settings)).run_once()
    agent = bearer(keys["agent"])
    edits = [{"queue": "billing"}, {"priority": "P1"}, {"category": "damage"}, {"queue": "returns"}]
    for cid, change in zip(ids[:8:2], edits, strict=True):
        r = client.post(f"/v1/cases/{cid}/overrides", json=change | {"reason": "r"}, headers=agent)
        assert r.status_code == 200, r.text
    for cid in [*ids[:12], ids[-1]]:
        done = {"to": "resolved", "resolution": "ok"}
        r = client.post(f"/v1/cases/{cid}/transitions", json=done, headers=agent)
        assert r.status_code == 200, r.text
    bodies = _labels_in_bodies(db)
    assert any(v is None for labels in bodies.values() for v in labels.values())  # abstained
    with db.read() as s:
        rows = {r.id: (r.status, r.category, r.queue, r.priority) for r in s.scalars(select(Case))}
        over = {c for (c,) in s.execute(select(LabelFeedback.case_id)).all()}
        (stats,) = classification.model_stats(s)
    final = {c: dict(zip(classification.TARGETS, v[1:], strict=True)) for c, v in rows.items()}
    resolved = [c for c in bodies if rows[c][0] == "resolved"]
    assert (stats.model_version, stats.classified, stats.closed) == (with_model, 25, 13)
    assert stats.overridden_cases == len(over) == 4
    assert stats.override_rate == pytest.approx(4 / 25)
    for t in classification.TARGETS:
        made = [c for c in resolved if bodies[c][t] is not None]
        hits = [c for c in made if bodies[c][t] == final[c][t]]
        expected = len(hits) / len(made) if made else None
        assert stats.precision_at_close[t] == pytest.approx(expected), (t, len(made))
    assert 0 < stats.precision_at_close["queue"] < 1.0  # the overrides are misses


def test_predicted_labels_are_kept_on_the_row_and_backfilled(
    client, keys, db, settings, with_model
):
    """The pipeline writes the classifier's labels on the case row; migration 0008 fills them
    for cases triaged before it existed (down to 0007 drops them, up again refills them)."""
    from alembic import command

    from triage import migrate

    submit_simulated(db, settings, 6, seed=28)
    _odd_case(client, keys)
    Worker(db, settings, default_pipeline(settings)).run_once()
    bodies = _labels_in_bodies(db)
    assert len(bodies) == 7 and _labels_on_rows(db) == bodies
    db.dispose()
    command.downgrade(migrate.alembic_config(settings.resolved_database_url), "0007")
    migrate.upgrade(settings)
    assert _labels_on_rows(db) == bodies


def _profile(client, version: str, key: str, **params: Any):
    return client.get(f"/v1/models/{version}/profile", params=params, headers=bearer(key))


def test_model_profile_sums_the_per_case_explanations(
    client, keys, db, settings, with_model, monkeypatch
):
    """An auditor reads what a model version relied on: per target and label, the evidence
    of the exact per-case explanations summed over the recent cases it classified."""
    empty = _profile(client, with_model, keys["auditor"])
    assert empty.status_code == 200, empty.text
    assert empty.json() == {"model_version": with_model, "cases": 0, "targets": {}}

    ids = submit_simulated(db, settings, 12, seed=31)
    Worker(db, settings, default_pipeline(settings)).run_once()
    r = _profile(client, with_model, keys["auditor"], top=4)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["cases"] == len(ids)
    # recompute from the per-case explanations (all evidence listed) and stored suggestions
    expected: dict[str, dict[str, dict[str, Any]]] = {}
    for case_id in ids:
        exp = _explanation(client, case_id, keys["auditor"], top=50).json()["targets"]
        stored = client.get(f"/v1/cases/{case_id}", headers=bearer(keys["agent"])).json()
        for target, e in exp.items():
            acc = expected.setdefault(target, {}).setdefault(
                e["label"], {"cases": 0, "abstained": 0, "items": {}}
            )
            acc["cases"] += 1
            acc["abstained"] += stored["suggestion"]["classifier"][target]["abstained"]
            for item in e["evidence"]:
                # numbers are grouped by field (their values differ case by case)
                value = item["value"] if item["kind"] == "field" else None
                key = (item["kind"], item["feature"], value)
                total, seen = acc["items"].get(key, (0.0, 0))
                acc["items"][key] = (total + item["weight"], seen + 1)
    assert set(body["targets"]) == set(expected) == {"category", "queue", "priority"}
    for target, labels in body["targets"].items():
        assert {lp["label"]: lp["cases"] for lp in labels} == {
            label: acc["cases"] for label, acc in expected[target].items()
        }
        assert [lp["cases"] for lp in labels] == sorted(
            (lp["cases"] for lp in labels), reverse=True
        )
        for lp in labels:
            acc = expected[target][lp["label"]]
            assert lp["abstained"] == acc["abstained"]
            best = sorted((w for w, _ in acc["items"].values() if w > 0), reverse=True)[:4]
            assert [e["weight"] for e in lp["evidence"]] == pytest.approx(best, abs=1e-4)
            for e in lp["evidence"]:
                total, seen = acc["items"][(e["kind"], e["feature"], e["value"])]
                assert e["weight"] == pytest.approx(total, abs=1e-4)
                assert e["cases"] == seen
                assert e["mean_weight"] * e["cases"] == pytest.approx(e["weight"], abs=1e-4)
    assert body["targets"]["category"][0]["evidence"], "the most frequent label has evidence"

    assert _profile(client, with_model, keys["admin"], limit=3).json()["cases"] == 3
    assert _profile(client, with_model, keys["agent"]).status_code == 403
    for params in ({"limit": 0}, {"limit": 1001}, {"top": 51}):
        bad = _profile(client, with_model, keys["auditor"], **params)
        assert bad.status_code == 422 and next(iter(params)) in bad.text
    gone = _profile(client, "v20990101T000000000000Z-deadbeef", keys["auditor"])
    assert gone.status_code == 404 and "deadbeef" in gone.text
    assert _profile(client, "rules-1", keys["auditor"]).status_code == 404

    triage = cli_runner(monkeypatch, settings)
    out = triage("models", "profile", "--top", "4", "--json")  # the active version
    assert out.exit_code == 0, out.output
    assert json.loads(out.stdout) == body
    text = triage("models", "profile", with_model, "--top", "4")
    first = body["targets"]["queue"][0]
    assert f"  {first['label']}: {first['cases']} cases" in text.stdout
    assert f"{first['evidence'][0]['weight']:+8.2f}" in text.stdout
    unknown = triage("models", "profile", "v20990101T000000000000Z-deadbeef")
    assert unknown.exit_code == 2 and "no model version" in unknown.output


def _fields(response) -> list[str]:
    return [f["field"] for f in response.json()["error"]["fields"]]


def test_operating_points_over_the_api(client, keys, db, settings, with_model):
    """Admins re-choose a version's thresholds without retraining: a dry run shows what each
    label would get; a real change registers a derived version (audited, optionally active,
    rolled back like any other); refused settings name their field and write nothing."""
    admin, auditor = bearer(keys["admin"]), bearer(keys["auditor"])
    url = f"/v1/models/{with_model}/operating-points"
    reg = classification.registry(settings)
    meta = reg.verify(with_model)

    got = client.get(url, headers=auditor)
    assert got.status_code == 200, got.text
    view = got.json()
    assert view["active"] is True and view["derived_from"] is None
    assert view["settings"] == {
        "target_precision": 0.95,
        "label_precision": {},
        "threshold_pooling": True,
    }
    assert view["targets"]["queue"]["labels"] == meta["thresholds"]["queue"]
    assert view["targets"]["queue"]["summary"] == meta["validation"]["queue"]
    assert client.get(url, headers=bearer(keys["agent"])).status_code == 403
    assert client.post(url, headers=auditor, json={"target_precision": 0.9}).status_code == 403
    unknown = "/v1/models/v20990101T000000000000Z-deadbeef/operating-points"
    assert client.get(unknown, headers=admin).status_code == 404
    assert client.post(unknown, headers=admin, json={"target_precision": 0.9}).status_code == 404

    label = next(iter(meta["thresholds"]["queue"]))
    bad = [
        ({"target_precision": 1.0}, "target_precision"),
        ({"target_precision": "high"}, "target_precision"),
        ({"label_precision": {"queue": {"no_such_queue": 0.9}}}, "label_precision"),
        ({"label_precision": {"colour": {label: 0.9}}}, "label_precision"),
        ({"label_precision": {"queue": {label: 1.5}}}, "label_precision"),
        ({"threshold_pooling": "maybe"}, "threshold_pooling"),
        ({"target_precision": 0.9, "surprise": 1}, "surprise"),
        ({}, "body"),  # the version's own settings: nothing would change
        ({"target_precision": 0.95, "threshold_pooling": True}, "body"),
    ]
    for body, field in bad:
        r = client.post(url, headers=admin, json=body)
        assert r.status_code == 422, (body, r.text)
        assert field in _fields(r), (body, r.text)
    assert [m["version"] for m in reg.versions()] == [with_model]

    dry = client.post(url, headers=admin, json={"target_precision": 0.8, "dry_run": True})
    assert dry.status_code == 200, dry.text
    preview = dry.json()
    assert preview["version"] is None and preview["dry_run"] and not preview["activated"]
    assert preview["parent_targets"]["queue"]["labels"] == meta["thresholds"]["queue"]
    assert preview["after"]["target_precision"] == 0.8
    assert [m["version"] for m in reg.versions()] == [with_model]

    r = client.post(url, headers=admin, json={"target_precision": 0.8, "activate": True})
    assert r.status_code == 201, r.text
    change = r.json()
    derived = change["version"]
    assert change["activated"] and reg.active_version() == derived
    # the dry run showed exactly what was registered
    assert change["targets"] == preview["targets"]
    assert change["changed_labels"] == preview["changed_labels"]
    for target, labels in change["targets"].items():
        for name, point in labels["labels"].items():
            assert point["target_precision"] == 0.8, (target, name)
            old = change["parent_targets"][target]["labels"][name]["threshold"]
            assert (point["threshold"] != old) is (name in change["changed_labels"].get(target, []))
    listed = {m["version"]: m for m in client.get("/v1/models", headers=auditor).json()}
    assert listed[derived]["derived_from"] == with_model and listed[derived]["active"]
    assert listed[derived]["target_precision"] == 0.8
    again = client.get(f"/v1/models/{derived}/operating-points", headers=auditor).json()
    assert again["derived_from"] == with_model
    assert again["settings"]["target_precision"] == 0.8
    assert again["targets"] == change["targets"]
    with db.read() as s:
        events = s.execute(
            select(AuditEvent.actor_role, AuditEvent.payload).where(
                AuditEvent.action == "model.rethresholded"
            )
        ).all()
    assert len(events) == 1  # the dry run and the refusals wrote nothing
    assert events[0].actor_role == "admin"
    payload = json.loads(events[0].payload)
    assert payload["version"] == derived and payload["parent"] == with_model
    assert payload["activated"] is True and payload["previous_active"] == with_model
    assert payload["after"]["target_precision"] == 0.8

    # cases are now classified by the derived version, and it rolls back like any other
    ids = submit_simulated(db, settings, 5, seed=77)
    assert Worker(db, settings, default_pipeline(settings)).run_once() == 5
    with db.read() as s:
        assert {cases.get(s, i).model_version for i in ids} == {derived}
    back = client.post("/v1/models/rollback", headers=admin)
    assert back.status_code == 200 and reg.active_version() == with_model


def test_model_commands_on_the_deployments_registry_are_audited(
    db, settings, with_model, monkeypatch, tmp_path
):
    """`triage models activate|rollback|rethreshold` and `triage train --out` act on the
    deployment's registry (<data_dir>/models, the default) together with an audit event naming
    the CLI admin, as the API does; a step that fails writes no event; another registry
    directory has no audit trail."""
    triage = cli_runner(monkeypatch, settings)
    reg = classification.registry(settings)

    def events() -> list[tuple[str, str, dict]]:
        with db.read() as s:
            rows = s.execute(
                select(AuditEvent.action, AuditEvent.actor_id, AuditEvent.payload).where(
                    AuditEvent.action.like("model.%")
                )
            ).all()
        return [(a, who, json.loads(p)) for a, who, p in rows]

    listed = triage("models", "list")  # no --registry: the deployment's
    assert listed.exit_code == 0 and f"* {with_model}" in listed.stdout

    made = triage("models", "rethreshold", "--target-precision", "0.8", "--activate", "--json")
    assert made.exit_code == 0, made.output
    derived = json.loads(made.stdout)["version"]
    assert json.loads(made.stdout)["activated"] and reg.active_version() == derived
    (event,) = events()
    assert event[:2] == ("model.rethresholded", "cli-admin")
    assert event[2]["version"] == derived and event[2]["previous_active"] == with_model

    assert triage("models", "rollback").exit_code == 0 and reg.active_version() == with_model
    assert triage("models", "activate", derived).exit_code == 0
    assert [(a, p["version"], p["previous"]) for a, _, p in events()[1:]] == [
        ("model.rolled_back", with_model, derived),
        ("model.activated", derived, with_model),
    ]
    # refused steps write nothing
    assert triage("models", "activate", "v20990101T000000000000Z-deadbeef").exit_code == 2
    assert triage("models", "rethreshold", "--target-precision", "0.8").exit_code == 2
    assert len(events()) == 3

    import csv

    with classification.BITEXT_SAMPLE.open(encoding="utf-8") as fh:
        rows = [
            {"text": r["text"], "label": r["triage_category"]} for r in list(csv.DictReader(fh))
        ][::20]
    data = tmp_path / "history.csv"
    with data.open("w", encoding="utf-8", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["text", "label"])
        writer.writeheader()
        writer.writerows(rows)
    common = ["train", "--data", str(data), "--text-column", "text", "--label-column", "label"]
    elsewhere = triage(*common, "--out", str(tmp_path / "experiments"), "--encoder", "none")
    assert elsewhere.exit_code == 0, elsewhere.output
    assert len(events()) == 3  # an experiments folder has no audit trail
    trained = triage(
        *common, "--out", str(settings.data_dir / "models"), "--encoder", "none", "--no-activate"
    )
    assert trained.exit_code == 0, trained.output
    action, who, payload = events()[-1]
    assert (action, who, payload["activated"], payload["n_records"]) == (
        "model.trained",
        "cli-admin",
        False,
        len(rows),
    )
    assert payload["version"] in {m["version"] for m in reg.versions()}
    assert reg.active_version() == derived  # trained with --no-activate
    signed = triage("models", "sign", "--all", "--signing-key", "k1")
    assert signed.exit_code == 0, signed.output
    action, who, payload = events()[-1]
    assert (action, who) == ("model.signed", "cli-admin")
    assert sorted(payload["versions"]) == sorted(m["version"] for m in reg.versions())
    # with the database out of reach the step is refused before it is taken
    monkeypatch.setenv("TRIAGE_DATABASE_URL", "postgresql+psycopg://nobody@127.0.0.1:1/none")
    refused = triage("models", "activate", with_model)
    assert refused.exit_code == 2 and "nothing was activated" in refused.output, refused.output
    assert reg.active_version() == derived


def test_the_deployments_signing_key_signs_new_versions_and_is_required(settings, with_model):
    """TRIAGE_MODEL_SIGNING_KEY reaches the deployment's registry: versions it registers are
    signed, and with a key set an unsigned or otherwise signed version is refused."""
    from pydantic import SecretStr

    from classifiers import IntegrityError

    def keyed(key: str) -> Any:
        return classification.registry(
            settings.model_copy(update={"model_signing_key": SecretStr(key)})
        )

    assert classification.registry(settings).signing_key is None
    assert keyed("").signing_key is None  # an empty variable is no key
    with pytest.raises(IntegrityError, match="unsigned"):
        keyed("k1").verify(with_model)  # registered without a key
    model = classification.registry(settings).load(with_model).model
    signed = keyed("k1").save(model)
    assert keyed("k1").verify(signed)["signature"]
    with pytest.raises(IntegrityError, match="invalid signature"):
        keyed("k2").load(signed)


def test_a_refused_active_model_stops_start_up_and_every_classification(
    db, settings, with_model, monkeypatch
):
    """With a signing key set before the registry's versions were signed, `triage worker`
    (and `serve`, same check) refuses to start with the remedy instead of failing every case;
    a running provider raises on every call while the version is refused, never falling back
    to the rules, and uses the model once it is signed."""
    from pydantic import SecretStr

    keyed = settings.model_copy(update={"model_signing_key": SecretStr("k1")})
    triage = cli_runner(monkeypatch, settings)
    monkeypatch.setenv("TRIAGE_MODEL_SIGNING_KEY", "k1")
    refused = triage("worker", "--once")
    assert refused.exit_code == 2, refused.output
    assert f"{with_model} is unsigned" in refused.output
    assert "triage models sign" in refused.output and "Nothing was started" in refused.output

    provider = classification.ClassifierProvider(keyed, check_seconds=0.0)
    case = CaseIn.model_validate(sample_case())
    for _ in range(2):  # the same answer on every call, not the rules after the first
        with pytest.raises(classification.ModelUnusable, match="sign the versions you trust"):
            provider.classify(case)
    # a modified artifact names the other remedy
    artifact = settings.model_registry_dir / "versions" / with_model / ARTIFACT_NAME
    original = artifact.read_bytes()
    artifact.write_bytes(original + b"\0")
    with pytest.raises(classification.ModelUnusable, match="triage models rollback"):
        classification.check_active_model(settings)
    artifact.write_bytes(original)

    assert triage("models", "sign", with_model).exit_code == 0
    assert classification.check_active_model(keyed) == with_model
    assert provider.classify(case).model_version == with_model
    assert triage("worker", "--once").exit_code == 0
