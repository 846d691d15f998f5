"""Intake flows that own their transaction: used by the API and the CLI.

The only thing these add to :mod:`triage.cases` is the transaction boundary and the one retry
that resolves a lost insert race (two identical submissions at the same instant): the retry
sees the winner's row and answers replay or conflict like any later duplicate.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy.exc import IntegrityError

from contracts.case import CaseIn
from triage import cases, jobs
from triage.audit import Actor
from triage.db import Database
from triage.settings import Settings


def submit_one(
    db: Database,
    case: CaseIn,
    *,
    actor: Actor,
    settings: Settings,
    idempotency_key: str | None = None,
) -> cases.IntakeResult:
    for attempt in range(2):
        try:
            with db.write() as s:
                res = cases.submit(
                    s, case, actor=actor, settings=settings, idempotency_key=idempotency_key
                )
                if not res.replayed:  # the job engine's job commits with the case, or neither
                    jobs.on_cases_accepted(s, settings, [res.case.id])
                return res
        except IntegrityError:
            if attempt == 1:
                raise
    raise AssertionError("unreachable")


def submit_many(
    db: Database,
    items: Sequence[Any],
    *,
    actor: Actor,
    settings: Settings,
    idempotency_key: str | None = None,
) -> list[cases.BatchItemResult]:
    with db.write() as s:
        results = cases.submit_batch(
            s, items, actor=actor, settings=settings, idempotency_key=idempotency_key
        )
        created = [r.case.id for r in results if r.outcome == "created" and r.case]
        jobs.on_cases_accepted(s, settings, created)
        return results
