"""Demo data for the embedded default: one API key per role, simulated cases, triaged.

Idempotent: keys are created once and kept in ``<data_dir>/demo-keys.json`` (mode 0600); cases
use fixed source ids, so a second start replays instead of duplicating.
"""

from __future__ import annotations

import json
import logging
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy import select

import policies
from contracts.case import CaseIn
from retrieval.errors import EncoderError
from triage import actions, audit, auth, cases, classification, dashboard, users
from triage.common import replayed_at, utcnow
from triage.db import Database
from triage.errors import PermissionDenied
from triage.lifecycle import Status
from triage.models import ActionRow, Case
from triage.pipeline import Pipeline
from triage.settings import Settings
from triage.simulator import SimConfig, SimulatedCase, Simulator
from triage.stages import REPO_KNOWLEDGE, RetrievalStage, default_pipeline
from triage.worker import Worker

log = logging.getLogger("triage.demo")

DEMO_ADMIN = audit.Actor(audit.ActorType.system, "demo-loader", "admin")
DEMO_AGENT = audit.Actor(audit.ActorType.human, "demo-agent", "agent")
# the team lead (the admin key's person), who hands the console's agent its first cases
DEMO_LEAD = audit.Actor(audit.ActorType.human, "demo-admin", "admin")
DISPATCHED = 3
DEMO_ORCHESTRATOR = audit.Actor(audit.ActorType.integration, "demo-orchestrator", "orchestrator")

# Share of the demo's cases loaded first as closed history, the days it spans, and the hours
# over which the open (live) cases arrive (see :func:`load`).
HISTORY_SHARE = 0.4
HISTORY_DAYS = 28
LIVE_HOURS = 3

# (label, API role, policy authorities): two approvers so quorum and four-eyes can be shown.
DEMO_KEYS: list[tuple[str, str, list[str]]] = [
    ("orchestrator", "orchestrator", []),
    ("agent", "agent", []),
    ("approver", "approver", ["finance_approver", "inventory_manager"]),
    ("controller", "approver", ["finance_controller"]),
    ("auditor", "auditor", []),
    ("admin", "admin", []),
]

# Who decides the history's approvals, in turn (the people behind the approver keys).
DEMO_APPROVERS: list[tuple[audit.Actor, list[str]]] = [
    (audit.Actor(audit.ActorType.human, f"demo-{label}", role), authorities)
    for label, role, authorities in DEMO_KEYS
    if role == "approver"
]


@dataclass
class DemoSummary:
    keys: dict[str, str]
    created: int
    total_cases: int
    triaged: int
    keys_file: Path
    users: dict[str, str] = field(default_factory=dict)


def _keys(db: Database, path: Path) -> dict[str, str]:
    if path.exists():
        stored: dict[str, str] = json.loads(path.read_text())
        return stored
    out: dict[str, str] = {}
    with db.write() as s:
        for label, role, authorities in DEMO_KEYS:
            out[label] = auth.create_key(
                s, f"demo-{label}", role, created_by=DEMO_ADMIN, authorities=authorities
            ).key
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(out, fh, indent=2)
    return out


def load(
    settings: Settings, n_cases: int, progress: Callable[[int, int, float], None] | None = None
) -> DemoSummary:
    """Load the demo: keys, the default model, the knowledge base and ``n_cases`` simulated cases.

    The first :data:`HISTORY_SHARE` of the cases are history, lived through in the
    :data:`HISTORY_DAYS` before now with the clock set to each step's time
    (:func:`triage.common.replayed_at`): each arrives and is triaged, and later a demo agent
    corrects it where the classifier was wrong or abstained (an override) and resolves it
    with the simulator's resolution text, some past their SLA. The rest arrive over the last
    :data:`LIVE_HOURS` and stay open, so their suggestions show similar past cases, the models
    page has an override rate and the dashboard four weeks of figures. Running it again
    changes nothing: cases replay by source id, history already resolved is left alone, and
    approvals are only requested on the start that created the live cases.
    """
    db = Database(settings)
    try:
        simulated = list(Simulator(SimConfig(seed=7)).cases(n_cases))
        n_history = int(len(simulated) * HISTORY_SHARE)
        timeline = _timeline(simulated, n_history, settings, utcnow())
        # set up before the history starts, so the audit trail's times rise with its sequence
        with replayed_at(timeline[0][0] - timedelta(hours=1) if timeline else utcnow()):
            keys = _keys(db, settings.data_dir / "demo-keys.json")
            pipe, policy = _set_up(db, settings)
        worker = Worker(db, settings, pipe)
        submit = _Submitter(db, settings, n_cases, progress)
        ids, triaged = _replay(db, settings, policy, worker, submit, simulated, timeline)
        triaged += worker.run_once()
        demo_users = users.ensure_demo_users(settings)
        if submit.created_ids & set(ids[n_history:]):
            _request_some(db, settings, policy)
            _dispatch(db)
        dashboard.refresh_recent(db, days=HISTORY_DAYS + 1)
        with db.read() as s:
            total, _ = cases.list_cases(s, cases.CaseFilter(), limit=100_000)
        return DemoSummary(
            keys,
            len(submit.created_ids),
            len(total),
            triaged,
            settings.data_dir / "demo-keys.json",
            users=demo_users,
        )
    finally:
        db.dispose()


