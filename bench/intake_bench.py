"""Intake throughput and latency: the product's POST /v1/cases against a bare-INSERT ceiling.

Both servers run side by side in this one run, on the same database engine, one uvicorn
process each, measured by the same closed-loop load generator (N concurrent clients, each
sending the next request when the previous one answers). The product runs without its
embedded worker so only intake is measured.

    .venv/bin/python bench/intake_bench.py --db sqlite --db postgres --clients 1 16 64

Prints one table; quote ratios and medians (this machine is noisy).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from sqlalchemy import create_engine, text

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
PG = os.environ.get("TRIAGE_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
sys.path.insert(0, str(ROOT))

from tests.support import sample_case  # noqa: E402


def _wait(url: str, timeout: float = 60) -> None:
    end = time.time() + timeout
    while time.time() < end:
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"server at {url} did not start")


def _db_url(kind: str, workdir: Path, name: str) -> tuple[str, str | None]:
    if kind == "sqlite":
        return f"sqlite:///{workdir / (name + '.db')}", None
    schema = f"bench_{name}_{secrets.token_hex(3)}"
    eng = create_engine(PG, isolation_level="AUTOCOMMIT")
    with eng.connect() as c:
        c.execute(text(f'CREATE SCHEMA "{schema}"'))
    eng.dispose()
    return f"{PG}?options=-csearch_path%3D{schema}", schema


def _drop(schema: str | None) -> None:
    if schema:
        eng = create_engine(PG, isolation_level="AUTOCOMMIT")
        with eng.connect() as c:
            c.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        eng.dispose()


def start_product(url: str, port: int, workdir: Path) -> tuple[subprocess.Popen[bytes], str]:
    env = {
        **os.environ,
        "TRIAGE_DATABASE_URL": url,
        "TRIAGE_DATA_DIR": str(workdir),
        "TRIAGE_WORKER_ENABLED": "false",
        # measure intake, not the per-key rate limiter (one key drives all the load here)
        "TRIAGE_RATE_LIMIT_PER_SECOND": "0",
    }
    subprocess.run(
        [PY, "-m", "cli.main", "db", "upgrade"], env=env, check=True, cwd=ROOT, capture_output=True
    )
    out = subprocess.run(
        [PY, "-m", "cli.main", "keys", "create", "--name", "bench", "--role", "orchestrator"],
        env=env,
        check=True,
        cwd=ROOT,
        capture_output=True,
        text=True,
    ).stdout
    key = next(line.split()[-1] for line in out.splitlines() if line.startswith("key:"))
    proc = subprocess.Popen(
        [
            PY,
            "-m",
            "uvicorn",
            "api.asgi:app",
            "--port",
            str(port),
            "--log-level",
            "warning",
            "--no-access-log",
        ],
        env=env,
        cwd=ROOT,
    )
    _wait(f"http://127.0.0.1:{port}/healthz")
    return proc, key


def start_ceiling(url: str, port: int) -> subprocess.Popen[bytes]:
    env = {**os.environ, "TRIAGE_DATABASE_URL": url}
    proc = subprocess.Popen(
        [
            PY,
            "-m",
            "uvicorn",
            "bench.ceiling_app:app",
            "--port",
            str(port),
            "--log-level",
            "warning",
            "--no-access-log",
        ],
        env=env,
        cwd=ROOT,
    )
    _wait(f"http://127.0.0.1:{port}/healthz")
    return proc


async def load(base: str, key: str, clients: int, seconds: float, tag: str) -> dict[str, float]:
    latencies: list[float] = []
    errors = 0
    stop = time.perf_counter() + seconds
    counter = 0

    async def client_loop(c: httpx.AsyncClient) -> None:
        nonlocal counter, errors
        while time.perf_counter() < stop:
            counter += 1
            body = json.dumps(
                sample_case(
                    counter, source={"system": f"bench-{tag}", "case_id": f"{tag}-{counter}"}
                )
            )
            t0 = time.perf_counter()
            r = await c.post(
                "/v1/cases",
                content=body,
                headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
            )
            latencies.append(time.perf_counter() - t0)
            if r.status_code != 202:
                errors += 1

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=60) as c:
        started = time.perf_counter()
        await asyncio.gather(*(client_loop(c) for _ in range(clients)))
        elapsed = time.perf_counter() - started
    latencies.sort()
    return {
        "rps": len(latencies) / elapsed,
        "p50_ms": statistics.median(latencies) * 1000,
        "p99_ms": latencies[int(len(latencies) * 0.99) - 1] * 1000,
        "n": len(latencies),
        "errors": errors,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--db", action="append", choices=["sqlite", "postgres"])
    ap.add_argument("--clients", nargs="+", type=int, default=[1, 16, 64])
    ap.add_argument("--seconds", type=float, default=10.0, help="per measurement")
    ap.add_argument("--json", action="store_true", help="print JSON lines instead of a table")
    args = ap.parse_args()
    rows = []
    for kind in args.db or ["sqlite", "postgres"]:
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            p_url, p_schema = _db_url(kind, work, "product")
            c_url, c_schema = _db_url(kind, work, "ceiling")
            product, key = start_product(p_url, 8701, work)
            ceiling = start_ceiling(c_url, 8702)
            try:
                for n in args.clients:
                    # warm-up, then alternate so drift on a noisy machine hits both alike
                    asyncio.run(load("http://127.0.0.1:8701", key, n, 1.0, f"w{n}p"))
                    asyncio.run(load("http://127.0.0.1:8702", key, n, 1.0, f"w{n}c"))
                    p = asyncio.run(load("http://127.0.0.1:8701", key, n, args.seconds, f"p{n}"))
                    c = asyncio.run(load("http://127.0.0.1:8702", key, n, args.seconds, f"c{n}"))
                    row = {
                        "db": kind,
                        "clients": n,
                        "product": p,
                        "ceiling": c,
                        "ratio": p["rps"] / c["rps"],
                    }
                    rows.append(row)
                    if args.json:
                        print(json.dumps(row))
                    else:
                        print(
                            f"{kind:<8} clients={n:<3} product {p['rps']:7.0f} req/s "
                            f"p50 {p['p50_ms']:6.1f} ms p99 {p['p99_ms']:6.1f} ms | ceiling "
                            f"{c['rps']:7.0f} req/s p50 {c['p50_ms']:6.1f} ms p99 "
                            f"{c['p99_ms']:6.1f} ms | ratio {row['ratio']:.2f} | errors "
                            f"{p['errors']}/{c['errors']}",
                            flush=True,
                        )
            finally:
                for proc in (product, ceiling):
                    proc.terminate()
                    proc.wait(10)
                _drop(p_schema)
                _drop(c_schema)


if __name__ == "__main__":
    main()
