"""The console's classifier models page under ``/console/admin/models``.

Admins train a new version from an uploaded labelled file, evaluate any version on one,
activate a version, roll back, start retraining on reviewer labels, and re-choose a version's
operating points (its per-label thresholds) without retraining; auditors read the same pages
without the forms. Every handler calls the functions the ``/v1/models`` routes call
(``api.routes.models``), so validation, the one-job-at-a-time rule and the audit events are the
same as over the API.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from pydantic import ValidationError
from starlette.datastructures import FormData, UploadFile

from api.console import charts
from api.console.routes import (
    AdminP,
    _error_text,
    _pydantic_text,
    _text,
    _whole_number,
    redirect,
    render,
    upload_name,
)
from api.console.security import COOKIE_PATH, ConsoleGuard, Form
from api.deps import ContextDep
from api.routes.models import (
    OperatingPointChange,
    OperatingPointRequest,
    OperatingPoints,
    TrainRequest,
    activate_version,
    change_operating_points,
    evaluate_version,
    model_infos,
    rollback_version,
    start_retraining,
    start_training,
    version_operating_points,
)
from classifiers import (
    DEFAULT_CLASS_WEIGHT,
    ClassifierError,
    ClassWeight,
    parse_label_precision,
    parse_records,
)
from triage import classification, model_jobs
from triage.auth import Principal, Role
from triage.errors import NotFound, TriageError
from triage.model_jobs import EVALUATION, RETRAINING, TRAINING

router = APIRouter(prefix=COOKIE_PATH, include_in_schema=False)
MODELS_URL = f"{COOKIE_PATH}/admin/models"
ModelReaderP = Annotated[Principal, Depends(ConsoleGuard(Role.admin, Role.auditor))]
# A confusion matrix wider than this is shown as its largest off-diagonal cells instead.
MATRIX_MAX_LABELS = 12
TOP_CONFUSIONS = 15
PROFILE_TOP = 6  # evidence items per label on the profile page
RECENT_JOBS = 10  # rows of the recent-jobs table (GET /v1/models/jobs pages through all)


def _columns(form: FormData, name: str) -> list[str]:
    """Column names from a comma-separated text field (blank entries dropped)."""
    return [c.strip() for c in _text(form, name, 2000).split(",") if c.strip()]


class UploadProblem(Exception):
    """The uploaded file is missing or unreadable; the message says which."""


def _uploaded_records(form: FormData) -> tuple[str, list[dict[str, Any]]]:
    upload = form.get("file")
    if not isinstance(upload, UploadFile) or not upload.filename:
        raise UploadProblem("Choose a labelled CSV or JSONL file to upload.")
    name = upload_name(upload)
    try:
        # the form parser has spooled the file; the request limit caps its size
        return name, parse_records(name, upload.file.read())
    except ClassifierError as exc:
        raise UploadProblem(str(exc)) from exc


@router.get("/admin/models")
def models_page(request: Request, ctx: ContextDep, p: ModelReaderP) -> Response:
    infos = model_infos(ctx)
    lease = ctx.settings.model_job_lease_seconds
    # one read for the page: it reloads every 5 s while a job runs
    with ctx.db.read() as s:
        feedback = classification.feedback_count(s)
        jobs = {
            name: model_jobs.state(s, job.kind, lease_seconds=lease)
            for name, job in (
                ("training", TRAINING),
                ("retraining", RETRAINING),
                ("evaluation", EVALUATION),
            )
        }
        recent, _ = model_jobs.history(s, lease_seconds=lease, limit=RECENT_JOBS)
    return render(
        request,
        "models.html",
        {
            "models": infos,
            "active": next((m for m in infos if m.active), None),
            "jobs": jobs,
            "recent_jobs": recent,
            "running": any(j.get("status") == "running" for j in jobs.values()),
            "feedback": feedback,
            "encoders": classification.encoder_choices(ctx.settings),
            "default_encoder": ctx.settings.encoder,
            "class_weights": [w.value for w in ClassWeight],
            "default_class_weight": DEFAULT_CLASS_WEIGHT.value,
            "can_change": p.role == Role.admin,
            "section": "models",
        },
    )


def _registry_action(request: Request, action: Any, done: str) -> Response:
    try:
        result = action()
    except TriageError as exc:
        return redirect(request, MODELS_URL, _error_text(exc), "error")
    return redirect(request, MODELS_URL, done.format(**result))


@router.post("/admin/models/{version}/activate")
def activate(request: Request, version: str, ctx: ContextDep, p: AdminP, form: Form) -> Response:
    return _registry_action(
        request,
        lambda: activate_version(ctx, p, version),
        "Version {version} is active (was {previous}).",
    )


@router.post("/admin/models/rollback")
def rollback(request: Request, ctx: ContextDep, p: AdminP, form: Form) -> Response:
    return _registry_action(
        request,
        lambda: rollback_version(ctx, p),
        "Rolled back: version {version} is active again (was {previous}).",
    )


@router.post("/admin/models/retrain")
def retrain(request: Request, ctx: ContextDep, p: AdminP, form: Form) -> Response:
    return _registry_action(
        request,
        lambda: start_retraining(ctx, p),
        "Retraining started; this page shows its outcome when it ends.",
    )


@router.post("/admin/models/jobs/{job_id}/cancel")
def cancel_job(request: Request, job_id: str, ctx: ContextDep, p: AdminP, form: Form) -> Response:
    """Ask a running job to stop (as ``POST /v1/models/jobs/{id}/cancel``); an id that is not
    a number names no job (a flash on the page, not an error page)."""
    return _registry_action(
        request,
        lambda: model_jobs.request_cancel(
            ctx.db,
            int(job_id) if job_id.isdecimal() else 0,
            p.actor,
            lease_seconds=ctx.settings.model_job_lease_seconds,
        ),
        "Cancel requested for job {id} ({kind}): it stops at its next progress line.",
    )


@router.post("/admin/models/train")
def train(request: Request, ctx: ContextDep, p: AdminP, form: Form) -> Response:
    """Upload a labelled file and start training on it (nothing starts when a field is bad)."""
    back = MODELS_URL + "#train"
    try:
        name, records = _uploaded_records(form)
        # fields left empty take TrainRequest's defaults (one place for them, as for the API)
        optional = {
            "target_precision": _text(form, "target_precision", 20),
            "encoder": _text(form, "encoder", 128),
            "class_weight": _text(form, "class_weight", 20),
        }
        body = TrainRequest.model_validate(
            {
                "records": records,
                "text_columns": _columns(form, "text_columns"),
                "label_columns": _columns(form, "label_columns"),
                "feature_columns": _columns(form, "feature_columns"),
                "label_precision": parse_label_precision(_columns(form, "label_precision")),
                "activate": form.get("activate") == "on",
                "threshold_pooling": form.get("threshold_pooling") == "on",
                "name": _text(form, "name", 200) or name,
                **{key: value for key, value in optional.items() if value},
            }
        )
        state = start_training(ctx, p, body)
    except (UploadProblem, ClassifierError) as exc:
        return redirect(request, back, str(exc), "error")
    except ValidationError as exc:
        return redirect(request, back, _pydantic_text(exc), "error")
    except TriageError as exc:
        return redirect(request, back, _error_text(exc), "error")
    return redirect(
        request,
        MODELS_URL + "#jobs",
        f"Training on {len(records)} records from {body.name} started at {state['started_at']}; "
        "this page shows the new version when it is ready.",
    )


def _confusions(confusion: dict[str, Any]) -> list[tuple[str, str, int]]:
    labels, matrix = confusion["labels"], confusion["matrix"]
    cells = [
        (labels[i], labels[j], n)
        for i, row in enumerate(matrix)
        for j, n in enumerate(row)
        if i != j and n
    ]
    return sorted(cells, key=lambda c: -c[2])[:TOP_CONFUSIONS]


@router.post("/admin/models/evaluate")
def evaluate(request: Request, ctx: ContextDep, p: AdminP, form: Form) -> Response:
    """Score a version on an uploaded labelled file and show the figures (audited); with
    "background" ticked, start the evaluation job instead and come back to the jobs table,
    whose evaluation row links to the figures when it is done."""
    back = MODELS_URL + "#evaluate"
    version = _text(form, "version", 100)
    background = form.get("background") == "on"
    try:
        name, records = _uploaded_records(form)
        label_columns = _columns(form, "label_columns")
        if not label_columns:
            raise UploadProblem("Name the label column(s) of the file.")
        result = evaluate_version(
            ctx,
            p,
            version,
            records,
            _columns(form, "text_columns") or None,
            label_columns,
            source=name,
            background=background,
        )
    except UploadProblem as exc:
        return redirect(request, back, str(exc), "error")
    except TriageError as exc:
        return redirect(request, back, _error_text(exc), "error")
    if background:
        return redirect(
            request,
            MODELS_URL + "#jobs",
            f"Evaluation of {version} on {len(records)} records from {name} started at "
            f"{result['started_at']}; its row below links to the figures when it is done.",
        )
    return _evaluation_page(request, version, name, len(records), result["metrics"])


@router.get("/admin/models/{version}/profile")
def profile_page(request: Request, version: str, ctx: ContextDep, p: ModelReaderP) -> Response:
    """What a version relied on (``GET /v1/models/{version}/profile``), with the case count
    and evidence per label from the query string; a bad value falls back to the default."""

    def number(name: str, default: int, high: int) -> int:
        value = _whole_number(request.query_params.get(name, ""))
        return value if value is not None and 1 <= value <= high else default

    limit = number("limit", classification.PROFILE_DEFAULT_CASES, classification.PROFILE_MAX_CASES)
    top = number("top", PROFILE_TOP, classification.MAX_TOP)
    try:
        profile = classification.model_profile(ctx.settings, ctx.db, version, limit=limit, top=top)
    except TriageError as exc:
        return redirect(request, MODELS_URL, exc.message, "error")
    return render(
        request,
        "model_profile.html",
        {
            "profile": profile,
            "limit": limit,
            "top": top,
            "max_cases": classification.PROFILE_MAX_CASES,
            "max_top": classification.MAX_TOP,
            "section": "models",
        },
    )


@router.get("/admin/models/evaluation")
def last_evaluation(request: Request, ctx: ContextDep, p: ModelReaderP) -> Response:
    """The figures of a background evaluation: ``?job=ID``, or the last one (the jobs tables
    link here)."""
    job = request.query_params.get("job", "")
    if job:
        try:
            with ctx.db.read() as s:
                state = model_jobs.get(
                    s, int(job), lease_seconds=ctx.settings.model_job_lease_seconds
                )
        except (ValueError, NotFound):
            state = {}
        if state.get("kind") != "evaluate" or state.get("status") != "done":
            return redirect(
                request, MODELS_URL + "#jobs", f"No finished evaluation job {job[:20]}.", "error"
            )
    else:
        state = EVALUATION.state(ctx.db, ctx.settings)
        if state.get("status") != "done":
            return redirect(
                request, MODELS_URL + "#jobs", "No background evaluation has finished yet.", "error"
            )
    out = state["result"]
    return _evaluation_page(request, out["version"], out["source"], out["records"], out["metrics"])


def _evaluation_page(
    request: Request, version: str, data_name: str, n_records: int, metrics: dict[str, Any]
) -> Response:
    targets = metrics["targets"]
    views = {
        t: {
            "m": m,
            "matrix": len(m["confusion"]["labels"]) <= MATRIX_MAX_LABELS,
            "confusions": _confusions(m["confusion"]),
            "reliability": charts.reliability(f"Reliability of {t} predictions", m["reliability"]),
        }
        for t, m in targets.items()
    }
    return render(
        request,
        "model_evaluation.html",
        {
            "version": version,
            "data_name": data_name,
            "n_records": n_records,
            "views": views,
            "section": "models",
        },
    )


def _label_precision_text(per_target: dict[str, dict[str, float]]) -> str:
    """Per-label targets as the form writes them: ``TARGET:LABEL=PRECISION, ...``."""
    return ", ".join(
        f"{target}:{label}={precision}"
        for target, labels in per_target.items()
        for label, precision in labels.items()
    )


def _operating_points_page(
    request: Request,
    current: OperatingPoints,
    *,
    change: OperatingPointChange | None = None,
    can_change: bool,
) -> Response:
    shown = change.after if change is not None else current.settings
    return render(
        request,
        "model_operating_points.html",
        {
            "current": current,
            "change": change,
            "form": {
                "target_precision": shown.target_precision,
                "label_precision": _label_precision_text(shown.label_precision),
                "threshold_pooling": shown.threshold_pooling,
            },
            "can_change": can_change,
            "section": "models",
        },
    )


@router.get("/admin/models/{version}/operating-points")
def operating_points_page(
    request: Request, version: str, ctx: ContextDep, p: ModelReaderP
) -> Response:
    """A version's operating points (``GET /v1/models/{version}/operating-points``); admins
    also get the form that previews or registers other settings."""
    try:
        current = version_operating_points(ctx, version)
    except TriageError as exc:
        return redirect(request, MODELS_URL, _error_text(exc), "error")
    return _operating_points_page(request, current, can_change=p.role == Role.admin)


@router.post("/admin/models/{version}/operating-points")
def change_operating_points_form(
    request: Request, version: str, ctx: ContextDep, p: AdminP, form: Form
) -> Response:
    """Preview (``intent=preview``: a dry run, shown beside the current figures) or register
    (``intent=register``) other settings, as ``POST /v1/models/{version}/operating-points``.
    The form always states all three settings: an emptied per-label field removes the
    version's per-label targets. A refused setting comes back as a message naming it."""
    back = f"{MODELS_URL}/{version}/operating-points"
    register = _text(form, "intent", 20) == "register"
    try:
        raw_precision = _text(form, "target_precision", 20)
        body = OperatingPointRequest.model_validate(
            {
                "target_precision": raw_precision or None,
                "label_precision": parse_label_precision(_columns(form, "label_precision")),
                "threshold_pooling": form.get("threshold_pooling") == "on",
                "activate": register and form.get("activate") == "on",
                "dry_run": not register,
            }
        )
        change = change_operating_points(ctx, p, version, body)
        # the page beside a preview; a registered change redirects and needs none
        current = None if change.version else version_operating_points(ctx, version)
    except ClassifierError as exc:
        return redirect(request, back, str(exc), "error")
    except ValidationError as exc:
        return redirect(request, back, _pydantic_text(exc), "error")
    except NotFound as exc:
        return redirect(request, MODELS_URL, _error_text(exc), "error")
    except TriageError as exc:
        return redirect(request, back, _error_text(exc), "error")
    if current is not None:
        return _operating_points_page(request, current, change=change, can_change=True)
    state = " and activated it" if change.activated else " (not active)"
    return redirect(
        request,
        f"{MODELS_URL}#m-{change.version}",
        f"Registered {change.version}{state}: the operating points of {version} re-chosen for "
        f"target precision {change.after.target_precision}, pooling "
        f"{'on' if change.after.threshold_pooling else 'off'}.",
    )
