"""The console's pages and form handlers under ``/console``, plus ``/metrics``.

Handlers follow the JSON API's rule: parse, call one service in ``triage`` (the very functions
the ``/v1`` routes call, so every business rule, policy decision and audit event is the same),
respond. Forms use post/redirect/get: success and failure messages travel in a signed flash
cookie to the page the user came from.

Role matrix (same as the API): agents (and admins) work cases and actions; approvers (and
admins) approve or reject; auditors (and admins) read the audit trail, provenance, the
segregation-of-duties report and the classifier models (``model_pages``: admins also train,
evaluate, activate and roll back); every signed-in role may read cases and the dashboard.
"""

from __future__ import annotations

import base64
import csv
import hmac
import io
import json
import logging
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import (
    HTMLResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from fastapi.templating import Jinja2Templates
from pydantic import ValidationError
from starlette.datastructures import FormData, UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from api import errors
from api.console import charts
from api.console.observability import Metrics, RequestContext, render_metrics
from api.console.security import (
    COOKIE_PATH,
    CSRF_COOKIE,
    FLASH_COOKIE,
    SESSION_COOKIE,
    ConsoleForbidden,
    ConsoleGuard,
    ConsoleState,
    CsrfFailed,
    Form,
    SignInRequired,
    csrf_for,
    login_url,
    new_csrf,
    safe_next,
    session_token,
    set_cookie,
    state,
)
from api.console.settings import ConsoleSettings
from api.deps import AppContext, ContextDep
from contracts.suggestion import (
    AdjustInventory,
    CaseExplanation,
    ContactCarrier,
    Escalate,
    IssueCreditNote,
    NotifyCustomer,
    Rebill,
    Refund,
    Reship,
    WriteOff,
)
from triage import actions, audit, cases, classification, dashboard, jobs, users, webhooks
from triage.auth import Principal, Role
from triage.common import now_ts, parse_ts, to_ts
from triage.errors import (
    AuthenticationFailed,
    NotFound,
    PermissionDenied,
    TriageError,
    ValidationFailed,
)
from triage.lifecycle import Status, allowed
from triage.models import ActionRow
from triage.settings import PRIORITIES

log = logging.getLogger("triage.console")

HERE = Path(__file__).parent
STATIC_DIR = HERE / "static"
STATIC_TYPES = {".css": "text/css", ".js": "text/javascript", ".svg": "image/svg+xml"}

R = Role
PEOPLE = (R.agent, R.approver, R.auditor, R.admin)
Signed = Annotated[Principal, Depends(ConsoleGuard(*PEOPLE))]
AgentP = Annotated[Principal, Depends(ConsoleGuard(R.agent, R.admin))]
ApproverP = Annotated[Principal, Depends(ConsoleGuard(R.approver, R.admin))]
AuditorP = Annotated[Principal, Depends(ConsoleGuard(R.auditor, R.admin))]
AdminP = Annotated[Principal, Depends(ConsoleGuard(R.admin))]
# the case page shows this many of a case's latest work notes (older ones: API, audit trail)
CASE_PAGE_NOTES = 200
# who writes work notes: everyone who works cases or decides on them (auditors only read)
NoteP = Annotated[Principal, Depends(ConsoleGuard(R.agent, R.approver, R.admin))]

ACTION_MODELS: dict[str, Any] = {
    m.model_fields["type"].default.value: m
    for m in (
        IssueCreditNote,
        WriteOff,
        AdjustInventory,
        Rebill,
        Refund,
        Reship,
        ContactCarrier,
        NotifyCustomer,
        Escalate,
    )
}
# the queue's "Held by" filter: value -> label
HELD_CHOICES = {"me": "Me", "nobody": "Nobody (unclaimed)"}
TRANSITION_LABELS = {
    Status.in_review: "Claim and start work",
    Status.awaiting_review: "Release to the queue",
    Status.resolved: "Resolve",
    Status.escalated: "Escalate",
    Status.received: "Retry triage",
}

router = APIRouter(prefix=COOKIE_PATH, include_in_schema=False)
ops_router = APIRouter(tags=["operations"])
templates = Jinja2Templates(directory=str(HERE / "templates"))


# ---------------------------------------------------------------- template helpers


def _countdown(ts: str | None, now: str | None = None) -> str:
    """'due in 3 h 10 min' / 'overdue by 2 d 4 h' for a canonical timestamp."""
    if not ts:
        return ""
    delta = parse_ts(ts) - (parse_ts(now) if now else datetime.now(UTC))
    secs = int(delta.total_seconds())
    text = _span(abs(secs))
    return f"in {text}" if secs >= 0 else f"overdue by {text}"


def _span(secs: int) -> str:
    d, rem = divmod(secs, 86400)
    h, rem = divmod(rem, 3600)
    m = rem // 60
    if d:
        return f"{d} d {h} h"
    if h:
        return f"{h} h {m} min"
    return f"{m} min"


def _short_ts(ts: str | None) -> str:
    return f"{ts[:10]} {ts[11:16]} UTC" if ts else ""


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{v * 100:.1f}%"


def _hours(v: float | None) -> str:
    return charts.duration(v)


def _pretty(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True, default=str)


templates.env.filters.update(
    countdown=_countdown, short_ts=_short_ts, pct=_pct, hours=_hours, pretty=_pretty
)


def _nav(p: Principal | None) -> list[tuple[str, str, str]]:
    if p is None:
        return []
    items = []
    if p.role in (R.agent, R.admin):
        items.append(("queue", "Queue", f"{COOKIE_PATH}/queue"))
    if p.role in (R.approver, R.admin):
        items.append(("approvals", "Approvals", f"{COOKIE_PATH}/approvals"))
    if p.role in (R.auditor, R.admin):
        items.append(("audit", "Audit", f"{COOKIE_PATH}/audit"))
    items.append(("dashboard", "Dashboard", f"{COOKIE_PATH}/dashboard"))
    team = "Team" if p.role in dashboard.TEAM_VIEWERS else "My work"
    items.append(("team", team, f"{COOKIE_PATH}/team"))
    if p.role in (R.agent, R.approver, R.auditor, R.admin):
        items.append(("knowledge", "Knowledge", f"{COOKIE_PATH}/knowledge"))
    if p.role in (R.auditor, R.admin):
        items.append(("models", "Models", f"{COOKIE_PATH}/admin/models"))
    if p.role == R.admin:
        items.append(("users", "Users", f"{COOKIE_PATH}/admin/users"))
        items.append(("dead-letters", "Dead letters", f"{COOKIE_PATH}/admin/dead-letters"))
    return items


SECURITY_HEADERS = {
    "Cache-Control": "no-store",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; style-src 'self'; "
    "script-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
}


def _read_flash(request: Request) -> dict[str, str] | None:
    raw = state(request).unsign(request.cookies.get(FLASH_COOKIE), "flash")
    if raw is None:
        return None
    try:
        data = json.loads(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)))
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


_HTTP_ERROR_PAGES = {
    404: ("Not found", "There is no console page at this address."),
    405: ("Not available", "This address does not take that kind of request."),
    413: (
        "The upload is too large",
        "The server refused it before reading it ({detail}). Go back and choose a smaller "
        "file; an administrator can raise TRIAGE_MAX_UPLOAD_BYTES for data-set uploads.",
    ),
}
"""Title and message of the page for an HTTP error on a console path."""


