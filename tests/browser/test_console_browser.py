"""The console in a real browser (headless Debian Chromium): the three user journeys of
issue 6, keyboard use, and a screenshot of every main page."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from sqlalchemy import select

from tests.browser.conftest import shot, sign_in
from triage.db import Database
from triage.models import AuditEvent

pytestmark = pytest.mark.browser


def _events(server, action: str) -> list[dict]:
    db = Database(server["settings"])
    try:
        with db.read() as s:
            return [
                {"actor": e.actor_id, "case": e.case_id, **json.loads(e.payload)}
                for e in s.scalars(select(AuditEvent).where(AuditEvent.action == action))
            ]
    finally:
        db.dispose()


def test_agent_overrides_routing_and_sends_an_edited_draft(page, demo_server):
    sign_in(page, demo_server, "agent")
    assert page.get_by_role("heading", name="Case queue").is_visible()
    shot(page, "01-agent-queue")
    page.locator("a.caselink").first.click()
    page.wait_for_load_state()
    case_id = page.url.rsplit("/", 1)[1]
    assert page.get_by_role("heading", name="Suggestion").is_visible()
    shot(page, "02-agent-case")

    # why the demo model routed it: closed until asked, then one table per field
    why = page.locator("details.why")
    assert not page.locator("table.why-table").first.is_visible()
    why.locator("summary").click()
    tables = page.locator("table.why-table")
    assert tables.count() == 3 and tables.first.is_visible()
    assert re.match(r"Queue: \S+ \d+% over ", tables.first.locator("caption").inner_text())
    assert tables.first.locator("tbody tr").count() >= 3
    shot(page, "02b-agent-case-why")

    override = page.locator("details.override")
    if override.get_attribute("open") is None:
        override.locator("summary").click()
    queue_box = override.get_by_label("Queue", exact=True)
    options = queue_box.locator("option").evaluate_all("els => els.map(e => e.value)")
    current = page.locator("table.routing tbody tr").first.locator("td").last.inner_text()
    queue_box.select_option(next(o for o in options[1:] if o != current))
    override.get_by_label(re.compile("^Reason")).fill("customer handles this through billing")
    override.get_by_role("button", name="Save override").click()
    flash = page.locator(".flash")
    assert "Override saved: queue" in flash.inner_text()

    box = page.get_by_label(re.compile("^Message to"))
    draft = box.input_value()
    box.fill(draft + "\n\nKind regards,\nThe service team")
    page.get_by_role("button", name="Send message").click()
    assert "Message sent" in page.locator(".flash").inner_text()
    sent = [e for e in _events(demo_server, "case.message_sent") if e["case"] == case_id]
    assert sent and sent[-1]["edited"] is True and sent[-1]["actor"] == "agent"
    assert sent[-1]["text"].endswith("Kind regards,\nThe service team")
    shot(page, "03-agent-case-after-send")


def test_agent_claims_an_unclaimed_case_notes_it_and_finds_it_under_held_by_me(page, demo_server):
    sign_in(page, demo_server, "agent")
    page.get_by_label("Held by").select_option("nobody")
    page.get_by_role("button", name="Apply").click()
    page.wait_for_load_state()
    page.locator("a.caselink").first.click()
    page.wait_for_load_state()
    case_url = page.url
    page.get_by_role("button", name="Accept suggestion and claim").click()
    assert "claim and start work" in page.locator(".flash").inner_text().lower()
    assert page.locator("#assignee").inner_text() == "held by agent"

    page.get_by_label(re.compile("^Add a note")).fill("Asked the warehouse for a recount.")
    page.get_by_role("button", name="Add note").click()
    assert "Note added to the case." in page.locator(".flash").inner_text()
    notes = page.locator("#notes")
    assert "Asked the warehouse for a recount." in notes.inner_text()
    assert "by agent" in notes.inner_text()
    shot(page, "03b-agent-case-claimed-with-note")

    page.goto("/console/queue")
    page.get_by_label("Held by").select_option("me")
    page.get_by_role("button", name="Apply").click()
    page.wait_for_load_state()
    mine = page.locator("table.queue tbody tr")
    hrefs = mine.locator("a.caselink").evaluate_all("els => els.map(e => e.href)")
    assert case_url in hrefs  # (other journeys on this server may hold cases too)
    assert mine.count() == len(hrefs) and all(
        mine.nth(i).get_by_text("you", exact=True).is_visible() for i in range(mine.count())
    )


def test_admin_dispatches_unclaimed_cases_to_an_agent_from_the_queue(page, demo_server):
    sign_in(page, demo_server, "admin")
    page.get_by_label("Held by").select_option("nobody")
    page.get_by_role("button", name="Apply").click()
    page.wait_for_load_state()
    rows = page.locator("table.queue tbody tr")
    picked = [
        rows.nth(i).locator("a.caselink").get_attribute("href").rsplit("/", 1)[1] for i in (0, 1)
    ]
    for i in (0, 1):
        rows.nth(i).locator('input[name="case_id"]').check()
    page.get_by_label("Assign selected to").select_option("agent")
    page.get_by_label(re.compile("^Reason")).last.fill("morning dispatch")
    shot(page, "03c-admin-bulk-assign")
    page.get_by_role("button", name="Assign", exact=True).click()
    page.wait_for_load_state()
    assert page.locator(".flash").inner_text().strip() == "Assigned 2 case(s) to agent."
    assert "held=nobody" in page.url  # back on the same filtered queue
    assigned = {e["case"]: e for e in _events(demo_server, "case.assigned")}
    for case_id in picked:
        assert assigned[case_id]["to"] == "agent" and assigned[case_id]["actor"] == "admin"
        assert assigned[case_id]["reason"] == "morning dispatch"

    # "select all" ticks every case box on the page (the remaining unclaimed ones)
    boxes = page.locator('input[name="case_id"]')
    assert boxes.count() > 0
    page.get_by_label("Select every case on this page you can assign").check()
    assert all(boxes.nth(i).is_checked() for i in range(boxes.count()))

    page.goto(f"/console/cases/{picked[0]}")
    assert page.locator("#assignee").inner_text() == "held by agent"


def test_approver_approves_and_admin_is_refused_on_own_request(page, demo_server):
    sign_in(page, demo_server, "approver")
    assert page.get_by_role("heading", name="Approval inbox").is_visible()
    shot(page, "04-approver-inbox")
    card = page.locator("article.approval:not(.blocked)").first
    action_id = card.get_attribute("id").removeprefix("a-")
    card.get_by_label(re.compile("^Reason")).fill("proof of delivery checked")
    card.get_by_role("button", name="Approve").click()
    assert "Approved." in page.locator(".flash").inner_text()
    approved = [e for e in _events(demo_server, "action.approved") if e["action_id"] == action_id]
    assert approved and approved[0]["actor"] == "approver"

    # The admin (who may request actions and approve) requests a credit note or refund, then
    # finds it in the inbox marked as not approvable, with the segregation-of-duties reason.
    page.context.clear_cookies()
    sign_in(page, demo_server, "admin")
    page.goto("/console/queue?status=awaiting_review")
    requested = None
    for href in page.locator("a.caselink").evaluate_all("els => els.map(e => e.href)"):
        page.goto(href)
        credit = page.locator(
            "article.action-proposed", has_text=re.compile("Issue credit note|Refund")
        )
        if not credit.count():
            continue
        credit.first.get_by_role("button", name="Request this action").click()
        requested = page.locator(".flash").inner_text()
        if "pending_approval" in requested:
            break  # a credit above the auto-execution limits: it needs an approver
    assert requested and "the policy says: pending_approval" in requested
    page.goto("/console/approvals")
    mine = page.locator("article.approval", has_text="Requested by admin").last
    assert mine.get_by_text("You cannot approve this action.").is_visible()
    assert "request" in mine.locator(".refusal").inner_text().lower()
    assert mine.get_by_role("button", name="Approve").count() == 0
    mine.scroll_into_view_if_needed()
    shot(page, "05-admin-sod-refusal")


def test_auditor_finds_decision_provenance_verifies_and_exports(page, demo_server):
    sign_in(page, demo_server, "auditor")
    page.get_by_label("Action").fill("suggestion.created")
    page.get_by_role("button", name="Search").click()
    rows = page.locator("table.audit tbody tr")
    assert rows.count() > 0 and "suggestion.created" in rows.first.inner_text()
    shot(page, "06-auditor-search")
    rows.first.locator("a").first.click()
    page.wait_for_load_state()
    assert page.get_by_role("heading", name=re.compile("^Provenance")).is_visible()
    for text in (
        "Classifier",
        "Advisor",
        "Output contract",
        "Retrieved sources",
        "Who decided what, when",
    ):
        assert page.get_by_text(text, exact=True).first.is_visible(), text
    shot(page, "07-auditor-provenance")

    page.goto("/console/audit")
    page.get_by_role("link", name="Verify the whole chain now").click()
    assert "Chain verified" in page.locator(".flash").inner_text()
    assert "Verified intact" in page.locator("#chain-status").inner_text()
    with page.expect_download() as dl:
        page.get_by_role("link", name="Export matching events as CSV").click()
    header = Path(dl.value.path()).read_text(encoding="utf-8").splitlines()[0]
    assert header == "seq,ts,actor_type,actor_id,actor_role,case_id,action,payload,prev_hash,hash"
    with page.expect_download() as dl:
        page.get_by_role("link", name="Export matching events as JSONL").click()
    first = json.loads(Path(dl.value.path()).read_text(encoding="utf-8").splitlines()[0])
    assert first["seq"] == 1 and len(first["hash"]) == 64
    shot(page, "08-auditor-audit")
    page.get_by_role("link", name="Segregation-of-duties report").click()
    assert "0 finding(s)" in page.locator("#sod-summary").inner_text()
    shot(page, "09-auditor-sod")


def test_dashboard_renders_charts(page, demo_server):
    sign_in(page, demo_server, "auditor")
    page.goto("/console/dashboard")
    assert page.locator("svg.chart").count() >= 8
    assert page.locator(".kpi").first.inner_text().replace(",", "").isdigit()
    shot(page, "10-dashboard")


def test_lead_reads_the_team_page(page, demo_server):
    sign_in(page, demo_server, "admin")
    page.get_by_role("link", name="Team", exact=True).click()
    page.wait_for_load_state()
    assert page.get_by_role("heading", name="Team").is_visible()
    rows = page.locator("table.team tbody tr")
    people = {rows.nth(i).locator("th").inner_text(): rows.nth(i) for i in range(rows.count())}
    # the demo's lead handed the agent the three most urgent cases; the demo agent resolved
    # the history and holds the live cases it asked a payback for
    assert {"agent", "demo-agent", "demo-admin"} <= set(people)
    held = int(people["agent"].locator("td").first.inner_text())
    assert held >= 3
    shot(page, "10b-team")
    people["agent"].get_by_role("link", name="agent").click()
    page.wait_for_load_state()
    assert "held=agent" in page.url
    assert page.locator("table.queue tbody tr").count() == held


def test_keyboard_only_sign_in_and_navigation(page, demo_server):
    page.goto("/console/login")
    # the username field has autofocus; Tab order is username -> password -> button
    assert page.evaluate("document.activeElement.id") == "username"
    page.keyboard.type("agent")
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.id") == "password"
    page.keyboard.type(demo_server["passwords"]["agent"])
    page.keyboard.press("Enter")
    page.wait_for_url(re.compile("/console/queue"))
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.className") == "skip"
    page.keyboard.press("Enter")
    assert page.evaluate("document.activeElement.id") == "main"
    page.keyboard.press("/")
    assert page.evaluate("document.activeElement.id") == "q"
    # every visible form control on the main pages has an accessible name
    for path in ("/console/queue", page.locator("a.caselink").first.get_attribute("href")):
        page.goto(path)
        unnamed = page.evaluate(
            """() => [...document.querySelectorAll('input:not([type=hidden]), select, textarea')]
                 .filter(el => !(el.labels && el.labels.length) && !el.getAttribute('aria-label'))
                 .map(el => el.name || el.id)"""
        )
        assert unnamed == [], (path, unnamed)
        duplicate_ids = page.evaluate(
            """() => { const seen = {}; for (const el of document.querySelectorAll('[id]'))
                 seen[el.id] = (seen[el.id] || 0) + 1;
                 return Object.keys(seen).filter(k => seen[k] > 1); }"""
        )
        assert duplicate_ids == [], (path, duplicate_ids)
        assert page.locator("h1").count() == 1


def test_admin_manages_users_from_the_keyboard(page, demo_server):
    sign_in(page, demo_server, "admin")
    page.get_by_role("link", name="Users").click()
    page.wait_for_url(re.compile("/console/admin/users"))
    assert page.get_by_role("heading", name="Console users").is_visible()
    unnamed = page.evaluate(
        """() => [...document.querySelectorAll('input:not([type=hidden]), select, textarea')]
             .filter(el => !(el.labels && el.labels.length) && !el.getAttribute('aria-label'))
             .map(el => el.name || el.id)"""
    )
    assert unnamed == []
    # the admin's own row has no disable button
    assert page.locator("#u-admin").get_by_role("button", name=re.compile("^Disable")).count() == 0
    # create a user with the keyboard only: focus the first field, then type and Tab
    page.get_by_label("Username").focus()
    page.keyboard.type("kbd-user")
    page.keyboard.press("Tab")
    page.keyboard.press("ArrowDown")  # role: agent -> approver
    page.keyboard.press("Tab")
    page.keyboard.type("finance_approver")
    page.keyboard.press("Tab")
    page.keyboard.type("keyboard only pass")
    page.keyboard.press("Tab")
    page.keyboard.type("keyboard only pass")
    page.keyboard.press("Enter")
    page.wait_for_load_state()
    assert "User kbd-user created (approver)" in page.locator(".flash").inner_text()
    shot(page, "11-admin-users")
    # disable it (the button asks for confirmation first)
    page.once("dialog", lambda d: d.accept())
    page.locator("#u-kbd-user").get_by_role("button", name="Disable kbd-user").click()
    page.wait_for_load_state()
    assert "kbd-user is disabled" in page.locator(".flash").inner_text()
    (created,) = [e for e in _events(demo_server, "user.created") if e["username"] == "kbd-user"]
    assert created["actor"] == "admin" and created["authorities"] == ["finance_approver"]
    assert [e["actor"] for e in _events(demo_server, "user.disabled")] == ["admin"]


def test_admin_evaluates_the_demo_model_from_an_uploaded_file(page, demo_server):
    from triage import classification

    sign_in(page, demo_server, "admin")
    page.get_by_role("link", name="Models").click()
    page.wait_for_url(re.compile("/console/admin/models"))
    assert "Active version" in page.locator("#active-version").inner_text()
    assert page.locator("#versions .badge", has_text="active").count() == 1
    unnamed = page.evaluate(
        """() => [...document.querySelectorAll('input:not([type=hidden]), select, textarea')]
             .filter(el => !(el.labels && el.labels.length) && !el.getAttribute('aria-label'))
             .map(el => el.name || el.id)"""
    )
    assert unnamed == []
    shot(page, "12-models")
    page.set_input_files("#e-file", str(classification.eval_data_path(demo_server["settings"])))
    page.get_by_label("Label columns").last.fill("queue, priority")
    page.get_by_role("button", name="Evaluate").click()
    page.wait_for_url(re.compile("/console/admin/models/evaluate"))
    assert page.get_by_role("heading", name="queue").is_visible()
    assert page.get_by_role("heading", name="priority").is_visible()
    assert page.locator("svg.chart").count() == 2
    shot(page, "13-model-evaluation")
    (event,) = _events(demo_server, "model.evaluated")
    assert event["actor"] == "admin" and event["targets"] == ["queue", "priority"]


def _open_active_version_page(page, demo_server, user: str, link: str) -> None:
    """Sign in as ``user`` and follow the active version's ``link`` on the models page."""
    sign_in(page, demo_server, user)
    page.goto("/console/admin/models")
    page.locator("#versions tr", has=page.locator(".badge", has_text="active")).get_by_role(
        "link", name=re.compile(f"^{re.escape(link)}")
    ).click()
    page.wait_for_load_state()


