"""The console's models page: admins train from an uploaded file, evaluate, activate and roll
back; auditors read it; bad uploads are refused with the problem named and nothing trained;
every step lands on the audit trail with the admin's name."""

from __future__ import annotations

import csv
import html
import json
import re

from sqlalchemy import select

from classifiers import rethreshold
from tests.console.conftest import csrf, flash, post, sign_in
from tests.support import bearer, submit_simulated, wait_until
from triage import classification
from triage.models import AuditEvent
from triage.stages import default_pipeline
from triage.worker import Worker

URL = "/console/admin/models"


def _rows() -> list[dict[str, str]]:
    with classification.BITEXT_SAMPLE.open(encoding="utf-8") as fh:
        return [{"message": r["text"], "label": r["triage_category"]} for r in csv.DictReader(fh)]


def _csv(rows: list[dict[str, str]]) -> bytes:
    lines = ["message,label"]
    for r in rows:
        text = r["message"].replace('"', '""')
        lines.append(f'"{text}",{r["label"]}')
    return ("\n".join(lines) + "\n").encode()


def _upload(client, url: str, content: bytes, filename: str = "history.csv", **fields):
    return client.post(
        url,
        data={"csrf_token": csrf(client), **fields},
        files={"file": (filename, content, "text/csv")},
        follow_redirects=False,
    )


def _audit(db, action: str) -> list[dict]:
    with db.read() as s:
        return [
            {"actor": e.actor_id, **json.loads(e.payload)}
            for e in s.scalars(select(AuditEvent).where(AuditEvent.action == action))
        ]


def _job_row(client, kind: str) -> str:
    """The models page's table row for the ``training``, ``retraining`` or ``evaluation`` job."""
    return client.get(URL).text.split(f'id="job-{kind}"')[1].split("</tr>")[0]


def _stopped(client, kind: str, seconds: float = 180) -> str:
    """The job's row once it no longer says running."""

    def stopped() -> str | None:
        row = _job_row(client, kind)
        return row if ">running<" not in row else None

    return wait_until(
        stopped,
        deadline_s=seconds,
        what=f"the {kind} job to stop",
        every=0.1,
    )


def _wait_for_training(client) -> str:
    """The new version's id, once the training job is done."""
    row = _stopped(client, "training")
    assert ">done<" in row, row
    return re.search(r'new version <span class="mono">([^<]+)<', row).group(1)


def test_roles_and_read_only_view(client, people, db):
    sign_in(client, "agent")
    assert client.get(URL).status_code == 403
    assert post(client, f"{URL}/rollback").status_code == 403
    sign_in(client, "auditor")
    page = client.get(URL)
    assert page.status_code == 200
    assert 'aria-current="page">Models<' in page.text
    assert "No active model" in page.text and "No model versions yet" in page.text
    assert "<form" not in page.text.split("</header>")[1]  # read only: no forms at all
    assert post(client, f"{URL}/rollback").status_code == 403
    assert _upload(client, f"{URL}/train", b"x").status_code == 403


def test_bad_uploads_are_refused_and_nothing_trains(client, people, db, settings):
    sign_in(client, "boss")
    good = _csv(_rows()[::150])
    cases = [
        (b"message,label\n\xff\xfe broken", {}, "history.csv", "not UTF-8"),
        (good, {"label_columns": "category"}, "history.csv", "category"),
        (good, {}, "history.xlsx", ".xlsx"),
        (b"message,label\nonly one,class_a\nanother,class_a\n", {}, "history.csv", "one"),
        (good, {"target_precision": "1.5"}, "history.csv", "target_precision"),
        (good, {"encoder": "/etc/passwd"}, "history.csv", "encoder"),
        (good, {"class_weight": "heavy"}, "history.csv", "class_weight"),
        (good, {"label_precision": "label:no_such_label=0.99"}, "history.csv", "no_such_label"),
        (good, {"label_precision": "label=0.99"}, "history.csv", "TARGET:LABEL=PRECISION"),
    ]
    for content, overrides, filename, word in cases:
        fields = {"text_columns": "message", "label_columns": "label", **overrides}
        r = _upload(client, f"{URL}/train", content, filename, **fields)
        message = flash(client, r)
        assert message.startswith("error:") and word in message, (word, message)
    r = post(client, f"{URL}/train", {"text_columns": "message", "label_columns": "label"})
    assert "Choose a labelled CSV" in flash(client, r)  # no file at all
    assert classification.registry(settings).versions() == []
    assert _audit(db, "model.trained") == [] and _audit(db, "model.train_failed") == []
    assert ">idle<" in _job_row(client, "training")