def render(request: Request, name: str, context: dict[str, Any], status: int = 200) -> HTMLResponse:
    principal: Principal | None = getattr(request.state, "principal", None)
    flash = _read_flash(request)
    csrf = csrf_for(request)
    response = templates.TemplateResponse(
        request,
        name,
        {
            **context,
            "me": principal,
            "csrf": csrf,
            "flash": flash,
            "nav": _nav(principal),
            "now": now_ts(),
            "R": R,
        },
        status_code=status,
    )
    new = getattr(request.state, "new_csrf", None)
    if new:
        set_cookie(
            response, request, CSRF_COOKIE, new, max_age=None, httponly=False, samesite="strict"
        )
    if flash:
        response.delete_cookie(FLASH_COOKIE, path=COOKIE_PATH)
    response.headers.update(SECURITY_HEADERS)
    return response


def redirect(request: Request, url: str, message: str | None = None, kind: str = "ok") -> Response:
    response = RedirectResponse(url, status_code=303)
    if message:
        raw = (
            base64.urlsafe_b64encode(json.dumps({"kind": kind, "text": message[:600]}).encode())
            .decode()
            .rstrip("=")
        )
        value = f"{raw}.{state(request).sign(raw, 'flash')}"
        set_cookie(response, request, FLASH_COOKIE, value, max_age=60)
    return response


def _error_text(exc: TriageError) -> str:
    fields = exc.details.get("fields")
    if isinstance(fields, dict) and fields:
        return exc.message + " (" + "; ".join(f"{k}: {v}" for k, v in fields.items()) + ")"
    return exc.message


def _text(form: FormData, name: str, max_len: int = 5000) -> str:
    value = form.get(name)
    return value.strip()[:max_len] if isinstance(value, str) else ""


def _whole_number(raw: str) -> int | None:
    """``raw`` as a non-negative int when it is ASCII digits only, else ``None``.
    ``str.isdigit`` alone accepts '²' and other digits that ``int()`` refuses (a 500)."""
    return int(raw) if raw.isascii() and raw.isdigit() else None


# ---------------------------------------------------------------- sign-in


class SignInThrottle:
    """Slows password guessing: after ``limit`` failures for one username (or one client) in
    ``window`` seconds, further attempts are refused until the window passes. Process-local:
    with several replicas the effective limit is per replica, and argon2's cost still applies.
    """

    def __init__(self, limit: int = 5, window: float = 900.0) -> None:
        self.limit = limit
        self.window = window
        self._fails: dict[str, list[float]] = {}
        self._lock = threading.Lock()

    def blocked(self, *keys: str) -> bool:
        now = time.monotonic()
        with self._lock:
            for k in keys:
                recent = [t for t in self._fails.get(k, []) if now - t < self.window]
                self._fails[k] = recent
                if len(recent) >= self.limit:
                    return True
        return False

    def failed(self, *keys: str) -> None:
        with self._lock:
            for k in keys:
                self._fails.setdefault(k, []).append(time.monotonic())
                if len(self._fails) > 100_000:
                    self._fails.clear()

    def succeeded(self, key: str) -> None:
        with self._lock:
            self._fails.pop(key, None)


def _home_for(p: Principal) -> str:
    if p.role == R.approver:
        return f"{COOKIE_PATH}/approvals"
    if p.role == R.auditor:
        return f"{COOKIE_PATH}/audit"
    return f"{COOKIE_PATH}/queue"


@router.get("/")
def home(p: Signed) -> Response:
    return RedirectResponse(_home_for(p), status_code=303)


@router.get("/login", name="console_login")
def login_page(request: Request, ctx: ContextDep, next: str | None = None) -> Response:
    token = session_token(request)
    if token:
        try:
            with ctx.db.read() as s:
                p = users.resolve(s, token)
            return RedirectResponse(safe_next(next) if next else _home_for(p), status_code=303)
        except AuthenticationFailed:
            pass
    return render(request, "login.html", {"next": safe_next(next), "username": ""})


@router.post("/login")
def login(request: Request, ctx: ContextDep, form: Form) -> Response:
    username = _text(form, "username", 64).lower()
    password = form.get("password")
    target = safe_next(_text(form, "next", 500))
    client = request.client.host if request.client else None
    throttle: SignInThrottle = request.app.state.console_throttle
    keys = (f"u:{username}", f"c:{client}")
    if throttle.blocked(*keys):
        return render(
            request,
            "login.html",
            {
                "next": target,
                "username": username,
                "error": "Too many failed attempts. Wait 15 minutes or ask an administrator.",
            },
            status=429,
        )
    st = state(request)
    try:
        with ctx.db.write() as s:
            signed = users.sign_in(
                s,
                username,
                password if isinstance(password, str) else "",
                ttl=timedelta(hours=st.settings.console_session_hours),
                client=client,
            )
    except AuthenticationFailed:
        throttle.failed(*keys)
        with ctx.db.write() as s:
            users.audit_failed_sign_in(s, username, client)
        return render(
            request,
            "login.html",
            {"next": target, "username": username, "error": "Unknown username or wrong password."},
            status=401,
        )
    throttle.succeeded(keys[0])
    response = RedirectResponse(target, status_code=303)
    max_age = int(st.settings.console_session_hours * 3600)
    set_cookie(
        response,
        request,
        SESSION_COOKIE,
        f"{signed.token}.{st.sign(signed.token, 'session')}",
        max_age=max_age,
    )
    # A new CSRF token bound to the new session (the pre-sign-in one stops working).
    set_cookie(
        response,
        request,
        CSRF_COOKIE,
        new_csrf(st, signed.token),
        max_age=None,
        httponly=False,
        samesite="strict",
    )
    return response


@router.post("/logout")
def logout(request: Request, ctx: ContextDep, form: Form) -> Response:
    token = session_token(request)
    if token:
        with ctx.db.write() as s:
            users.sign_out(s, token)
    response = redirect(request, f"{COOKIE_PATH}/login", "You are signed out.")
    response.delete_cookie(SESSION_COOKIE, path=COOKIE_PATH)
    response.delete_cookie(CSRF_COOKIE, path=COOKIE_PATH)
    return response


@router.get("/static/{name}")
def static(name: str) -> Response:
    path = STATIC_DIR / name
    media = STATIC_TYPES.get(path.suffix)
    if media is None or "/" in name or name.startswith(".") or not path.is_file():
        return PlainTextResponse("not found", status_code=404)
    return Response(
        path.read_bytes(),
        media_type=media,
        headers={"Cache-Control": "public, max-age=3600", "X-Content-Type-Options": "nosniff"},
    )


# ---------------------------------------------------------------- agent queue and case page


