"""Growth: does intake and list-query latency stay flat as the database grows?

For each size (default 10,000 and 1,000,000 stored cases, with about three audit events per
case), on SQLite and/or PostgreSQL:

1. a fresh database built by the migrations and filled by ``bench.console_bench.populate``
   (realistic cases, suggestions, actions and a valid audit chain; not measured);
2. intake latency: ``--intake`` sequential ``POST /v1/cases`` through the ASGI app in process
   (validation, idempotency look-up, insert, audit append, commit);
3. list-query latency: ``--queries`` requests of each typical list call (first page of the
   received queue, by exception type, warehouse and customer, the second page through the cursor).

Prints median and p95 per call and size, and the ratio of the largest to the smallest size.

    nice .venv/bin/python bench/growth_bench.py --db sqlite --db postgres \\
        --sizes 10000 1000000
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.console_bench import populated_database  # noqa: E402
from bench.intake_bench import _drop  # noqa: E402
from tests.support import sample_case  # noqa: E402
from triage import audit, auth  # noqa: E402


def _pcts(samples: list[float]) -> tuple[float, float]:
    samples = sorted(samples)
    p95 = samples[min(len(samples) - 1, int(0.95 * len(samples)))]
    return statistics.median(samples), p95


def _timed(client: Any, method: str, url: str, n: int, **kw: Any) -> list[float]:
    out = []
    for i in range(n):
        body = kw.get("json_fn")
        t = time.perf_counter()
        r = client.request(method, url, headers=kw["headers"], json=body(i) if body else None)
        out.append((time.perf_counter() - t) * 1000)
        if r.status_code >= 300:
            raise SystemExit(f"{method} {url} -> {r.status_code}: {r.text[:300]}")
    return out


def run(kind: str, size: int, n_intake: int, n_queries: int) -> dict[str, tuple[float, float]]:
    from fastapi.testclient import TestClient

    from api.app import create_app

    with tempfile.TemporaryDirectory() as tmp:
        settings, db, schema = populated_database(
            kind, Path(tmp), "growth", size, rate_limit_per_second=0
        )
        with db.write() as s:
            admin = audit.Actor(audit.ActorType.human, "bench-admin", "admin")
            orch_key = auth.create_key(s, "bench-orch", "orchestrator", created_by=admin).key
            agent_key = auth.create_key(s, "bench-agent", "agent", created_by=admin).key
        app = create_app(settings, db=db, start_worker=False)
        res: dict[str, tuple[float, float]] = {}
        with TestClient(app) as c:
            orch = {"Authorization": f"Bearer {orch_key}"}
            agent = {"Authorization": f"Bearer {agent_key}"}
            # warm-up (connection pool, caches)
            _timed(c, "GET", "/v1/cases?limit=50", 5, headers=agent)
            base = 10_000_000 + size
            res["intake POST /v1/cases"] = _pcts(
                _timed(
                    c,
                    "POST",
                    "/v1/cases",
                    n_intake,
                    headers=orch,
                    json_fn=lambda i: sample_case(base + i),
                )
            )
            first = c.get("/v1/cases?status=received&limit=50", headers=agent).json()
            cursor = first.get("next_cursor")
            calls = {
                "list received (page 1)": "/v1/cases?status=received&limit=50",
                "list by exception type": "/v1/cases?exception_type=shortage&limit=50",
                "list by warehouse": "/v1/cases?warehouse_id=WH-HAM-2&limit=50",
                "list by customer": "/v1/cases?customer_id=CUST-0042&limit=50",
            }
            if cursor:  # a second page exists
                calls["list received (page 2)"] = (
                    f"/v1/cases?status=received&limit=50&cursor={cursor}"
                )
            for name, u in calls.items():
                res[name] = _pcts(_timed(c, "GET", u, n_queries, headers=agent))
        db.dispose()
        _drop(schema)
        return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--db", action="append", choices=["sqlite", "postgres"])
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 1_000_000])
    ap.add_argument("--intake", type=int, default=300, help="intake requests per size")
    ap.add_argument("--queries", type=int, default=100, help="requests per list call and size")
    args = ap.parse_args()
    for kind in args.db or ["sqlite"]:
        results = {size: run(kind, size, args.intake, args.queries) for size in args.sizes}
        small, large = min(args.sizes), max(args.sizes)
        print(f"\n{kind}: median / p95 ms (load average {os.getloadavg()[0]:.1f})")
        header = " | ".join(f"{s:,} cases" for s in args.sizes)
        print(f"| call | {header} | p50 ratio {large:,}/{small:,} |")
        print("|---|" + "---|" * len(args.sizes) + "---|")
        for name in [n for n in results[small] if all(n in results[z] for z in args.sizes)]:
            cells = " | ".join(
                f"{results[s][name][0]:.1f} / {results[s][name][1]:.1f}" for s in args.sizes
            )
            ratio = results[large][name][0] / results[small][name][0]
            print(f"| {name} | {cells} | {ratio:.2f} |", flush=True)


if __name__ == "__main__":
    main()
