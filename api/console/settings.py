"""Console settings (``TRIAGE_CONSOLE_*``), read once per app and kept on the app state.

The signing key protects session and CSRF cookies. Outside production, a missing key is
generated once and kept in ``<data_dir>/console-secret`` (mode 0600) so restarts keep
sessions; in production it must be set explicitly.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from triage.settings import Settings


class ConsoleSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TRIAGE_", env_file=None, extra="ignore")

    console_secret_key: SecretStr | None = Field(
        default=None, description="HMAC key for session and CSRF cookies (32+ characters)."
    )
    console_session_hours: float = Field(default=10.0, gt=0, le=24 * 14)
    console_cookie_secure: Literal["auto", "always", "never"] = Field(
        default="auto",
        description="auto: Secure when the request came over https (behind a proxy, run uvicorn "
        "with --proxy-headers so the scheme is known).",
    )
    console_page_size: int = Field(default=50, ge=5, le=500)
    console_dashboard_cache_seconds: float = Field(
        default=60.0,
        ge=0,
        description="How long dashboard figures for one date range are reused (0: always "
        "recompute). The page shows the time the figures were computed.",
    )
    metrics_token: SecretStr | None = Field(
        default=None, description="If set, GET /metrics needs 'Authorization: Bearer <token>'."
    )

    def signing_key(self, settings: Settings) -> bytes:
        """The cookie-signing key; refuses to invent one in production."""
        if self.console_secret_key is not None:
            value = self.console_secret_key.get_secret_value()
            if len(value) < 32:
                raise ValueError("TRIAGE_CONSOLE_SECRET_KEY needs at least 32 characters")
            return value.encode()
        if settings.environment == "production":
            raise ValueError("TRIAGE_CONSOLE_SECRET_KEY must be set in production")
        path = Path(settings.data_dir) / "console-secret"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:  # another process created it first: use theirs
                return path.read_text().strip().encode()
            with os.fdopen(fd, "w") as fh:
                fh.write(secrets.token_urlsafe(48))
        return path.read_text().strip().encode()