def test_train_evaluate_activate_and_roll_back_from_the_console(client, people, db, settings):
    rows = _rows()
    sign_in(client, "boss")
    r = _upload(
        client,
        f"{URL}/train",
        _csv(rows[::12]),
        text_columns="message",
        label_columns="label",
        encoder="none",
        name="bitext history",
        label_precision="label:other=0.99",
        class_weight="none",
    )
    assert "started" in flash(client, r)
    version = _wait_for_training(client)
    reg = classification.registry(settings)
    assert [m["version"] for m in reg.versions()] == [version]
    assert reg.load(version).model.class_weight is None  # unweighted on request
    assert reg.load(version).model.threshold_pooling is False  # its box was not ticked
    thresholds = reg.verify(version)["thresholds"]["label"]
    assert thresholds["other"]["target_precision"] == 0.99
    assert thresholds["order"]["target_precision"] == 0.95
    assert reg.active_version() is None  # not ticked: registered inactive
    trained = _audit(db, "model.trained")
    assert len(trained) == 1 and trained[0]["actor"] == "boss"
    assert trained[0]["version"] == version and trained[0]["encoder"] == "none"
    page = client.get(URL).text
    assert '<option value="balanced" selected>' in page  # the form offers the default
    assert 'name="threshold_pooling" type="checkbox" checked' in page  # pooling by default
    row = page.split(f'id="m-{version}"')[1].split("</tr>")[0]
    assert "bitext history" in row and "triage_category" not in row and "label</strong>" in row
    assert f"/console/admin/models/{version}/activate" in row

    assert "is active" in flash(client, post(client, f"{URL}/{version}/activate"))
    assert reg.active_version() == version
    assert _audit(db, "model.activated")[0]["actor"] == "boss"
    # only one version was ever active: nothing to roll back to, said plainly
    message = flash(client, post(client, f"{URL}/rollback"))
    assert message.startswith("error:"), message
    assert reg.active_version() == version

    held_out = _csv(rows[5::40])
    ev = _upload(client, f"{URL}/evaluate", held_out, "held-out.csv", version=version,
                 label_columns="label")  # fmt: skip
    assert ev.status_code == 200, ev.text
    accuracy = float(re.search(r'class="kpi">([\d.]+)%</span><span class="kpi-label">accuracy',
                               ev.text).group(1))  # fmt: skip
    assert accuracy > 80
    assert 'class="grid compact confusion"' in ev.text  # 9 labels: the full matrix
    assert ev.text.count('class="diag"') == 9
    assert "<svg" in ev.text and "Reliability of label predictions" in ev.text
    # which way the confidence errs, read off the same figures the page shows
    cal = re.search(r'data-calibration="([a-z-]+)">Calibration: mean confidence ([\d.]+)% '
                    r"against accuracy ([\d.]+)%", ev.text)  # fmt: skip
    assert cal is not None, ev.text
    gap = (float(cal.group(2)) - float(cal.group(3))) / 100
    expected = "over-confident" if gap > 0.021 else "under-confident" if gap < -0.021 else None
    assert cal.group(1) == (expected or "calibrated") or abs(abs(gap) - 0.02) < 0.002
    evaluated = _audit(db, "model.evaluated")
    assert evaluated[0]["version"] == version and evaluated[0]["source"] == "held-out.csv"
    # a label column the file lacks is named; an unknown version is refused
    bad = _upload(client, f"{URL}/evaluate", held_out, version=version, label_columns="nope")
    assert "nope" in flash(client, bad)
    unknown = _upload(client, f"{URL}/evaluate", held_out, version="v0-none", label_columns="label")
    assert flash(client, unknown).startswith("error:")
    assert len(_audit(db, "model.evaluated")) == 1
    bad = _upload(client, f"{URL}/evaluate", held_out, version=version, label_columns="nope",
                  background="on")  # fmt: skip
    assert "nope" in flash(client, bad) and ">idle<" in _job_row(client, "evaluation")
    early = client.get(f"{URL}/evaluation", follow_redirects=False)
    assert "No background evaluation" in flash(client, early)

    # in the background: the jobs table shows the outcome and links to the same figures
    bg = _upload(client, f"{URL}/evaluate", held_out, "held-out.csv", version=version,
                 label_columns="label", background="on")  # fmt: skip
    assert "Evaluation of" in flash(client, bg)
    row = _stopped(client, "evaluation", seconds=60)
    assert ">done<" in row and "held-out.csv" in row, row
    assert f"label accuracy {accuracy:.1f}%" in row, row
    job = re.search(rf'href="{URL}/evaluation\?job=(\d+)"', row).group(1)
    for link in (f"{URL}/evaluation?job={job}", f"{URL}/evaluation"):  # this job, the last one
        figures = client.get(link)
        assert figures.status_code == 200
        assert f'class="kpi">{accuracy:.1f}%</span>' in figures.text
        assert figures.text.count('class="diag"') == 9 and "held-out.csv" in figures.text
    recent = client.get(URL).text.split('id="recent-jobs"')[1].split("</details>")[0]
    assert f'evaluation?job={job}">#{job}</a>' in recent and "boss" in recent, recent
    # no such job, not a number, past a bigint: back to the page with a message, no 500
    for other in ("999999", "abc", "9" * 30):
        gone = client.get(f"{URL}/evaluation?job={other}", follow_redirects=False)
        assert f"No finished evaluation job {other[:20]}" in flash(client, gone)
    (*_, event) = _audit(db, "model.evaluated")
    assert event["job_id"] == int(job) and "metrics" not in event
    assert len(_audit(db, "model.evaluated")) == 2


