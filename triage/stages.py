"""Build the production pipeline from settings: the stage implementations the deployment has.

Kept apart from :mod:`triage.pipeline` so the flow never depends on how a stage is configured
(and tests can build pipelines from fakes). Heavy resources (Chroma, encoders, LLM clients) are
opened lazily on first use, so processes that never triage pay nothing for them.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Coroutine, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from contracts.case import CaseIn
from contracts.suggestion import Suggestion
from retrieval.advice import AdvisorConfig
from retrieval.chunking import SourceDocument
from retrieval.embeddings import EncoderConfig
from retrieval.knowledge import DocumentOutcome, IngestReport, KnowledgeStats
from retrieval.llm import LLMConfig
from retrieval.redaction import RedactionConfig
from retrieval.service import RetrievalConfig, RetrievalService, Retrieved
from retrieval.store import ChromaConfig, claim_embedded
from triage import audit
from triage.actions import CedarGate
from triage.classification import ClassifierProvider
from triage.errors import Unavailable, ValidationFailed
from triage.pipeline import (
    QUEUE_BY_TYPE,
    AdviceInput,
    Advisor,
    AdvisorUnavailable,
    NoRetriever,
    Pipeline,
    RuleAdvisor,
    each,
)
from triage.settings import Settings

log = logging.getLogger("triage.stages")
T = TypeVar("T")

REPO_KNOWLEDGE = Path(__file__).resolve().parents[1] / "knowledge"


class AsyncBridge:
    """One event loop in a background thread for the async advisor.

    Worker threads block on :meth:`run`; the coroutines share one loop, so the advisor's
    concurrency limit and HTTP connection pool work across all of them.
    """

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock = threading.Lock()

    def _ensure(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                threading.Thread(target=loop.run_forever, name="advisor-loop", daemon=True).start()
                self._loop = loop
            return self._loop

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._ensure()).result(timeout)


def retrieval_config(settings: Settings) -> RetrievalConfig:
    llm = None
    if settings.llm_configured:
        assert settings.llm_model is not None
        llm = LLMConfig(
            base_url=settings.llm_base_url,
            model=settings.llm_model,
            api_key=settings.llm_api_key.get_secret_value()
            if settings.llm_api_key
            else "not-needed",
            timeout_s=settings.llm_timeout_seconds,
            max_retries=settings.llm_max_retries,
            concurrency=settings.llm_concurrency,
        )
    return RetrievalConfig(
        chroma=ChromaConfig(path=settings.chroma_dir, url=settings.chroma_url),
        encoder=EncoderConfig(name=settings.encoder),
        redaction=RedactionConfig(enabled=settings.redaction_enabled),
        advisor=AdvisorConfig(
            rule_queues={t.value: q for t, q in QUEUE_BY_TYPE.items()},
            integration_queue="integration_support",
        ),
        llm=llm,
    )


@contextmanager
def _store_errors() -> Iterator[None]:
    """A vector store that cannot be opened or reached is ``Unavailable`` (503 over the API),
    not an internal error."""
    from retrieval.errors import RetrievalError

    try:
        yield
    except RetrievalError as exc:
        raise Unavailable(f"the knowledge base's vector store failed: {exc}") from exc


class RetrievalStage:
    """The retrieval package behind the pipeline's ``Retriever`` and ``Advisor`` seams."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._service: RetrievalService | None = None
        self._lock = threading.Lock()
        self.bridge = AsyncBridge()

    @property
    def service(self) -> RetrievalService:
        with self._lock:
            if self._service is None:
                self._service = RetrievalService(retrieval_config(self.settings))
            return self._service

    def warm_up(self) -> None:
        """Open Chroma and load the encoder before the first case."""
        _ = self.service

    def ingest_read(self, docs: Sequence[SourceDocument]) -> IngestReport:
        """Ingest documents :meth:`read_documents` returned: unchanged documents are skipped,
        changed ones replaced, as ``triage kb ingest`` does from files. The name is each
        outcome's ``path`` and its chunks' source; nothing is written to disk but the store."""
        with _store_errors():
            return self.service.kb.ingest_documents(docs)

    def read_documents(self, documents: Sequence[tuple[str, bytes, str]]) -> list[SourceDocument]:
        """Read and check named documents (``(file name, bytes, the request field they came
        in)``; the name's suffix .md, .markdown, .txt, .text or .pdf says how) before anything
        is ingested: one that cannot be ingested, or that has the document id of another in the
        call, raises ``ValidationFailed`` naming ``documents[i].<field>``. Touches neither
        store nor database."""
        from retrieval.chunking import parse_document
        from retrieval.errors import IngestError

        docs = []
        ids: dict[str, int] = {}
        for i, (name, data, content_field) in enumerate(documents):
            field = f"documents[{i}].{content_field}"
            try:
                doc = parse_document(name, data)
            except IngestError as exc:
                problem = str(exc).removeprefix(f"{name}: ")
                raise ValidationFailed(
                    f"document {name!r}: {problem}", fields={field: problem}
                ) from exc
            if doc.doc_id in ids:  # the second would silently replace the first
                problem = f"has the document id {doc.doc_id!r} of documents[{ids[doc.doc_id]}]"
                raise ValidationFailed(f"document {name!r} {problem}", fields={field: problem})
            ids[doc.doc_id] = i
            docs.append(doc)
        return docs

    def remove_document(self, doc_id: str) -> DocumentOutcome | None:
        """Remove a knowledge document's chunks (``None``: no such document)."""
        with _store_errors():
            return self.service.kb.remove(doc_id)

    def knowledge_chunks(self) -> int:
        """How many chunks the knowledge base holds."""
        with _store_errors():
            return self.service.kb.count()

    def knowledge_stats(self) -> KnowledgeStats:
        """The knowledge base's chunks, documents (id -> version) and encoder."""
        with _store_errors():
            return self.service.kb.stats()

    def reindex(self) -> tuple[int, int]:
        """Re-embed the knowledge base and the similar-case index with the configured encoder
        (after the encoder changed); returns (chunks, cases). Ids, texts and metadata stay."""
        from retrieval.cases import CaseIndex
        from retrieval.embeddings import load_encoder
        from retrieval.knowledge import KnowledgeBase
        from retrieval.store import open_client

        config = retrieval_config(self.settings)
        client = open_client(config.chroma)
        encoder = load_encoder(config.encoder)
        with self._lock:
            chunks = KnowledgeBase.reindex(client, encoder, config.chroma.knowledge_collection)
            cases = CaseIndex.reindex(client, encoder, config.chroma.cases_collection)
            self._service = None
        return chunks, cases

    def retrieve(self, case: CaseIn, k: int) -> Retrieved:
        # one vector per case, shared by the knowledge base and the similar-case index
        return self.service.retrieve(case)

    @property
    def encoder_fingerprint(self) -> str:
        """The encoder's fingerprint: the pipeline shares vectors with a classifier trained on
        the same one."""
        return self.service.encoder.fingerprint

    def encode_many(self, cases: Sequence[CaseIn]) -> np.ndarray:
        """One vector per case (redacted query text), computed once and reused downstream."""
        return self.service.encode_cases(cases)

    def retrieve_many(
        self, cases: Sequence[CaseIn], k: int, vectors: np.ndarray | None = None
    ) -> list[Retrieved]:
        """One Chroma query per collection for the whole batch (``vectors`` from
        :meth:`encode_many`, else one encoder pass here)."""
        return self.service.retrieve_many(cases, vectors)

    def advise_many(self, requests: Sequence[AdviceInput]) -> list[Suggestion | BaseException]:
        """Advice for a batch: the offline engine in turn, LLM calls overlapped on the shared
        event loop (the advisor's own concurrency limit still applies). Each slot holds the
        suggestion or the exception that case raised."""
        svc = self.service
        if svc.advisor is svc.offline:
            return each(self.advise, requests)

        async def gather() -> list[Suggestion | BaseException]:
            return await asyncio.gather(
                *(
                    svc.advise(
                        r.case,
                        r.case_id,
                        r.classifier,
                        r.queues,
                        r.retrieved if isinstance(r.retrieved, Retrieved) else None,
                    )
                    for r in requests
                ),
                return_exceptions=True,
            )

        return self.bridge.run(gather())

    def advise(self, request: AdviceInput) -> Suggestion:
        retrieved = request.retrieved if isinstance(request.retrieved, Retrieved) else None
        svc = self.service
        if svc.advisor is svc.offline:
            # No LLM: the offline engine is synchronous; skip the hop through the event loop.
            got = retrieved if retrieved is not None else svc.retrieve(request.case)
            return svc.offline.suggest(
                svc.request(request.case, request.case_id, request.classifier, request.queues, got)
            )
        return self.bridge.run(
            self.service.advise(
                request.case, request.case_id, request.classifier, request.queues, retrieved
            )
        )

    def index_resolved(self, items: list[tuple[str, CaseIn, dict[str, Any], str | None]]) -> None:
        """Add resolved cases (id, case, metadata, resolution) to the similar-case index."""
        svc = self.service
        svc.cases.add_many([(cid, svc.case_text(c), meta, res) for cid, c, meta, res in items])

    def ingest(self, paths: list[Path]) -> IngestReport:
        """Ingest files and folders into this process's knowledge base."""
        return self.service.kb.ingest(paths)


