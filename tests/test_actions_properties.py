"""Property test over the whole approval workflow (service + database + Cedar): whatever the
amounts, splits, approvers and order of attempts, no material action is released without the
approvals its decision requires, from people other than the ones who asked for it."""

from __future__ import annotations

from decimal import Decimal

from hypothesis import HealthCheck, event, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from sqlalchemy import select

import policies
from contracts.case import CaseIn
from contracts.suggestion import IssueCreditNote
from tests.support import sample_case
from triage import actions, audit, cases
from triage.db import Database
from triage.errors import Conflict, PermissionDenied, ValidationFailed
from triage.models import ActionApproval, ActionRow, OutboxMessage
from triage.pipeline import Pipeline, run_case

AGENT = audit.Actor(audit.ActorType.human, "agent-a", "agent")
APPROVERS = {
    "fin-1": ["finance_approver"],
    "fin-2": ["finance_approver"],
    "ctrl-1": ["finance_controller"],
    "ctrl-2": ["finance_controller"],
    "cfo-1": ["cfo"],
    "agent-a": ["finance_controller"],  # the requester also holds authority: SoD must bite
}

amounts = st.lists(
    st.integers(min_value=1, max_value=400).map(lambda k: Decimal(k * 250)), min_size=1, max_size=3
)
attempts = st.lists(st.sampled_from(sorted(APPROVERS)), min_size=0, max_size=6)


@hsettings(
    max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(split=amounts, who=attempts, tier=st.sampled_from(["A", "B", "C"]))
def test_no_release_without_required_approvals(tmp_path_factory, split, who, tier):
    from triage import migrate
    from triage.settings import Settings

    d = tmp_path_factory.mktemp("prop")
    settings = Settings(
        environment="test",
        data_dir=d,
        worker_enabled=False,
        action_webhook_url="http://127.0.0.1:9/x",
    )
    migrate.upgrade(settings)
    db = Database(settings)
    try:
        policy = actions.load_policy(settings)
        refs = sample_case()["references"] | {"customer": {"id": "C1", "tier": tier}}
        with db.write() as s:
            case_id = cases.submit(
                s,
                CaseIn.model_validate(sample_case(references=refs)),
                actor=AGENT,
                settings=settings,
            ).case.id
        run_case(db, case_id, Pipeline(), settings, worker_id="w")
        ids = []
        for amount in split:
            with db.write() as s:
                ids.append(
                    actions.create(
                        s,
                        case_id,
                        IssueCreditNote(
                            invoice_id="INV-1", amount=amount, currency="EUR", reason_code="x"
                        ),
                        actor=AGENT,
                        policy=policy,
                        settings=settings,
                    ).id
                )
        for name in who:
            for action_id in ids:
                with db.read() as s:
                    row = s.get(ActionRow, action_id)
                    h = row.action_hash or ""
                try:
                    with db.write() as s:
                        actions.approve(
                            s,
                            action_id,
                            actor=audit.Actor(audit.ActorType.human, name, "approver"),
                            authorities=APPROVERS[name],
                            action_hash=h,
                            policy=policy,
                            settings=settings,
                        )
                except (PermissionDenied, Conflict, ValidationFailed):
                    pass
        with db.read() as s:
            released = 0
            for row in s.scalars(select(ActionRow)).all():
                if row.status != actions.APPROVED:
                    continue
                released += 1
                if row.decision["outcome"] == "auto_execute":
                    continue
                event("released after approval")
                approvals = s.scalars(
                    select(ActionApproval).where(
                        ActionApproval.action_id == row.id,
                        ActionApproval.action_hash == row.action_hash,
                    )
                ).all()
                approvers = {a.approver_id for a in approvals}
                assert len(approvers) >= row.decision["approval"]["min_approvals"]
                assert AGENT.id not in approvers  # segregation of duties
                case = CaseIn.model_validate(cases.get(s, row.case_id).payload)
                status = policies.quorum_status(
                    actions.to_request(row, case),
                    actions.context(s, row, case, policy),
                    actions._policy_approvals(list(approvals)),
                    policy,
                )
                assert status.satisfied
            event(f"released {released} of {len(ids)}")
            outbox = s.scalars(
                select(OutboxMessage).where(OutboxMessage.kind == "action.execute")
            ).all()
            assert len(outbox) == released  # every release delivered exactly once
            assert audit.verify(s).intact
    finally:
        db.dispose()