def test_upload_limit_is_separate_from_the_case_body_limit(client, people, settings):
    """A data-set upload may exceed the 256 KiB case-body limit, up to max_upload_bytes."""
    sign_in(client, "boss")
    big = _csv(_rows() * 2)
    assert len(big) > settings.max_body_bytes
    r = _upload(client, f"{URL}/train", big, text_columns="message", label_columns="label",
                target_precision="2")  # fmt: skip
    assert "target_precision" in flash(client, r)  # parsed, then refused on the field
    assert len(big) < settings.max_upload_bytes
    # other console forms keep the small limit
    r = client.post(
        "/console/admin/users",
        data={"csrf_token": csrf(client), "username": "x" * (settings.max_body_bytes + 10)},
    )
    assert r.status_code == 413


def test_an_upload_over_the_limit_gets_a_page_not_json(settings, db, people):
    """The console answers an oversized upload with its error page naming the limit (the API
    keeps its JSON body), and nothing is trained."""
    from fastapi.testclient import TestClient

    from api.app import create_app

    small = settings.model_copy(update={"max_upload_bytes": 400_000})
    with TestClient(create_app(small, db=db, start_worker=False)) as client:
        sign_in(client, "boss")
        big = _csv(_rows() * 3)
        assert len(big) > small.max_upload_bytes
        r = _upload(client, f"{URL}/train", big, text_columns="message", label_columns="label")
        assert r.status_code == 413
        assert r.headers["content-type"].startswith("text/html")
        assert "The upload is too large" in r.text
        assert "exceeds 400000 bytes" in r.text
        assert "Sign out" in r.text or "boss" in r.text  # the console's frame, signed in
        page = client.get(URL).text
        assert ">running<" not in page and ">done<" not in page  # no job was started
        # an unknown console address is a page too; the API keeps JSON
        r = client.get("/console/admin/nothing-here")
        assert r.status_code == 404 and "Not found" in r.text
        # a body the form parser cannot read: the page carries the parser's own reason
        r = client.post(
            f"{URL}/train",
            content=b"--x\r\nnot a part{0}",
            headers={"content-type": "multipart/form-data; boundary=x"},
        )
        assert r.status_code == 400 and "The request was refused" in r.text, r.text[:300]
        r = client.post("/v1/models/train", content=b"x" * 500_000,
                        headers={"content-type": "application/json"})  # fmt: skip
        assert r.status_code == 413 and r.json()["error"]["code"] == "payload_too_large"