class WaitForLLM:
    """Advisor wrapper for ``llm_unavailable=wait``: an answer the offline engine gave only
    because the LLM endpoint could not be reached is turned into :class:`AdvisorUnavailable`,
    so the pipeline puts the case back to wait instead of storing the fallback. Other
    fallbacks (contract violations, refusals) are stored as usual."""

    def __init__(self, inner: Advisor) -> None:
        self.inner = inner

    @staticmethod
    def _check(result: Any) -> Any:
        reason = getattr(getattr(result, "provenance", None), "fallback_reason", None) or ""
        if reason.startswith("llm_unavailable"):
            return AdvisorUnavailable(reason)
        return result

    def advise(self, request: AdviceInput) -> Suggestion:
        result = self._check(self.inner.advise(request))
        if isinstance(result, AdvisorUnavailable):
            raise result
        return result

    def advise_many(self, requests: list[AdviceInput]) -> list[Suggestion | BaseException]:
        many = getattr(self.inner, "advise_many", None)
        if not callable(many):
            return each(self.advise, requests)
        return [self._check(r) for r in many(requests)]


def knowledge_ingest_intent(docs: Sequence[SourceDocument]) -> audit.Intent:
    """The audit events of a knowledge ingest (API, console and ``triage kb ingest``)."""
    return audit.Intent(
        started="knowledge.ingest_started",
        done="knowledge.ingested",
        failed="knowledge.ingest_failed",
        payload={
            "documents": [
                {
                    "name": d.source_path,
                    "doc_id": d.doc_id,
                    "version": d.version,
                    "sha256": d.sha256,
                }
                for d in docs
            ]
        },
    )


