"""The case lifecycle as an explicit state machine.

::

    received ──► triaging ──► awaiting_review ──► in_review ──► resolved
       ▲            │  │            │   ▲            │  │
       │            │  └► failed ───┘   └────────────┘  └► escalated ──► in_review | resolved
       └── (lease expired / retry) ◄────┘

Transitions are split by who may drive them: the pipeline (``SYSTEM``) and people (``HUMAN``).
Anything else is an :class:`~triage.errors.InvalidTransition` (HTTP 409).
"""

from __future__ import annotations

import enum


class Status(enum.StrEnum):
    received = "received"
    triaging = "triaging"
    awaiting_review = "awaiting_review"
    in_review = "in_review"
    resolved = "resolved"
    escalated = "escalated"
    failed = "failed"


S = Status

SYSTEM_TRANSITIONS: dict[Status, frozenset[Status]] = {
    S.received: frozenset({S.triaging, S.failed}),
    S.triaging: frozenset({S.awaiting_review, S.failed, S.received}),
}

HUMAN_TRANSITIONS: dict[Status, frozenset[Status]] = {
    S.awaiting_review: frozenset({S.in_review, S.resolved, S.escalated}),
    S.in_review: frozenset({S.awaiting_review, S.resolved, S.escalated}),
    S.escalated: frozenset({S.in_review, S.resolved}),
    S.failed: frozenset({S.received}),
}

TERMINAL = frozenset({S.resolved})
OPEN_STATUSES = frozenset(s for s in Status if s not in TERMINAL)


def allowed(current: Status, *, by_system: bool) -> frozenset[Status]:
    table = SYSTEM_TRANSITIONS if by_system else HUMAN_TRANSITIONS
    return table.get(current, frozenset())


def can_transition(current: Status, target: Status, *, by_system: bool) -> bool:
    return target in allowed(current, by_system=by_system)