@router.get("/queue")
def queue(
    request: Request,
    ctx: ContextDep,
    p: AgentP,
    status: Annotated[str | None, Query(max_length=32)] = None,
    exception_type: Annotated[str | None, Query(max_length=32)] = None,
    queue: Annotated[str | None, Query(max_length=64)] = None,
    priority: Annotated[str | None, Query(max_length=2)] = None,
    q: Annotated[str | None, Query(max_length=128)] = None,
    breached: bool = False,
    held: Annotated[str | None, Query(max_length=128)] = None,
    cursor: Annotated[str | None, Query(max_length=400)] = None,
) -> Response:
    """``held=me``: the cases the signed-in agent holds; ``held=nobody``: unclaimed ones;
    ``held=<name>``: the cases that person holds."""
    from contracts.case import ExceptionType

    held = held or None
    holder = p.actor.id if held == "me" else None if held in (None, "nobody") else held

    statuses = (status,) if status in dashboard.OPEN_FOR_AGENTS else dashboard.OPEN_FOR_AGENTS
    f = dashboard.QueueFilter(
        statuses=statuses,
        exception_type=exception_type or None,
        queue=queue or None,
        priority=priority or None,
        search=q or None,
        sla_breached=breached,
        assignee=holder,
        unassigned=held == "nobody",
    )
    cs: ConsoleState = state(request)
    try:
        with ctx.db.read() as s:
            rows, nxt = dashboard.queue_page(
                s, f, limit=cs.settings.console_page_size, cursor=cursor
            )
            counts = dashboard.queue_counts(s)
            holders = dashboard.holder_counts(s)
            assignees = cases.case_workers(s)
            s.expunge_all()  # rows are rendered after the read transaction ends
    except TriageError as exc:
        return redirect(request, f"{COOKIE_PATH}/queue", _error_text(exc), "error")
    params = {
        k: v
        for k, v in {
            "status": status,
            "exception_type": exception_type,
            "queue": queue,
            "priority": priority,
            "q": q,
            "breached": "true" if breached else None,
            "held": held,
        }.items()
        if v
    }
    return render(
        request,
        "queue.html",
        {
            "rows": rows,
            "counts": counts,
            "filters": params,
            "next_url": f"?{urlencode({**params, 'cursor': nxt})}" if nxt else None,
            "first_url": f"?{urlencode(params)}" if cursor else None,
            "statuses": dashboard.OPEN_FOR_AGENTS,
            "types": [t.value for t in ExceptionType],
            "queues": ctx.settings.queues,
            "priorities": PRIORITIES,
            "held_choices": HELD_CHOICES
            | ({held: held} if held and held not in HELD_CHOICES else {}),
            "holders": holders,
            "assignees": assignees,
            "back": f"{COOKIE_PATH}/queue" + (f"?{urlencode(params)}" if params else ""),
            "my_id": p.actor.id,
            # the cases this person may tick for bulk assignment
            "assignable": {c.id for c in rows if cases.may_assign(p.actor, c.status, c.assignee)},
            "section": "queue",
        },
    )


