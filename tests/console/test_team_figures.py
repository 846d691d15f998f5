"""Per-person figures on the console's Team page (``dashboard.team_figures``): what each
person holds now and did in the range, counted from the audit trail; who sees whose figures."""

from __future__ import annotations

import re

from sqlalchemy import update

from tests.console.conftest import flash, post, sign_in
from tests.console.test_workflows import _request_credit
from triage import cases, dashboard
from triage.models import Case

WEEK = dashboard.DateRange.last_days(7)


def _work(client, case_ids, db) -> None:
    """agent: claims case 0 (overrides it, notes it), resolves case 1, requests the credit
    note of case 2, which fin1 approves, and escalates case 2; boss (admin) then assigns case 2
    back to agent; case 0 is made late."""
    sign_in(client, "agent")
    post(client, f"/console/cases/{case_ids[0]}/transition", {"to": "in_review"})
    post(client, f"/console/cases/{case_ids[0]}/override", {"queue": "billing", "reason": "rma"})
    post(client, f"/console/cases/{case_ids[0]}/note", {"text": "called the warehouse"})
    credit = _request_credit(client, db, case_ids[2])
    sign_in(client, "fin1")
    approved = post(
        client,
        f"/console/actions/{credit.id}/approve",
        {"action_hash": credit.action_hash, "reason": "checked the POD"},
    )
    assert flash(client, approved).startswith("ok"), flash(client, approved)
    sign_in(client, "agent")
    post(
        client,
        f"/console/cases/{case_ids[1]}/transition",
        {"to": "resolved", "resolution": "credited"},
    )
    post(
        client,
        f"/console/cases/{case_ids[2]}/transition",
        {"to": "escalated", "reason": "needs finance"},
    )
    sign_in(client, "boss")
    post(client, f"/console/cases/{case_ids[2]}/assign", {"assignee": "agent"})
    with db.write() as s:
        s.execute(
            update(Case)
            .where(Case.id == case_ids[0])
            .values(resolution_due_at="2020-01-01T00:00:00.000000Z")
        )
        cases.flag_sla_breaches(s)


def test_team_figures_count_each_persons_work(client, people, case_ids, db):
    _work(client, case_ids, db)
    with db.read() as s:
        rows = {t.person: t for t in dashboard.team_figures(s, WEEK)}
        # people only: not the pipeline, the orchestrator or the SLA sweeper
        assert set(rows) == {"agent", "boss", "fin1"}
        assert rows["fin1"].done == {"approvals": 1} and rows["fin1"].holding == 0
        agent = rows["agent"]
        assert (agent.holding, agent.holding_breached) == (2, 1)
        assert agent.done == {
            "overrides": 1,
            "notes": 1,
            "requested": 1,
            "resolved": 1,
            "escalated": 1,
        }
        assert agent.resolve_time is not None and agent.resolve_time.n == 1
        assert agent.resolve_time.p50 is not None and agent.resolve_time.p50 >= 0
        boss = rows["boss"]
        assert (boss.holding, boss.done, boss.resolve_time) == (0, {"assigned": 1}, None)

        only = dashboard.team_figures(s, WEEK, person="boss")
        assert [t.person for t in only] == ["boss"]
        # a range before any of it: what people hold now still shows, nothing done
        past = dashboard.team_figures(s, dashboard.DateRange.from_dates("2020-01-01", "2020-01-31"))
        assert [(t.person, t.holding, t.done) for t in past] == [("agent", 2, {})]


def _team_page(client) -> str:
    page = client.get("/console/team")
    assert page.status_code == 200, page.text
    return page.text.split("<h1>")[1].split("</section>")[0]


def test_leads_and_auditors_see_the_team_others_their_own_row(client, people, case_ids, db):
    _work(client, case_ids, db)
    for who, link in (("boss", True), ("auditor", False)):
        sign_in(client, who)
        assert 'href="/console/team?from=' in client.get("/console/dashboard").text
        table = _team_page(client)
        assert table.startswith("Team</h1>")
        # a link to the person's cases for those who can open the queue
        assert ('<a href="/console/queue?held=agent">agent</a>' in table) is link
        assert '<th scope="row">boss</th>' in table
    sign_in(client, "agent")
    table = _team_page(client)
    assert table.startswith("My work</h1>") and ">agent</a>" in table
    assert "boss" not in table
    sign_in(client, "fin1")  # their approval, nobody else's figures
    table = _team_page(client)
    assert '<th scope="row">fin1</th>' in table and "agent" not in table
    sign_in(client, "fin2")  # did nothing: an empty table
    table = _team_page(client)
    assert "Nobody held or worked a case in this range." in table and "fin1" not in table


def test_the_team_page_takes_a_date_range_and_refuses_a_bad_one(client, people, case_ids, db):
    _work(client, case_ids, db)
    sign_in(client, "boss")
    old = client.get("/console/team?from=2020-01-01&to=2020-01-31")
    assert old.status_code == 200
    table = old.text.split("<tbody>")[1].split("</tbody>")[0]
    # agent still holds two cases now, and did nothing in January 2020
    assert table.count("<tr>") == 1 and "<td>2</td>" in table
    for query in ("from=2020-13-01&to=2020-01-31", "from=0003-09-09&to=0003-09-10"):
        bad = client.get(f"/console/team?{query}", follow_redirects=False)
        assert bad.status_code == 303 and bad.headers["location"] == "/console/team"
        dash = client.get(f"/console/dashboard?{query}", follow_redirects=False)
        assert dash.status_code == 303 and dash.headers["location"] == "/console/dashboard"


def test_the_team_csv_has_the_pages_rows_for_a_spreadsheet(client, people, case_ids, db):
    import csv
    import io

    _work(client, case_ids, db)
    sign_in(client, "boss")
    page = client.get("/console/team").text
    link = re.search(r'href="(/console/team\.csv\?[^"]+)"', page).group(1).replace("&amp;", "&")
    r = client.get(link)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    assert r.headers["content-disposition"].startswith('attachment; filename="team-')
    rows = list(csv.DictReader(io.StringIO(r.text)))
    by = {row["person"]: row for row in rows}
    assert set(by) == {"agent", "boss", "fin1"}
    assert (by["agent"]["holding"], by["agent"]["holding_late"]) == ("2", "1")
    assert (by["agent"]["resolved"], by["agent"]["notes"], by["boss"]["assigned"]) == (
        "1",
        "1",
        "1",
    )
    assert float(by["agent"]["median_intake_to_resolution_h"]) >= 0
    assert by["boss"]["median_intake_to_resolution_h"] == ""
    with db.read() as s:
        figures = {t.person: t for t in dashboard.team_figures(s, WEEK)}
    for name, row in by.items():
        for column in dashboard.TEAM_ACTIONS.values():
            assert int(row[column]) == figures[name].done.get(column, 0), (name, column)

    sign_in(client, "agent")  # their own row only, as on the page
    own = list(csv.DictReader(io.StringIO(client.get("/console/team.csv").text)))
    assert [row["person"] for row in own] == ["agent"]
    bad = client.get("/console/team.csv?from=2020-13-01&to=2020-01-31", follow_redirects=False)
    assert bad.status_code == 303