def test_api_evaluate_maps_columns_and_train_checks_label_precision(client, keys, settings):
    rows = _rows()
    reg = classification.registry(settings)
    version, _model = classification.train_model(
        [{"message": r["message"], "label": r["label"]} for r in rows[::15]],
        registry=reg,
        text_columns=["message"],
        label_columns=["label"],
        encoder="none",
    )
    held = [{"body": r["message"], "truth": r["label"]} for r in rows[7::50]]
    admin = bearer(keys["admin"])
    body = {"records": held, "text_columns": ["body"], "label_columns": ["truth"]}
    for precision, word in (
        ({"truth": {"no_such_label": 0.99}}, "no_such_label"),
        ({"label": {"order": 0.99}}, "not a label column"),
        ({"truth": {"order": 1.5}}, "between 0.5 and 1"),
    ):
        r = client.post(
            "/v1/models/train", headers=admin, json={**body, "label_precision": precision}
        )
        assert r.status_code == 422 and word in r.text, r.text
        assert r.json()["error"]["fields"][0]["field"] == "label_precision", r.text
    r = client.post(f"/v1/models/{version}/evaluate", headers=admin, json={"records": held})
    assert r.status_code == 422 and "label_columns" in r.text
    r = client.post(
        f"/v1/models/{version}/evaluate",
        headers=admin,
        json={"records": held, "text_columns": ["body"], "label_columns": ["truth"]},
    )
    assert r.status_code == 200, r.text
    assert r.json()["metrics"]["targets"]["label"]["accuracy"] > 0.8
    r = client.post(
        f"/v1/models/{version}/evaluate",
        headers=admin,
        json={"records": held, "text_columns": ["body"], "label_columns": ["missing"]},
    )
    assert r.status_code == 422 and "missing" in r.text


def test_retrain_from_the_console_reports_its_outcome(client, people, db):
    """Without the base data set-up stores, the retraining job fails and the page says what is
    missing and how to provide it; the failure is audited under the admin's name."""
    sign_in(client, "boss")
    assert "Retraining started" in flash(client, post(client, f"{URL}/retrain"))
    row = _stopped(client, "retraining", seconds=60)
    assert ">failed<" in row and "no base training data" in row, row
    assert "triage retrain --base FILE --eval FILE" in row
    (event,) = _audit(db, "model.retrain_failed")
    assert event["actor"] == "boss" and "no base training data" in event["error"]


def test_a_running_job_shows_its_progress(client, people, keys, monkeypatch):
    """While a training job runs, the API state and the console's job row carry its last
    progress message (e.g. the encoder's texts done and time left); when it ends, they go."""
    import threading

    release = threading.Event()

    def slow_train(records, *, progress, **_kw):
        progress("encoding texts with builtin:test: 512/2001 (56/s, about 27s left)")
        assert release.wait(30), "the test never released the job"
        raise ValueError("stopped by the test")

    monkeypatch.setattr(classification, "train_model", slow_train)
    admin = bearer(keys["admin"])
    body = {"records": _rows()[::100], "text_columns": ["message"], "label_columns": ["label"]}
    try:
        assert client.post("/v1/models/train", headers=admin, json=body).status_code == 202

        def progressed() -> dict | None:
            state = client.get("/v1/models/train", headers=admin).json()
            return state if state.get("progress") else None

        state = wait_until(progressed, deadline_s=30, what="progress in the job state", every=0.05)
        assert state["status"] == "running" and "512/2001" in state["progress"]
        assert state["progress_at"]
        sign_in(client, "boss")
        row = _job_row(client, "training")
        assert ">running<" in row and "512/2001 (56/s, about 27s left)" in row, row
    finally:
        release.set()
    row = _stopped(client, "training", seconds=30)
    assert ">failed<" in row and "stopped by the test" in row and "512/2001" not in row
    state = client.get("/v1/models/train", headers=admin).json()
    assert state["status"] == "failed" and "progress" not in state and "progress_at" not in state


