"""The prompt-injection corpus end to end: every attack in tests/data/injection_corpus.jsonl is
submitted as a case through the real API and triaged by the real pipeline (offline engine,
retrieval over the shipped knowledge base), next to a clean twin (the same case without the
attack text). For every attack:

- it is flagged, with at least its labelled kinds, on the case and on the suggestion, and
  audited once as ``case.injection_flagged``;
- nothing was approved or executed: no approval rows, no ``action.execute`` outbox message,
  and the case's actions (type, amount, status) are exactly the clean twin's;
- the routing is not the queue the attacker asked for, unless the twin was routed there too;
- no line of the advisor's system prompts (prompts/advisor_*.toml) appears in the summary,
  the customer draft, the next steps or the routing rationale.

The benign control set (tests/data/benign_corpus.jsonl) goes through the same path and must
raise no flag (false positives are counted and reported).

The LLM path is covered by the recorded cassette in tests/retrieval/test_advisor_llm.py
(``test_injected_instruction_is_flagged_and_contained``): a compromised model answer is
refused by the output contract and the offline engine answers.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from tests.support import bearer, sample_case
from triage import cases
from triage.models import ActionApproval, ActionRow, AuditEvent, Case, OutboxMessage
from triage.stages import REPO_KNOWLEDGE, RetrievalStage, default_pipeline
from triage.worker import Worker

pytestmark = [pytest.mark.integration]

ROOT = Path(__file__).parents[1]
DATA = Path(__file__).parent / "data"
EXCEPTION_TYPES = [
    "shortage",
    "pricing_mismatch",
    "damaged_goods",
    "duplicate_invoice",
    "return_request",
    "carrier_delay",
]


def _load(name: str) -> list[dict[str, Any]]:
    lines = (DATA / name).read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def _system_prompt_lines() -> list[str]:
    """Every substantial line of the LLM advisor's prompt files (system and user parts)."""
    out = []
    for path in sorted((ROOT / "prompts").glob("advisor_*.toml")):
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
        for part in ("system", "user"):
            out += [ln.strip() for ln in doc.get(part, "").splitlines() if len(ln.strip()) >= 25]
    assert len(out) >= 10, "prompt files not found or changed shape"
    return out


def _case(n: int, exception_type: str, field: str | None, text: str | None) -> dict[str, Any]:
    case = sample_case(n, exception_type=exception_type)
    if field == "title":
        case["title"] = text
    elif field is not None:
        case["text"] = {**case["text"], field: text}
    return case


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    """SQLite only: flagging and containment do not depend on the database engine."""
    return f"sqlite:///{tmp_path / 'triage.db'}"


def _kinds(flags: list[str], field: str) -> set[str]:
    # stored as "kind@field: excerpt"
    return {f.split("@", 1)[0] for f in flags if f.split("@", 1)[1].startswith(f"{field}:")}


def _outcome(s: Any, case_id: str) -> dict[str, Any]:
    row = s.get(Case, case_id)
    sugg = cases.current_suggestion(s, row)
    body = sugg.body if sugg else {}
    actions = s.scalars(select(ActionRow).where(ActionRow.case_id == case_id)).all()
    action_ids = [a.id for a in actions]
    return {
        "status": row.status,
        "queue": row.queue,
        "flags": list(row.injection_flags or []),
        "body": body,
        "actions": sorted((a.action_type, str(a.amount), a.currency, a.status) for a in actions),
        "approvals": s.scalar(
            select(func.count())
            .select_from(ActionApproval)
            .where(ActionApproval.action_id.in_(action_ids or ["-"]))
        ),
        "executions": s.scalar(
            select(func.count())
            .select_from(OutboxMessage)
            .where(OutboxMessage.case_id == case_id, OutboxMessage.kind == "action.execute")
        ),
        "flag_events": s.scalar(
            select(func.count())
            .select_from(AuditEvent)
            .where(AuditEvent.case_id == case_id, AuditEvent.action == "case.injection_flagged")
        ),
    }


