"""Operations: request ids, structured JSON logs, and the Prometheus ``/metrics`` endpoint.

- :class:`RequestContext` (pure ASGI middleware) gives every request an id (the caller's
  ``X-Request-ID`` when it is a sane token, else a fresh one), echoes it in the response,
  times the request into a latency histogram keyed by route *template* (bounded label set),
  and writes one JSON access-log line on the ``triage.access`` logger.
- :class:`JsonFormatter` renders every log record as one JSON object carrying the request id
  of the request being served; :func:`configure_json_logging` installs it on the root logger.
- :func:`render_metrics` produces the Prometheus text exposition (format 0.0.4): HTTP latency,
  triage latency (from ``suggestion.created`` audit events, folded in incrementally so a scrape
  never rescans the trail), suggestions by engine, LLM fallbacks, queue depth by status and
  approvals pending.
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import secrets
import threading
import time
from bisect import bisect_left
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from triage import actions
from triage.models import ActionRow, AuditEvent, Case

request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "request_id", default=None
)
_REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
access_log = logging.getLogger("triage.access")

HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
STAGES = frozenset({"classify", "retrieve", "advise", "policy"})
TRIAGE_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class Histogram:
    """A thread-safe Prometheus histogram with one label set per key."""

    def __init__(self, name: str, help_text: str, buckets: tuple[float, ...]) -> None:
        self.name = name
        self.help = help_text
        self.buckets = buckets
        self._lock = threading.Lock()
        self._series: dict[tuple[tuple[str, str], ...], list[float]] = {}

    def observe(self, value: float, **labels: str) -> None:
        key = tuple(sorted(labels.items()))
        i = bisect_left(self.buckets, value)
        with self._lock:
            s = self._series.get(key)
            if s is None:
                # per-bucket counts (non-cumulative), then +Inf, sum
                s = self._series[key] = [0.0] * (len(self.buckets) + 2)
            s[i] += 1
            s[-1] += value

    def lines(self) -> Iterable[str]:
        yield f"# HELP {self.name} {self.help}"
        yield f"# TYPE {self.name} histogram"
        with self._lock:
            series = {k: list(v) for k, v in self._series.items()}
        for key, s in sorted(series.items()):
            base = ",".join(f'{k}="{_esc(v)}"' for k, v in key)
            sep = "," if base else ""
            cum = 0.0
            for bound, n in zip(self.buckets, s, strict=False):
                cum += n
                yield f'{self.name}_bucket{{{base}{sep}le="{bound}"}} {cum:.0f}'
            cum += s[len(self.buckets)]
            yield f'{self.name}_bucket{{{base}{sep}le="+Inf"}} {cum:.0f}'
            yield f"{self.name}_sum{{{base}}} {s[-1]:.6f}"
            yield f"{self.name}_count{{{base}}} {cum:.0f}"


def _esc(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class Metrics:
    """Process-local metrics; one instance per app."""

    def __init__(self) -> None:
        self.http = Histogram(
            "triage_http_request_duration_seconds",
            "Server time per HTTP request, by method, route template and status class.",
            HTTP_BUCKETS,
        )
        self.triage = Histogram(
            "triage_pipeline_duration_seconds",
            "Triage pipeline time per case (classify, retrieve, advise, policy preview, store), "
            "from suggestion.created audit events.",
            TRIAGE_BUCKETS,
        )
        self.stages = Histogram(
            "triage_stage_duration_seconds",
            "Time a case spent in each triage stage (classify, retrieve, advise, policy): the "
            "stage's time for the batch the case was triaged in, from suggestion.created events.",
            TRIAGE_BUCKETS,
        )
        self.suggestions: dict[str, int] = {}
        # (model, outcome) -> advisor calls to an LLM; outcome "ok" when its answer was used
        self.llm_calls: dict[tuple[str, str], int] = {}
        self.llm_tokens: dict[str, int] = {"prompt": 0, "completion": 0}
        self.fallbacks: dict[str, int] = {}
        self._audit_seq = 0
        self._fold_lock = threading.Lock()

    def fold_audit(self, session: Session, batch: int = 5000) -> None:
        """Fold ``suggestion.created`` events newer than the last scrape into the counters."""
        with self._fold_lock:
            while True:
                rows = session.execute(
                    select(AuditEvent.seq, AuditEvent.payload)
                    .where(AuditEvent.action == "suggestion.created")
                    .where(AuditEvent.seq > self._audit_seq)
                    .order_by(AuditEvent.seq)
                    .limit(batch)
                ).all()
                for seq, payload in rows:
                    self._audit_seq = seq
                    try:
                        p = json.loads(payload)
                    except ValueError:
                        continue
                    engine = str(p.get("engine") or "unknown")
                    self.suggestions[engine] = self.suggestions.get(engine, 0) + 1
                    reason = p.get("fallback_reason")
                    if reason:
                        kind = _reason_kind(str(reason))
                        self.fallbacks[kind] = self.fallbacks.get(kind, 0) + 1
                    ms = p.get("elapsed_ms")
                    if isinstance(ms, int | float):
                        self.triage.observe(ms / 1000.0, engine=engine)
                    model = p.get("llm_model")
                    if model:
                        outcome = "ok" if engine == "llm" else "failed"
                        n = 2 if p.get("repair_attempted") else 1
                        k = (str(model), outcome)
                        self.llm_calls[k] = self.llm_calls.get(k, 0) + n
                        for kind in ("prompt", "completion"):
                            v = p.get(f"{kind}_tokens")
                            if isinstance(v, int):
                                self.llm_tokens[kind] += v
                    stages = p.get("stage_ms")
                    if isinstance(stages, dict):
                        for stage, sms in stages.items():
                            if stage in STAGES and isinstance(sms, int | float):
                                self.stages.observe(sms / 1000.0, stage=stage)
                if len(rows) < batch:
                    return


def _reason_kind(reason: str) -> str:
    # Fallback reasons are free text ("rules only", "llm timeout after 30s", ...); the metric
    # label keeps the first two words so the label set stays small.
    words = re.findall(r"[a-z_]+", reason.lower())[:2]
    return "_".join(words) or "other"


def render_metrics(session: Session, metrics: Metrics) -> str:
    metrics.fold_audit(session)
    out: list[str] = []
    out += metrics.http.lines()
    out += metrics.triage.lines()
    out += metrics.stages.lines()
    out.append("# HELP triage_suggestions_total Suggestions stored, by engine (llm or offline).")
    out.append("# TYPE triage_suggestions_total counter")
    for engine, n in sorted(metrics.suggestions.items()):
        out.append(f'triage_suggestions_total{{engine="{_esc(engine)}"}} {n}')
    out.append(
        "# HELP triage_llm_fallbacks_total Suggestions where the LLM was not used or failed and "
        "the offline engine answered, by reason."
    )
    out.append("# TYPE triage_llm_fallbacks_total counter")
    for reason, n in sorted(metrics.fallbacks.items()):
        out.append(f'triage_llm_fallbacks_total{{reason="{_esc(reason)}"}} {n}')
    out.append(
        "# HELP triage_llm_calls_total Advisor requests to the LLM (a repair attempt counts as a "
        "second), by model and outcome (ok: answer used; failed: unavailable, refused or in "
        "breach of the output contract, so the offline engine answered)."
    )
    out.append("# TYPE triage_llm_calls_total counter")
    for (model, outcome), n in sorted(metrics.llm_calls.items()):
        out.append(f'triage_llm_calls_total{{model="{_esc(model)}",outcome="{outcome}"}} {n}')
    out.append("# HELP triage_llm_tokens_total LLM tokens as reported by the endpoint.")
    out.append("# TYPE triage_llm_tokens_total counter")
    for kind, n in sorted(metrics.llm_tokens.items()):
        out.append(f'triage_llm_tokens_total{{kind="{kind}"}} {n}')
    out.append("# HELP triage_cases Cases by lifecycle status (queue depth = open statuses).")
    out.append("# TYPE triage_cases gauge")
    for status, n in session.execute(
        select(Case.status, func.count()).group_by(Case.status).order_by(Case.status)
    ).all():
        out.append(f'triage_cases{{status="{_esc(status)}"}} {n}')
    pending = session.scalar(
        select(func.count()).select_from(ActionRow).where(ActionRow.status == actions.PENDING)
    )
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    overdue = session.scalar(
        select(func.count())
        .select_from(ActionRow)
        .where(ActionRow.status == actions.PENDING, ActionRow.due_at < now)
    )
    out.append("# HELP triage_approvals_pending Actions waiting for approval.")
    out.append("# TYPE triage_approvals_pending gauge")
    out.append(f"triage_approvals_pending {pending or 0}")
    out.append("# HELP triage_approvals_overdue Pending approvals past their SLA due time.")
    out.append("# TYPE triage_approvals_overdue gauge")
    out.append(f"triage_approvals_overdue {overdue or 0}")
    return "\n".join(out) + "\n"


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ts, level, logger, msg, request_id, and any ``extra`` dict
    passed as ``extra={"fields": {...}}``."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        rid = request_id_var.get()
        if rid:
            doc["request_id"] = rid
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            doc.update(fields)
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str)


def configure_json_logging(level: int = logging.INFO) -> None:
    """Send every log record to stderr as JSON (call once at process start)."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # uvicorn's own access log duplicates ours (without the request id)
    logging.getLogger("uvicorn.access").disabled = True


class RequestContext:
    """Request id, latency histogram and one JSON access-log line per HTTP request."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = dict(scope["headers"]).get(b"x-request-id", b"").decode("latin-1")
        rid = incoming if _REQUEST_ID_RE.match(incoming) else secrets.token_hex(8)
        token = request_id_var.set(rid)
        started = time.perf_counter()
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", rid.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            elapsed = time.perf_counter() - started
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            self.metrics.http.observe(
                elapsed, method=scope["method"], route=template, status=f"{status // 100}xx"
            )
            access_log.info(
                "request",
                extra={
                    "fields": {
                        "method": scope["method"],
                        "path": scope["path"],
                        "route": template,
                        "status": status,
                        "duration_ms": round(elapsed * 1000, 2),
                    }
                },
            )
            request_id_var.reset(token)
