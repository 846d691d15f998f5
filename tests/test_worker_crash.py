"""A worker process killed in the middle of triage leaves a case that is triaged once after
restart: real processes, a real database, a hard exit (no cleanup runs)."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
from sqlalchemy import func, select

from contracts.case import CaseIn
from tests.support import sample_case
from triage import audit, cases
from triage.models import AuditEvent, Case
from triage.models import Suggestion as SuggestionRow

pytestmark = pytest.mark.integration

ORCH = audit.Actor(audit.ActorType.integration, "orch", "orchestrator")


def _worker(settings, **env_extra) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "TRIAGE_DATABASE_URL": settings.resolved_database_url,
        "TRIAGE_DATA_DIR": str(settings.data_dir),
        "TRIAGE_LEASE_SECONDS": "1",
        "TRIAGE_ENVIRONMENT": "test",
        **env_extra,
    }
    return subprocess.run(
        [sys.executable, "-m", "cli.main", "worker", "--once"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize(
    ("stage", "batch"), [("classify", 1), ("advise", 1), ("store", 1), ("store", 16)]
)
def test_killed_worker_case_is_triaged_once_after_restart(db, settings, stage, batch):
    """Batch size 1: one case in flight when the worker dies; 16: the whole batch is."""
    with db.write() as s:
        ids = [
            cases.submit(
                s, CaseIn.model_validate(sample_case(i)), actor=ORCH, settings=settings
            ).case.id
            for i in range(3)
        ]
    crashed = _worker(
        settings, TRIAGE_FAULT_CRASH_AT_STAGE=stage, TRIAGE_WORKER_BATCH_SIZE=str(batch)
    )
    assert crashed.returncode == 17, crashed.stderr[-2000:]
    with db.read() as s:
        statuses = dict(s.execute(select(Case.id, Case.status)).all())
    in_flight = min(batch, 3)
    assert sorted(statuses.values()) == ["received"] * (3 - in_flight) + ["triaging"] * in_flight
    time.sleep(1.2)  # the dead worker's lease expires
    restarted = _worker(settings)
    assert restarted.returncode == 0, restarted.stderr[-2000:]
    assert "triaged 3 cases" in restarted.stdout
    with db.read() as s:
        for case_id in ids:
            row = cases.get(s, case_id)
            assert row.status == "awaiting_review"
            n = s.scalar(
                select(func.count())
                .select_from(SuggestionRow)
                .where(SuggestionRow.case_id == case_id)
            )
            assert n == 1
            created = s.scalar(
                select(func.count())
                .select_from(AuditEvent)
                .where(AuditEvent.case_id == case_id, AuditEvent.action == "suggestion.created")
            )
            assert created == 1
        crashed_cases = [i for i in ids if statuses[i] == "triaging"]
        assert len(crashed_cases) == in_flight
        for crashed_case in crashed_cases:
            assert cases.get(s, crashed_case).triage_attempts == 2
            recovered = s.scalar(
                select(func.count())
                .select_from(AuditEvent)
                .where(AuditEvent.case_id == crashed_case, AuditEvent.action == "case.received")
            )
            assert recovered == 2  # intake + lease recovery
        assert audit.verify(s).intact
