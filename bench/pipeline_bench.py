"""End-to-end offline triage throughput: classify, retrieve over a 10k-chunk knowledge base,
draft with the offline engine, evaluate policy, store (suggestion, proposed actions, audit
events), on SQLite and PostgreSQL.

    .venv/bin/python bench/pipeline_bench.py --cases 500 --chunks 10000 --db sqlite \
        --workers 1 --workers 2 --workers 4

Set-up (not measured): a default model, the demo knowledge base padded with synthetic chunks
built from Bitext sentences, N simulated cases in ``received`` (fresh ones for every run).
Measured per run: W worker processes (each a ``triage worker``: its own pipeline, batches of
``worker_batch_size``) warmed up, then started together and timed until the queue is empty.
Prints wall throughput, cases per worker CPU-second (robust to a loaded machine; on PostgreSQL
the server's CPU is not in it) and peak RSS per worker. ``--profile`` instead runs one
in-process worker under cProfile.
"""

from __future__ import annotations

import argparse
import cProfile
import csv
import multiprocessing as mp
import os
import pstats
import resource
import secrets
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, text

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.intake_bench import PG  # noqa: E402
from contracts.case import CaseIn  # noqa: E402
from retrieval.chunking import Chunk  # noqa: E402
from triage import audit, cases, classification, migrate  # noqa: E402
from triage.db import Database  # noqa: E402
from triage.settings import Settings  # noqa: E402
from triage.simulator import SimConfig, Simulator  # noqa: E402
from triage.stages import REPO_KNOWLEDGE, RetrievalStage, default_pipeline  # noqa: E402
from triage.worker import Worker  # noqa: E402

BITEXT = ROOT / "classifiers" / "fixtures" / "bitext" / "bench_train_2023.csv"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--cases", type=int, default=500)
    ap.add_argument("--chunks", type=int, default=10_000)
    ap.add_argument("--db", action="append", choices=["sqlite", "postgres"])
    ap.add_argument("--batch-size", type=int, default=None, help="worker batch size")
    ap.add_argument(
        "--via-api",
        action="store_true",
        help="intake to suggestion: the cases are posted over HTTP (batches of 50) to a "
        "`triage serve --no-worker` process while the workers run; timed from the first POST "
        "to the last suggestion",
    )
    ap.add_argument(
        "--encoder",
        default=None,
        help="retrieval encoder, e.g. minilm (needs the optional extra); default: the built-in",
    )
    ap.add_argument("--profile", action="store_true", help="in-process run with a cProfile summary")
    ap.add_argument(
        "--workers",
        type=int,
        action="append",
        help="worker processes (repeat for several runs, e.g. --workers 1 --workers 2)",
    )
    args = ap.parse_args()
    texts = [r["text"] for r in csv.DictReader(BITEXT.open(encoding="utf-8"))]
    for kind in args.db or ["sqlite"]:
        with tempfile.TemporaryDirectory() as tmp:
            schema = None
            url = None
            if kind == "postgres":
                schema = f"bench_pipe_{secrets.token_hex(3)}"
                eng = create_engine(PG, isolation_level="AUTOCOMMIT")
                with eng.connect() as c:
                    c.execute(text(f'CREATE SCHEMA "{schema}"'))
                url = f"{PG}?options=-csearch_path%3D{schema}"
            extra: dict[str, Any] = {}
            if args.batch_size:
                extra["worker_batch_size"] = args.batch_size
            if args.encoder:
                extra["encoder"] = args.encoder
            settings = Settings(data_dir=Path(tmp), database_url=url, worker_enabled=False, **extra)
            migrate.upgrade(settings)
            t0 = time.perf_counter()
            classification.train_default_model(settings, n_train=1500, n_eval=300)
            pipe = default_pipeline(settings)
            stage = pipe.retriever
            assert isinstance(stage, RetrievalStage)
            kb = stage.service.kb
            kb.ingest([REPO_KNOWLEDGE])
            synthetic = []
            while kb.count() + len(synthetic) < args.chunks:
                i = len(synthetic)
                synthetic.append(
                    Chunk(
                        chunk_id=f"SYN-{i}:0:{i:010x}",
                        doc_id=f"SYN-{i // 5}",
                        title="Synthetic",
                        version="1",
                        heading="Synthetic",
                        text=f"{texts[i % len(texts)]} {texts[(i * 7 + 3) % len(texts)]}",
                        chunk_hash=f"{i:064x}",
                        source_path="-",
                        position=i % 5,
                    )
                )
            kb.add_chunks(synthetic)
            db = Database(settings)
            if not args.via_api:
                _submit(db, settings, args.cases, seed=3)
            print(
                f"{kind}: set-up {time.perf_counter() - t0:.0f} s, {kb.count()} chunks",
                file=sys.stderr,
                flush=True,
            )
            if args.profile:
                _profile(db, settings, pipe)
            else:
                settings_kwargs = {
                    "data_dir": Path(tmp),
                    "database_url": url,
                    "worker_enabled": False,
                    **extra,
                }
                for n_workers in args.workers or [1]:
                    if args.via_api:
                        _measure_via_api(
                            kind, n_workers, settings_kwargs, db, args.cases, seed=100 + n_workers
                        )
                        continue
                    if n_workers != (args.workers or [1])[0]:
                        _submit(db, settings, args.cases, seed=n_workers)
                    _measure(kind, n_workers, settings_kwargs)
            db.dispose()
            if schema:
                eng = create_engine(PG, isolation_level="AUTOCOMMIT")
                with eng.connect() as c:
                    c.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))


ORCH = audit.Actor(audit.ActorType.integration, "bench", "orchestrator")