def _action_fields(row_type: str, body: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Form fields for one action type, prefilled from ``body``; type and evidence are fixed."""
    model = ACTION_MODELS[row_type]
    out = []
    for name, info in model.model_fields.items():
        if name in ("type", "evidence"):
            continue
        value = (body or {}).get(name)
        out.append(
            {
                "name": name,
                "label": name.replace("_", " ").capitalize(),
                "value": "" if value is None else str(value),
                "required": info.is_required(),
                "choices": _choices(info.annotation),
            }
        )
    return out


def _choices(annotation: Any) -> list[str] | None:
    from typing import Literal, get_args, get_origin

    if get_origin(annotation) is Literal:
        return [str(a) for a in get_args(annotation)]
    return None


def _case_context(s: Any, ctx: Any, row: Any, p: Principal) -> dict[str, Any]:
    sugg = cases.current_suggestion(s, row)
    body = sugg.body if sugg else None
    acts = dashboard.case_actions(s, row.id)
    approvals = dashboard.approvals_by_action(s, [a.id for a in acts])
    similar_ids = [c["case_id"] for c in (body or {}).get("similar_cases", [])]
    similar = dashboard.similar_resolutions(s, similar_ids)
    classifier = (body or {}).get("classifier") or {}
    categories = sorted(
        set((classifier.get("category") or {}).get("probabilities", {}))
        | ({row.category} if row.category else set())
    )
    can_work = p.role in (R.agent, R.admin)
    can_assign = can_work and cases.may_assign(p.actor, row.status, row.assignee)
    open_case = row.status not in (
        Status.received.value,
        Status.triaging.value,
        Status.resolved.value,
    )
    events = dashboard.case_events(s, row.id, 300)
    messages = [audit.event_dict(e) for e in events if e.action == "case.message_sent"]
    handed = cases.last_assignment(s, row)
    return {
        "case": row,
        "payload": row.payload,
        "suggestion": body,
        "revision": sugg.revision if sugg else None,
        "policy_preview": (sugg.decisions or {}).get("items", []) if sugg else [],
        "actions": acts,
        "approvals": approvals,
        "action_fields": {a.id: _action_fields(a.action_type, a.body) for a in acts},
        "editable": set(actions.EDITABLE),
        "similar": similar,
        "categories": categories,
        "queues": ctx.settings.queues,
        "priorities": PRIORITIES,
        "transitions": [
            (t.value, TRANSITION_LABELS.get(t, t.value))
            for t in sorted(allowed(Status(row.status), by_system=False), key=lambda x: x.value)
        ],
        "can_work": can_work and open_case,
        "held_by_other": bool(
            row.assignee and row.assignee != p.actor.id and row.status != Status.resolved.value
        ),
        "can_transition": can_work,
        "can_assign": can_assign,
        "my_id": p.actor.id,
        "assignees": [n for n in cases.case_workers(s) if n != row.assignee] if can_assign else [],
        "action_types": sorted(ACTION_MODELS),
        "messages": messages,
        "assigned": audit.event_dict(handed) if handed else None,
        "notes": [audit.event_dict(e) for e in cases.latest_notes(s, row.id, CASE_PAGE_NOTES)],
        "notes_cap": CASE_PAGE_NOTES,
        "can_note": p.role in (R.agent, R.approver, R.admin),
        "events": [audit.event_dict(e) for e in events[-25:]],
        "section": "queue",
    }


@router.get("/cases/{case_id}")
def case_page(
    request: Request,
    case_id: str,
    ctx: ContextDep,
    p: Signed,
    new_action: Annotated[str | None, Query(max_length=32)] = None,
) -> Response:
    try:
        with ctx.db.read() as s:
            row = cases.get(s, case_id)
            context = _case_context(s, ctx, row, p)
            s.expunge_all()
    except NotFound:
        return render(
            request,
            "error.html",
            {"title": "Case not found", "message": f"There is no case {case_id}."},
            status=404,
        )
    if new_action in ACTION_MODELS:
        payload = row.payload
        refs = payload.get("references", {})
        defaults = {
            "invoice_id": refs.get("invoice_id"),
            "order_id": refs.get("order_id"),
            "warehouse_id": refs.get("warehouse_id"),
            "carrier_id": refs.get("carrier_id"),
            "customer_id": refs.get("customer", {}).get("id"),
            "currency": (payload.get("amount_in_dispute") or {}).get("currency"),
            "amount": (payload.get("amount_in_dispute") or {}).get("amount"),
        }
        context["new_action"] = new_action
        context["new_fields"] = _action_fields(new_action, defaults)
    context["why"], context["why_error"] = _why(ctx, row.id, row.payload, context["suggestion"])
    return render(request, "case.html", context)


WHY_TOP = 6  # evidence items per target on the case page (the API serves up to 50)


def _why(
    ctx: AppContext, case_id: str, payload: dict[str, Any], suggestion: dict[str, Any] | None
) -> tuple[CaseExplanation | None, str | None]:
    """The classifier's explanation for the case page, or why there is none."""
    view = (suggestion or {}).get("classifier")
    if view is None:
        return None, None
    try:
        return (
            classification.explain_classification(
                ctx.settings, case_id, payload, view, top=WHY_TOP
            ),
            None,
        )
    except TriageError as exc:  # the model version is gone or refused: say so on the page
        return None, exc.message


def _case_url(case_id: str, anchor: str = "") -> str:
    return f"{COOKIE_PATH}/cases/{case_id}" + (f"#{anchor}" if anchor else "")


@router.post("/cases/{case_id}/override")
def override(request: Request, case_id: str, ctx: ContextDep, p: AgentP, form: Form) -> Response:
    changes = {k: _text(form, k, 64) or None for k in ("category", "queue", "priority")}
    try:
        with ctx.db.write() as s:
            row = cases.get(s, case_id)
            # Only fields the agent actually changed are overrides (and training labels).
            changed = {k: v for k, v in changes.items() if v is not None and v != getattr(row, k)}
            if not changed:
                return redirect(request, _case_url(case_id, "routing"), "Nothing changed.", "error")
            classification.override(
                s,
                case_id,
                actor=p.actor,
                reason=_text(form, "reason", 2000),
                settings=ctx.settings,
                **changed,
            )
    except TriageError as exc:
        return redirect(request, _case_url(case_id, "routing"), _error_text(exc), "error")
    summary = ", ".join(f"{k} → {v}" for k, v in changed.items())
    return redirect(request, _case_url(case_id, "routing"), f"Override saved: {summary}.")


@router.post("/cases/{case_id}/transition")
def transition(request: Request, case_id: str, ctx: ContextDep, p: AgentP, form: Form) -> Response:
    target = _text(form, "to", 32)
    try:
        status = Status(target)
    except ValueError:
        return redirect(request, _case_url(case_id), f"Unknown status {target!r}.", "error")
    try:
        with ctx.db.write() as s:
            actions.transition_case(
                s,
                case_id,
                status,
                actor=p.actor,
                reason=_text(form, "reason", 2000) or None,
                resolution=_text(form, "resolution", 5000) or None,
                expected_version=_whole_number(_text(form, "version", 12)),
            )
    except TriageError as exc:
        return redirect(request, _case_url(case_id), _error_text(exc), "error")
    if status == Status.received:
        ctx.notify_worker()
    label = TRANSITION_LABELS.get(status, status.value)
    return redirect(request, _case_url(case_id), f"Done: {label.lower()} (now {status.value}).")


@router.post("/cases/{case_id}/assign")
def assign(request: Request, case_id: str, ctx: ContextDep, p: AgentP, form: Form) -> Response:
    """Give the case to a colleague (``cases.assign``, as ``POST /v1/cases/{id}/assignment``)."""
    who = _text(form, "assignee", 128)
    try:
        with ctx.db.write() as s:
            cases.assign(
                s,
                case_id,
                who,
                actor=p.actor,
                reason=_text(form, "reason", 2000) or None,
                expected_version=_whole_number(_text(form, "version", 12)),
                settings=ctx.settings,
            )
    except TriageError as exc:
        return redirect(request, _case_url(case_id), _error_text(exc), "error")
    return redirect(request, _case_url(case_id), f"Case assigned to {who}.")


BULK_ASSIGN_MAX = 100  # one queue page at most; each case is its own transaction


@router.post("/queue/assign")
def bulk_assign(request: Request, ctx: ContextDep, p: AgentP, form: Form) -> Response:
    """Assign the cases ticked on a queue page to one person. Each case is assigned in its
    own transaction, so one refused case (someone else's, resolved meanwhile) does not undo
    the others; the flash message names each refusal and why."""
    back = _text(form, "back", 2000)
    # only ever back to the queue (the field comes from the page, but a form can be forged)
    if (
        not back.startswith(f"{COOKIE_PATH}/queue")
        or "//" in back
        or "\\" in back
        or not back.isprintable()  # no CR/LF into the Location header
    ):
        back = f"{COOKIE_PATH}/queue"
    who = _text(form, "assignee", 128)
    ids = list(dict.fromkeys(v for v in form.getlist("case_id") if isinstance(v, str) and v))
    if not ids:
        return redirect(request, back, "Tick the cases to assign first.", "error")
    if len(ids) > BULK_ASSIGN_MAX:
        return redirect(request, back, f"At most {BULK_ASSIGN_MAX} cases at a time.", "error")
    reason = _text(form, "reason", 2000) or None
    done = 0
    refused: list[str] = []
    for case_id in (i[:64] for i in ids):
        try:
            with ctx.db.write() as s:
                cases.assign(s, case_id, who, actor=p.actor, reason=reason, settings=ctx.settings)
            done += 1
        except TriageError as exc:
            if isinstance(exc, ValidationFailed) and "assignee" in exc.details.get("fields", {}):
                # the person is wrong for every case: say it once, assign nothing
                return redirect(request, back, _error_text(exc), "error")
            refused.append(f"{case_id}: {exc.message}")
    if refused:
        text = f"Assigned {done} of {len(ids)} cases to {who}. Not assigned: " + "; ".join(refused)
        return redirect(request, back, text, "error")
    return redirect(request, back, f"Assigned {done} case(s) to {who}.")


@router.post("/cases/{case_id}/message")
def send_message(
    request: Request, case_id: str, ctx: ContextDep, p: AgentP, form: Form
) -> Response:
    try:
        with ctx.db.write() as s:
            dashboard.send_customer_message(
                s,
                case_id,
                _text(form, "message", 6000),
                actor=p.actor,
                channel=_text(form, "channel", 16) or "email",
            )
    except TriageError as exc:
        return redirect(request, _case_url(case_id, "customer-message"), _error_text(exc), "error")
    return redirect(
        request,
        _case_url(case_id, "customer-message"),
        "Message sent and recorded on the audit trail.",
    )


@router.post("/cases/{case_id}/note")
def add_note(request: Request, case_id: str, ctx: ContextDep, p: NoteP, form: Form) -> Response:
    """Add a work note (``cases.add_note``, as ``POST /v1/cases/{id}/notes``)."""
    try:
        with ctx.db.write() as s:
            cases.add_note(s, case_id, _text(form, "text", cases.MAX_NOTE + 1), actor=p.actor)
    except TriageError as exc:
        return redirect(request, _case_url(case_id, "notes"), _error_text(exc), "error")
    return redirect(request, _case_url(case_id, "notes"), "Note added to the case.")


def _action_from_form(form: FormData, action_type: str, evidence: list[str]) -> Any:
    data: dict[str, Any] = {"type": action_type, "evidence": evidence}
    for f in _action_fields(action_type, None):
        value = _text(form, f"f_{f['name']}", 1000)
        if value:
            data[f["name"]] = value
    return actions.ACTION_ADAPTER.validate_python(data)


def _pydantic_text(exc: ValidationError) -> str:
    """A form's validation problems on one line, each with its field's location."""
    return "; ".join(
        f"{'.'.join(str(x) for x in e['loc']) or 'form'}: {e['msg']}"
        for e in exc.errors(include_url=False)
    )


def upload_name(upload: UploadFile) -> str:
    """An uploaded file's base name, as the browser sent it (never a path), at most 200 chars."""
    return (upload.filename or "").replace("\\", "/").rsplit("/", 1)[-1][:200]


def _validation_text(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(x) for x in e['loc'][1:]) or 'action'}: {e['msg']}"
        for e in exc.errors(include_url=False)
    )


