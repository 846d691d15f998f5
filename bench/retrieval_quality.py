"""Similar-case retrieval quality on Bitext, for every embedding option, plus KB hit rate.

Protocol (similar-case precision@5, "same intent"):
- Texts are grouped by paraphrase: lower-cased, every token holding a digit replaced by NUM,
  then the sorted multiset of word tokens is the group key. Whole groups go to one side, so a
  query never has its own near-duplicate (same words, other order number) in the index.
- 70% of the groups are indexed, 30% are queries (seeded; several seeds reported).
- precision@5 = mean over queries of (neighbours among the top 5 with the query's intent) / 5.
- Encoders that learn from text (LSA) are fitted on the indexed part only; the shipped default
  (fitted on the whole training file) is reported separately because its vocabulary has seen
  the query texts (unsupervised, no labels, but not strictly held out).

Knowledge-base hit rate: hand-written case texts (below) with the document that should answer
them; hit@1 / hit@3 over the demo knowledge base in knowledge/.

    nice .venv/bin/python bench/retrieval_quality.py \
        [--data ../shared/data/bitext/bench_train_2023.csv] [--chroma]
    # the optional sentence-embedding model, from the separate venv that has the extra:
    nice /work/venv-extra/bin/python bench/retrieval_quality.py --minilm
"""

from __future__ import annotations

import argparse
import csv
import re
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from retrieval.embeddings import (  # noqa: E402
    Encoder,
    EncoderConfig,
    HashingEncoder,
    LsaConfig,
    LsaEncoder,
    load_encoder,
    normalise_text,
)

KB_QUERIES: list[tuple[str, str]] = [
    ("shortage: we received 32 units instead of 40 but were billed for 40", "SOP-SHT-001"),
    ("shortage: pick short at location, 8 cartons missing from the delivery", "SOP-SHT-001"),
    ("damaged goods: the pallet arrived crushed and the cartons were wet", "SOP-DMG-002"),
    ("damaged goods: broken items found after unpacking, photos attached", "SOP-DMG-002"),
    ("carrier delay: the truck did not arrive, delivery is three days late", "SOP-CAR-003"),
    ("damaged goods: file a claim with the carrier for goods lost in transit", "SOP-CAR-003"),
    ("pricing mismatch: the invoice unit price is higher than the agreed price", "SOP-PRC-010"),
    ("pricing mismatch: we were charged 14.20 per unit instead of 12.50", "SOP-PRC-010"),
    ("duplicate invoice: we were billed twice for the same delivery", "SOP-INV-007"),
    ("duplicate invoice: two invoices for one order, please cancel one", "SOP-INV-007"),
    ("failed integration: EDI message rejected with HTTP 500, not acknowledged", "RUN-INT-008"),
    (
        "failed integration: API timeout, order message stuck in the dead letter queue",
        "RUN-INT-008",
    ),
    ("address issue: the carrier says the street number is missing", "SOP-ADR-009"),
    ("address issue: please change the delivery address of my order", "SOP-ADR-009"),
    ("return request: we want to return 5 unopened units", "POL-RET-001"),
    ("return request: when will I get my refund for the returned goods", "POL-RET-001"),
    ("partial shipment: only 60 of 100 arrived, is the rest on backorder", "SOP-PAR-011"),
    ("partial shipment: the order was split into two deliveries", "SOP-PAR-011"),
    ("other: what is the response time for tier A customers", "POL-TIER-006"),
    ("other: how much credit note can be approved without finance", "POL-CRN-004"),
]


def group_key(text: str) -> str:
    masked = re.sub(r"\S*\d\S*", " NUM ", text.lower())
    return " ".join(sorted(re.findall(r"[a-z]+|NUM", masked)))


def split(rows: list[dict[str, str]], seed: int) -> tuple[list[int], list[int]]:
    keys = sorted({group_key(r["text"]) for r in rows})
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(keys))
    indexed = {keys[i] for rank, i in enumerate(order) if rank % 10 < 7}
    idx = [i for i, r in enumerate(rows) if group_key(r["text"]) in indexed]
    qry = [i for i, r in enumerate(rows) if group_key(r["text"]) not in indexed]
    return idx, qry