def test_cancel_a_running_job_from_the_console(client, people, keys, db, monkeypatch):
    """A running job's row has a Cancel button (admins); pressing it shows who asked, and the
    job ends cancelled at its next progress line. Auditors see no button."""
    import time

    def reporting_train(records, *, progress, **_kw):
        for i in range(1500):
            progress(f"encoding texts with builtin:test: {i}/1500")
            time.sleep(0.02)
        raise AssertionError("the job was never cancelled")

    monkeypatch.setattr(classification, "train_model", reporting_train)
    body = {"records": _rows()[::100], "text_columns": ["message"], "label_columns": ["label"]}
    r = client.post("/v1/models/train", headers=bearer(keys["admin"]), json=body)
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]
    sign_in(client, "auditor")
    assert "/cancel" not in _job_row(client, "training")
    sign_in(client, "boss")
    row = _job_row(client, "training")
    assert f'action="{URL}/jobs/{job_id}/cancel"' in row, row
    message = flash(client, post(client, f"{URL}/jobs/{job_id}/cancel"))
    assert message == (
        f"ok: Cancel requested for job {job_id} (train): it stops at its next progress line."
    )
    row = _stopped(client, "training", seconds=30)
    assert ">cancelled<" in row and "cancelled by boss" in row, row
    again = flash(client, post(client, f"{URL}/jobs/{job_id}/cancel"))
    assert again.startswith("error:") and "has ended (cancelled)" in again
    for other in ("abc", "9" * 30):  # names no job: a message on the page, no error page
        gone = flash(client, post(client, f"{URL}/jobs/{other}/cancel"))
        assert gone.startswith("error:") and "not found" in gone, gone
    (event,) = _audit(db, "model.job_cancel_requested")
    assert event["actor"] == "boss" and event["job_id"] == job_id


def test_profile_page_shows_what_a_version_relied_on(client, people, db, settings, with_model):
    """Auditors and admins open, from the models page, what a version relied on over its
    recent cases: the same figures as GET /v1/models/{version}/profile."""
    submit_simulated(db, settings, 8, seed=41)
    Worker(db, settings, default_pipeline(settings)).run_once()
    sign_in(client, "auditor")
    link = f"{URL}/{with_model}/profile"
    assert f'href="{link}"' in client.get(URL).text
    page = client.get(f"{link}?top=3")
    assert page.status_code == 200
    assert "over the 8 most recent cases" in page.text.lower()
    expected = classification.model_profile(settings, db, with_model, top=3)
    for target, labels in expected.targets.items():
        section = page.text.split(f'id="t-{target}"')[1].split("</section>")[0]
        for lp in labels:
            row = section.split(f'<th scope="row">{lp.label}</th>')[1].split("</tr>")[0]
            assert f"<td>{lp.cases}</td>" in row and f"<td>{lp.abstained}</td>" in row
            shown = re.findall(r"<strong>([^<]+)</strong> ([+-]\d+\.\d\d) · (\d+)", row)
            assert shown == [
                (
                    html.escape(e.feature + (f" = {e.value}" if e.value is not None else "")),
                    f"{e.weight:+.2f}",
                    str(e.cases),
                )
                for e in lp.evidence
            ]
    # values out of range fall back to the defaults instead of failing
    fallback = client.get(f"{link}?limit=%C2%B2&top=999").text  # "²" is a digit to str
    assert 'name="limit" type="number" min="1" max="1000" value="200"' in fallback
    assert 'name="top" type="number" min="1" max="50" value="6"' in fallback
    gone = client.get(f"{URL}/v20990101T000000000000Z-deadbeef/profile", follow_redirects=False)
    assert "no model version" in flash(client, gone)
    sign_in(client, "agent")
    assert client.get(link).status_code == 403


