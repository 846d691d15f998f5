"""Audit chain verification speed at 100k and 1M events, SQLite and PostgreSQL.

Events are generated with valid hashes and bulk-loaded (generation is not what is measured),
then ``audit.verify`` walks the whole chain. Prints events/s per size and database, and the
time per event, which should stay flat as the chain grows (verification is linear). Also times
``audit.unfinished`` (the start events without an outcome that verification lists), in its
worst case: the first event is a start without an outcome, so every later payload is scanned.

    .venv/bin/python bench/audit_verify_bench.py --sizes 100000 1000000 --db sqlite --db postgres
"""

from __future__ import annotations

import argparse
import os
import secrets
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import create_engine, text

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from triage import audit, migrate  # noqa: E402
from triage.common import canonical_json  # noqa: E402
from triage.db import Database  # noqa: E402
from triage.settings import Settings  # noqa: E402

_T = TypeVar("_T")

PG = os.environ.get("TRIAGE_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def load(db: Database, n: int, batch: int = 20_000) -> None:
    prev = audit.GENESIS
    ts = "2026-11-26T12:00:00.000000Z"
    rows = []
    insert = text(
        "INSERT INTO audit_events (seq, ts, actor_type, actor_id, actor_role, case_id, action,"
        " payload, prev_hash, hash) VALUES (:seq, :ts, :actor_type, :actor_id, :actor_role,"
        " :case_id, :action, :payload, :prev_hash, :hash)"
    )
    for seq in range(1, n + 1):
        payload = canonical_json({"from": "received", "to": "triaging", "attempt": seq % 3})
        case_id = f"01M8CB8FFK54SQPHH3AY{seq % 100000:06d}"
        action = "knowledge.ingest_started" if seq == 1 else "case.triaging"
        h = audit.entry_hash(seq, ts, "ai", "triage-pipeline", None, case_id, action, payload, prev)
        rows.append(
            {
                "seq": seq,
                "ts": ts,
                "actor_type": "ai",
                "actor_id": "triage-pipeline",
                "actor_role": None,
                "case_id": case_id,
                "action": action,
                "payload": payload,
                "prev_hash": prev,
                "hash": h,
            }
        )
        prev = h
        if len(rows) == batch or seq == n:
            with db.write() as s:
                s.execute(insert, rows)
            rows.clear()
    with db.write() as s:
        s.execute(
            text("UPDATE audit_head SET seq = :s, hash = :h WHERE id = 1"), {"s": n, "h": prev}
        )


def _median_run(db: Database, read: Callable[[Any], _T], repeat: int) -> tuple[float, _T]:
    """Median seconds of ``repeat`` runs of ``read`` in a read session, and the last result."""
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        with db.read() as s:
            result = read(s)
        times.append(time.perf_counter() - t0)
    return statistics.median(times), result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--sizes", nargs="+", type=int, default=[100_000, 1_000_000])
    ap.add_argument("--db", action="append", choices=["sqlite", "postgres"])
    ap.add_argument("--repeat", type=int, default=3, help="verify runs per size (median quoted)")
    args = ap.parse_args()
    for kind in args.db or ["sqlite", "postgres"]:
        for n in args.sizes:
            with tempfile.TemporaryDirectory() as tmp:
                schema = None
                if kind == "sqlite":
                    url = f"sqlite:///{tmp}/audit.db"
                else:
                    schema = f"bench_audit_{secrets.token_hex(3)}"
                    eng = create_engine(PG, isolation_level="AUTOCOMMIT")
                    with eng.connect() as c:
                        c.execute(text(f'CREATE SCHEMA "{schema}"'))
                    url = f"{PG}?options=-csearch_path%3D{schema}"
                settings = Settings(database_url=url, data_dir=Path(tmp))
                migrate.upgrade(settings)
                db = Database(settings)
                t0 = time.perf_counter()
                load(db, n)
                print(
                    f"{kind:<8} loaded {n:>9,} events in {time.perf_counter() - t0:6.1f}s",
                    file=sys.stderr,
                    flush=True,
                )
                med, res = _median_run(db, audit.verify, args.repeat)
                assert res.intact and res.events == n, res
                print(
                    f"{kind:<8} verify {n:>9,} events: median {med:6.2f}s "
                    f"({n / med:>9,.0f} events/s, {med / n * 1e6:5.2f} us/event)",
                    flush=True,
                )
                listed, found = _median_run(db, audit.unfinished, args.repeat)
                assert [u.seq for u in found] == [1], found
                print(
                    f"{kind:<8} unfinished {n:>9,} events: median {listed:6.2f}s"
                    f" ({listed / med:.2f}x the verification)",
                    flush=True,
                )
                db.dispose()
                if schema:
                    eng = create_engine(PG, isolation_level="AUTOCOMMIT")
                    with eng.connect() as c:
                        c.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
                    eng.dispose()


if __name__ == "__main__":
    main()