def precision_at_5(emb_i: np.ndarray, emb_q: np.ndarray, y_i: np.ndarray, y_q: np.ndarray) -> float:
    sims = emb_q @ emb_i.T
    if hasattr(sims, "toarray"):
        sims = sims.toarray()
    top = np.argpartition(-sims, 5, axis=1)[:, :5]
    return float((y_i[top] == y_q[:, None]).mean())


def tfidf_sparse(texts_i: list[str], texts_q: list[str]) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.feature_extraction.text import TfidfVectorizer

    vec = TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 4), sublinear_tf=True, min_df=2)
    a = vec.fit_transform([normalise_text(t) for t in texts_i])
    b = vec.transform([normalise_text(t) for t in texts_q])
    return a, b  # type: ignore[return-value]


def kb_hits(encoder: Encoder, with_type: bool = True) -> tuple[float, float]:
    """hit@1, hit@3; ``with_type=False`` drops the "exception type:" prefix that the pipeline
    puts in front of every query (``retrieval.advice.query_text``)."""
    from retrieval.knowledge import KnowledgeBase
    from retrieval.store import ChromaConfig, open_client

    with tempfile.TemporaryDirectory() as tmp:
        kb = KnowledgeBase(open_client(ChromaConfig(path=Path(tmp))), encoder)
        kb.ingest([ROOT / "knowledge"])
        hit1 = hit3 = 0
        for query, doc_id in KB_QUERIES:
            text = query if with_type else query.split(": ", 1)[1]
            docs = [p.doc_id for p in kb.search(text, k=3)]
            hit1 += docs[:1] == [doc_id]
            hit3 += doc_id in docs
    n = len(KB_QUERIES)
    return hit1 / n, hit3 / n


