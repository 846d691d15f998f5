"""Triage jobs of the procrastinate engine: list them and re-drive dead letters (admins only).

With the embedded engine there are no jobs (the cases table is the queue): the list answers
200 with no items, ``engine: "embedded"`` and a message saying so, and a retry answers 409.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Path, Query
from pydantic import BaseModel, Field

from api.deps import ContextDep, R, allow
from api.routes.cases import ERRORS
from triage import jobs
from triage.auth import Principal
from triage.errors import Conflict

router = APIRouter(prefix="/v1/jobs", tags=["admin"])
Admin = Annotated[Principal, Depends(allow(R.admin))]
MAX_ID = 2**63 - 1  # job ids are PostgreSQL bigints: larger numbers are a 422, not a 500

EMBEDDED_MESSAGE = (
    "TRIAGE_JOB_ENGINE is embedded: triage runs from the cases table and there are no jobs; "
    "failed cases are listed with GET /v1/cases?status=failed"
)


class JobOut(BaseModel):
    id: int
    status: str = Field(description="todo | doing | failed (dead letter) | succeeded | ...")
    task_name: str
    queue: str
    priority: int
    attempts: int = Field(description="Runs that ended in a retry or a failure so far.")
    case_id: str | None
    case_status: str | None
    scheduled_at: datetime | None = Field(description="Not run before this time (retry backoff).")
    updated_at: datetime | None = Field(description="Time of the job's last state change.")


class JobPage(BaseModel):
    engine: Literal["embedded", "procrastinate"]
    items: list[JobOut]
    next_cursor: str | None
    message: str | None = None


def _out(j: jobs.JobView) -> JobOut:
    return JobOut.model_validate(j, from_attributes=True)


@router.get(
    "",
    response_model=JobPage,
    responses=ERRORS,
    summary="List triage jobs (dead letters: status=failed)",
)
def list_jobs(
    ctx: ContextDep,
    _p: Admin,
    status: Literal["todo", "doing", "failed"] | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    cursor: Annotated[
        int | None, Query(ge=0, le=MAX_ID, description="next_cursor of the previous page")
    ] = None,
) -> JobPage:
    if not jobs.enabled(ctx.settings):
        return JobPage(engine="embedded", items=[], next_cursor=None, message=EMBEDDED_MESSAGE)
    with ctx.db.read() as s:
        rows = jobs.list_jobs(s, status, limit + 1, cursor)
    nxt = str(rows[limit - 1].id) if len(rows) > limit else None
    return JobPage(engine="procrastinate", items=[_out(j) for j in rows[:limit]], next_cursor=nxt)


@router.post(
    "/{job_id}/retry",
    response_model=JobOut,
    responses=ERRORS,
    summary="Re-drive a dead-lettered job (a failed case goes back to received; audited)",
)
def retry_job(
    job_id: Annotated[int, Path(ge=0, le=MAX_ID)], ctx: ContextDep, principal: Admin
) -> JobOut:
    if not jobs.enabled(ctx.settings):
        raise Conflict(EMBEDDED_MESSAGE, field="engine")
    with ctx.db.write() as s:
        return _out(jobs.retry_job(s, job_id, actor=principal.actor))
