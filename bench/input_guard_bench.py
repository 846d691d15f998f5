"""What the app-wide NUL guard (``api.deps.refuse_nul``) costs a request.

Two measurements, both in one process:
1. The guard's own scan, called directly on a request: a typical case body (~0.9 KB), a
   256 KB body (the intake limit) without NUL, and one whose NUL sits in its last field.
2. ``POST /v1/cases`` end to end in-process (TestClient, SQLite, no worker), with the scan
   switched off and on in alternating rounds on the same app; medians per request and the
   on/off ratio.

    .venv/bin/python bench/input_guard_bench.py [--rounds 7] [--requests 300]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from starlette.requests import Request  # noqa: E402

from api import deps  # noqa: E402
from tests.support import bearer, sample_case  # noqa: E402


def _request(body: bytes) -> Request:
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/v1/cases",
        "query_string": b"",
        "headers": [(b"content-type", b"application/json")],
        "path_params": {},
    }
    sent = False

    async def receive() -> dict:
        nonlocal sent
        if sent:
            return {"type": "http.request", "body": b"", "more_body": False}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return Request(scope, receive)


def _scan_us(body: bytes, n: int) -> float:
    async def run() -> float:
        best = []
        for _ in range(5):
            requests = [_request(body) for _ in range(n)]
            for r in requests:
                await r.body()  # cached first, as FastAPI has read it before the guard runs
            t = time.perf_counter()
            for r in requests:
                await deps._nul_field(r)
            best.append((time.perf_counter() - t) / n * 1e6)
        return statistics.median(best)

    return asyncio.run(run())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--requests", type=int, default=300, help="per round and setting")
    args = ap.parse_args()

    typical = json.dumps(sample_case(1)).encode()
    big_case = sample_case(1, text={"customer_message": "x" * 250_000})
    big = json.dumps(big_case).encode()
    big_nul = json.dumps(sample_case(1, text={"customer_message": "x" * 250_000 + "\x00"})).encode()
    print("guard scan alone, median of 5 passes:")
    for label, body, n in (
        (f"typical case ({len(typical)} B)", typical, 20_000),
        (f"256 KB case, no NUL ({len(big)} B)", big, 500),
        (f"256 KB case, NUL at the end ({len(big_nul)} B)", big_nul, 200),
    ):
        print(f"  {label:42s} {_scan_us(body, n):9.2f} us")

    from fastapi.testclient import TestClient

    from api.app import create_app
    from triage import audit, auth, migrate
    from triage.auth import Role
    from triage.db import Database
    from triage.settings import Settings

    tmp = Path(tempfile.mkdtemp())
    settings = Settings(
        environment="test",
        data_dir=tmp,
        database_url=f"sqlite:///{tmp / 'bench.db'}",
        worker_enabled=False,
        retrieval_enabled=False,
        rate_limit_per_second=0,
    )
    migrate.upgrade(settings)
    db = Database(settings)
    admin = audit.Actor(audit.ActorType.human, "bench", "admin")
    with db.write() as s:
        key = auth.create_key(s, "bench", Role.orchestrator.value, created_by=admin).key
    app = create_app(settings, db=db, start_worker=False)
    real_scan = deps._nul_field

    async def no_scan(_request: Request) -> None:
        return None

    times: dict[str, list[float]] = {"off": [], "on": []}
    n_case = 0
    with TestClient(app) as client:
        for _ in range(args.rounds):
            for setting in ("off", "on"):
                deps._nul_field = real_scan if setting == "on" else no_scan  # type: ignore[assignment]
                t = time.perf_counter()
                for _ in range(args.requests):
                    n_case += 1
                    case = sample_case(n_case)
                    case["source"]["case_id"] = f"EX-B{n_case}"
                    r = client.post("/v1/cases", json=case, headers=bearer(key))
                    assert r.status_code == 202, r.text
                times[setting].append((time.perf_counter() - t) / args.requests * 1e3)
    deps._nul_field = real_scan  # type: ignore[assignment]
    off, on = statistics.median(times["off"]), statistics.median(times["on"])
    print(f"POST /v1/cases in-process, SQLite, {args.rounds} alternating rounds x {args.requests}:")
    print(f"  guard off {off:.3f} ms/request, on {on:.3f} ms/request, ratio on/off {on / off:.3f}")
    print(f"  rounds off {[round(x, 3) for x in times['off']]}")
    print(f"  rounds on  {[round(x, 3) for x in times['on']]}")


if __name__ == "__main__":
    main()