@router.post("/cases/{case_id}/actions")
def create_action(
    request: Request, case_id: str, ctx: ContextDep, p: AgentP, form: Form
) -> Response:
    action_type = _text(form, "action_type", 32)
    if action_type not in ACTION_MODELS:
        return redirect(request, _case_url(case_id, "actions"), "Unknown action type.", "error")
    try:
        action = _action_from_form(form, action_type, [])
        with ctx.db.write() as s:
            row = actions.create(
                s,
                case_id,
                action,
                actor=p.actor,
                policy=actions.load_policy(ctx.settings),
                settings=ctx.settings,
            )
            outcome = row.status
    except ValidationError as exc:
        return redirect(
            request,
            _case_url(case_id, "actions"),
            "Check the action: " + _validation_text(exc),
            "error",
        )
    except TriageError as exc:
        return redirect(request, _case_url(case_id, "actions"), _error_text(exc), "error")
    return redirect(
        request, _case_url(case_id, "actions"), f"Action proposed; the policy says: {outcome}."
    )


def _load_action(s: Any, action_id: str) -> ActionRow:
    row = s.get(ActionRow, action_id)
    if row is None:
        raise NotFound(f"action {action_id} not found")
    assert isinstance(row, ActionRow)
    return row


@router.post("/actions/{action_id}/request")
def request_action(
    request: Request, action_id: str, ctx: ContextDep, p: AgentP, form: Form
) -> Response:
    case_id = _text(form, "case_id", 26)
    try:
        with ctx.db.write() as s:
            row = actions.request(
                s,
                action_id,
                actor=p.actor,
                policy=actions.load_policy(ctx.settings),
                settings=ctx.settings,
                expected_version=_whole_number(_text(form, "version", 12)),
            )
            case_id, outcome = row.case_id, row.status
    except TriageError as exc:
        return redirect(request, _case_url(case_id, "actions"), _error_text(exc), "error")
    return redirect(
        request, _case_url(case_id, "actions"), f"Action requested; the policy says: {outcome}."
    )


@router.post("/actions/{action_id}/edit")
def edit_action(
    request: Request, action_id: str, ctx: ContextDep, p: AgentP, form: Form
) -> Response:
    case_id = _text(form, "case_id", 26)
    try:
        with ctx.db.write() as s:
            current = _load_action(s, action_id)
            case_id = current.case_id
            action = _action_from_form(
                form, current.action_type, list(current.body.get("evidence", []))
            )
            row = actions.edit(
                s,
                action_id,
                action,
                actor=p.actor,
                policy=actions.load_policy(ctx.settings),
                settings=ctx.settings,
                expected_version=_whole_number(_text(form, "version", 12)),
            )
            outcome = row.status
    except ValidationError as exc:
        return redirect(
            request,
            _case_url(case_id, "actions"),
            "Check the action: " + _validation_text(exc),
            "error",
        )
    except TriageError as exc:
        return redirect(request, _case_url(case_id, "actions"), _error_text(exc), "error")
    return redirect(request, _case_url(case_id, "actions"), f"Action saved ({outcome}).")


@router.post("/actions/{action_id}/cancel")
def cancel_action(
    request: Request, action_id: str, ctx: ContextDep, p: AgentP, form: Form
) -> Response:
    case_id = _text(form, "case_id", 26)
    try:
        with ctx.db.write() as s:
            row = actions.cancel(
                s, action_id, actor=p.actor, reason=_text(form, "reason", 2000) or "withdrawn"
            )
            case_id = row.case_id
    except TriageError as exc:
        return redirect(request, _case_url(case_id, "actions"), _error_text(exc), "error")
    return redirect(request, _case_url(case_id, "actions"), "Action withdrawn.")


# ---------------------------------------------------------------- approver inbox


@router.get("/approvals")
def approvals(
    request: Request,
    ctx: ContextDep,
    p: ApproverP,
    cursor: Annotated[str | None, Query(max_length=26)] = None,
) -> Response:
    limit = 25
    items = []
    policy = actions.load_policy(ctx.settings)
    me = actions.principal_for(p.actor, list(p.authorities))
    with ctx.db.read() as s:
        rows = actions.list_actions(s, status=actions.PENDING, limit=limit + 1, after=cursor)
        notes = cases.latest_notes_by_case(s, [r.case_id for r in rows[:limit]], 3)
        for row in rows[:limit]:
            case_row = cases.get(s, row.case_id)
            sugg = cases.current_suggestion(s, case_row)
            body = sugg.body if sugg else {}
            items.append(
                {
                    "action": row,
                    "case": case_row,
                    "customer": case_row.payload.get("references", {}).get("customer", {}),
                    "you": actions.approval_view(s, row, me, policy),
                    "approvals": actions.approvals_of(s, row.id),
                    "summary": body.get("summary"),
                    "citations": body.get("citations", []),
                    # the latest work notes: what the agent checked before asking
                    "notes": [audit.event_dict(e) for e in notes.get(row.case_id, [])],
                    "reasons": (row.decision or {}).get("reasons", []),
                    "fields": _action_fields(row.action_type, row.body),
                    "own": p.name
                    in {row.requested_by, row.proposed_by, row.last_edited_by, row.accepted_by},
                }
            )
        s.expunge_all()
    nxt = rows[limit - 1].id if len(rows) > limit else None
    return render(
        request,
        "approvals.html",
        {
            "items": items,
            "next_url": f"?cursor={nxt}" if nxt else None,
            "authorities": p.authorities,
            "section": "approvals",
        },
    )


def _decide(
    request: Request, action_id: str, ctx: Any, p: Principal, form: FormData, verb: str
) -> Response:
    back = f"{COOKIE_PATH}/approvals#a-{action_id}"
    reason = _text(form, "reason", 2000) or None
    try:
        with ctx.db.write() as s:
            common: dict[str, Any] = {
                "actor": p.actor,
                "authorities": list(p.authorities),
                "action_hash": _text(form, "action_hash", 64),
                "policy": actions.load_policy(ctx.settings),
            }
            if verb == "approval":
                row = actions.approve(s, action_id, settings=ctx.settings, reason=reason, **common)
            else:
                row = actions.reject(s, action_id, reason=reason or "", **common)
            outcome = row.status
    except PermissionDenied as exc:
        with ctx.db.write() as s:
            actions.audit_refusal(s, action_id, p.actor, verb, exc)
        return redirect(request, back, "Not allowed: " + exc.message, "error")
    except TriageError as exc:
        return redirect(request, back, _error_text(exc), "error")
    done = "Approved" if verb == "approval" else "Rejected"
    note = " Quorum met: the action is released." if outcome == actions.APPROVED else ""
    return redirect(request, back, f"{done}.{note}")


@router.post("/actions/{action_id}/approve")
def approve(
    request: Request, action_id: str, ctx: ContextDep, p: ApproverP, form: Form
) -> Response:
    return _decide(request, action_id, ctx, p, form, "approval")


@router.post("/actions/{action_id}/reject")
def reject(request: Request, action_id: str, ctx: ContextDep, p: ApproverP, form: Form) -> Response:
    return _decide(request, action_id, ctx, p, form, "rejection")


# ---------------------------------------------------------------- auditor workspace


def _day(value: str | None, name: str, end: bool = False) -> str | None:
    if not value:
        return None
    try:
        d = datetime.strptime(value, "%Y-%m-%d").replace(tzinfo=UTC)
    except ValueError as exc:
        raise TriageError(f"{name}: use YYYY-MM-DD") from exc
    return to_ts(d + timedelta(days=1) if end else d)