def knowledge_ingested(report: IngestReport, chunks: int) -> dict[str, Any]:
    """The outcome of a knowledge ingest, as its audit event and the API answer carry it:
    each document (named as given) and the totals; ``chunks`` is the count after it."""
    return {
        "documents": [d.model_dump(exclude={"path"}) | {"name": d.path} for d in report.documents],
        "added": report.added,
        "updated": report.updated,
        "unchanged": report.unchanged,
        "errors": len(report.errors),
        "chunks": chunks,
    }


def knowledge_removed(removed: DocumentOutcome, chunks: int) -> dict[str, Any]:
    """The outcome of removing a knowledge document (audit event and API answer)."""
    return {
        "doc_id": removed.doc_id,
        "version": removed.version,
        "chunks_removed": removed.chunks_removed,
        "chunks": chunks,
    }


def claim_vector_store(settings: Settings, role: str) -> None:
    """Claim the embedded vector store for this process (``retrieval.store.claim_embedded``):
    a server, a worker or a CLI command that writes to it. Nothing to claim with retrieval
    off or a Chroma server. Raises ``retrieval.errors.StoreError`` while another holds it."""
    if settings.retrieval_enabled:
        claim_embedded(retrieval_config(settings).chroma, role)


def default_pipeline(settings: Settings) -> Pipeline:
    """The active registry model (rules until one is trained), retrieval and the advisor
    (LLM when configured, else the offline engine)."""
    gate = CedarGate(settings)
    if not settings.retrieval_enabled:
        return Pipeline(
            classifier=ClassifierProvider(settings),
            retriever=NoRetriever(),
            advisor=RuleAdvisor(),
            policy=gate,
        )
    stage = RetrievalStage(settings)
    advisor: Advisor = stage
    if settings.llm_configured and settings.llm_unavailable == "wait":
        advisor = WaitForLLM(stage)
    return Pipeline(
        classifier=ClassifierProvider(settings), retriever=stage, advisor=advisor, policy=gate
    )


def rebuild_case_index(
    db: Any,
    stage: RetrievalStage,
    *,
    batch: int = 500,
    progress: Callable[[int, int], None] | None = None,
) -> int:
    """Put every resolved case back into the similar-case index, for a store that was lost or
    left out of a restored backup: marks them not indexed, then indexes them in batches as the
    worker does (``progress(done, total)`` after each). Idempotent (an upsert by case id);
    returns how many were indexed."""
    from sqlalchemy import update

    from triage.lifecycle import Status
    from triage.models import Case

    with db.write() as s:
        # the rows the update matched: every resolved case, on both engines
        total: int = s.execute(
            update(Case).where(Case.status == Status.resolved.value).values(indexed_at=None)
        ).rowcount
    done = 0
    while indexed := index_resolved_cases(db, stage, limit=batch):
        done += indexed
        if progress is not None:
            progress(done, max(done, total))
    return done


def index_resolved_cases(db: Any, stage: RetrievalStage, limit: int = 200) -> int:
    """Put resolved, not yet indexed cases into the similar-case index with their resolution.

    Chroma is written first and the row marked after, so a crash in between re-indexes the
    same case (an idempotent upsert by case id) rather than losing it.
    """
    from sqlalchemy import select, update

    from triage.common import now_ts
    from triage.lifecycle import Status
    from triage.models import Case

    with db.read() as s:
        rows = s.execute(
            select(
                Case.id,
                Case.payload,
                Case.exception_type,
                Case.queue,
                Case.category,
                Case.resolution,
            )
            .where(Case.status == Status.resolved.value, Case.indexed_at.is_(None))
            .limit(limit)
        ).all()
    if not rows:
        return 0
    items = [
        (
            r.id,
            CaseIn.model_validate(r.payload),
            {
                "exception_type": r.exception_type,
                "queue": r.queue or "",
                "category": r.category or "",
            },
            r.resolution,
        )
        for r in rows
    ]
    stage.index_resolved(items)
    with db.write() as s:
        s.execute(
            update(Case)
            .where(Case.id.in_([r.id for r in rows]))
            .values(indexed_at=now_ts())
            .execution_options(synchronize_session=False)
        )
    return len(rows)
