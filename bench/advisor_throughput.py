"""Advisor throughput: the LLM path against a local stub, and the offline engine end to end.

1. LLM path: an OpenAI-compatible stub server on 127.0.0.1 (started here, answers every
   chat-completions call after ``--delay`` seconds with a valid structured answer). For each
   concurrency c in 1, 8, 32, 128 the advisor (semaphore = c) advises ``--waves`` x c cases
   (default 4c, at least 8);
   throughput = cases / wall time, efficiency = throughput / (c / delay), the ideal if calls
   overlapped perfectly. Target: >= 80% at c = 32.
2. Prompt size per case: characters of the rendered messages and of the full request body
   (messages + JSON schema), and an estimate in tokens (chars / 4: no tokenizer file can be
   downloaded here, so this is the usual rule of thumb for English text, not a count).
3. Offline engine: retrieval over a 10,000-chunk knowledge base and a 5,000-case similar-case
   index (embedded Chroma), offline draft and contract check, batch and one case at a time.
   Classification, policy evaluation and storage are measured by their owners.

    nice .venv/bin/python bench/advisor_throughput.py \
        [--data ../shared/data/bitext/bench_train_2023.csv]
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import random
import statistics
import sys
import tempfile
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from contracts.case import CaseIn  # noqa: E402
from retrieval.advice import AdviceRequest  # noqa: E402
from retrieval.chunking import Chunk  # noqa: E402
from retrieval.embeddings import EncoderConfig  # noqa: E402
from retrieval.knowledge import Passage  # noqa: E402
from retrieval.llm import LLMAdvisor, LLMConfig  # noqa: E402
from retrieval.redaction import RedactionSession  # noqa: E402
from retrieval.service import RetrievalConfig, RetrievalService  # noqa: E402
from retrieval.store import ChromaConfig  # noqa: E402
from tests.support import chat_completion  # noqa: E402

QUEUES = [
    "warehouse",
    "billing",
    "claims",
    "transport",
    "integration",
    "returns",
    "customer_service",
]
PASSAGE = Passage(
    chunk_id="SOP-SHT-001:2:95900b14c8",
    doc_id="SOP-SHT-001",
    title="Shortage handling SOP",
    version="1.4",
    heading="Shortage handling SOP > Resolve",
    text="If stock is available, reship the missing quantity on the original order at our cost.",
    chunk_hash="95900b14c8",
    source_path="knowledge/shortage-sop.md",
    score=0.6,
)
DRAFT = {
    "summary": "Nordhaven Retail received 32 of 40 units of SKU-100-BLK on order SO-778812.",
    "queue": "warehouse",
    "routing_rationale": "Short pick at the warehouse.",
    "proposed_actions": [
        {
            "type": "reship",
            "order_id": "SO-778812",
            "sku": "SKU-100-BLK",
            "quantity": "8",
            "rationale": "Shortage SOP",
            "evidence": [],
        }
    ],
    "next_steps": ["Confirm stock."],
    "customer_message": "Dear Nordhaven Retail, we will reship the 8 missing units.",
    "citations": [PASSAGE.chunk_id],
}


# -- stub server --------------------------------------------------------------------------
class Stub:
    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.calls = 0
        self.body_sizes: list[int] = []
        self.max_in_flight = 0
        self._in_flight = 0
        payload = chat_completion(
            DRAFT,
            model="stub-model",
            completion_id="chatcmpl-stub",
            prompt_tokens=0,
            completion_tokens=0,
        )
        body = json.dumps(payload).encode()
        self.response = (
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
            + f"content-length: {len(body)}\r\n\r\n".encode()
            + body
        )

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                body = await reader.readexactly(length)
                if head.startswith(b"GET /stats"):
                    stats = json.dumps(
                        {
                            "calls": self.calls,
                            "max_in_flight": self.max_in_flight,
                            "body_sizes": self.body_sizes[-50:],
                        }
                    ).encode()
                    self.max_in_flight = 0
                    writer.write(
                        b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % len(stats) + stats
                    )
                    await writer.drain()
                    continue
                self.calls += 1
                self.body_sizes.append(len(body))
                self._in_flight += 1
                self.max_in_flight = max(self.max_in_flight, self._in_flight)
                await asyncio.sleep(self.delay)
                self._in_flight -= 1
                writer.write(self.response)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            writer.close()


def serve_stub(delay: float, port_out: Any) -> None:
    """Run the stub in its own process (so its CPU does not count against the advisor)."""

    async def run() -> None:
        stub = Stub(delay)
        server = await asyncio.start_server(stub.handle, "127.0.0.1", 0, backlog=1024)
        port_out.put(server.sockets[0].getsockname()[1])
        async with server:
            await server.serve_forever()

    asyncio.run(run())


async def stub_stats(port: int) -> dict[str, Any]:
    import httpx

    async with httpx.AsyncClient() as client:
        return dict((await client.get(f"http://127.0.0.1:{port}/stats")).json())


def shortage_case(i: int) -> CaseIn:
    return CaseIn.model_validate(
        {
            "source": {"system": "bench", "case_id": f"EX-{i}"},
            "exception_type": "shortage",
            "references": {
                "customer": {"id": "CUST-0042", "name": "Nordhaven Retail", "tier": "A"},
                "order_id": "SO-778812",
                "invoice_id": "INV-90211",
                "warehouse_id": "WH-RTM-1",
                "carrier_id": "DHL",
                "shipment_id": "SH-55120",
            },
            "lines": [
                {
                    "sku": "SKU-100-BLK",
                    "ordered_qty": "40",
                    "shipped_qty": "32",
                    "invoiced_qty": "40",
                    "unit_price": {"amount": "12.50", "currency": "EUR"},
                }
            ],
            "amount_in_dispute": {"amount": "100.00", "currency": "EUR"},
            "text": {
                "customer_message": "We received 32 units instead of 40 but were billed for 40. "
                "Please call me on +44 20 7946 0958.",
                "operator_notes": "Pick short at location A-12-3.",
            },
            "occurred_at": "2026-11-20T09:15:00+01:00",
        }
    )


async def llm_bench(delay: float, levels: list[int], port: int, waves: int = 4) -> None:
    from retrieval.redaction import Redactor

    redactor = Redactor()
    print(
        f"\n## LLM path against a stub answering after {delay:.1f} s (127.0.0.1:{port}, "
        "separate process)"
    )
    print(
        f"{'concurrency':>11s} {'cases':>6s} {'wall s':>7s} {'cases/s':>8s} {'ideal':>6s} "
        f"{'efficiency':>10s} {'CPU ms/case':>11s} {'max in flight':>13s} {'engine llm':>10s}"
    )
    for c in levels:
        config = LLMConfig(
            base_url=f"http://127.0.0.1:{port}/v1",
            model="stub-model",
            api_key="sk-stub",
            concurrency=c,
            timeout_s=30,
            max_retries=0,
        )  # type: ignore[arg-type]
        adv = LLMAdvisor(config, redactor=redactor)
        n = max(8, waves * c)
        requests = [
            AdviceRequest(case=shortage_case(i), case_id=f"c{i}", passages=[PASSAGE], queues=QUEUES)
            for i in range(n)
        ]
        await stub_stats(port)  # resets the in-flight peak
        cpu0 = time.process_time()
        start = time.perf_counter()
        results = await asyncio.gather(*(adv.advise(r) for r in requests))
        wall = time.perf_counter() - start
        cpu = (time.process_time() - cpu0) / n * 1000
        stats = await stub_stats(port)
        engines = [s.provenance.engine for s in results]
        rate = n / wall
        ideal = c / delay
        print(
            f"{c:11d} {n:6d} {wall:7.2f} {rate:8.1f} {ideal:6.0f} {rate / ideal:10.0%} "
            f"{cpu:11.1f} {stats['max_in_flight']:13d} {engines.count('llm'):>5d}/{n}"
        )

    adv = LLMAdvisor(LLMConfig(model="stub", api_key="x"), redactor=redactor)  # type: ignore[arg-type]
    msgs = adv._messages(
        AdviceRequest(case=shortage_case(0), case_id="c0", passages=[PASSAGE], queues=QUEUES),
        RedactionSession(),
    )
    chars = sum(len(str(m.content)) for m in msgs)
    body = statistics.median((await stub_stats(port))["body_sizes"])
    print("\n## Prompt size per case (one passage; each extra 1,000-char passage adds ~250 tokens)")
    print(f"rendered messages: {chars} chars ~ {chars / 4:.0f} tokens (chars/4 estimate)")
    print(
        f"full request body (messages + JSON schema + options): {body:.0f} bytes "
        f"~ {body / 4:.0f} tokens (estimate)"
    )


# -- offline engine -----------------------------------------------------------------------
TYPES = [
    "shortage",
    "partial_shipment",
    "pricing_mismatch",
    "duplicate_invoice",
    "damaged_goods",
    "carrier_delay",
    "failed_integration",
    "address_issue",
    "return_request",
]


def random_case(i: int, texts: list[str], rng: random.Random) -> CaseIn:
    etype = TYPES[i % len(TYPES)]
    ordered = rng.randint(5, 200)
    shipped = ordered - rng.randint(0, min(ordered, 20))
    price = Decimal(rng.randint(100, 5000)) / 100
    inv_price = price + (Decimal(rng.randint(1, 300)) / 100 if etype == "pricing_mismatch" else 0)
    gap = (ordered - shipped) * price
    dispute = gap if gap > 0 else price * 2
    return CaseIn.model_validate(
        {
            "source": {"system": "bench", "case_id": f"EX-{i}"},
            "exception_type": etype,
            "references": {
                "customer": {
                    "id": f"CUST-{i % 97:04d}",
                    "name": f"Customer {i % 97}",
                    "tier": "ABC"[i % 3],
                },
                "order_id": f"SO-{100000 + i}",
                "invoice_id": f"INV-{200000 + i}",
                "shipment_id": f"SH-{300000 + i}",
                "warehouse_id": "WH-RTM-1",
                "carrier_id": "DHL",
            },
            "lines": [
                {
                    "sku": f"SKU-{i % 50}",
                    "ordered_qty": str(ordered),
                    "shipped_qty": str(shipped),
                    "invoiced_qty": str(ordered),
                    "unit_price": {"amount": str(price), "currency": "EUR"},
                    "invoiced_unit_price": {"amount": str(inv_price), "currency": "EUR"},
                }
            ],
            "amount_in_dispute": {
                "amount": str(dispute.quantize(Decimal("0.01"))),
                "currency": "EUR",
            },
            "text": {"customer_message": texts[i % len(texts)]},
            "occurred_at": "2026-11-20T09:15:00+01:00",
        }
    )


def offline_bench(data: Path, n_cases: int, n_chunks: int, n_similar: int, encoder: str) -> None:
    with data.open(encoding="utf-8") as fh:
        texts = [row["text"] for row in csv.DictReader(fh)]
    rng = random.Random(0)
    with tempfile.TemporaryDirectory() as tmp:
        service = RetrievalService(
            RetrievalConfig(
                chroma=ChromaConfig(path=Path(tmp)), encoder=EncoderConfig(name=encoder)
            )
        )
        start = time.perf_counter()
        service.kb.ingest([ROOT / "knowledge"])
        synthetic = []
        while service.kb.count() + len(synthetic) < n_chunks:
            i = len(synthetic)
            body = f"{texts[i % len(texts)]} {texts[(i * 7 + 3) % len(texts)]}"
            synthetic.append(
                Chunk(
                    chunk_id=f"SYN-{i}:0:{i:010x}",
                    doc_id=f"SYN-{i // 5}",
                    title="Synthetic",
                    version="1",
                    heading="Synthetic",
                    text=body,
                    chunk_hash=f"{i:064x}",
                    source_path="-",
                    position=i % 5,
                )
            )
        service.kb.add_chunks(synthetic)
        service.cases.add_many(
            [
                (
                    f"R-{i}",
                    texts[(i * 13) % len(texts)],
                    {"exception_type": TYPES[i % len(TYPES)]},
                    "resolved: credit note issued",
                )
                for i in range(n_similar)
            ]
        )
        build = time.perf_counter() - start
        print(
            f"\n## Offline engine: {service.kb.count()} chunks, {service.cases.count()} "
            f"similar cases (built in {build:.0f} s)"
        )
        cases = [random_case(i, texts, rng) for i in range(n_cases)]

        def advise_batch(batch: list[CaseIn]) -> list[Any]:
            got = service.retrieve_many(batch)
            return [
                service.offline.suggest(service.request(c, f"c{k}", None, QUEUES, r))
                for k, (c, r) in enumerate(zip(batch, got, strict=True))
            ]

        advise_batch(cases[:32])  # warm-up
        start = time.perf_counter()
        results = []
        for k in range(0, len(cases), 64):
            results.extend(advise_batch(cases[k : k + 64]))
        wall = time.perf_counter() - start
        violations = sum(bool(s.provenance.contract_violations) for s in results)
        print(
            f"batch of 64: {len(cases) / wall:.0f} cases/s over {len(cases)} cases "
            f"(retrieve k=4 passages + k=5 similar, draft, contract check); "
            f"{violations} with contract violations"
        )

        lat = []
        stages = {"encode": 0.0, "retrieve": 0.0, "draft+check": 0.0}
        for c in cases[:300]:
            t0 = time.perf_counter()
            vec = service.encode_case(c)
            t1 = time.perf_counter()
            got = service.retrieve(c, vector=vec)
            t2 = time.perf_counter()
            service.offline.suggest(service.request(c, "c", None, QUEUES, got))
            t3 = time.perf_counter()
            stages["encode"] += t1 - t0
            stages["retrieve"] += t2 - t1
            stages["draft+check"] += t3 - t2
            lat.append((t3 - t0) * 1000)
        lat.sort()
        print(
            f"one case at a time: {1000 / statistics.mean(lat):.0f} cases/s, p50 "
            f"{lat[len(lat) // 2]:.1f} ms, p95 {lat[int(len(lat) * 0.95)]:.1f} ms; per stage "
            + ", ".join(f"{k} {v / len(lat) * 1000:.2f} ms" for k, v in stages.items())
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--data", type=Path, default=ROOT.parent / "shared/data/bitext/bench_train_2023.csv"
    )
    parser.add_argument("--delay", type=float, default=1.0)
    parser.add_argument("--levels", type=int, nargs="+", default=[1, 8, 32, 128])
    parser.add_argument("--cases", type=int, default=3000)
    parser.add_argument("--chunks", type=int, default=10_000)
    parser.add_argument("--similar", type=int, default=5_000)
    parser.add_argument(
        "--encoder", default="builtin:lsa-char-v1", help="e.g. minilm (needs the optional extra)"
    )
    parser.add_argument(
        "--waves",
        type=int,
        nargs="+",
        default=[4],
        help="cases per level = waves x concurrency; more waves approach steady state "
        "(the first and last wave pay the ramp-up and the tail)",
    )
    parser.add_argument("--skip-llm", action="store_true")
    parser.add_argument("--skip-offline", action="store_true")
    args = parser.parse_args()
    if not args.skip_llm:
        import multiprocessing

        ports: Any = multiprocessing.Queue()
        stub = multiprocessing.Process(target=serve_stub, args=(args.delay, ports), daemon=True)
        stub.start()
        try:
            port = ports.get(timeout=30)
            for waves in args.waves:
                print(f"\n# {waves} waves: {waves} x concurrency cases per level")
                asyncio.run(llm_bench(args.delay, args.levels, port, waves))
        finally:
            stub.terminate()
            stub.join(5)
    if not args.skip_offline:
        offline_bench(args.data, args.cases, args.chunks, args.similar, args.encoder)


if __name__ == "__main__":
    main()
