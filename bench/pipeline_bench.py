"""End-to-end offline triage throughput: classify, retrieve over a 10k-chunk knowledge base,
draft with the offline engine, evaluate policy, store (suggestion, proposed actions, audit
events), on SQLite and PostgreSQL.

    .venv/bin/python bench/pipeline_bench.py --cases 500 --chunks 10000 --db sqlite

Set-up (not measured): a default model, the demo knowledge base padded with synthetic chunks
built from Bitext sentences, N simulated cases in ``received``. Measured: one worker draining
them (``Worker.run_once``), single process.
"""

from __future__ import annotations

import argparse
import csv
import secrets
import sys
import tempfile
import time
from pathlib import Path

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
            settings = Settings(data_dir=Path(tmp), database_url=url, worker_enabled=False)
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
            orch = audit.Actor(audit.ActorType.integration, "bench", "orchestrator")
            with db.write() as s:
                for rec in Simulator(SimConfig(seed=3)).cases(args.cases):
                    cases.submit(s, CaseIn.model_validate(rec.case), actor=orch, settings=settings)
            print(
                f"{kind}: set-up {time.perf_counter() - t0:.0f} s, {kb.count()} chunks",
                file=sys.stderr,
                flush=True,
            )
            worker = Worker(db, settings, pipe)
            worker.warm_up()
            t0 = time.perf_counter()
            done = worker.run_once()
            elapsed = time.perf_counter() - t0
            print(
                f"{kind:<8} {done} cases triaged end to end in {elapsed:.1f} s: "
                f"{done / elapsed:.0f} cases/s ({elapsed / done * 1000:.1f} ms/case)",
                flush=True,
            )
            db.dispose()
            if schema:
                eng = create_engine(PG, isolation_level="AUTOCOMMIT")
                with eng.connect() as c:
                    c.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))


if __name__ == "__main__":
    main()
