"""Classifier models: versions, activation, rollback, evaluation, training and retraining
(admins), and reviewer overrides on cases (agents).

The module-level functions (``model_infos``, ``activate_version``, ``evaluate_version``,
``start_training``, ...) are what both these routes and the console's models page call, so a
rule or an audit event is never different between the two."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Query, Response
from pydantic import BaseModel, ConfigDict, Field

from api.deps import ContextDep, R, allow
from api.routes.cases import ERRORS, summary
from api.schemas import CaseSummary
from classifiers import (
    DEFAULT_CLASS_WEIGHT,
    ClassifierError,
    ClassWeight,
    DataError,
    UnknownVersion,
    align_columns,
    evaluate_model,
    parent_version,
    recorded_operating_points,
    recorded_settings,
    rethreshold,
    unlabelled_targets,
    validate_training_data,
)
from classifiers.data import MAX_LABEL_CHARS
from contracts.suggestion import ModelProfile
from triage import audit, classification, model_jobs
from triage.auth import Principal
from triage.errors import Conflict, NotFound, ValidationFailed
from triage.model_jobs import EVALUATION, RETRAINING, TRAINING, Progress

log = logging.getLogger("triage.api.models")
router = APIRouter(tags=["classifier"])
Admin = Annotated[Principal, Depends(allow(R.admin))]
AdminOrAuditor = Annotated[Principal, Depends(allow(R.admin, R.auditor))]
Column = Annotated[str, Field(min_length=1, max_length=128)]
# job ids are bigints: a larger number is a 422, not an overflow 500
JobId = Annotated[int, Path(ge=1, le=model_jobs.MAX_ID)]


class OverrideRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    category: str | None = Field(default=None, max_length=MAX_LABEL_CHARS)
    queue: str | None = Field(default=None, max_length=MAX_LABEL_CHARS)
    priority: str | None = Field(default=None, max_length=2)
    reason: str = Field(min_length=1, max_length=2000)


@router.post(
    "/v1/cases/{case_id}/overrides",
    response_model=CaseSummary,
    responses=ERRORS,
    summary="Set the final category, queue or priority (becomes a training label)",
)
def override_case(
    case_id: str,
    body: OverrideRequest,
    ctx: ContextDep,
    principal: Annotated[Principal, Depends(allow(R.agent, R.admin))],
) -> CaseSummary:
    with ctx.db.write() as s:
        row = classification.override(
            s,
            case_id,
            actor=principal.actor,
            reason=body.reason,
            settings=ctx.settings,
            category=body.category,
            queue=body.queue,
            priority=body.priority,
        )
        return summary(row)


class ModelInfo(BaseModel):
    version: str
    active: bool
    created_at: str | None
    training_data_name: str | None
    n_training_records: int | None
    label_sets: dict[str, list[str]]
    encoder: str | None = Field(default=None, description="Embedding features' encoder, if any.")
    target_precision: float | None = None
    validation: dict[str, Any] = Field(
        default_factory=dict,
        description="Per target: held-out accuracy, macro-F1, coverage and precision at the "
        "operating points, measured when the version was trained.",
    )
    metrics: dict[str, Any]
    derived_from: str | None = Field(
        default=None,
        description="The version whose operating points this one re-chose (no refit), if any.",
    )
    classified: int = 0
    override_rate: float | None = None
    closed: int = 0
    precision_at_close: dict[str, float | None] = Field(default_factory=dict)


def model_infos(ctx: Any) -> list[ModelInfo]:
    """Every registered version, newest first, with the live statistics of its predictions
    (shared by ``GET /v1/models`` and the console's models page)."""
    reg = classification.registry(ctx.settings)
    active = reg.active_version()
    with ctx.db.read() as s:
        stats = {m.model_version: m for m in classification.model_stats(s)}
    out = []
    for meta in reg.versions():
        st = stats.get(meta["version"])
        out.append(
            ModelInfo(
                version=meta["version"],
                active=meta["version"] == active,
                created_at=meta.get("created_at"),
                training_data_name=meta.get("training_data_name"),
                n_training_records=meta.get("n_training_records"),
                label_sets=meta.get("label_sets", {}),
                encoder=(meta.get("feature_spec") or {}).get("embedding_encoder"),
                target_precision=(meta.get("params") or {}).get("target_precision"),
                validation=meta.get("validation", {}),
                metrics=meta.get("metrics", {}),
                derived_from=parent_version(meta),
                classified=st.classified if st else 0,
                override_rate=st.override_rate if st else None,
                closed=st.closed if st else 0,
                precision_at_close=st.precision_at_close if st else {},
            )
        )
    return out


@router.get(
    "/v1/models",
    response_model=list[ModelInfo],
    responses=ERRORS,
    summary="Model versions with their metrics, override rate and precision-at-close",
)
def list_models(ctx: ContextDep, _p: AdminOrAuditor) -> list[ModelInfo]:
    return model_infos(ctx)


def _registry_error(exc: ClassifierError) -> NotFound | Conflict:
    """404 for a version that is not registered; 409 for one that exists but cannot be used
    (tampered or unsigned artifact) or a registry state that forbids the step (nothing to
    roll back to)."""
    if isinstance(exc, UnknownVersion):
        return NotFound(str(exc))
    return Conflict(str(exc))


def _registry_call(ctx: Any, principal: Principal, action: str, fn: Any) -> dict[str, Any]:
    """Run the registry step ``fn`` with its audit event (``audit.with_event``); a step the
    registry refuses is a NotFound / Conflict and writes no event."""
    try:
        return audit.with_event(ctx.db, principal.actor, action, fn)
    except ClassifierError as exc:
        raise _registry_error(exc) from exc


def activate_version(ctx: Any, principal: Principal, version: str) -> dict[str, Any]:
    """Activate ``version`` (audited ``model.activated``); NotFound / Conflict otherwise."""
    reg = classification.registry(ctx.settings)

    def go() -> dict[str, Any]:
        return {"version": version, "previous": reg.activate(version)}

    return _registry_call(ctx, principal, "model.activated", go)


def rollback_version(ctx: Any, principal: Principal) -> dict[str, Any]:
    """Re-activate the version active before the current one (audited ``model.rolled_back``)."""
    reg = classification.registry(ctx.settings)

    def go() -> dict[str, Any]:
        with reg.exclusive():  # the version replaced, exactly, under concurrent activations
            previous = reg.active_version()
            return {"version": reg.rollback(), "previous": previous}

    return _registry_call(ctx, principal, "model.rolled_back", go)


@router.post("/v1/models/{version}/activate", responses=ERRORS, summary="Activate a version")
def activate_model(version: str, ctx: ContextDep, principal: Admin) -> dict[str, Any]:
    return activate_version(ctx, principal, version)


@router.post(
    "/v1/models/rollback",
    responses=ERRORS,
    summary="Re-activate the version that was active before the current one",
)
def rollback_model(ctx: ContextDep, principal: Admin) -> dict[str, Any]:
    return rollback_version(ctx, principal)


VersionId = Annotated[str, Path(max_length=64)]
LabelName = Annotated[str, Field(max_length=200)]
# a target precision a caller may ask for (training and re-thresholding alike)
TargetPrecision = Annotated[float, Field(gt=0.5, lt=1.0)]


class LabelOperatingPoint(BaseModel):
    threshold: float = Field(
        description="Confidence at or above which the label is filled; above 1 it never is."
    )
    target_precision: float
    validation_precision: float | None = Field(
        description="Held-out (out-of-fold) precision of the label's predictions it keeps."
    )
    validation_coverage: float = Field(
        description="Share of the label's held-out predictions at or above the threshold."
    )
    n_predicted: int = Field(description="Held-out predictions of the label.")
    pooled: bool = Field(
        default=False, description="Borrowed from all labels' predictions together."
    )


class TargetOperatingPoints(BaseModel):
    summary: dict[str, Any] = Field(
        description="Held-out n, accuracy, macro-F1, coverage and precision at the thresholds."
    )
    labels: dict[str, LabelOperatingPoint]


class OperatingPointSettingsModel(BaseModel):
    target_precision: float
    label_precision: dict[str, dict[str, float]]
    threshold_pooling: bool


class OperatingPoints(BaseModel):
    version: str
    active: bool
    derived_from: str | None
    settings: OperatingPointSettingsModel
    targets: dict[str, TargetOperatingPoints]


class OperatingPointRequest(BaseModel):
    """New operating-point settings for a version; a field left out keeps the version's."""

    model_config = ConfigDict(extra="forbid")

    target_precision: TargetPrecision | None = Field(
        default=None, description="Default target precision of every label."
    )
    label_precision: dict[Column, dict[LabelName, float]] | None = Field(
        default=None,
        max_length=5,
        description="Per-label targets, replacing the version's as a whole ({} removes them): "
        '{"queue": {"finance": 0.99}}.',
    )
    threshold_pooling: bool | None = Field(
        default=None,
        description="Let labels too thin for their own threshold borrow the pooled one.",
    )
    activate: bool = Field(default=False, description="Activate the new version.")
    dry_run: bool = Field(
        default=False, description="Compute the new operating points; register nothing."
    )


class OperatingPointChange(BaseModel):
    parent: str
    version: str | None = Field(description="The new version; null for a dry run.")
    activated: bool
    dry_run: bool
    before: OperatingPointSettingsModel
    after: OperatingPointSettingsModel
    changed_labels: dict[str, list[str]] = Field(
        description="Per target, the labels whose threshold changed."
    )
    parent_targets: dict[str, TargetOperatingPoints]
    targets: dict[str, TargetOperatingPoints]


def version_operating_points(ctx: Any, version: str) -> OperatingPoints:
    """A version's settings and per-label operating points, from its verified metadata (the
    artifact is hashed, not loaded). NotFound / Conflict as for activation."""
    reg = classification.registry(ctx.settings)
    try:
        meta = reg.verify(version)
    except ClassifierError as exc:
        raise _registry_error(exc) from exc
    return OperatingPoints(
        version=version,
        active=version == reg.active_version(),
        derived_from=parent_version(meta),
        settings=OperatingPointSettingsModel(**recorded_settings(meta).to_dict()),
        targets={
            t: TargetOperatingPoints(**view) for t, view in recorded_operating_points(meta).items()
        },
    )


def change_operating_points(
    ctx: Any, principal: Principal, version: str, body: OperatingPointRequest
) -> OperatingPointChange:
    """Re-choose ``version``'s thresholds under ``body``'s settings without refitting and
    register the result as a derived version (``classifiers.rethreshold``), activated when
    asked; audited ``model.rethresholded`` (a dry run registers and audits nothing).
    ValidationFailed naming the field for settings that are refused (nothing written then),
    NotFound / Conflict for a version that cannot be loaded."""
    reg = classification.registry(ctx.settings)
    try:
        out = rethreshold(
            reg,
            version,
            target_precision=body.target_precision,
            label_precision=body.label_precision,
            threshold_pooling=body.threshold_pooling,
            dry_run=body.dry_run,
        )
    except DataError as exc:
        # a refused setting names its field; "nothing would change" is about the whole body
        raise ValidationFailed(str(exc), fields={exc.field or "body": str(exc)}) from exc
    except ClassifierError as exc:
        raise _registry_error(exc) from exc
    activated = False
    derived = out.version
    if derived is not None:
        # registered inactive above; activated with its audit event, so an activation that
        # fails leaves an inactive version no case uses, and no event

        def go() -> dict[str, Any]:
            previous = reg.activate(derived) if body.activate else reg.active_version()
            return out.audit_payload(activated=body.activate, previous_active=previous)

        activated = _registry_call(ctx, principal, "model.rethresholded", go)["activated"]
    return OperatingPointChange.model_validate(
        {**out.as_dict(activated=activated), "dry_run": body.dry_run}
    )


@router.get(
    "/v1/models/{version}/operating-points",
    response_model=OperatingPoints,
    responses=ERRORS,
    summary="A version's operating points: per label, threshold and held-out figures",
)
def get_operating_points(
    version: VersionId, ctx: ContextDep, _p: AdminOrAuditor
) -> OperatingPoints:
    return version_operating_points(ctx, version)


@router.post(
    "/v1/models/{version}/operating-points",
    response_model=OperatingPointChange,
    responses={**ERRORS, 201: {"description": "A derived version was registered."}},
    summary="Re-choose a version's thresholds (target precisions, pooling) without retraining",
)
def post_operating_points(
    version: VersionId,
    body: OperatingPointRequest,
    ctx: ContextDep,
    principal: Admin,
    response: Response,
) -> OperatingPointChange:
    """Applies other target precisions (default and per label) or the other pooling rule to
    the version's stored held-out predictions and registers the result as a new version
    derived from it (201; the original stays as it was, so this can be rolled back), or with
    ``dry_run`` only returns what each label would get (200). A setting left out keeps the
    version's; settings identical to the version's are refused (422)."""
    out = change_operating_points(ctx, principal, version, body)
    if out.version is not None:
        response.status_code = 201
    return out


class EvaluateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    records: list[dict[str, Any]] = Field(
        min_length=1,
        max_length=50_000,
        description=(
            "Labelled records: case records (see classifiers.CASE_FEATURE_SPEC) carrying the "
            "model's target names, or any records with text_columns and label_columns named."
        ),
    )
    text_columns: list[Column] | None = Field(
        default=None,
        max_length=10,
        description="Columns holding the text, when they differ from the model's "
        "(like `triage evaluate --text-column`).",
    )
    label_columns: list[Column] | None = Field(
        default=None,
        max_length=5,
        description="Columns holding the labels (default: every model target the records carry).",
    )


def _invalid(exc: Exception) -> ValidationFailed:
    """A 422 for data that cannot be used, on the field the error names (DataError.field),
    else on ``records``."""
    field = getattr(exc, "field", None) or "records"
    return ValidationFailed(str(exc), fields={field: str(exc)})


def _prepared_evaluation(
    ctx: Any,
    version: str,
    records: list[dict[str, Any]],
    text_columns: Sequence[str] | None,
    label_columns: Sequence[str] | None,
    source: str,
) -> tuple[Any, list[dict[str, Any]], list[str]]:
    """Load ``version`` and map ``records`` onto its columns: (model, records, targets).
    NotFound / Conflict for a version that cannot be loaded, ValidationFailed naming the field
    for records that cannot be scored; nothing is written either way."""
    reg = classification.registry(ctx.settings)
    try:
        loaded = reg.load(version)
    except ClassifierError as exc:
        raise _registry_error(exc) from exc
    model = loaded.model
    try:
        if label_columns:
            texts = list(text_columns or model.feature_spec().text_columns)
            records, targets = align_columns(records, model, texts, label_columns, source)
        else:
            targets = [t for t in model.targets if all(t in r for r in records)]
            if not targets:
                raise ValidationFailed(
                    "records carry none of the model's targets",
                    fields={
                        "label_columns": f"name the label column, or use one of "
                        f"{list(model.targets)}"
                    },
                )
    except (ClassifierError, ValueError, KeyError) as exc:
        raise _invalid(exc) from exc
    unlabelled = unlabelled_targets(records, targets)
    if unlabelled:
        message = f"no record has a label for {', '.join(unlabelled)}"
        raise ValidationFailed(message, fields={"records": message})
    return model, records, list(targets)


def evaluate_version(
    ctx: Any,
    principal: Principal,
    version: str,
    records: list[dict[str, Any]],
    text_columns: Sequence[str] | None = None,
    label_columns: Sequence[str] | None = None,
    source: str = "records",
    *,
    background: bool = False,
) -> dict[str, Any]:
    """Score ``version`` on labelled ``records`` (audited ``model.evaluated``) and return
    ``{"version", "metrics"}``, the metrics of ``classifiers.evaluate_model``. Column names map
    as in ``triage evaluate``. NotFound for an unknown version, Conflict for one that cannot be
    loaded, ValidationFailed (field ``records``, ``text_columns`` or ``label_columns``) for
    records that cannot be scored; nothing is written or started then.

    With ``background`` the scoring runs in the evaluation job instead (for a deployment whose
    encoder is a transformer, where tens of thousands of records take minutes): the call
    returns the job's state, Conflict while one runs; the job's result (``GET
    /v1/models/evaluate``) adds ``records``, ``targets`` and ``source``, and its audit event
    leaves the metrics out."""
    model, records, targets = _prepared_evaluation(
        ctx, version, records, text_columns, label_columns, source
    )
    scored = {"version": version, "records": len(records), "targets": targets, "source": source}
    if background:

        def work(progress: Progress) -> dict[str, Any]:
            metrics = evaluate_model(model, records, targets=targets, progress=progress)
            return {**scored, "metrics": metrics}

        return EVALUATION.start(
            ctx.db, ctx.settings, principal.actor, work, running=ctx.running_jobs
        )
    try:
        metrics = evaluate_model(model, records, targets=targets)
    except (ClassifierError, ValueError, KeyError) as exc:
        raise _invalid(exc) from exc
    with ctx.db.write() as s:
        audit.append(s, principal.actor, "model.evaluated", scored)
    return {"version": version, "metrics": metrics}


@router.post(
    "/v1/models/{version}/evaluate",
    responses={**ERRORS, 202: {"description": "With background=true: the job's state."}},
    summary="Evaluate a version on labelled records (like `triage evaluate`)",
)
def evaluate(
    version: str,
    body: EvaluateRequest,
    ctx: ContextDep,
    principal: Admin,
    response: Response,
    background: Annotated[
        bool,
        Query(
            description="Score in a background job (202; poll GET /v1/models/evaluate) "
            "instead of in the request: for large sets or a transformer encoder."
        ),
    ] = False,
) -> dict[str, Any]:
    if background:
        response.status_code = 202
    return evaluate_version(
        ctx,
        principal,
        version,
        body.records,
        body.text_columns,
        body.label_columns,
        background=background,
    )


@router.get(
    "/v1/models/evaluate",
    responses=ERRORS,
    summary="State and result of the last background evaluation",
)
def evaluation_status(ctx: ContextDep, _p: Admin) -> dict[str, Any]:
    return EVALUATION.state(ctx.db, ctx.settings)


def shutdown_jobs(ctx: Any) -> None:
    """At API shutdown: the jobs this process runs die with it (daemon threads), so close
    them as interrupted now rather than a lease later."""
    for job_id in list(ctx.running_jobs):
        try:
            model_jobs.interrupt(ctx.db, job_id, "the API process running it shut down")
        except Exception:  # shutting down regardless: the lease closes it later
            log.warning("model job %s: not closed at shutdown", job_id, exc_info=True)


@router.get(
    "/v1/models/{version}/profile",
    response_model=ModelProfile,
    responses=ERRORS,
    summary="What a model version relied on, per target and label, over its recent cases",
)
def model_profile(
    version: Annotated[str, Path(max_length=64)],
    ctx: ContextDep,
    _p: AdminOrAuditor,
    limit: Annotated[
        int,
        Query(
            ge=1,
            le=classification.PROFILE_MAX_CASES,
            description="Most recent cases classified by the version to read.",
        ),
    ] = classification.PROFILE_DEFAULT_CASES,
    top: Annotated[
        int, Query(ge=1, le=classification.MAX_TOP, description="Evidence items per label.")
    ] = classification.PROFILE_DEFAULT_TOP,
) -> ModelProfile:
    """The version's global view: each recent case it classified is explained exactly (as
    `GET /v1/cases/{id}/explanation` does) and the evidence is summed per target and label:
    the words, phrases and field values that added the most log-odds for the label over each
    case's runner-up, with how many cases they appeared in, plus the label's case count,
    abstentions and mean probability.

    404 for a version the registry does not hold; 409 when it cannot be loaded or cannot score
    its cases again; an empty profile (`cases` 0) for a version with no cases yet.
    """
    return classification.model_profile(ctx.settings, ctx.db, version, limit=limit, top=top)


@router.get(
    "/v1/models/jobs",
    responses=ERRORS,
    summary="Model jobs (training, retraining, background evaluation), newest first",
)
def list_jobs(
    ctx: ContextDep,
    _p: AdminOrAuditor,
    kind: Annotated[Literal["train", "retrain", "evaluate"] | None, Query()] = None,
    status: Annotated[
        Literal["running", "done", "failed", "interrupted", "cancelled"] | None,
        Query(description="The stored status (see GET /v1/models/jobs/{job_id})."),
    ] = None,
    before: Annotated[
        int | None,
        Query(
            ge=1, le=model_jobs.MAX_ID, description="Cursor: the next_before of the previous page."
        ),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> dict[str, Any]:
    with ctx.db.read() as s:
        items, cursor = model_jobs.history(
            s,
            lease_seconds=ctx.settings.model_job_lease_seconds,
            kind=kind,
            status=status,
            before=before,
            limit=limit,
        )
    return {"items": items, "next_before": cursor}


@router.get(
    "/v1/models/jobs/{job_id}",
    responses=ERRORS,
    summary="One model job with its result or error",
)
def get_job(job_id: JobId, ctx: ContextDep, _p: AdminOrAuditor) -> dict[str, Any]:
    with ctx.db.read() as s:
        return model_jobs.get(s, job_id, lease_seconds=ctx.settings.model_job_lease_seconds)


@router.post(
    "/v1/models/jobs/{job_id}/cancel",
    status_code=202,
    responses=ERRORS,
    summary="Ask a running model job to stop (at its next progress line)",
)
def cancel_job(job_id: JobId, ctx: ContextDep, principal: Admin) -> dict[str, Any]:
    """202 with the job's state: ``cancel_requested_by`` while it winds down, ``cancelled``
    once it has (at once for a job whose runner is gone); 409 for a job that has ended."""
    return model_jobs.request_cancel(
        ctx.db, job_id, principal.actor, lease_seconds=ctx.settings.model_job_lease_seconds
    )


class TrainRequest(BaseModel):
    """Labelled records to train a new model version on (what ``triage train`` reads from a
    file). Checked before the job starts: a bad request trains nothing."""

    model_config = ConfigDict(extra="forbid")

    records: list[dict[str, Any]] = Field(min_length=2, max_length=50_000)
    text_columns: list[Column] = Field(min_length=1, max_length=10)
    label_columns: list[Column] = Field(min_length=1, max_length=5)
    feature_columns: list[Column] = Field(default_factory=list, max_length=50)
    target_precision: TargetPrecision = 0.95
    label_precision: dict[Column, dict[LabelName, float]] = Field(
        default_factory=dict,
        max_length=5,
        description="Per-label targets overriding target_precision: "
        '{"queue": {"fraud": 0.99}} (like `triage train --label-precision queue:fraud=0.99`).',
    )
    encoder: str | None = Field(
        default=None,
        max_length=128,
        description="Embedding features: null = the deployment's encoder, 'none', or "
        "'builtin:NAME'.",
    )
    class_weight: ClassWeight = Field(
        default=DEFAULT_CLASS_WEIGHT,
        description="'balanced' (the default) weights each label inversely to its frequency: "
        "rare labels gain recall (macro-F1); 'none' trains unweighted (docs/classifier.md); "
        "like `triage train --class-weight`.",
    )
    threshold_pooling: bool = Field(
        default=True,
        description="A label with too few validation predictions to earn its own threshold "
        "borrows the one all labels earn together, unless its own predictions fall short; "
        "false: such labels always abstain (like `triage train --no-threshold-pooling`).",
    )
    activate: bool = Field(default=False, description="Activate the new version when trained.")
    name: str = Field(default="records posted to the API", min_length=1, max_length=200)


def start_training(ctx: Any, principal: Principal, body: TrainRequest) -> dict[str, Any]:
    """Check ``body`` (ValidationFailed naming the field; nothing starts then) and start the
    background training job; Conflict while one runs. Returns the job state."""
    encoder = classification.checked_encoder(ctx.settings, body.encoder)
    try:
        validate_training_data(
            body.records,
            text_columns=body.text_columns,
            label_columns=body.label_columns,
            feature_columns=body.feature_columns,
            source=body.name,
            label_precision=body.label_precision,
        )
    except ClassifierError as exc:
        raise _invalid(exc) from exc

    def work(progress: Progress) -> dict[str, Any]:
        version, model = classification.train_model(
            body.records,
            registry=classification.registry(ctx.settings),
            text_columns=body.text_columns,
            label_columns=body.label_columns,
            feature_columns=body.feature_columns,
            encoder=encoder,
            activate=body.activate,
            training_data_name=body.name,
            source=body.name,
            target_precision=body.target_precision,
            label_precision=body.label_precision,
            class_weight=body.class_weight,
            threshold_pooling=body.threshold_pooling,
            progress=progress,
        )
        return {
            "version": version,
            "activated": body.activate,
            "n_records": len(body.records),
            "encoder": encoder,
            "validation": {t: model.validation_[t] for t in model.targets},
        }

    return TRAINING.start(ctx.db, ctx.settings, principal.actor, work, running=ctx.running_jobs)


def start_retraining(ctx: Any, principal: Principal) -> dict[str, Any]:
    """Start retraining on base data + reviewer labels; Conflict while one runs."""
    return RETRAINING.start(
        ctx.db,
        ctx.settings,
        principal.actor,
        classification.retrain_work(ctx.settings, ctx.db),
        running=ctx.running_jobs,
    )


@router.post(
    "/v1/models/train",
    status_code=202,
    responses=ERRORS,
    summary="Start training a new version on posted labelled records (like `triage train`)",
)
def train(body: TrainRequest, ctx: ContextDep, principal: Admin) -> dict[str, Any]:
    return start_training(ctx, principal, body)


@router.get(
    "/v1/models/train", responses=ERRORS, summary="State and result of the last training job"
)
def train_status(ctx: ContextDep, _p: Admin) -> dict[str, Any]:
    return TRAINING.state(ctx.db, ctx.settings)


@router.post(
    "/v1/models/retrain",
    status_code=202,
    responses=ERRORS,
    summary="Start retraining on base data + reviewer labels (activates only if not worse)",
)
def retrain(ctx: ContextDep, principal: Admin) -> dict[str, Any]:
    return start_retraining(ctx, principal)


@router.get(
    "/v1/models/retrain", responses=ERRORS, summary="State and result of the last retraining job"
)
def retrain_status(ctx: ContextDep, _p: Admin) -> dict[str, Any]:
    return RETRAINING.state(ctx.db, ctx.settings)
