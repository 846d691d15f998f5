"""The case page says why the classifier routed the case: the model's evidence per field (words
of the case, fields, against the runner-up) or the fixed rules that decided."""

from __future__ import annotations

import html
import re
import shutil

from contracts.case import CaseIn
from tests.console.conftest import sign_in, triaged_case
from tests.support import sample_case, submit_simulated
from triage import cases, classification
from triage.stages import default_pipeline
from triage.worker import Worker


def _why_section(page: str) -> str:
    found = re.search(r'<details class="why" id="why">(.*?)</details>', page, re.S)
    assert found, "no explanation on the case page"
    return found.group(1)


def test_a_model_routed_case_shows_its_evidence(client, db, settings, people, with_model):
    (case_id,) = submit_simulated(db, settings, 1, seed=31)
    Worker(db, settings, default_pipeline(settings)).run_once()
    with db.read() as s:
        row = cases.get(s, case_id)
        suggestion = cases.current_suggestion(s, row)
        assert suggestion is not None
        view = suggestion.body["classifier"]
        # what the model read: exception type, title, message, notes, error
        text = classification.case_record(CaseIn.model_validate(row.payload))["text"].lower()
    sign_in(client, "agent")
    why = html.unescape(_why_section(client.get(f"/console/cases/{case_id}").text))
    assert f"Model {with_model}" in why
    for target in ("Queue", "Category", "Priority"):
        pred = view[target.lower()]
        top = max(pred["probabilities"], key=pred["probabilities"].__getitem__)
        assert re.search(rf"{target}: <strong>{re.escape(top)}</strong> \d+% over ", why), target
    quoted = re.findall(r"“([^”]+)”", why)
    assert quoted, "no word or phrase of the case among the evidence"
    # each quoted word or phrase is the case's own (any number shown as #)
    masked = " ".join(re.sub(r"\d+", "#", text).split())
    assert all(word in masked for word in quoted), quoted
    assert why.count("Total") == 3
    assert "did not come from this model" not in why  # recomputation matches what was stored


def test_a_rules_routed_case_lists_the_rules(client, db, settings, people):
    case_id = triaged_case(
        db,
        settings,
        7,
        exception_type="shortage",
        references=sample_case()["references"] | {"customer": {"id": "C-7", "tier": "A"}},
    )
    sign_in(client, "auditor")
    why = html.unescape(_why_section(client.get(f"/console/cases/{case_id}").text))
    assert "fixed rules (rules-1) decided" in why
    assert "shortage cases start at P2; tier A customer: one level higher" in why
    assert "shortage cases go to queue" in why


def test_a_model_version_gone_is_said_not_failed(client, db, settings, people, with_model):
    (case_id,) = submit_simulated(db, settings, 1, seed=32)
    Worker(db, settings, default_pipeline(settings)).run_once()
    shutil.rmtree(settings.data_dir / "models" / "versions" / with_model)
    sign_in(client, "agent")
    page = client.get(f"/console/cases/{case_id}")
    assert page.status_code == 200
    why = html.unescape(_why_section(page.text))
    assert f"No explanation: model version {with_model}" in why
    assert "no longer in the registry" in why
