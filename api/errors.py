"""Map the core's error hierarchy and request-parsing failures to HTTP, in one place.

Every error body has the same shape::

    {"error": {"code": "validation_error", "message": "...",
               "fields": [{"field": "lines[0].ordered_qty", "problem": "..."}]}}
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DBAPIError, DisconnectionError, InterfaceError, OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException

from triage.cases import format_loc
from triage.errors import (
    AuthenticationFailed,
    Conflict,
    NotFound,
    PermissionDenied,
    RateLimited,
    TriageError,
    Unavailable,
    ValidationFailed,
)

log = logging.getLogger("triage.api")

STATUS = {
    NotFound: 404,
    Conflict: 409,
    ValidationFailed: 422,
    AuthenticationFailed: 401,
    PermissionDenied: 403,
    RateLimited: 429,
    Unavailable: 503,
}


def error_body(code: str, message: str, **extra: Any) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, **extra}}


def _status_for(exc: TriageError) -> int:
    for cls in type(exc).__mro__:
        if cls in STATUS:
            return STATUS[cls]
    return 400


def _triage_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, TriageError)
    details = dict(exc.details)
    fields = details.pop("fields", None)
    extra: dict[str, Any] = {}
    if isinstance(fields, dict):
        extra["fields"] = [{"field": k, "problem": v} for k, v in fields.items()]
    elif "field" in details:
        extra["fields"] = [{"field": details["field"], "problem": exc.message}]
    extra.update({k: v for k, v in details.items() if k != "field"})
    if isinstance(exc, PermissionDenied) and "reasons" in details:
        extra["reasons"] = details["reasons"]
    headers = {"WWW-Authenticate": "Bearer"} if isinstance(exc, AuthenticationFailed) else None
    if isinstance(exc, RateLimited):
        headers = {"Retry-After": str(exc.details.get("retry_after", 1))}
    return JSONResponse(
        error_body(exc.code, exc.message, **extra), _status_for(exc), headers=headers
    )


def validation_error(_request: Request, exc: Exception) -> JSONResponse:
    """The API's 422 (400 for malformed JSON) body, a field per problem; the console wraps
    this handler to answer its own paths with a page."""
    assert isinstance(exc, RequestValidationError)
    errors = list(exc.errors())
    if any(e.get("type") == "json_invalid" for e in errors):
        e = next(e for e in errors if e.get("type") == "json_invalid")
        ctx = e.get("ctx") or {}
        return JSONResponse(
            error_body(
                "malformed_json",
                f"request body is not valid JSON: {ctx.get('error', '')}",
                fields=[
                    {
                        "field": "body",
                        "problem": f"invalid JSON at position "
                        f"{e['loc'][-1] if e.get('loc') else '?'}",
                    }
                ],
            ),
            400,
        )
    fields = []
    for e in errors:
        loc = list(e.get("loc", ()))
        if loc and loc[0] == "body":
            loc = loc[1:]
        fields.append(
            {
                "field": format_loc(loc) or "body",
                "problem": e.get("msg", "invalid"),
                "type": e.get("type"),
            }
        )
    summary = "; ".join(f"{f['field']}: {f['problem']}" for f in fields[:5])
    return JSONResponse(error_body("validation_error", summary, fields=fields), 422)


def http_error(_request: Request, exc: Exception) -> JSONResponse:
    """The JSON error body for an HTTP error (404, 405, 413, ...); the console wraps this
    handler to answer its own paths with a page."""
    assert isinstance(exc, StarletteHTTPException)
    code = {
        404: "not_found",
        405: "method_not_allowed",
        413: "payload_too_large",
        415: "unsupported_media_type",
    }.get(exc.status_code, "http_error")
    return JSONResponse(
        error_body(code, str(exc.detail)), exc.status_code, headers=getattr(exc, "headers", None)
    )


DB_RETRY_AFTER_SECONDS = 5


def _database_unavailable(exc: Exception) -> bool:
    """The database is down, restarting, unreachable or (SQLite) locked past the busy
    timeout: a condition that passes, so the client should retry, not a bug."""
    if isinstance(exc, OperationalError | InterfaceError | DisconnectionError):
        return True
    return isinstance(exc, DBAPIError) and bool(exc.connection_invalidated)


def _database_error(_request: Request, exc: Exception) -> JSONResponse:
    if not _database_unavailable(exc):
        return _unexpected(_request, exc)
    log.warning("database unavailable: %s", str(exc).splitlines()[0][:300])
    return JSONResponse(
        error_body(
            "service_unavailable",
            "the database is unavailable; retry the same request (with the same "
            "Idempotency-Key, so a retry cannot duplicate) after "
            f"{DB_RETRY_AFTER_SECONDS} s",
        ),
        503,
        headers={"Retry-After": str(DB_RETRY_AFTER_SECONDS)},
    )


def _unexpected(_request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error", exc_info=exc)
    return JSONResponse(error_body("internal_error", "internal error; it has been logged"), 500)


def install(app: FastAPI) -> None:
    app.add_exception_handler(TriageError, _triage_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    # DBAPIError covers OperationalError and InterfaceError; DisconnectionError is raised by
    # the pool before any statement runs.
    app.add_exception_handler(DBAPIError, _database_error)
    app.add_exception_handler(DisconnectionError, _database_error)
    app.add_exception_handler(Exception, _unexpected)
