"""The ceiling for the intake benchmark: a bare FastAPI endpoint doing one INSERT of the payload.

Same stack as the product (FastAPI, sync SQLAlchemy, the same engine settings, one uvicorn
process), none of the product's work (validation, idempotency, audit chain, auth).
Run: ``uvicorn bench.ceiling_app:app`` with TRIAGE_DATABASE_URL set.
"""

from __future__ import annotations

import json
import os

from fastapi import FastAPI, Request
from sqlalchemy import text

from triage.db import Database
from triage.settings import Settings

settings = Settings(database_url=os.environ["TRIAGE_DATABASE_URL"])
db = Database(settings)
with db.write() as s:
    s.execute(
        text("CREATE TABLE IF NOT EXISTS ceiling (id INTEGER PRIMARY KEY, body TEXT)")
        if db.is_sqlite
        else text("CREATE TABLE IF NOT EXISTS ceiling (id BIGSERIAL PRIMARY KEY, body TEXT)")
    )

app = FastAPI()


@app.post("/v1/cases", status_code=202)
def insert(payload: dict) -> dict:  # type: ignore[type-arg]
    with db.write() as s:
        s.execute(text("INSERT INTO ceiling (body) VALUES (:b)"), {"b": json.dumps(payload)})
    return {"status": "received"}


@app.get("/healthz")
def health(_r: Request) -> dict[str, str]:
    return {"status": "ok"}