def _set_up(db: Database, settings: Settings) -> tuple[Pipeline, policies.PolicySet]:
    """The default model (trained and activated when none is), the pipeline with the
    repository's knowledge base ingested, and the action policy, its activation on the trail
    before any action the history decides under it."""
    if classification.registry(settings).active_version() is None:
        version = classification.train_default_model(settings)
        with db.write() as s:
            audit.append(
                s,
                DEMO_ADMIN,
                "model.activated",
                {"version": version, "reason": "default demo model"},
            )
    pipe = default_pipeline(settings)
    if isinstance(pipe.retriever, RetrievalStage):
        try:
            pipe.retriever.warm_up()
        except EncoderError:
            # A demo folder from an earlier release indexed with another encoder: the demo
            # owns this data, so re-embed it (production says so and leaves it to
            # `triage kb reindex`).
            chunks, indexed = pipe.retriever.reindex()
            log.warning(
                "demo: re-embedded %d knowledge chunks and %d cases with %s",
                chunks,
                indexed,
                settings.encoder,
            )
        docs = settings.knowledge_dir or REPO_KNOWLEDGE
        if docs.exists():
            pipe.retriever.ingest([docs])
    policy = actions.load_policy(settings)
    with db.write() as s:
        actions.record_policy_activation(s, policy, settings)
    return pipe, policy


_ARRIVE, _REQUEST, _DECIDE, _CLOSE = range(4)

# Root causes whose resolution (``simulator.RESOLUTIONS``) pays the customer back, and how: the
# demo agent requests that suggested action before closing such a case.
PAID_BACK = {
    "contract_discount_missing": "issue_credit_note",
    "duplicate_billing": "issue_credit_note",
    "integration_retry_duplicate": "issue_credit_note",
    "customer_return": "refund",
}


def _timeline(
    simulated: list[SimulatedCase], n_history: int, settings: Settings, now: datetime
) -> list[tuple[datetime, int, int]]:
    """When each step of the demo's data happened, in time order: ``(when, step, index into
    simulated)``. The first ``n_history`` cases arrive spread over :data:`HISTORY_DAYS` up to a
    day ago; each is closed after 10-115% of its priority's resolution SLA (so some breach it),
    and at the latest half an hour ago; a case paid back (:data:`PAID_BACK`) has its action
    requested a quarter of the way and decided two thirds of the way to its close. The rest
    (the live cases) arrive over the last :data:`LIVE_HOURS`, none overdue yet.
    Deterministic apart from ``now``."""
    rng = random.Random(7)
    first = now - timedelta(days=HISTORY_DAYS)
    gap = timedelta(days=HISTORY_DAYS - 1) / max(1, n_history)
    events: list[tuple[datetime, int, int]] = []
    for i, sim in enumerate(simulated[:n_history]):
        arrive = first + gap * (i + rng.random())
        sla = settings.sla_resolution_hours.get(sim.labels["priority"], 72.0)
        close = min(
            arrive + timedelta(hours=sla * rng.uniform(0.1, 1.15)), now - timedelta(minutes=30)
        )
        events += [(arrive, _ARRIVE, i), (close, _CLOSE, i)]
        if sim.labels["category"] in PAID_BACK:
            span = close - arrive
            events += [(arrive + span / 4, _REQUEST, i), (arrive + span * 2 / 3, _DECIDE, i)]
    live = len(simulated) - n_history
    live_span = timedelta(hours=LIVE_HOURS)
    events += [
        (now - live_span + live_span * j / max(1, live), _ARRIVE, n_history + j)
        for j in range(live)
    ]
    return sorted(events)