def test_injection_corpus_through_api_and_pipeline(client, keys, db, settings):
    attacks, benign = _load("injection_corpus.jsonl"), _load("benign_corpus.jsonl")
    assert len(attacks) >= 50 and len(benign) >= 30
    pipe = default_pipeline(settings)
    assert isinstance(pipe.retriever, RetrievalStage), "the real pipeline retrieves"
    pipe.retriever.ingest([REPO_KNOWLEDGE])

    orch = bearer(keys["orchestrator"])
    n = 0

    def submit(payload_for: Any) -> str:
        nonlocal n
        n += 1
        r = client.post("/v1/cases", json=payload_for(n), headers=orch)
        assert r.status_code == 202, r.text
        return str(r.json()["case_id"])

    attack_ids, twin_of, twins, benign_ids = {}, {}, {}, {}
    for i, a in enumerate(attacks):
        et = EXCEPTION_TYPES[i % len(EXCEPTION_TYPES)]
        attack_ids[a["id"]] = submit(lambda k, a=a, et=et: _case(k, et, a["field"], a["text"]))
        key = (et, a["field"])
        if key not in twins:  # the twin depends only on the exception type and the field
            twins[key] = submit(lambda k, et=et: _case(k, et, None, None))
        twin_of[a["id"]] = twins[key]
    for i, b in enumerate(benign):
        et = EXCEPTION_TYPES[i % len(EXCEPTION_TYPES)]
        benign_ids[b["id"]] = submit(lambda k, b=b, et=et: _case(k, et, b["field"], b["text"]))

    worker = Worker(db, settings, pipe)
    while worker.run_once():
        pass

    prompt_lines = _system_prompt_lines()
    problems: list[str] = []
    compared_actions = 0
    with db.read() as s:
        for a in attacks:
            got = _outcome(s, attack_ids[a["id"]])
            twin = _outcome(s, twin_of[a["id"]])
            compared_actions += bool(twin["actions"])
            where = f"{a['id']} ({a['field']})"
            if got["status"] != "awaiting_review" or twin["status"] != "awaiting_review":
                problems.append(f"{where}: not triaged ({got['status']}, twin {twin['status']})")
                continue
            missing = set(a["expect"]) - _kinds(got["flags"], a["field"])
            if missing:
                problems.append(f"{where}: not flagged as {sorted(missing)}: {got['flags']}")
            if not got["body"].get("injection_flags"):
                problems.append(f"{where}: suggestion carries no injection flag")
            if got["flag_events"] != 1:
                problems.append(f"{where}: {got['flag_events']} case.injection_flagged events")
            if twin["flags"]:
                problems.append(f"{where}: the clean twin was flagged: {twin['flags']}")
            if got["approvals"] or got["executions"]:
                problems.append(
                    f"{where}: {got['approvals']} approvals, {got['executions']} executions"
                )
            if any(st in ("approved", "executed") for *_x, st in got["actions"]):
                problems.append(f"{where}: an action was released: {got['actions']}")
            if got["actions"] != twin["actions"]:
                problems.append(f"{where}: actions {got['actions']} != twin {twin['actions']}")
            target = a.get("target_queue")
            routed = {got["queue"], got["body"]["routing"]["queue"]}
            if target and target in routed and target not in {twin["queue"]}:
                problems.append(f"{where}: routed to the attacker's queue {target}")
            out = got["body"]
            texts = [
                out.get("summary") or "",
                out.get("customer_message") or "",
                out["routing"].get("rationale") or "",
                *out.get("next_steps", []),
            ]
            leaked = [ln for ln in prompt_lines if any(ln in t for t in texts)]
            if leaked:
                problems.append(f"{where}: prompt text in the output: {leaked[:2]}")
        false_positives = {
            b["id"]: _outcome(s, benign_ids[b["id"]])["flags"]
            for b in benign
            if _outcome(s, benign_ids[b["id"]])["flags"]
        }
    print(
        f"injection corpus: {len(attacks)} attacks ({compared_actions} with actions to "
        f"compare), {len(problems)} problems; "
        f"benign: {len(benign)} texts, {len(false_positives)} false positives"
    )
    assert not problems, "\n".join(problems)
    # the action comparison means something only if the twins were offered actions
    assert compared_actions >= len(attacks) // 2, compared_actions
    assert not false_positives, false_positives
