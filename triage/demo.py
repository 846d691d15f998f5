"""Demo data for the embedded default: one API key per role, simulated cases, triaged.

Idempotent: keys are created once and kept in ``<data_dir>/demo-keys.json`` (mode 0600); cases
use fixed source ids, so a second start replays instead of duplicating.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from contracts.case import CaseIn
from retrieval.errors import EncoderError
from triage import audit, auth, cases, classification, users
from triage.db import Database
from triage.lifecycle import Status
from triage.settings import Settings
from triage.simulator import SimConfig, Simulator
from triage.stages import REPO_KNOWLEDGE, RetrievalStage, default_pipeline
from triage.worker import Worker

log = logging.getLogger("triage.demo")

DEMO_ADMIN = audit.Actor(audit.ActorType.system, "demo-loader", "admin")

# (label, API role, policy authorities): two approvers so quorum and four-eyes can be shown.
DEMO_KEYS: list[tuple[str, str, list[str]]] = [
    ("orchestrator", "orchestrator", []),
    ("agent", "agent", []),
    ("approver", "approver", ["finance_approver", "inventory_manager"]),
    ("controller", "approver", ["finance_controller"]),
    ("auditor", "auditor", []),
    ("admin", "admin", []),
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
    db = Database(settings)
    try:
        keys = _keys(db, settings.data_dir / "demo-keys.json")
        if classification.registry(settings).active_version() is None:
            version = classification.train_default_model(settings)
            with db.write() as s:
                audit.append(
                    s,
                    DEMO_ADMIN,
                    "model.activated",
                    {"version": version, "reason": "default demo model"},
                )
        orchestrator = audit.Actor(audit.ActorType.integration, "demo-orchestrator", "orchestrator")
        created = 0
        started = time.perf_counter()
        sim = Simulator(SimConfig(seed=7))
        batch: list[CaseIn] = []
        done = 0
        for rec in sim.cases(n_cases):
            batch.append(CaseIn.model_validate(rec.case))
            if len(batch) == 100 or done + len(batch) == n_cases:
                with db.write() as s:
                    for c in batch:
                        created += not cases.submit(
                            s, c, actor=orchestrator, settings=settings
                        ).replayed
                done += len(batch)
                batch.clear()
                if progress:
                    progress(done, n_cases, started)
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
        worker = Worker(db, settings, pipe)
        triaged = worker.run_once()
        _resolve_some(db)
        _request_some(db, settings)
        worker.index_resolved()
        with db.read() as s:
            total, _ = cases.list_cases(s, cases.CaseFilter(), limit=100_000)
        return DemoSummary(
            keys,
            created,
            len(total),
            triaged,
            settings.data_dir / "demo-keys.json",
            users=users.ensure_demo_users(settings),
        )
    finally:
        db.dispose()


def _resolve_some(db: Database) -> None:
    """Give the demo some history: every fifth triaged case resolved by a demo agent."""
    agent = audit.Actor(audit.ActorType.human, "demo-agent", "agent")
    with db.write() as s:
        rows, _ = cases.list_cases(
            s, cases.CaseFilter(status=Status.awaiting_review.value), limit=10_000
        )
        for row in rows[::5]:
            cases.human_transition(
                s,
                row.id,
                Status.resolved,
                actor=agent,
                resolution=f"Resolved by {row.queue or 'service'}: "
                f"{row.category or row.exception_type} confirmed and handled.",
            )


def _request_some(db: Database, settings: Settings, n: int = 12) -> None:
    """Give approvers an inbox: a demo agent accepts some suggested credit notes and refunds."""
    from sqlalchemy import select

    from triage import actions
    from triage.models import ActionRow, Case

    agent = audit.Actor(audit.ActorType.human, "demo-agent", "agent")
    policy = actions.load_policy(settings)
    with db.write() as s:
        actions.record_policy_activation(s, policy, settings)
        ids = s.scalars(
            select(ActionRow.id)
            .join(Case, Case.id == ActionRow.case_id)
            .where(
                ActionRow.status == actions.PROPOSED,
                ActionRow.action_type.in_(["issue_credit_note", "refund"]),
                Case.status == Status.awaiting_review.value,
            )
            .order_by(ActionRow.id)
            .limit(n)
        ).all()
        for action_id in ids:
            actions.request(s, action_id, actor=agent, policy=policy, settings=settings)


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
