"""Classifier models: versions, activation, rollback, evaluation, retraining (admins), and
reviewer overrides on cases (agents)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, Depends
from pydantic import BaseModel, ConfigDict, Field

from api.deps import ContextDep, R, allow
from api.routes.cases import ERRORS, summary
from api.schemas import CaseSummary
from classifiers import ClassifierError, evaluate_model, validate_training_data
from triage import audit, classification
from triage.auth import Principal
from triage.common import now_ts
from triage.errors import Conflict, NotFound, ValidationFailed

router = APIRouter(tags=["classifier"])
Admin = Annotated[Principal, Depends(allow(R.admin))]


class OverrideRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    category: str | None = Field(default=None, max_length=64)
    queue: str | None = Field(default=None, max_length=64)
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
    metrics: dict[str, Any]
    classified: int = 0
    override_rate: float | None = None
    closed: int = 0
    precision_at_close: dict[str, float | None] = Field(default_factory=dict)


@router.get(
    "/v1/models",
    response_model=list[ModelInfo],
    responses=ERRORS,
    summary="Model versions with their metrics, override rate and precision-at-close",
)
def list_models(
    ctx: ContextDep, _p: Annotated[Principal, Depends(allow(R.admin, R.auditor))]
) -> list[ModelInfo]:
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
                metrics=meta.get("metrics", {}),
                classified=st.classified if st else 0,
                override_rate=st.override_rate if st else None,
                closed=st.closed if st else 0,
                precision_at_close=st.precision_at_close if st else {},
            )
        )
    return out


def _registry_call(ctx: Any, principal: Principal, action: str, fn: Any) -> dict[str, Any]:
    try:
        result = fn()
    except ClassifierError as exc:
        text = str(exc)
        if "not found" in text or "no model" in text or "unknown" in text:
            raise NotFound(text) from exc
        raise Conflict(text) from exc
    with ctx.db.write() as s:
        audit.append(s, principal.actor, action, result)
    return result


@router.post("/v1/models/{version}/activate", responses=ERRORS, summary="Activate a version")
def activate_model(version: str, ctx: ContextDep, principal: Admin) -> dict[str, Any]:
    reg = classification.registry(ctx.settings)

    def go() -> dict[str, Any]:
        previous = reg.active_version()
        reg.activate(version)
        return {"version": version, "previous": previous}

    return _registry_call(ctx, principal, "model.activated", go)


@router.post(
    "/v1/models/rollback",
    responses=ERRORS,
    summary="Re-activate the version that was active before the current one",
)
def rollback_model(ctx: ContextDep, principal: Admin) -> dict[str, Any]:
    reg = classification.registry(ctx.settings)

    def go() -> dict[str, Any]:
        previous = reg.active_version()
        return {"version": reg.rollback(), "previous": previous}

    return _registry_call(ctx, principal, "model.rolled_back", go)


class EvaluateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    records: list[dict[str, Any]] = Field(
        min_length=1,
        max_length=5000,
        description=(
            "Case records (see classifiers.CASE_FEATURE_SPEC) with the labels to score against."
        ),
    )


@router.post(
    "/v1/models/{version}/evaluate",
    responses=ERRORS,
    summary="Evaluate a version on labelled case records",
)
def evaluate(
    version: str, body: EvaluateRequest, ctx: ContextDep, principal: Admin
) -> dict[str, Any]:
    reg = classification.registry(ctx.settings)
    try:
        loaded = reg.load(version)
    except ClassifierError as exc:
        raise NotFound(str(exc)) from exc
    targets = [t for t in loaded.model.targets if all(t in r for r in body.records)]
    if not targets:
        raise ValidationFailed(
            "records carry none of the model's targets",
            fields={"records": f"need one of {list(loaded.model.targets)}"},
        )
    try:
        metrics = evaluate_model(loaded.model, body.records, targets=targets)
    except (ClassifierError, ValueError, KeyError) as exc:
        raise ValidationFailed(str(exc), fields={"records": str(exc)}) from exc
    with ctx.db.write() as s:
        audit.append(
            s,
            principal.actor,
            "model.evaluated",
            {"version": version, "records": len(body.records), "targets": targets},
        )
    return {"version": version, "metrics": metrics}


class ModelJob:
    """One model-training job of a kind per process at a time (training takes seconds to
    minutes); its state is what ``GET`` returns, its outcome goes on the audit trail."""

    def __init__(self, action: str, failed_action: str) -> None:
        self.action = action  # audit actions for the outcome
        self.failed_action = failed_action
        self.lock = threading.Lock()
        self.state: dict[str, Any] = {"status": "idle"}

    def start(
        self, ctx: Any, principal: Principal, work: Callable[[], dict[str, Any]]
    ) -> dict[str, Any]:
        if not self.lock.acquire(blocking=False):
            raise Conflict("a training job of this kind is already running", field="status")
        self.state = {"status": "running", "started_by": principal.actor.id, "started_at": now_ts()}
        threading.Thread(
            target=self._run, args=(ctx, principal, work), daemon=True, name=self.action
        ).start()
        return dict(self.state)

    def _run(self, ctx: Any, principal: Principal, work: Callable[[], dict[str, Any]]) -> None:
        try:
            out = work()
            with ctx.db.write() as s:
                audit.append(s, principal.actor, self.action, out)
            self.state = {**self.state, "status": "done", "finished_at": now_ts(), "result": out}
        except Exception as exc:  # reported to the admin through GET, and audited
            self.state = {
                **self.state,
                "status": "failed",
                "finished_at": now_ts(),
                "error": str(exc),
            }
            with ctx.db.write() as s:
                audit.append(s, principal.actor, self.failed_action, {"error": str(exc)})
        finally:
            self.lock.release()


def _job(ctx: Any, action: str, failed_action: str) -> ModelJob:
    # one job per kind and application instance (tests build many apps in one process)
    job: ModelJob | None = ctx.jobs.get(action)
    if job is None:
        job = ctx.jobs.setdefault(action, ModelJob(action, failed_action))
    return job


def _train_job(ctx: Any) -> ModelJob:
    return _job(ctx, "model.trained", "model.train_failed")


def _retrain_job(ctx: Any) -> ModelJob:
    return _job(ctx, "model.retrained", "model.retrain_failed")


def _retrain_work(ctx: Any) -> Callable[[], dict[str, Any]]:
    def work() -> dict[str, Any]:
        with ctx.db.read() as s:
            result = classification.retrain_from_feedback(ctx.settings, s)
        return {
            "candidate_version": result.candidate_version,
            "previous_version": result.active_version,
            "activated": result.activated,
            "reason": result.reason,
            "checks": list(result.checks),
            "n_base": result.n_base,
            "n_feedback": result.n_feedback,
            "candidate_metrics": result.candidate_metrics,
            "active_metrics": result.active_metrics,
        }

    return work


Column = Annotated[str, Field(min_length=1, max_length=128)]


class TrainRequest(BaseModel):
    """Labelled records to train a new model version on (what ``triage train`` reads from a
    file). Checked before the job starts: a bad request trains nothing."""

    model_config = ConfigDict(extra="forbid")

    records: list[dict[str, Any]] = Field(min_length=2, max_length=50_000)
    text_columns: list[Column] = Field(min_length=1, max_length=10)
    label_columns: list[Column] = Field(min_length=1, max_length=5)
    feature_columns: list[Column] = Field(default_factory=list, max_length=50)
    target_precision: float = Field(default=0.95, gt=0.5, lt=1.0)
    encoder: str | None = Field(
        default=None,
        max_length=128,
        description="Embedding features: null = the deployment's encoder, 'none', or "
        "'builtin:NAME'.",
    )
    activate: bool = Field(default=False, description="Activate the new version when trained.")
    name: str = Field(default="records posted to the API", min_length=1, max_length=200)


@router.post(
    "/v1/models/train",
    status_code=202,
    responses=ERRORS,
    summary="Start training a new version on posted labelled records (like `triage train`)",
)
def train(body: TrainRequest, ctx: ContextDep, principal: Admin) -> dict[str, Any]:
    encoder = classification.checked_encoder(ctx.settings, body.encoder)
    try:
        validate_training_data(
            body.records,
            text_columns=body.text_columns,
            label_columns=body.label_columns,
            feature_columns=body.feature_columns,
            source="records",
        )
    except ClassifierError as exc:
        raise ValidationFailed(str(exc), fields={"records": str(exc)}) from exc

    def work() -> dict[str, Any]:
        version, model = classification.train_model(
            body.records,
            registry=classification.registry(ctx.settings),
            text_columns=body.text_columns,
            label_columns=body.label_columns,
            feature_columns=body.feature_columns,
            encoder=encoder,
            activate=body.activate,
            training_data_name=body.name,
            source="records",
            target_precision=body.target_precision,
        )
        return {
            "version": version,
            "activated": body.activate,
            "n_records": len(body.records),
            "encoder": encoder,
            "validation": {t: model.validation_[t] for t in model.targets},
        }

    return _train_job(ctx).start(ctx, principal, work)


@router.get(
    "/v1/models/train", responses=ERRORS, summary="State and result of the last training job"
)
def train_status(ctx: ContextDep, _p: Admin) -> dict[str, Any]:
    return dict(_train_job(ctx).state)


@router.post(
    "/v1/models/retrain",
    status_code=202,
    responses=ERRORS,
    summary="Start retraining on base data + reviewer labels (activates only if not worse)",
)
def retrain(ctx: ContextDep, principal: Admin) -> dict[str, Any]:
    return _retrain_job(ctx).start(ctx, principal, _retrain_work(ctx))


@router.get(
    "/v1/models/retrain", responses=ERRORS, summary="State and result of the last retraining job"
)
def retrain_status(ctx: ContextDep, _p: Admin) -> dict[str, Any]:
    return dict(_retrain_job(ctx).state)