def test_operating_points_page_previews_and_registers(client, people, db, settings, with_model):
    """From the models page, auditors read a version's per-label operating points; admins
    preview other settings beside the current figures (nothing written) and register them as
    a derived version (audited with their name), or get the refused field named."""
    reg = classification.registry(settings)
    meta = reg.verify(with_model)
    page_url = f"{URL}/{with_model}/operating-points"
    sign_in(client, "auditor")
    assert f'href="{page_url}"' in client.get(URL).text
    page = client.get(page_url)
    assert page.status_code == 200
    assert "<form" not in page.text.split("</header>")[1]  # read only for auditors
    for target, labels in meta["thresholds"].items():
        section = page.text.split(f'id="t-{target}"')[1].split("</section>")[0]
        for label, point in labels.items():
            row = section.split(f"{label}</th>")[1].split("</tr>")[0]
            shown = "never" if point["threshold"] > 1 else f"{point['threshold']:.3f}"
            assert f"<td>{shown}</td>" in row and f"<td>{point['n_predicted']}</td>" in row
    assert post(client, page_url, {"intent": "register"}).status_code == 403
    sign_in(client, "agent")
    assert client.get(page_url).status_code == 403

    sign_in(client, "boss")
    form = client.get(page_url).text
    assert (
        'name="target_precision" type="number" min="0.51" max="0.99" step="0.01" value="0.95"'
        in form
    )
    assert 'id="o-pooling" name="threshold_pooling" type="checkbox" checked' in form
    fields = {"target_precision": "0.8", "threshold_pooling": "on", "label_precision": ""}
    preview = post(client, page_url, {**fields, "intent": "preview"})
    assert preview.status_code == 200 and "Preview: nothing registered yet" in preview.text
    assert 'value="0.8"' in preview.text  # the form keeps what was previewed
    expected = rethreshold(reg, with_model, target_precision=0.8, dry_run=True).changed_labels()
    assert preview.text.count('<tr class="changed">') == sum(map(len, expected.values())) > 0
    assert [m["version"] for m in reg.versions()] == [with_model]
    assert _audit(db, "model.rethresholded") == []

    for bad, word in (
        ({"target_precision": "0.95", "threshold_pooling": "on"}, "nothing would change"),
        ({"target_precision": "1.5", "threshold_pooling": "on"}, "target_precision"),
        ({"label_precision": "queue:no_such_queue=0.9"}, "no_such_queue"),
        ({"label_precision": "queue=0.9"}, "TARGET:LABEL=PRECISION"),
    ):
        r = post(client, page_url, {**bad, "intent": "register"})
        message = flash(client, r)
        assert message.startswith("error:") and word in message, (bad, message)
    assert [m["version"] for m in reg.versions()] == [with_model]

    done = post(client, page_url, {**fields, "intent": "register", "activate": "on"})
    message = flash(client, done)
    derived = reg.active_version()
    assert derived != with_model and f"Registered {derived} and activated it" in message
    events = _audit(db, "model.rethresholded")
    assert len(events) == 1 and events[0]["parent"] == with_model
    assert events[0]["actor"] == "boss"
    listing = client.get(URL).text
    assert f'thresholds re-chosen from <span class="mono">{with_model}</span>' in listing
    derived_page = client.get(f"{URL}/{derived}/operating-points").text
    assert f'href="{page_url}"' in derived_page  # links back to its parent
    assert "Target precision <strong>0.8</strong>" in derived_page
    # an evaluation that finds the operating points failing links to this page
    with classification.eval_data_path(settings).open(encoding="utf-8") as fh:
        records = [json.loads(line) for line in fh if line.strip()][:200]
    queues = sorted({r["queue"] for r in records})
    for r in records:  # every label moved to the next queue: confidently wrong
        r["queue"] = queues[(queues.index(r["queue"]) + 1) % len(queues)]
    content = "\n".join(json.dumps(r) for r in records).encode()
    ev = _upload(client, f"{URL}/evaluate", content, "moved.jsonl", version=derived,
                 label_columns="queue")  # fmt: skip
    assert ev.status_code == 200, ev.text
    drift = ev.text.split("<strong>Drift:</strong>")[1].split("</div>")[0]
    assert f'href="{URL}/{derived}/operating-points"' in drift
    gone = client.get(
        f"{URL}/v20990101T000000000000Z-deadbeef/operating-points", follow_redirects=False
    )
    assert "unknown model version" in flash(client, gone)
