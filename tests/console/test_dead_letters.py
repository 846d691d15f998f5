"""Console dead letters (admins only): failed cases, failed jobs (job engine) and dead webhook
deliveries are listed and re-driven from one page, audited with the admin as actor."""

from __future__ import annotations

import re

from sqlalchemy import select, update

from contracts.case import CaseIn
from tests.console.conftest import csrf, flash, post, sign_in
from tests.support import sample_case
from triage import audit, cases, webhooks
from triage.models import AuditEvent, Case, OutboxMessage
from triage.pipeline import Pipeline, RuleClassifier, run_case

URL = "/console/admin/dead-letters"
ORCH = audit.Actor(audit.ActorType.integration, "orch", "orchestrator")


class Broken(RuleClassifier):
    def classify(self, case):
        raise RuntimeError("classifier exploded")


def _failed_case(db, settings) -> str:
    with db.write() as s:
        case_id = cases.submit(
            s, CaseIn.model_validate(sample_case(77)), actor=ORCH, settings=settings
        ).case.id
    one_try = settings.model_copy(update={"max_triage_attempts": 1})
    assert run_case(db, case_id, Pipeline(classifier=Broken()), one_try, worker_id="w").status == (
        "failed"
    )
    return case_id


def _dead_webhook(db) -> int:
    with db.write() as s:
        webhooks.enqueue(
            s,
            event_id="case.triaged:x:1",
            kind="case.triaged",
            case_id=None,
            target_url="https://erp.example/hook",
            body={"event": "case.triaged"},
        )
        s.flush()
        s.execute(update(OutboxMessage).values(status="dead", attempts=8, last_error="HTTP 500"))
        return int(s.scalar(select(OutboxMessage.id)))


def test_admin_sees_and_redrives_failed_cases_and_dead_webhooks(client, people, db, settings):
    case_id = _failed_case(db, settings)
    hook_id = _dead_webhook(db)

    sign_in(client, "agent")
    assert client.get(URL).status_code == 403
    assert post(client, f"{URL}/case/{case_id}/retry").status_code == 403

    sign_in(client, "boss")
    # '²' is a digit to str.isdigit, not to int(): not found, not a 500
    assert post(client, f"{URL}/webhook/%C2%B2/retry").status_code == 404
    page = client.get(URL)
    assert page.status_code == 200
    assert f'id="case-{case_id}"' in page.text and "classifier exploded" in page.text
    assert f'id="hook-{hook_id}"' in page.text and "HTTP 500" in page.text
    assert "embedded engine has no separate jobs" in page.text
    ids = re.findall(r'<(?:input|select|textarea)[^>]*\bid="([^"]+)"', page.text)
    for i in ids:
        assert f'<label for="{i}"' in page.text, i
    token = csrf(client)
    for action in (f"{URL}/case/{case_id}/retry", f"{URL}/webhook/{hook_id}/retry"):
        form = re.search(rf'<form method="post" action="{action}".*?</form>', page.text, re.S)
        assert form and f'name="csrf_token" value="{token}"' in form.group(0), action

    r = post(client, f"{URL}/case/{case_id}/retry", {"reason": "classifier fixed"})
    assert flash(client, r).startswith("ok: Case")
    with db.read() as s:
        row = cases.get(s, case_id)
        assert (row.status, row.triage_attempts) == ("received", 0)
        ev = s.scalars(
            select(AuditEvent).where(
                AuditEvent.case_id == case_id, AuditEvent.action == "case.received"
            )
        ).all()
        assert ev[-1].actor_id == "boss" and "classifier fixed" in ev[-1].payload

    r = post(client, f"{URL}/webhook/{hook_id}/retry")
    assert flash(client, r).startswith("ok: Delivery")
    with db.read() as s:
        assert s.get(OutboxMessage, hook_id).status == "pending"
        assert (
            s.scalar(select(AuditEvent.actor_id).where(AuditEvent.action == "webhook.replayed"))
            == "boss"
        )

    # a second re-drive of the same case is refused with the reason, nothing changes
    r = post(client, f"{URL}/case/{case_id}/retry")
    assert flash(client, r).startswith("error:")
    assert post(client, f"{URL}/job/1/retry").status_code == 404  # embedded: no jobs
    with db.read() as s:
        assert s.scalar(select(Case.status).where(Case.id == case_id)) == "received"
        assert audit.verify(s).intact