def chroma_precision(
    encoder: Encoder, rows: list[dict[str, str]], idx: list[int], qry: list[int]
) -> float:
    """Same metric through the product path: CaseIndex in an embedded Chroma (HNSW)."""
    from retrieval.cases import CaseIndex
    from retrieval.store import ChromaConfig, open_client

    with tempfile.TemporaryDirectory() as tmp:
        index = CaseIndex(open_client(ChromaConfig(path=Path(tmp))), encoder)
        index.add_many(
            [(f"b{i}", rows[i]["text"], {"intent": rows[i]["intent"]}, None) for i in idx]
        )
        vectors = encoder.encode([rows[i]["text"] for i in qry])
        hits = index.similar_many(vectors, k=5)
        correct = [
            sum(h.metadata.get("intent") == rows[q]["intent"] for h in hs) / 5
            for q, hs in zip(qry, hits, strict=True)
        ]
    return float(np.mean(correct))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--data", type=Path, default=ROOT.parent / "shared/data/bitext/bench_train_2023.csv"
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--minilm", action="store_true", help="also the optional MiniLM model")
    parser.add_argument("--only-minilm", action="store_true")
    parser.add_argument("--chroma", action="store_true", help="also measure through Chroma")
    parser.add_argument(
        "--encoder",
        action="append",
        default=[],
        help="also this encoder (builtin:NAME or a folder); repeatable",
    )
    args = parser.parse_args()

    with args.data.open(encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    texts = [r["text"] for r in rows]
    y = np.array([r["intent"] for r in rows])
    print(
        f"{len(rows)} texts, {len(set(y))} intents, {len({group_key(t) for t in texts})} "
        f"paraphrase groups; seeds {args.seeds}"
    )

    options: dict[str, Callable[[list[int], list[int]], tuple[np.ndarray, np.ndarray]]] = {}
    if not args.only_minilm:

        def sparse(i: list[int], q: list[int]) -> tuple[np.ndarray, np.ndarray]:
            return tfidf_sparse([texts[k] for k in i], [texts[k] for k in q])

        def lsa(dim: int) -> Callable[[list[int], list[int]], tuple[np.ndarray, np.ndarray]]:
            def run(i: list[int], q: list[int]) -> tuple[np.ndarray, np.ndarray]:
                enc = LsaEncoder.fit([texts[k] for k in i], LsaConfig(dim=dim))
                return enc.encode([texts[k] for k in i]), enc.encode([texts[k] for k in q])

            return run

        shipped = load_encoder(EncoderConfig(name="builtin:lsa-char-v1"))

        def builtin(i: list[int], q: list[int]) -> tuple[np.ndarray, np.ndarray]:
            return shipped.encode([texts[k] for k in i]), shipped.encode([texts[k] for k in q])

        def hashing(n: int) -> Callable[[list[int], list[int]], tuple[np.ndarray, np.ndarray]]:
            enc = HashingEncoder(n_features=n)

            def run(i: list[int], q: list[int]) -> tuple[np.ndarray, np.ndarray]:
                return enc.encode([texts[k] for k in i]), enc.encode([texts[k] for k in q])

            return run

        options["tfidf char 2-4 (sparse, exact; reference only)"] = sparse
        options["lsa char 2-4, 128 dims (fit on index part)"] = lsa(128)
        options["lsa char 2-4, 256 dims (fit on index part) [default config]"] = lsa(256)
        options["lsa char 2-4, 384 dims (fit on index part)"] = lsa(384)
        options["builtin:lsa-char-v1 (shipped; fitted on the whole file)"] = builtin
        options["hashing char 3-5, 1024 dims"] = hashing(1024)
        options["hashing char 3-5, 2048 dims"] = hashing(2048)
    for extra_name in args.encoder:
        extra = load_encoder(EncoderConfig(name=extra_name))

        def fixed(
            i: list[int], q: list[int], enc: Encoder = extra
        ) -> tuple[np.ndarray, np.ndarray]:
            return enc.encode([texts[k] for k in i]), enc.encode([texts[k] for k in q])

        options[extra_name] = fixed
    if args.minilm or args.only_minilm:
        start = time.perf_counter()
        mini = load_encoder(EncoderConfig(name="minilm"))
        all_vectors = mini.encode(texts)
        rate = len(texts) / (time.perf_counter() - start)
        print(f"minilm: encoded {len(texts)} texts at {rate:.0f} texts/s (incl. model load)")

        def minilm(i: list[int], q: list[int]) -> tuple[np.ndarray, np.ndarray]:
            return all_vectors[i], all_vectors[q]

        options["minilm all-MiniLM-L6-v2, 384 dims (optional extra)"] = minilm

    print(f"\n{'encoder':62s} {'p@5 mean':>9s} {'min':>7s} {'max':>7s} {'s/run':>6s}")
    for name, fn in options.items():
        scores = []
        start = time.perf_counter()
        for seed in args.seeds:
            idx, qry = split(rows, seed)
            emb_i, emb_q = fn(idx, qry)
            scores.append(precision_at_5(emb_i, emb_q, y[idx], y[qry]))
        per_run = (time.perf_counter() - start) / len(args.seeds)
        print(
            f"{name:62s} {np.mean(scores):9.4f} {min(scores):7.4f} {max(scores):7.4f} "
            f"{per_run:6.1f}"
        )
    idx, qry = split(rows, args.seeds[0])
    print(f"\n(index {len(idx)} texts / {len(qry)} queries for seed {args.seeds[0]})")

    if args.chroma and not args.only_minilm:
        print("\nthrough Chroma (CaseIndex, HNSW), seed", args.seeds[0])
        idx, qry = split(rows, args.seeds[0])
        enc = LsaEncoder.fit([texts[k] for k in idx], LsaConfig(dim=256))
        print(f"  lsa 256 (fit on index part): p@5 = {chroma_precision(enc, rows, idx, qry):.4f}")

    print(f"\nknowledge base: {len(KB_QUERIES)} hand-written case texts -> expected document")
    kb_encoders: dict[str, Encoder] = {}
    if not args.only_minilm:
        kb_encoders["builtin:lsa-char-v1"] = load_encoder(EncoderConfig(name="builtin:lsa-char-v1"))
        kb_encoders["hashing 2048"] = HashingEncoder(n_features=2048)
    for extra_name in args.encoder:
        kb_encoders[extra_name] = load_encoder(EncoderConfig(name=extra_name))
    if args.minilm or args.only_minilm:
        kb_encoders["minilm"] = load_encoder(EncoderConfig(name="minilm"))
    for name, enc in kb_encoders.items():
        h1, h3 = kb_hits(enc)
        b1, b3 = kb_hits(enc, with_type=False)
        print(
            f"  {name:24s} hit@1 {h1:.2f}  hit@3 {h3:.2f}   without the type prefix: "
            f"hit@1 {b1:.2f}  hit@3 {b3:.2f}"
        )


if __name__ == "__main__":
    main()