@router.get("/audit")
def audit_page(
    request: Request,
    ctx: ContextDep,
    p: AuditorP,
    case_id: Annotated[str | None, Query(max_length=26)] = None,
    actor_id: Annotated[str | None, Query(max_length=128)] = None,
    action: Annotated[str | None, Query(max_length=64)] = None,
    since: Annotated[str | None, Query(max_length=10)] = None,
    until: Annotated[str | None, Query(max_length=10)] = None,
    after: Annotated[int | None, Query(ge=0)] = None,
) -> Response:
    params = {
        k: v
        for k, v in {
            "case_id": case_id,
            "actor_id": actor_id,
            "action": action,
            "since": since,
            "until": until,
        }.items()
        if v
    }
    limit = 100
    try:
        f = audit.AuditFilter(
            case_id=case_id or None,
            actor_id=actor_id or None,
            action=action or None,
            since=_day(since, "since"),
            until=_day(until, "until", end=True),
            after_seq=after,
        )
    except TriageError as exc:
        return redirect(request, f"{COOKIE_PATH}/audit", exc.message, "error")
    with ctx.db.read() as s:
        rows = audit.list_events(s, f, limit + 1)
        events = [audit.event_dict(e) for e in rows[:limit]]
    nxt = events[-1]["seq"] if len(rows) > limit else None
    verified = request.app.state.console_verify
    return render(
        request,
        "audit.html",
        {
            "events": events,
            "filters": params,
            "next_url": f"?{urlencode({**params, 'after': nxt})}" if nxt else None,
            "export_query": urlencode(params),
            "verified": verified.get("result"),
            "verified_at": verified.get("at"),
            "section": "audit",
        },
    )


@router.get("/audit/verify")
def audit_verify(request: Request, ctx: ContextDep, p: AuditorP) -> Response:
    started = time.perf_counter()
    with ctx.db.read() as s:
        result = audit.verify(s)
        open_changes = [u.as_dict() for u in audit.unfinished(s)]
    request.app.state.console_verify = {
        "result": result.as_dict() | {"unfinished": open_changes},
        "at": now_ts(),
        "seconds": time.perf_counter() - started,
    }
    if result.intact:
        return redirect(
            request,
            f"{COOKIE_PATH}/audit",
            f"Chain verified: {result.events:,} events intact, head {result.head_hash[:16]}…",
        )
    return redirect(
        request,
        f"{COOKIE_PATH}/audit",
        f"Chain BROKEN at sequence {result.first_bad_seq}: {result.problem}",
        "error",
    )


@router.get("/audit/export")
def audit_export(
    request: Request,
    ctx: ContextDep,
    p: AuditorP,
    format: Annotated[str, Query(pattern="^(csv|jsonl)$")] = "jsonl",
    case_id: Annotated[str | None, Query(max_length=26)] = None,
    actor_id: Annotated[str | None, Query(max_length=128)] = None,
    action: Annotated[str | None, Query(max_length=64)] = None,
    since: Annotated[str | None, Query(max_length=10)] = None,
    until: Annotated[str | None, Query(max_length=10)] = None,
) -> Response:
    try:
        f = audit.AuditFilter(
            case_id=case_id or None,
            actor_id=actor_id or None,
            action=action or None,
            since=_day(since, "since"),
            until=_day(until, "until", end=True),
        )
    except TriageError as exc:
        return redirect(request, f"{COOKIE_PATH}/audit", exc.message, "error")

    def body() -> Iterator[str]:
        with ctx.db.read() as s:
            yield from audit.export_lines(audit.iter_events(s, f), format)

    media = "application/x-ndjson" if format == "jsonl" else "text/csv"
    return StreamingResponse(
        body(),
        media_type=media,
        headers={
            "Content-Disposition": f'attachment; filename="audit.{format}"',
            "Cache-Control": "no-store",
        },
    )


@router.get("/audit/cases/{case_id}")
def provenance_page(request: Request, case_id: str, ctx: ContextDep, p: AuditorP) -> Response:
    try:
        with ctx.db.read() as s:
            row = cases.get(s, case_id)
            items = dashboard.provenance(s, case_id)
            acts = dashboard.case_actions(s, case_id)
            approvals = dashboard.approvals_by_action(s, [a.id for a in acts])
            s.expunge_all()
    except NotFound:
        return render(
            request,
            "error.html",
            {"title": "Case not found", "message": f"There is no case {case_id}."},
            status=404,
        )
    return render(
        request,
        "provenance.html",
        {
            "case": row,
            "items": items,
            "events": items[0].events if items else [],
            "actions": acts,
            "approvals": approvals,
            "section": "audit",
        },
    )


@router.get("/audit/sod")
def sod_page(request: Request, ctx: ContextDep, p: AuditorP) -> Response:
    with ctx.db.read() as s:
        rows = dashboard.sod_report(s)
    return render(
        request,
        "sod.html",
        {"rows": rows, "findings": sum(1 for r in rows if r.overlap), "section": "audit"},
    )


# ---------------------------------------------------------------- dashboard


def _dashboard_stats(
    request: Request, ctx: Any, r: dashboard.DateRange
) -> tuple[dashboard.ProcessStats, str]:
    """Figures for ``r`` from the daily roll-ups (``dashboard.rollup_stats``: untouched
    closed days are read, not recomputed), reused for ``console_dashboard_cache_seconds``."""
    ttl = state(request).settings.console_dashboard_cache_seconds
    cache: dict[tuple[str, str], tuple[float, dashboard.ProcessStats, str]] = (
        request.app.state.console_dashboard_cache
    )
    key = (r.start, r.end)
    hit = cache.get(key)
    if ttl > 0 and hit is not None and time.monotonic() - hit[0] < ttl:
        return hit[1], hit[2]
    as_of = now_ts()
    st = dashboard.rollup_stats(ctx.db, r)
    if ttl > 0:
        if len(cache) > 64:
            cache.clear()
        cache[key] = (time.monotonic(), st, as_of)
    return st, as_of


def _date_range(start: str | None, end: str | None) -> dashboard.DateRange:
    """The range a ``from``/``to`` query asks for (inclusive days), else the last 30 days."""
    if start and end:
        return dashboard.DateRange.from_dates(start, end)
    return dashboard.DateRange.last_days(30)


def _last_day(r: dashboard.DateRange) -> str:
    """The range's last day, as the inclusive ``to`` field shows it."""
    return (datetime.strptime(r.end[:10], "%Y-%m-%d") - timedelta(days=1)).strftime("%Y-%m-%d")


