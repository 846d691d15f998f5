"""Process and team figures over the API: what the console's dashboard and Team page show, as
JSON for a BI tool, a report or a lead's spreadsheet. Handlers parse, call one service, respond.
"""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from typing import Annotated

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, Field

from api.deps import ContextDep, R, allow
from api.routes.cases import ERRORS
from triage import dashboard
from triage.auth import Principal
from triage.common import now_ts
from triage.errors import ValidationFailed

router = APIRouter(prefix="/v1/stats", tags=["stats"])
People = Annotated[Principal, Depends(allow(R.agent, R.approver, R.auditor, R.admin))]

From = Annotated[
    date | None,
    Query(alias="from", description="First day (YYYY-MM-DD, UTC); with `to`. Default: 30 days."),
]
To = Annotated[date | None, Query(alias="to", description="Last day, inclusive (YYYY-MM-DD).")]


class Span(BaseModel):
    """A duration distribution in seconds (null when there is no data)."""

    n: int
    p50_seconds: float | None
    p90_seconds: float | None
    mean_seconds: float | None

    @classmethod
    def of(cls, d: dashboard.Durations) -> Span:
        return cls(n=d.n, p50_seconds=d.p50, p90_seconds=d.p90, mean_seconds=d.mean)


class Ranked(BaseModel):
    key: str
    cases: int


class MoneyByCause(BaseModel):
    root_cause: str
    action_type: str
    currency: str
    amount: Decimal = Field(description="Sum of released amounts, as a decimal string.")
    count: int


class ProcessFigures(BaseModel):
    """The dashboard's figures; definitions in docs/console.md (Dashboard)."""

    range_start: str = Field(description="Start of the half-open range, UTC.")
    range_end: str = Field(description="End of the half-open range, UTC.")
    as_of: str
    cases: int = Field(description="Cases received in the range.")
    volume_by_day: dict[str, dict[str, int]] = Field(description="day -> exception type -> cases")
    by_warehouse: list[Ranked]
    by_carrier: list[Ranked]
    by_customer: list[Ranked]
    stage_times: dict[str, Span] = Field(
        description="intake_to_triage, intake_to_decision, intake_to_resolution, "
        "shipment_to_invoice"
    )
    approval_dwell: Span
    override_rate: float | None
    overridden: int
    triaged: int
    touchless_rate: float | None
    touchless: int
    resolved: int
    coverage: dict[str, float | None] = Field(
        description="Share of triaged cases where the classifier answered, per target and all."
    )
    suggestions_by_engine: dict[str, int] = Field(
        description="offline / llm suggestions in the range, and how many were fallbacks."
    )
    sla_breaches: dict[str, dict[str, int]] = Field(description="priority -> triage/resolution")
    money_by_cause: list[MoneyByCause]


class PersonFigures(BaseModel):
    person: str
    holding: int = Field(description="Cases in review this person holds now.")
    holding_late: int = Field(description="Of those, past their resolution due time.")
    done: dict[str, int] = Field(
        description="Their audit events in the range: resolved, escalated, assigned, "
        "overrides, requested, approvals, rejections, messages, notes."
    )
    intake_to_resolution: Span | None = Field(
        description="Of the cases they resolved in the range."
    )


class TeamFigures(BaseModel):
    range_start: str
    range_end: str
    as_of: str
    whole_team: bool = Field(description="False: only the caller's own row (agents, approvers).")
    people: list[PersonFigures]


def _range(start: date | None, end: date | None) -> dashboard.DateRange:
    if start is None and end is None:
        return dashboard.DateRange.last_days(30)
    if start is None or end is None:
        missing = "from" if start is None else "to"
        raise ValidationFailed(
            "give both from and to, or neither (the last 30 days)",
            fields={missing: "required with " + ("to" if missing == "from" else "from")},
        )
    return dashboard.DateRange.from_dates(start.isoformat(), end.isoformat())


@router.get(
    "/process",
    response_model=ProcessFigures,
    responses=ERRORS,
    summary="Volumes, stage times, rates, SLA breaches and released money for a date range",
)
def process_figures(
    ctx: ContextDep, _p: People, start: From = None, end: To = None
) -> ProcessFigures:
    """Cases received from ``from`` to ``to`` (inclusive UTC days; default the last 30;
    at most two years), read from the daily roll-ups as the dashboard is."""
    r = _range(start, end)
    as_of = now_ts()
    st = dashboard.rollup_stats(ctx.db, r)
    return ProcessFigures(
        range_start=r.start,
        range_end=r.end,
        as_of=as_of,
        cases=st.cases,
        volume_by_day=st.volume_by_day,
        by_warehouse=[Ranked(key=k, cases=n) for k, n in st.by_warehouse],
        by_carrier=[Ranked(key=k, cases=n) for k, n in st.by_carrier],
        by_customer=[Ranked(key=k, cases=n) for k, n in st.by_customer],
        stage_times={k: Span.of(d) for k, d in st.stage_times.items()},
        approval_dwell=Span.of(st.approval_dwell),
        override_rate=st.override_rate,
        overridden=st.overridden,
        triaged=st.triaged,
        touchless_rate=st.touchless_rate,
        touchless=st.touchless,
        resolved=st.resolved,
        coverage=st.coverage,
        suggestions_by_engine=st.llm,
        sla_breaches=st.sla_breaches,
        money_by_cause=[
            MoneyByCause(root_cause=c, action_type=t, currency=cur, amount=amt, count=n)
            for c, t, cur, amt, n in st.money_by_cause
        ],
    )


@router.get(
    "/team",
    response_model=TeamFigures,
    responses=ERRORS,
    summary="Per person: cases held now, and what each did in a date range",
)
def team_figures(ctx: ContextDep, p: People, start: From = None, end: To = None) -> TeamFigures:
    """Counted from the audit trail (people only, not the pipeline or integrations). Admins
    and auditors get everyone; agents and approvers their own row."""
    r = _range(start, end)
    as_of = now_ts()
    with ctx.db.read() as s:
        rows, whole_team = dashboard.visible_team(s, r, p.actor)
    return TeamFigures(
        range_start=r.start,
        range_end=r.end,
        as_of=as_of,
        whole_team=whole_team,
        people=[
            PersonFigures(
                person=t.person,
                holding=t.holding,
                holding_late=t.holding_breached,
                done=t.done,
                intake_to_resolution=Span.of(t.resolve_time) if t.resolve_time else None,
            )
            for t in rows
        ],
    )