def _replay(
    db: Database,
    settings: Settings,
    policy: policies.PolicySet,
    worker: Worker,
    submit: _Submitter,
    simulated: list[SimulatedCase],
    timeline: list[tuple[datetime, int, int]],
) -> tuple[list[str], int]:
    """Live the timeline in order, each step stamped with its time: a case arrives and is
    triaged; a demo agent requests the credit note or refund that pays a customer back, the
    approvers decide it, or the agent closes the case (:func:`_close_history`) and it joins
    the similar-case index; the SLA sweep runs after every step, as the workers'
    housekeeping does. Returns the case ids in the order of ``simulated``, and how many cases
    were triaged (none when everything was loaded before)."""
    ids: dict[int, str] = {}
    triaged = 0
    ended = timeline[0][0] if timeline else utcnow()
    for when, kind, i in timeline:
        sim = simulated[i]
        # a step takes real time and its clock runs on: the next starts no earlier than this
        # one ended, or two close steps would stamp the trail out of order
        with replayed_at(max(when, ended)):
            if kind == _ARRIVE:
                ids[i] = submit(sim)
                triaged += worker.run_once()
            elif kind == _REQUEST:
                _request_payback(db, settings, policy, ids[i], PAID_BACK[sim.labels["category"]])
            elif kind == _DECIDE:
                _decide_payback(db, settings, policy, ids[i])
            else:
                _close_history(db, settings, ids[i], sim)
                worker.index_resolved()
            with db.write() as s:
                cases.flag_sla_breaches(s)
            ended = utcnow()
    return [ids[i] for i in range(len(simulated))], triaged


def _request_payback(
    db: Database, settings: Settings, policy: policies.PolicySet, case_id: str, action_type: str
) -> None:
    """The demo agent requests the case's suggested credit note or refund, if it is still
    proposed (not on a second start, when it was requested and decided long ago)."""
    with db.write() as s:
        action_id = s.scalar(
            select(ActionRow.id)
            .join(Case, Case.id == ActionRow.case_id)
            .where(
                ActionRow.case_id == case_id,
                ActionRow.action_type == action_type,
                ActionRow.status == actions.PROPOSED,
                Case.status == Status.awaiting_review.value,
            )
            .order_by(ActionRow.id)
            .limit(1)
        )
        if action_id is not None:
            actions.request(s, action_id, actor=DEMO_AGENT, policy=policy, settings=settings)


def _decide_payback(
    db: Database, settings: Settings, policy: policies.PolicySet, case_id: str
) -> None:
    """The demo's approvers decide the case's pending actions: the finance approver first, the
    controller when the amount is beyond the approver's authority or quorum needs both. One
    neither may approve is withdrawn by the agent. Approved actions are reported executed by
    the orchestration layer, as its ERP would after posting them."""
    with db.write() as s:
        rows = s.scalars(
            select(ActionRow)
            .where(
                ActionRow.case_id == case_id,
                ActionRow.status.in_([actions.PENDING, actions.APPROVED]),
            )
            .order_by(ActionRow.id)
        ).all()
        for row in rows:
            for actor, authorities in DEMO_APPROVERS:
                if row.status != actions.PENDING:
                    break
                try:
                    actions.approve(
                        s,
                        row.id,
                        actor=actor,
                        authorities=authorities,
                        action_hash=row.action_hash or "",
                        policy=policy,
                        settings=settings,
                        reason="checked against the delivery and billing records",
                    )
                except PermissionDenied:
                    continue  # beyond this approver's authority: the next one decides
            if row.status == actions.PENDING:
                actions.cancel(
                    s, row.id, actor=DEMO_AGENT, reason="withdrawn: no approver could release it"
                )
            elif row.status == actions.APPROVED:
                actions.report_outcome(s, row.id, actor=DEMO_ORCHESTRATOR, done=True, reason=None)


class _Submitter:
    """Submits simulated cases as the demo orchestrator, reporting progress over the whole
    load; keeps the ids of the cases that were new (not replays)."""

    def __init__(
        self,
        db: Database,
        settings: Settings,
        total: int,
        progress: Callable[[int, int, float], None] | None,
    ) -> None:
        self.db, self.settings, self.total, self.progress = db, settings, total, progress
        self.actor = DEMO_ORCHESTRATOR
        self.started = time.perf_counter()
        self.done = 0
        self.created_ids: set[str] = set()

    def __call__(self, sim: SimulatedCase) -> str:
        """Submit one simulated case; returns its case id (the stored one on a replay)."""
        with self.db.write() as s:
            result = cases.submit(
                s, CaseIn.model_validate(sim.case), actor=self.actor, settings=self.settings
            )
        if not result.replayed:
            self.created_ids.add(result.case.id)
        self.done += 1
        if self.progress:
            self.progress(self.done, self.total, self.started)
        return result.case.id


