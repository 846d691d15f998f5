"""One error hierarchy for the core; api/errors.py maps it to HTTP in one place.

The core never raises HTTP exceptions and never turns a failure into a success value.
"""

from __future__ import annotations

from typing import Any


class TriageError(Exception):
    """Base class. ``code`` is a stable machine-readable identifier."""

    code = "triage_error"

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details


class NotFound(TriageError):
    code = "not_found"


class Conflict(TriageError):
    """The request conflicts with the current state (idempotency, lifecycle, races)."""

    code = "conflict"


class InvalidTransition(Conflict):
    code = "invalid_transition"


class IdempotencyConflict(Conflict):
    code = "idempotency_conflict"


class ValidationFailed(TriageError):
    """Input that passed the schema but breaks a business rule; ``fields`` names the culprits."""

    code = "validation_failed"


class AuthenticationFailed(TriageError):
    code = "unauthenticated"


class PermissionDenied(TriageError):
    code = "forbidden"


class RateLimited(TriageError):
    """Too many requests for one API key; ``retry_after`` (seconds) says when to come back."""

    code = "rate_limited"


class Unavailable(TriageError):
    """A service the request needs (the vector store) failed or cannot be reached; try later."""

    code = "unavailable"