def test_auditor_reads_what_the_active_model_relied_on(page, demo_server):
    from triage import classification

    _open_active_version_page(page, demo_server, "auditor", "What it relied on")
    assert page.get_by_role("heading", name=re.compile(r"^What v\S+ relied on$")).is_visible()
    page.get_by_label("Evidence per label").fill("3")
    page.get_by_role("button", name="Show").click()
    page.wait_for_load_state()
    assert "top=3" in page.url
    version = page.locator("h1 .mono").inner_text()
    settings = demo_server["settings"]
    expected = classification.model_profile(settings, Database(settings), version, top=3)
    assert set(expected.targets) == {"category", "queue", "priority"}
    for target, labels in expected.targets.items():
        rows = page.locator(f"#t-{target} tbody tr")
        assert rows.count() == len(labels), target
        for i, lp in enumerate(labels):
            row = rows.nth(i)
            assert row.locator("th").inner_text() == lp.label
            items = row.locator("td").last.locator("span.nowrap")
            assert items.count() == len(lp.evidence), (target, row.inner_text())
            shown = [items.nth(j).locator("strong").inner_text() for j in range(items.count())]
            assert shown == [
                e.feature + (f" = {e.value}" if e.value is not None else "") for e in lp.evidence
            ]
    shot(page, "14-auditor-model-profile")


