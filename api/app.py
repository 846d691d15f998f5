"""FastAPI application factory. Nothing is built at import time: call :func:`create_app`."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI

from api import errors
from api.console.routes import install as install_console
from api.deps import CONSOLE_PREFIX, AppContext, refuse_nul
from api.middleware import RequestLimits
from api.routes import (
    actions,
    audit,
    cases,
    health,
    jobs,
    keys,
    knowledge,
    models,
    outbox,
    stats,
)
from triage import actions as actions_service
from triage import auth
from triage.db import Database
from triage.pipeline import Pipeline
from triage.settings import Settings, get_settings
from triage.stages import RetrievalStage, claim_vector_store, default_pipeline
from triage.worker import Worker

log = logging.getLogger("triage.api")

# Requests that carry a labelled data set: model training and evaluation (API and console).
UPLOAD_PATHS = (
    r"/v1/models/(train|[^/]+/evaluate)|/v1/knowledge/documents"
    r"|/console/admin/models/(train|evaluate)|/console/knowledge"
)

DESCRIPTION = """
Takes exception cases from the orchestration layer (ERP, WMS, TMS, finance), triages them and
keeps a tamper-evident audit trail of every step.

Authenticate with `Authorization: Bearer <api key>`; every endpoint lists the roles it allows.
Errors share one shape: `{"error": {"code", "message", "fields": [{"field", "problem"}]}}`.
"""


def create_app(
    settings: Settings | None = None,
    *,
    db: Database | None = None,
    pipeline: Pipeline | None = None,
    start_worker: bool | None = None,
) -> FastAPI:
    """Build the app. The embedded worker runs in-process unless ``start_worker`` is False."""
    settings = settings or get_settings()
    db = db or Database(settings)
    run_worker = settings.worker_enabled if start_worker is None else start_worker
    if run_worker and settings.job_engine != "embedded":
        # With a job engine the procrastinate workers triage and run housekeeping under a
        # cluster-wide lock; an embedded worker in an API replica would deliver webhooks and
        # sweep SLAs outside it.
        log.warning(
            "TRIAGE_JOB_ENGINE=%s: the embedded worker is not started in the API process; "
            "run `triage worker --engine %s`",
            settings.job_engine,
            settings.job_engine,
        )
        run_worker = False
    pipeline = pipeline or default_pipeline(settings)
    worker = Worker(db, settings, pipeline) if run_worker else None
    ctx = AppContext(
        settings=settings,
        db=db,
        worker=worker,
        keys=auth.KeyCache(settings.auth_cache_seconds),
        limiter=auth.RateLimiter(settings.rate_limit_per_second, settings.rate_limit_burst),
        retrieval=pipeline.retriever if isinstance(pipeline.retriever, RetrievalStage) else None,
    )

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        # Load the policy now (a broken bundle fails start-up, not a request) and audit a
        # change of the active policy, re-checking open approvals under it.
        policy = actions_service.load_policy(settings)
        # The embedded vector store serves one process: a second server or a standalone
        # worker on the same data directory fails here, naming the holder.
        claim_vector_store(settings, "a triage server")
        with db.write() as s:
            actions_service.record_policy_activation(s, policy, settings)
        if worker is not None:
            worker.start()
        try:
            yield
        finally:
            models.shutdown_jobs(ctx)
            if worker is not None:
                worker.stop()

    app = FastAPI(
        title="Exception triage assistant",
        version="0.1.0",
        description=DESCRIPTION,
        lifespan=lifespan,
        dependencies=[Depends(refuse_nul)],
    )
    app.state.ctx = ctx
    errors.install(app)
    app.add_middleware(
        RequestLimits,
        max_bytes=settings.max_body_bytes,
        upload_bytes=settings.max_upload_bytes,
        upload_paths=UPLOAD_PATHS,
        page_prefix=CONSOLE_PREFIX,
    )
    for r in (
        cases.router,
        actions.router,
        models.router,
        audit.router,
        keys.router,
        knowledge.router,
        outbox.router,
        jobs.router,
        stats.router,
        health.router,
    ):
        app.include_router(r)
    install_console(app)
    return app