@router.get("/dashboard")
def dashboard_page(
    request: Request,
    ctx: ContextDep,
    p: Signed,
    start: Annotated[str | None, Query(alias="from", max_length=10)] = None,
    end: Annotated[str | None, Query(alias="to", max_length=10)] = None,
) -> Response:
    try:
        r = _date_range(start, end)
    except TriageError as exc:
        return redirect(request, f"{COOKIE_PATH}/dashboard", _error_text(exc), "error")
    st, as_of = _dashboard_stats(request, ctx, r)
    days = r.days
    types = sorted({t for d in st.volume_by_day.values() for t in d})
    series = {t: [float(st.volume_by_day.get(d, {}).get(t, 0)) for d in days] for t in types}
    times = [
        (label, d.p50, d.p90)
        for label, d in (
            ("Intake → triage", st.stage_times["intake_to_triage"]),
            ("Intake → first decision", st.stage_times["intake_to_decision"]),
            ("Intake → resolution", st.stage_times["intake_to_resolution"]),
            ("Approval dwell", st.approval_dwell),
            ("Shipment → invoice", st.stage_times["shipment_to_invoice"]),
        )
    ]
    rates = [
        ("Override rate", st.override_rate or 0.0),
        ("Touchless rate", st.touchless_rate or 0.0),
        ("Classifier coverage", st.coverage.get("all") or 0.0),
    ]
    suggestions = sum(v for k, v in st.llm.items() if k != "fallback")
    fallback_rate = st.llm.get("fallback", 0) / suggestions if suggestions else None
    rates.append(("LLM fallback rate", fallback_rate or 0.0))
    chart = {
        "volume": charts.stacked_bars("Exception volume by type per day", days, series),
        "warehouse": charts.hbars("Top warehouses", [(k, float(v)) for k, v in st.by_warehouse]),
        "carrier": charts.hbars(
            "Top carriers", [(k, float(v)) for k, v in st.by_carrier], color=charts.PALETTE[2]
        ),
        "customer": charts.hbars(
            "Top customers", [(k, float(v)) for k, v in st.by_customer], color=charts.PALETTE[3]
        ),
        "times": charts.paired_bars("Stage times (median and 90th percentile)", times),
        "rates": charts.hbars(
            "Rates",
            rates,
            unit="%",
            max_value=1.0,
            color=charts.PALETTE[4],
            width=560,
            label_w=150,
        ),
        "sla": charts.hbars(
            "SLA breaches by priority",
            [(f"{prio} triage", float(v["triage"])) for prio, v in st.sla_breaches.items()]
            + [
                (f"{prio} resolution", float(v["resolution"]))
                for prio, v in st.sla_breaches.items()
            ],
            color=charts.PALETTE[5],
            width=560,
            label_w=150,
        ),
        "money": charts.hbars(
            "Released credits and write-offs by root cause",
            [
                (f"{c} · {t.replace('_', ' ')} ({cur})", float(a))
                for c, t, cur, a, _n in st.money_by_cause[:10]
            ],
            color=charts.PALETTE[1],
            width=1180,
            label_w=420,
        ),
    }
    return render(
        request,
        "dashboard.html",
        {
            "st": st,
            "chart": chart,
            "whole_team": p.role in dashboard.TEAM_VIEWERS,
            "from": r.start[:10],
            "to": _last_day(r),
            "fallback_rate": fallback_rate,
            "suggestions": suggestions,
            "as_of": as_of,
            "section": "dashboard",
        },
    )


@router.get("/team.csv")
def team_csv(
    request: Request,
    ctx: ContextDep,
    p: Signed,
    start: Annotated[str | None, Query(alias="from", max_length=10)] = None,
    end: Annotated[str | None, Query(alias="to", max_length=10)] = None,
) -> Response:
    """The Team page as CSV for a spreadsheet: one row per person, the same columns, the
    median in hours (empty when nobody resolved a case). Names need no formula guard: console
    usernames are ``[a-z0-9._-]`` and API key names may not start with ``= + - @``."""
    try:
        r = _date_range(start, end)
    except TriageError as exc:
        return redirect(request, f"{COOKIE_PATH}/team", _error_text(exc), "error")
    with ctx.db.read() as s:
        rows, _ = dashboard.visible_team(s, r, p.actor)
    columns = list(dashboard.TEAM_ACTIONS.values())
    buf = io.StringIO()
    out = csv.writer(buf)
    out.writerow(["person", "holding", "holding_late", *columns, "median_intake_to_resolution_h"])
    for t in rows:
        p50 = t.resolve_time.p50 if t.resolve_time else None
        out.writerow(
            [
                t.person,
                t.holding,
                t.holding_breached,
                *(t.done.get(c, 0) for c in columns),
                "" if p50 is None else f"{p50 / 3600:.2f}",
            ]
        )
    name = f"team-{r.start[:10]}-to-{_last_day(r)}.csv"
    return Response(
        buf.getvalue(),
        media_type="text/csv; charset=utf-8",
        headers={
            "Content-Disposition": f'attachment; filename="{name}"',
            "Cache-Control": "no-store",
        },
    )


@router.get("/team")
def team_page(
    request: Request,
    ctx: ContextDep,
    p: Signed,
    start: Annotated[str | None, Query(alias="from", max_length=10)] = None,
    end: Annotated[str | None, Query(alias="to", max_length=10)] = None,
) -> Response:
    """Per-person figures (``dashboard.team_figures``) for a date range (default: the last 30
    days). A page of its own, not a dashboard card: it reads the trail's events of the range
    on every view, which the dashboard's roll-ups avoid."""
    try:
        r = _date_range(start, end)
    except TriageError as exc:
        return redirect(request, f"{COOKIE_PATH}/team", _error_text(exc), "error")
    as_of = now_ts()
    with ctx.db.read() as s:
        team, whole_team = dashboard.visible_team(s, r, p.actor)
    return render(
        request,
        "team.html",
        {
            "team": team,
            "whole_team": whole_team,
            "can_queue": p.role in (R.agent, R.admin),
            "team_columns": list(dashboard.TEAM_ACTIONS.values()),
            "from": r.start[:10],
            "to": _last_day(r),
            "as_of": as_of,
            "section": "team",
        },
    )


# ---------------------------------------------------------------- user administration

USERS_URL = f"{COOKIE_PATH}/admin/users"


def _authorities(form: FormData) -> list[str]:
    """Policy authorities from a comma- or space-separated text field."""
    return [a for a in _text(form, "authorities", 500).replace(",", " ").split() if a]


@router.get("/admin/users")
def users_page(request: Request, ctx: ContextDep, p: AdminP) -> Response:
    with ctx.db.read() as s:
        rows = users.list_users(s)
        s.expunge_all()
    return render(
        request,
        "users.html",
        {
            "rows": rows,
            "roles": [r.value for r in users.CONSOLE_ROLES],
            "min_password": users.MIN_PASSWORD,
            "section": "users",
        },
    )


class PasswordsDiffer(Exception):
    """The password and its repetition differ."""


def _passwords(form: FormData) -> str:
    """The new password from a form that asks for it twice."""
    password = form.get("password")
    confirm = form.get("password_confirm")
    if not isinstance(password, str) or password != confirm:
        raise PasswordsDiffer()
    return password


@router.post("/admin/users")
def create_user(request: Request, ctx: ContextDep, p: AdminP, form: Form) -> Response:
    username = _text(form, "username", 64)
    try:
        password = _passwords(form)
        with ctx.db.write() as s:
            created = users.create_user(
                s,
                username,
                password,
                _text(form, "role", 16),
                created_by=p.actor,
                authorities=_authorities(form),
            )
    except PasswordsDiffer:
        return redirect(request, USERS_URL + "#create", "The two passwords differ.", "error")
    except TriageError as exc:
        return redirect(request, USERS_URL + "#create", _error_text(exc), "error")
    return redirect(request, USERS_URL, f"User {created.username} created ({created.role.value}).")