def test_admin_previews_and_registers_other_operating_points(page, demo_server):
    """From the models page to a version's operating points: preview a lower target precision
    (highlighted old -> new rows, nothing registered), then register and activate it."""
    from triage import classification

    reg = classification.registry(demo_server["settings"])
    before = [m["version"] for m in reg.versions()]
    _open_active_version_page(page, demo_server, "admin", "Operating points")
    assert page.get_by_role("heading", name=re.compile(r"^Operating points of v\S+")).is_visible()
    parent = page.locator("h1 .mono").inner_text()
    assert page.locator("#t-queue tbody tr").count() == len(
        reg.verify(parent)["thresholds"]["queue"]
    )
    shot(page, "15-operating-points")
    page.get_by_label("Target precision").fill("0.8")
    page.get_by_role("button", name="Preview").click()
    page.wait_for_load_state()
    assert page.get_by_role("heading", name="Preview: nothing registered yet").is_visible()
    assert page.locator("tr.changed").count() >= 1
    assert page.get_by_label("Target precision").input_value() == "0.8"
    shot(page, "16-operating-points-preview")
    assert [m["version"] for m in reg.versions()] == before
    page.get_by_label("Activate when registered").check()
    page.get_by_role("button", name="Register as a new version").click()
    page.wait_for_url(re.compile("/console/admin/models"))
    assert "and activated it" in page.locator(".flash").inner_text()
    derived = reg.active_version()
    assert derived not in before and reg.verify(derived)["derived_from"]["version"] == parent
    (event,) = _events(demo_server, "model.rethresholded")
    assert event["actor"] == "admin" and event["parent"] == parent
    reg.activate(parent)  # leave the demo's model active for the module's other tests