def _close_history(db: Database, settings: Settings, case_id: str, sim: SimulatedCase) -> None:
    """A demo agent closes a history case as an operator would have: the true category, queue
    and priority set by an override wherever the classifier said otherwise or abstained, then
    resolved with the simulator's resolution. A case not awaiting review (resolved on an
    earlier start, or failed) is left as it is."""
    with db.write() as s:
        row = cases.get(s, case_id)
        if row.status != Status.awaiting_review.value:
            return
        wrong = {t: v for t, v in sim.labels.items() if getattr(row, t) != v}
        if wrong:
            classification.override(
                s,
                case_id,
                actor=DEMO_AGENT,
                reason="root cause confirmed at close",
                settings=settings,
                **wrong,
            )
        actions.transition_case(
            s, case_id, Status.resolved, actor=DEMO_AGENT, resolution=sim.resolution
        )


def _request_some(
    db: Database, settings: Settings, policy: policies.PolicySet, n: int = 12
) -> None:
    """Give approvers an inbox: a demo agent requests every other suggested credit note or
    refund, largest first, so that the inbox holds material amounts, some small ones show the
    automatic path, and large ones are left for whoever tries the demo to request. The demo
    agent claims the cases it requested for (it is working them) and leaves a work note on
    each request, so the queue shows cases held by a colleague beside unclaimed ones."""
    with db.write() as s:
        rows = s.execute(
            select(ActionRow.id, ActionRow.case_id)
            .join(Case, Case.id == ActionRow.case_id)
            .where(
                ActionRow.status == actions.PROPOSED,
                ActionRow.action_type.in_(["issue_credit_note", "refund"]),
                Case.status == Status.awaiting_review.value,
            )
            .order_by(ActionRow.amount.desc(), ActionRow.id)
            .limit(2 * n)
        ).all()
        claimed: set[str] = set()
        for action_id, case_id in rows[::2]:
            if case_id not in claimed:
                actions.transition_case(s, case_id, Status.in_review, actor=DEMO_AGENT)
                claimed.add(case_id)
            row = actions.request(s, action_id, actor=DEMO_AGENT, policy=policy, settings=settings)
            what = row.action_type.replace("_", " ")
            cases.add_note(
                s,
                case_id,
                f"Requested the {what}; it waits for finance approval."
                if row.status == actions.PENDING
                else f"Requested the {what}; the policy released it without approval.",
                actor=DEMO_AGENT,
            )


def _dispatch(db: Database, n: int = DISPATCHED) -> None:
    """The lead assigns the ``n`` most urgent unclaimed live cases to the console's ``agent``,
    so whoever signs in as the agent finds work handed to them (*Held by: me*) beside the
    unclaimed queue, and the Team page shows a lead's assignments."""
    with db.write() as s:
        urgent = s.scalars(
            select(Case.id)
            .where(Case.status == Status.awaiting_review.value, Case.assignee.is_(None))
            .order_by(Case.priority, Case.resolution_due_at, Case.id)
            .limit(n)
        ).all()
        for case_id in urgent:
            cases.assign(
                s, case_id, "agent", actor=DEMO_LEAD, reason="Morning dispatch: most urgent first"
            )


def describe(summary: DemoSummary, host: str, port: int) -> str:
    base = f"http://{host}:{port}"
    lines = [
        "",
        f"Demo ready: {summary.total_cases} cases ({summary.created} new, {summary.triaged} "
        "triaged now).",
        f"  API:      {base}/v1/cases",
        f"  API docs: {base}/docs",
        f"  Console:  {base}/console  (users in {summary.keys_file.parent / 'demo-users.json'})",
        f"  Keys ({summary.keys_file}):",
    ]
    lines += [f"    {role:<12} {key}" for role, key in summary.keys.items()]
    if summary.users:
        lines.append("  Console users (username / password):")
        lines += [f"    {name:<12} {pw}" for name, pw in summary.users.items()]
    lines.append(
        f"  Try: curl -H 'Authorization: Bearer {summary.keys['agent']}' {base}/v1/cases?limit=5"
    )
    return "\n".join(lines)
