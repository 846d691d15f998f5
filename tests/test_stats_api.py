"""``GET /v1/stats/process`` and ``GET /v1/stats/team``: the dashboard's and the Team page's
figures over the API, equal to the services' own, with field-level errors for bad ranges."""

from __future__ import annotations

from tests.support import bearer, sample_case
from triage import dashboard
from triage.pipeline import Pipeline, run_case


def _work(client, keys, db, settings) -> list[str]:
    """Three triaged cases: the agent overrides the first and resolves the second."""
    ids = []
    for n in range(3):
        r = client.post("/v1/cases", json=sample_case(n), headers=bearer(keys["orchestrator"]))
        assert r.status_code == 202, r.text
        ids.append(r.json()["case_id"])
        assert run_case(db, ids[-1], Pipeline(), settings, worker_id="w").status == "triaged"
    agent = bearer(keys["agent"])
    r = client.post(
        f"/v1/cases/{ids[0]}/overrides", json={"queue": "billing", "reason": "rma"}, headers=agent
    )
    assert r.status_code == 200, r.text
    for to, extra in (("in_review", {}), ("resolved", {"resolution": "credited"})):
        r = client.post(f"/v1/cases/{ids[1]}/transitions", json={"to": to, **extra}, headers=agent)
        assert r.status_code == 200, r.text
    r = client.post(f"/v1/cases/{ids[2]}/transitions", json={"to": "in_review"}, headers=agent)
    assert r.status_code == 200, r.text
    return ids


def test_process_figures_equal_the_direct_computation(client, keys, db, settings):
    _work(client, keys, db, settings)
    r = client.get("/v1/stats/process", headers=bearer(keys["auditor"]))
    assert r.status_code == 200, r.text
    body = r.json()
    with db.read() as s:
        direct = dashboard.process_stats(s, dashboard.DateRange.last_days(30))
    assert (body["range_start"], body["range_end"]) == (direct.range.start, direct.range.end)
    assert (body["cases"], body["triaged"], body["resolved"]) == (3, 3, 1)
    assert (body["overridden"], body["override_rate"]) == (direct.overridden, direct.override_rate)
    assert body["overridden"] == 1
    assert body["volume_by_day"] == direct.volume_by_day
    assert body["coverage"] == direct.coverage
    assert body["suggestions_by_engine"] == direct.llm
    assert body["sla_breaches"] == direct.sla_breaches
    triage_times = body["stage_times"]["intake_to_triage"]
    assert triage_times["n"] == direct.stage_times["intake_to_triage"].n == 3
    assert triage_times["p50_seconds"] == direct.stage_times["intake_to_triage"].p50
    assert [w["cases"] for w in body["by_warehouse"]] == [n for _, n in direct.by_warehouse]

    old = client.get(
        "/v1/stats/process?from=2020-01-01&to=2020-01-31", headers=bearer(keys["agent"])
    )
    assert old.status_code == 200 and old.json()["cases"] == 0
    assert old.json()["range_start"].startswith("2020-01-01")
    assert old.json()["range_end"].startswith("2020-02-01")


def test_team_figures_by_role(client, keys, db, settings):
    _work(client, keys, db, settings)
    lead = client.get("/v1/stats/team", headers=bearer(keys["admin"])).json()
    assert lead["whole_team"] is True
    people = {p["person"]: p for p in lead["people"]}
    # the orchestrator and the pipeline are not people
    assert set(people) == {"test-agent"}
    agent = people["test-agent"]
    assert (agent["holding"], agent["holding_late"]) == (1, 0)
    assert agent["done"] == {"overrides": 1, "resolved": 1}
    assert agent["intake_to_resolution"]["n"] == 1

    own = client.get("/v1/stats/team", headers=bearer(keys["agent"])).json()
    assert own["whole_team"] is False and [p["person"] for p in own["people"]] == ["test-agent"]
    nothing = client.get("/v1/stats/team", headers=bearer(keys["approver"])).json()
    assert nothing["whole_team"] is False and nothing["people"] == []


def test_bad_ranges_are_field_errors(client, keys):
    auditor = bearer(keys["auditor"])
    cases = {
        "from=2026-13-01&to=2026-01-31": "from",
        "from=2026-01-01": "to",
        "to=2026-01-31": "from",
        "from=2026-02-01&to=2026-01-01": "to",
        "from=2020-01-01&to=2026-01-01": "from",
        # found by the API fuzzer: a three-digit year made timestamp text that sorts wrongly
        # and failed to parse back (a 500); the last day has no next day (an overflow)
        "from=0003-09-09&to=0003-09-10": "from",
        "from=9999-12-30&to=9999-12-31": "to",
    }
    for path in ("/v1/stats/process", "/v1/stats/team"):
        for query, field in cases.items():
            r = client.get(f"{path}?{query}", headers=auditor)
            assert r.status_code == 422, (path, query, r.text)
            fields = [f["field"] for f in r.json()["error"]["fields"]]
            assert any(field in f for f in fields), (path, query, fields)
