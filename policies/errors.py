"""Errors raised by the policy layer.

One small hierarchy so the caller (triage/) can map them in one place:

- ``PolicyLoadError``: a policy bundle on disk is broken (parse, schema, manifest, annotations).
  ``problems`` lists every problem found, each naming the file and, where known, the policy id.
- ``PolicyInputError``: an action or context does not fit the loaded policy (unknown action type,
  missing argument, amount without currency, ...). The caller sent something invalid.
- ``FxRateUnavailable``: an amount cannot be converted to the base currency with the FX table
  given (missing or stale rate). Subclass of ``PolicyInputError``; no decision is made, because a
  threshold cannot be judged without the converted amount (fail closed, never auto-execute).
- ``PolicyEvaluationError``: Cedar reported an evaluation error. Cedar skips an erroring policy,
  which for a ``forbid`` would silently widen what is permitted, so any error aborts the decision.
"""

from __future__ import annotations


class PolicyError(Exception):
    """Base class of every error raised by ``policies``."""


class PolicyLoadError(PolicyError):
    """A policy bundle failed to load or validate.

    ``problems`` holds one human-readable line per problem, e.g.
    ``"policy.cedar [billing.credit_note.tier_b]: unrecognized attribute `tierr`"``.
    """

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"invalid policy bundle {source}:\n{lines}")


class PolicyInputError(PolicyError, ValueError):
    """The action or decision context does not fit the loaded policy."""


class FxRateUnavailable(PolicyInputError):
    """No usable FX rate converts the given currency to the policy's base currency."""


class PolicyEvaluationError(PolicyError):
    """Cedar reported an error while evaluating a request; the decision is aborted."""
