"""Helpers shared by the tests (plain functions; fixtures live in conftest.py)."""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import create_engine, text
from sqlalchemy.exc import OperationalError


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def sample_case(n: int = 1, **overrides: Any) -> dict[str, Any]:
    """A valid canonical case payload; ``n`` makes the source id unique."""
    case: dict[str, Any] = {
        "schema_version": "1.0",
        "source": {"system": "wms-test", "kind": "wms", "case_id": f"EX-{n:05d}"},
        "exception_type": "shortage",
        "references": {
            "customer": {"id": "CUST-1", "name": "Nordhaven Retail", "tier": "B"},
            "order_id": "SO-1",
            "shipment_id": "SH-1",
            "invoice_id": "INV-1",
            "warehouse_id": "WH-1",
            "carrier_id": "DHL",
        },
        "lines": [
            {
                "sku": "SKU-1",
                "ordered_qty": "40",
                "shipped_qty": "32",
                "invoiced_qty": "40",
                "unit_price": {"amount": "12.50", "currency": "EUR"},
            }
        ],
        "amount_in_dispute": {"amount": "100.00", "currency": "EUR"},
        "text": {"customer_message": "We got 32 instead of 40 units."},
        "occurred_at": "2026-11-20T09:15:00+01:00",
    }
    case.update(overrides)
    return case


def chat_completion(
    draft: dict[str, Any],
    *,
    model: str = "m",
    completion_id: str = "x",
    prompt_tokens: int = 10,
    completion_tokens: int = 5,
) -> dict[str, Any]:
    """An OpenAI chat-completions response whose message content is ``draft`` as JSON: what
    stub LLM endpoints in tests and benchmarks answer."""
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": 0,
        "model": model,
        "choices": [
            {
                "index": 0,
                "finish_reason": "stop",
                "message": {"role": "assistant", "content": json.dumps(draft)},
            }
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }


@contextmanager
def fresh_pg_schema(base: str, prefix: str) -> Iterator[str]:
    """A new schema on the PostgreSQL at ``base`` for one test, as a URL whose search_path
    points at it; dropped afterwards. The drop is retried for up to a minute on a pinged
    connection, because the fault tests stop and start the server under other tests."""
    schema = f"{prefix}_{secrets.token_hex(5)}"
    admin = create_engine(base, isolation_level="AUTOCOMMIT", pool_pre_ping=True)
    with admin.connect() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    sep = "&" if "?" in base else "?"
    try:
        yield f"{base}{sep}options=-csearch_path%3D{schema}"
    finally:
        for attempt in range(30):
            try:
                with admin.connect() as conn:
                    conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
                break
            except OperationalError:
                if attempt == 29:
                    raise
                time.sleep(2)
        admin.dispose()


def submit_simulated(db: Any, settings: Any, n: int, seed: int | None = None) -> list[str]:
    """Submit ``n`` simulated cases as the orchestrator in one transaction; their ids. ``seed``
    picks the simulator's seed (its default when ``None``)."""
    from contracts.case import CaseIn
    from triage import audit, cases
    from triage.simulator import SimConfig, Simulator

    orchestrator = audit.Actor(audit.ActorType.integration, "orch", "orchestrator")
    sim = Simulator() if seed is None else Simulator(SimConfig(seed=seed))
    with db.write() as s:
        return [
            cases.submit(
                s, CaseIn.model_validate(rec.case), actor=orchestrator, settings=settings
            ).case.id
            for rec in sim.cases(n)
        ]


def wait_until(
    predicate: Callable[[], Any], *, deadline_s: float, what: str, every: float = 0.2
) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail with ``what`` at the deadline
    (a liveness bound for a stuck system, never a performance assertion)."""
    end = time.monotonic() + deadline_s
    while True:
        got = predicate()
        if got:
            return got
        if time.monotonic() > end:
            raise AssertionError(f"gave up after {deadline_s:.0f}s waiting for: {what}")
        time.sleep(every)


def cli_runner(monkeypatch: Any, settings: Any) -> Callable[..., Any]:
    """``triage(*args)``: the command line run in-process against ``settings``' database and
    data directory (set in the environment, with the settings cache cleared around each call);
    returns typer's ``Result`` (``exit_code``, ``stdout``, ``stderr``, ``output``)."""
    from typer.testing import CliRunner

    from cli.main import app
    from triage.settings import get_settings

    monkeypatch.setenv("TRIAGE_DATABASE_URL", settings.resolved_database_url)
    monkeypatch.setenv("TRIAGE_DATA_DIR", str(settings.data_dir))

    def triage(*args: str) -> Any:
        get_settings.cache_clear()
        try:
            return CliRunner().invoke(app, list(args))
        finally:
            get_settings.cache_clear()

    return triage


def fuzz_settings(db_url: str, data_dir: Any) -> Any:
    """Settings for the fuzzers (API and console): no worker, no retrieval, one webhook try,
    and no rate limit: thousands of requests per key in a few minutes would otherwise be
    answered mostly with 429 (tested on its own in test_rbac), hiding the handlers."""
    from triage.settings import Settings

    return Settings(
        environment="test",
        data_dir=data_dir,
        database_url=db_url,
        worker_enabled=False,
        rate_limit_per_second=0,
        retrieval_enabled=False,
        webhook_backoff_base_seconds=0.0,
        webhook_max_attempts=1,
    )


def build_pdf(*pages: str) -> bytes:
    """A minimal valid PDF, one page per argument with that text in its text layer (Helvetica,
    correct xref offsets), so PDF reading is tested on real bytes without a PDF library."""
    page_numbers = [3 + 2 * i for i in range(len(pages))]
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [%s] /Count %d >>"
        % (b" ".join(b"%d 0 R" % n for n in page_numbers), len(pages)),
    ]
    font = 3 + 2 * len(pages)
    for i, page_text in enumerate(pages):
        stream = f"BT /F1 12 Tf 72 720 Td ({page_text}) Tj ET".encode()
        objects.append(
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents %d 0 R "
            b"/Resources << /Font << /F1 %d 0 R >> >> >>" % (page_numbers[i] + 1, font)
        )
        objects.append(b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream")
    objects.append(b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>")
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % off for off in offsets)
    out += b"trailer << /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1,
        xref,
    )
    return bytes(out)