def _submit(db: Database, settings: Settings, n: int, seed: int) -> None:
    with db.write() as s:
        for rec in Simulator(SimConfig(seed=seed)).cases(n):
            case = dict(rec.case)
            case["source"] = {**case["source"], "case_id": f"{case['source']['case_id']}-{seed}"}
            cases.submit(s, CaseIn.model_validate(case), actor=ORCH, settings=settings)


def _worker_process(
    settings_kwargs: dict[str, Any], ready: Any, go: Any, out: Any, until: int = 0
) -> None:
    """One `triage worker`-like process: warm up, wait for the start signal, drain the queue
    (and with ``until``, keep polling until that many suggestions exist)."""
    settings = Settings(**settings_kwargs)
    db = Database(settings)
    worker = Worker(db, settings, default_pipeline(settings))
    worker.warm_up()
    ready.put(os.getpid())
    go.wait()
    c0 = time.process_time()
    done = worker.run_once()
    while until and _suggestions(db) < until:
        time.sleep(0.02)
        done += worker.run_once()
    cpu = time.process_time() - c0
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out.put((done, cpu, rss_mb))
    db.dispose()


def _measure(kind: str, n_workers: int, settings_kwargs: dict[str, Any]) -> None:
    ctx = mp.get_context("spawn")
    ready, out, go = ctx.Queue(), ctx.Queue(), ctx.Event()
    procs = [
        ctx.Process(target=_worker_process, args=(settings_kwargs, ready, go, out))
        for _ in range(n_workers)
    ]
    for p in procs:
        p.start()
    for _ in procs:
        ready.get(timeout=300)
    t0 = time.perf_counter()
    go.set()
    results = [out.get(timeout=3600) for _ in procs]
    elapsed = time.perf_counter() - t0
    for p in procs:
        p.join()
    done = sum(r[0] for r in results)
    cpu = sum(r[1] for r in results)
    rss = max(r[2] for r in results)
    print(
        f"{kind:<8} workers={n_workers} {done} cases triaged end to end in {elapsed:.1f} s: "
        f"{done / elapsed:.0f} cases/s; worker CPU {cpu:.1f} s = {done / cpu:.0f} cases/CPU-s; "
        f"max RSS per worker {rss:.0f} MB; load average {os.getloadavg()[0]:.1f}",
        flush=True,
    )


def _suggestions(db: Database) -> int:
    from sqlalchemy import func, select

    from triage.models import Suggestion

    with db.read() as s:
        return int(s.scalar(select(func.count()).select_from(Suggestion)) or 0)


def _measure_via_api(
    kind: str,
    n_workers: int,
    settings_kwargs: dict[str, Any],
    db: Database,
    n_cases: int,
    seed: int,
) -> None:
    import socket
    import subprocess

    import httpx

    from triage import auth

    with db.write() as s:
        admin = audit.Actor(audit.ActorType.human, "bench-admin", "admin")
        key = auth.create_key(s, f"bench-{seed}", "orchestrator", created_by=admin).key
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {
        **os.environ,
        "TRIAGE_DATA_DIR": str(settings_kwargs["data_dir"]),
        "TRIAGE_WORKER_ENABLED": "false",
        "TRIAGE_RATE_LIMIT_PER_SECOND": "0",
    }
    if settings_kwargs.get("database_url"):
        env["TRIAGE_DATABASE_URL"] = settings_kwargs["database_url"]
    api = subprocess.Popen(
        [sys.executable, "-m", "cli.main", "serve", "--no-worker", "--port", str(port)],
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        before = _suggestions(db)
        payloads = []
        for rec in Simulator(SimConfig(seed=seed)).cases(n_cases):
            case = dict(rec.case)
            case["source"] = {**case["source"], "case_id": f"{case['source']['case_id']}-{seed}"}
            payloads.append(case)
        ctx = mp.get_context("spawn")
        ready, out, go = ctx.Queue(), ctx.Queue(), ctx.Event()
        target = before + n_cases
        procs = [
            ctx.Process(target=_worker_process, args=(settings_kwargs, ready, go, out, target))
            for _ in range(n_workers)
        ]
        for p in procs:
            p.start()
        for _ in procs:
            ready.get(timeout=300)
        go.set()
        t0 = time.perf_counter()
        with httpx.Client(base_url=base, timeout=60) as client:
            for i in range(0, n_cases, 50):
                r = client.post(
                    "/v1/cases/batch",
                    json={"items": payloads[i : i + 50]},
                    headers={"Authorization": f"Bearer {key}"},
                )
                r.raise_for_status()
        sent = time.perf_counter() - t0
        results = [out.get(timeout=3600) for _ in procs]
        elapsed = time.perf_counter() - t0
        for p in procs:
            p.join()
    finally:
        api.terminate()
        api.wait(30)
    done = sum(r[0] for r in results)
    print(
        f"{kind:<8} via API, workers={n_workers}: {done} cases from first POST to last "
        f"suggestion in {elapsed:.1f} s = {done / elapsed:.0f} cases/s (all posted after "
        f"{sent:.1f} s); max RSS per worker {max(r[2] for r in results):.0f} MB; "
        f"load average {os.getloadavg()[0]:.1f}",
        flush=True,
    )


def _profile(db: Database, settings: Settings, pipe: Any) -> None:
    worker = Worker(db, settings, pipe)
    worker.warm_up()
    prof = cProfile.Profile()
    t0 = time.perf_counter()
    prof.enable()
    done = worker.run_once()
    prof.disable()
    elapsed = time.perf_counter() - t0
    pstats.Stats(prof, stream=sys.stderr).sort_stats("cumulative").print_stats(
        int(os.environ.get("PROFILE_ROWS", "40"))
    )
    print(f"in-process, profiled: {done} cases in {elapsed:.1f} s", flush=True)


if __name__ == "__main__":
    main()