@router.post("/admin/users/{username}/{op}")
def change_user(
    request: Request, username: str, op: str, ctx: ContextDep, p: AdminP, form: Form
) -> Response:
    """``op``: ``disable``, ``enable``, ``password`` or ``role``; each is audited with the
    admin as the actor (the service writes the event)."""
    anchor = f"{USERS_URL}#u-{username}"
    try:
        if op == "password":
            password = _passwords(form)
        with ctx.db.write() as s:
            if op == "disable":
                users.disable_user(s, username, by=p.actor)
                done = f"{username} is disabled; their sessions have ended."
            elif op == "enable":
                users.enable_user(s, username, by=p.actor)
                done = f"{username} is enabled."
            elif op == "password":
                users.set_password(s, username, password, by=p.actor)
                done = f"Password for {username} reset; their sessions have ended."
            elif op == "role":
                users.set_role(s, username, _text(form, "role", 16), _authorities(form), by=p.actor)
                done = f"Role of {username} saved."
            else:
                return PlainTextResponse("not found", status_code=404)
    except PasswordsDiffer:
        return redirect(request, anchor, "The two passwords differ.", "error")
    except TriageError as exc:
        return redirect(request, anchor, _error_text(exc), "error")
    return redirect(request, anchor, done)


# ---------------------------------------------------------------- dead letters

DEAD_URL = f"{COOKIE_PATH}/admin/dead-letters"


@router.get("/admin/dead-letters")
def dead_letters_page(request: Request, ctx: ContextDep, p: AdminP) -> Response:
    """Everything that stopped retrying and waits for an admin: cases the pipeline gave up
    on, dead-lettered triage jobs (procrastinate engine) and webhook deliveries."""
    with ctx.db.read() as s:
        failed_cases = cases.failed_cases(s, limit=100)
        dead_hooks = webhooks.list_messages(s, "dead", 100)
        failed_jobs = jobs.list_jobs(s, "failed", 100) if jobs.enabled(ctx.settings) else None
        s.expunge_all()
    return render(
        request,
        "dead_letters.html",
        {
            "failed_cases": failed_cases,
            "dead_hooks": dead_hooks,
            "failed_jobs": failed_jobs,
            "engine": ctx.settings.job_engine,
            "section": "dead-letters",
        },
    )


@router.post("/admin/dead-letters/{kind}/{item_id}/retry")
def retry_dead_letter(
    request: Request, kind: str, item_id: str, ctx: ContextDep, p: AdminP, form: Form
) -> Response:
    """``kind``: ``case`` (back to ``received`` with a fresh attempt budget), ``job``
    (procrastinate re-drive) or ``webhook`` (re-arm the delivery); each audited."""
    reason = _text(form, "reason", 500) or "re-driven from the console"
    try:
        with ctx.db.write() as s:
            if kind == "case":
                cases.human_transition(s, item_id, Status.received, actor=p.actor, reason=reason)
                done = f"Case {item_id} is back in the queue."
            elif (
                kind == "job"
                and (number := _whole_number(item_id)) is not None
                and jobs.enabled(ctx.settings)
            ):
                jobs.retry_job(s, number, actor=p.actor)
                done = f"Job {item_id} will run again."
            elif kind == "webhook" and (number := _whole_number(item_id)) is not None:
                webhooks.replay(s, number, actor=p.actor)
                done = f"Delivery {item_id} will be sent again."
            else:
                return PlainTextResponse("not found", status_code=404)
    except TriageError as exc:
        return redirect(request, DEAD_URL, _error_text(exc), "error")
    return redirect(request, DEAD_URL, done)


# ---------------------------------------------------------------- operations


@ops_router.get(
    "/metrics",
    summary="Prometheus metrics (text exposition format 0.0.4)",
    response_class=PlainTextResponse,
    responses={
        200: {"content": {"text/plain": {"schema": {"type": "string"}}}},
        401: {
            "description": "TRIAGE_METRICS_TOKEN is set and the bearer token does not match",
            "content": {"text/plain": {"schema": {"type": "string"}}},
        },
    },
)
def metrics(request: Request, ctx: ContextDep) -> Response:
    cs: ConsoleState = request.app.state.console
    token = cs.settings.metrics_token
    if token is not None:
        sent = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
        if not hmac.compare_digest(sent, token.get_secret_value()):
            return PlainTextResponse("unauthorized\n", status_code=401)
    with ctx.db.read() as s:
        text = render_metrics(s, request.app.state.console_metrics)
    return PlainTextResponse(text, media_type="text/plain; version=0.0.4; charset=utf-8")


# ---------------------------------------------------------------- wiring


def install(app: FastAPI, console_settings: ConsoleSettings | None = None) -> None:
    """Mount the console and ``/metrics`` on ``app`` and add the request-context middleware."""
    ctx = app.state.ctx
    cs = console_settings or ConsoleSettings()
    app.state.console = ConsoleState(cs, cs.signing_key(ctx.settings))
    app.state.console_metrics = Metrics()
    app.state.console_throttle = SignInThrottle()
    app.state.console_verify = {}
    app.state.console_dashboard_cache = {}
    app.add_middleware(RequestContext, metrics=app.state.console_metrics)

    async def sign_in_required(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, SignInRequired)
        return RedirectResponse(login_url(exc.next_url), status_code=303)

    async def forbidden(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ConsoleForbidden)
        allowed_roles = ", ".join(sorted(r.value for r in exc.allowed))
        with ctx.db.write() as s:
            audit.append(
                s,
                exc.principal.actor,
                "auth.forbidden",
                {
                    "method": request.method,
                    "path": request.url.path,
                    "reason": f"role {exc.principal.role.value} not in {allowed_roles}",
                },
            )
        return render(
            request,
            "error.html",
            {
                "title": "Not available for your role",
                "message": f"You are signed in as {exc.principal.name} "
                f"({exc.principal.role.value}). This page is for: {allowed_roles}.",
            },
            status=403,
        )

    async def csrf_failed(request: Request, exc: Exception) -> Response:
        return render(
            request,
            "error.html",
            {
                "title": "The form has expired",
                "message": "The page was open too long, or the form did not come from this "
                "console. Go back, reload the page and try again.",
            },
            status=403,
        )

    async def http_error(request: Request, exc: Exception) -> Response:
        """Console paths get a page for an HTTP error (an upload over the size limit, a
        wrong method); everything else keeps the API's JSON body."""
        assert isinstance(exc, StarletteHTTPException)
        if not request.url.path.startswith(COOKIE_PATH + "/"):
            return errors.http_error(request, exc)
        # the detail is an argument, never part of the template: braces in it stay text
        title, message = _HTTP_ERROR_PAGES.get(
            exc.status_code, ("The request was refused", "{detail}")
        )
        return render(
            request,
            "error.html",
            {"title": title, "message": message.format(detail=exc.detail)},
            status=exc.status_code,
        )

    async def invalid_request(request: Request, exc: Exception) -> Response:
        """A console URL or form with a value its page cannot take (a hand-edited link, say)
        gets a page naming the field; the API keeps its JSON 422."""
        assert isinstance(exc, RequestValidationError)
        if not request.url.path.startswith(COOKIE_PATH + "/"):
            return errors.validation_error(request, exc)
        # the location without its first part ("query", "body"): the name on the page
        problems = "; ".join(
            f"{cases.format_loc(list(e['loc'])[1:]) or 'request'}: {e['msg']}"
            for e in list(exc.errors())[:5]
        )
        return render(
            request,
            "error.html",
            {"title": "This page cannot use that value", "message": problems},
            status=422,
        )

    app.add_exception_handler(SignInRequired, sign_in_required)
    app.add_exception_handler(ConsoleForbidden, forbidden)
    app.add_exception_handler(CsrfFailed, csrf_failed)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(RequestValidationError, invalid_request)
    # imported here: the models page module imports this one's helpers
    from api.console import knowledge_page, model_pages

    app.include_router(router)
    app.include_router(model_pages.router)
    app.include_router(knowledge_page.router)
    app.include_router(ops_router)
