"""Typed settings, read once from the environment (prefix ``TRIAGE_``) and injected.

Nothing else in the code base reads ``os.environ`` for configuration: build a ``Settings``
(or call :func:`get_settings`) and pass it down.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_DATA_DIR = Path("var")

PRIORITIES = ("P1", "P2", "P3", "P4")


class Settings(BaseSettings):
    """Deployment configuration. Every field can be set as ``TRIAGE_<FIELD>``."""

    # An empty variable means "not set": TRIAGE_CHROMA_PATH= would otherwise be Path("") and put
    # the vector store in the working directory.
    model_config = SettingsConfigDict(
        env_prefix="TRIAGE_", env_file=None, extra="ignore", env_ignore_empty=True
    )

    environment: Literal["development", "test", "production"] = "development"
    data_dir: Path = DEFAULT_DATA_DIR
    database_url: str | None = Field(
        default=None,
        description="SQLAlchemy URL; defaults to a SQLite file in data_dir. "
        "PostgreSQL: postgresql+psycopg://user@host:5432/db",
    )
    db_pool_size: int = 10
    db_max_overflow: int = 20

    # Authentication: seconds a verified API key stays cached in a process (0 disables).
    auth_cache_seconds: float = 5.0

    # Per-API-key request rate (token bucket per process): sustained rate and burst size.
    # 0 disables. Answers 429 with Retry-After.
    rate_limit_per_second: float = 200.0
    rate_limit_burst: int = 400

    # Intake limits.
    max_body_bytes: int = 256 * 1024
    # Bodies that carry a labelled data set (model training and evaluation, over the API and
    # the console's file upload) may be larger than a case submission.
    max_upload_bytes: int = Field(default=32 * 1024 * 1024, ge=1024)
    max_batch_items: int = 500
    page_size_default: int = 50
    page_size_max: int = 500

    # Worker.
    worker_enabled: bool = True
    worker_threads: int = 2
    worker_poll_seconds: float = 1.0
    worker_batch_size: int = Field(
        default=16,
        ge=1,
        le=256,
        description="Cases a worker thread claims and triages together (one claim and one "
        "store transaction, one classifier call and one Chroma query per batch).",
    )
    lease_seconds: int = 120
    max_triage_attempts: int = 5
    fault_crash_at_stage: str | None = Field(
        default=None,
        description="Fault injection for tests: the worker process exits hard (os._exit) when "
        "it reaches this pipeline stage. Refused in production.",
    )

    # Job engine. "embedded": in-process threads on the cases table (the default, SQLite or
    # PostgreSQL). "procrastinate": jobs on PostgreSQL, enqueued in the case's own transaction,
    # run by `triage worker --engine procrastinate` processes on any number of machines.
    job_engine: Literal["embedded", "procrastinate"] = "embedded"
    job_concurrency: int = Field(
        default=2, ge=1, description="Jobs one worker process runs at once."
    )
    job_max_attempts: int = Field(
        default=5,
        ge=1,
        description="Retries of a triage job after infrastructure errors (database, network); "
        "stage failures are bounded by max_triage_attempts instead.",
    )
    job_retry_backoff_seconds: int = Field(
        default=2, ge=0, description="Exponential retry base: waits base^1, base^2, ... seconds."
    )
    job_retry_max_seconds: int = Field(default=300, ge=0)
    job_stalled_seconds: float = Field(
        default=30.0,
        gt=0,
        description="A worker whose heartbeat is older than this is dead: its jobs are re-queued.",
    )
    model_job_lease_seconds: float = Field(
        default=120.0,
        gt=0,
        description="A model job (training, retraining, background evaluation) whose runner "
        "has not reported for this long reads 'interrupted', and the next start of its kind "
        "may take the slot; the runner reports every quarter of it.",
    )

    # SLA: hours from intake to triage and to resolution, per priority.
    sla_triage_hours: dict[str, float] = Field(
        default_factory=lambda: {"P1": 0.5, "P2": 2.0, "P3": 8.0, "P4": 24.0}
    )
    sla_resolution_hours: dict[str, float] = Field(
        default_factory=lambda: {"P1": 4.0, "P2": 24.0, "P3": 72.0, "P4": 120.0}
    )
    sla_sweep_seconds: float = 30.0

    # Webhooks (triage-completed callbacks and, later, action delivery).
    webhook_secret: str = "dev-webhook-secret-change-me"  # noqa: S105 - refused outside development
    webhook_timeout_seconds: float = 5.0
    webhook_max_attempts: int = 8
    webhook_backoff_base_seconds: float = 2.0
    webhook_backoff_max_seconds: float = 600.0
    callback_allow_private_hosts: bool = Field(
        default=True,
        description="Allow case callback URLs that resolve to loopback/private addresses. "
        "Set false in production so a caller cannot make the server probe its own network.",
    )

    # Queues the classifier and the advisor may route to.
    queues: list[str] = Field(
        default_factory=lambda: [
            "warehouse_ops",
            "transport",
            "billing",
            "returns",
            "integration_support",
            "customer_service",
        ]
    )

    # Retrieval and the advisor. No LLM configured = the offline engine.
    chroma_path: Path | None = Field(
        default=None, description="Embedded Chroma folder; default <data_dir>/chroma."
    )
    chroma_url: str | None = Field(
        default=None, description="A Chroma server, e.g. http://chroma:8000; wins over chroma_path."
    )
    encoder: str = Field(
        default="builtin:minilm-static-v2",
        description=(
            "Text encoder: one vector per case for retrieval and for the classifier's embedding "
            "features (see docs/retrieval.md, docs/classifier.md)."
        ),
    )
    retrieval_enabled: bool = True
    redaction_enabled: bool = True
    llm_base_url: str | None = None
    llm_model: str | None = None
    llm_api_key: SecretStr | None = None
    llm_timeout_seconds: float = 30.0
    llm_max_retries: int = 2
    llm_concurrency: int = 8
    llm_unavailable: Literal["fallback", "wait"] = Field(
        default="fallback",
        description="When the LLM endpoint cannot be reached (after its retries): `fallback` "
        "triages the case now with the offline engine (the suggestion's provenance records "
        "why); `wait` puts the case back in the queue and tries again every "
        "`llm_wait_retry_seconds` until the endpoint answers (these retries never fail it).",
    )
    llm_wait_retry_seconds: float = Field(default=30.0, gt=0)

    # Classifier model registry (<data_dir>/models).
    model_signing_key: SecretStr | None = Field(
        default=None,
        description="HMAC key: every model version this deployment registers is signed with "
        "it, and loading or activating refuses unsigned or wrongly signed versions. The same "
        "variable (TRIAGE_MODEL_SIGNING_KEY) the `triage train` / `models` commands read.",
    )
    knowledge_dir: Path | None = Field(
        default=None,
        description="Documents `triage demo` ingests; default: the shipped demo knowledge base.",
    )

    # Governed actions.
    policy_dir: Path | None = Field(
        default=None, description="Policy bundle; default: the shipped policies/default."
    )
    action_webhook_url: str | None = Field(
        default=None,
        description="Where released actions "
        "are delivered (signed); unset = receivers pull "
        "GET /v1/actions?status=approved.",
    )
    approval_webhook_url: str | None = Field(
        default=None,
        description="Where approvers are told that an approval waits, is due soon, was "
        "escalated or expired (signed approval.* events, e.g. to a chat or mail relay); "
        "unset = approvers watch the console's inbox.",
    )
    team_webhook_url: str | None = Field(
        default=None,
        description="Where the service team is told that a case was assigned to someone or "
        "breached its SLA (signed case.assigned / case.sla_breached events, e.g. to a chat "
        "relay); unset = people watch the console's queue.",
    )
    public_url: str | None = Field(
        default=None,
        description="The address people reach the product at (https://triage.example.com), "
        "for links in notifications.",
    )
    approval_reminder_fraction: float = Field(default=0.5, gt=0, lt=1)
    approval_max_escalations: int = Field(default=2, ge=0)
    approval_escalation_roles: list[str] = Field(
        default_factory=lambda: ["finance_controller", "cfo"]
    )

    @property
    def llm_configured(self) -> bool:
        return bool(self.llm_model)

    @property
    def chroma_dir(self) -> Path:
        """The deployment's embedded vector store: ``chroma_path``, else ``<data_dir>/chroma``
        (``chroma_url``, when set, wins over both)."""
        return self.chroma_path or self.data_dir / "chroma"

    @property
    def model_registry_dir(self) -> Path:
        """The deployment's classifier model registry: ``<data_dir>/models``."""
        return self.data_dir / "models"

    @field_validator("sla_triage_hours", "sla_resolution_hours")
    @classmethod
    def _all_priorities(cls, value: dict[str, float]) -> dict[str, float]:
        missing = [p for p in PRIORITIES if p not in value]
        if missing:
            raise ValueError(f"missing SLA hours for {', '.join(missing)}")
        return value

    @model_validator(mode="after")
    def _refuse_placeholder_secrets(self) -> Settings:
        if self.environment == "production" and "change-me" in self.webhook_secret:
            raise ValueError("TRIAGE_WEBHOOK_SECRET must be set in production")
        if self.environment == "production" and self.fault_crash_at_stage:
            raise ValueError("TRIAGE_FAULT_CRASH_AT_STAGE is for tests only")
        if self.job_engine == "procrastinate" and not self.is_postgres:
            raise ValueError(
                "TRIAGE_JOB_ENGINE=procrastinate needs PostgreSQL: set TRIAGE_DATABASE_URL="
                "postgresql+psycopg://user:pass@host:5432/db (the SQLite default cannot be shared "
                "by workers on several machines)"
            )
        return self

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'triage.db').as_posix()}"

    @property
    def sqlite_file(self) -> Path | None:
        """The SQLite database file (``None``: PostgreSQL, or an in-memory database)."""
        url = self.resolved_database_url
        path = url.removeprefix("sqlite:///") if url.startswith("sqlite:///") else ""
        return Path(path) if path and path != ":memory:" else None

    @property
    def is_postgres(self) -> bool:
        return self.resolved_database_url.startswith("postgresql")

    @property
    def is_sqlite(self) -> bool:
        return self.resolved_database_url.startswith("sqlite")


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read from the environment once."""
    return Settings()
