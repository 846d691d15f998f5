"""One object the pipeline holds: encoder, knowledge base, case index and advisor.

Built from an explicit :class:`RetrievalConfig` (the lead maps ``triage.settings`` onto it);
nothing here reads the environment or builds a client at import time.

Typical pipeline use::

    service = RetrievalService(config)                       # once per process
    vector = service.encode_case(case)                       # reuse for the classifier too
    retrieved = service.retrieve(case, vector=vector)
    suggestion = await service.advise(case, case_id, classifier_view, queues, retrieved)
    ...
    service.cases.add_resolved(case_id, service.case_text(case), metadata, resolution,
                               vector=vector)               # when the case is resolved
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from contracts.case import CaseIn
from contracts.suggestion import ClassifierView, Suggestion
from retrieval.advice import AdviceRequest, Advisor, AdvisorConfig, query_text
from retrieval.cases import CaseIndex, SimilarCaseHit
from retrieval.embeddings import Encoder, EncoderConfig, load_encoder
from retrieval.knowledge import KnowledgeBase, Passage
from retrieval.llm import LLMAdvisor, LLMConfig
from retrieval.offline import OfflineAdvisor
from retrieval.redaction import RedactionConfig, Redactor
from retrieval.store import ChromaConfig, open_client

if TYPE_CHECKING:
    import httpx
    from chromadb.api import ClientAPI


class RetrievalConfig(BaseModel):
    """Everything the retrieval package needs; ``llm=None`` means the offline engine."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    chroma: ChromaConfig = Field(default_factory=ChromaConfig)
    encoder: EncoderConfig = Field(default_factory=EncoderConfig)
    redaction: RedactionConfig = Field(default_factory=RedactionConfig)
    advisor: AdvisorConfig = Field(default_factory=AdvisorConfig)
    llm: LLMConfig | None = None
    k_passages: int = Field(default=4, ge=0, le=20)
    k_similar: int = Field(default=5, ge=0, le=10)


@dataclass(frozen=True)
class Retrieved:
    passages: list[Passage]
    similar: list[SimilarCaseHit]


class RetrievalService:
    """Facade over the retrieval package for the triage pipeline (see module docstring)."""

    def __init__(
        self,
        config: RetrievalConfig,
        *,
        client: ClientAPI | None = None,
        encoder: Encoder | None = None,
        http_async_client: httpx.AsyncClient | None = None,
    ) -> None:
        self.config = config
        self.encoder = encoder or load_encoder(config.encoder)
        self.redactor = Redactor(config.redaction)
        self.client = client or open_client(config.chroma)
        self.kb = KnowledgeBase(self.client, self.encoder, config.chroma.knowledge_collection)
        self.cases = CaseIndex(
            self.client, self.encoder, config.chroma.cases_collection, redactor=self.redactor
        )
        self.offline = OfflineAdvisor(config.advisor)
        self.advisor: Advisor = (
            LLMAdvisor(
                config.llm,
                advisor_config=config.advisor,
                offline=self.offline,
                redactor=self.redactor,
                http_async_client=http_async_client,
            )
            if config.llm is not None
            else self.offline
        )

    def case_text(self, case: CaseIn) -> str:
        """The redacted text that represents a case for embedding and the case index."""
        return self.redactor.redact_text(query_text(case))

    def encode_case(self, case: CaseIn) -> np.ndarray:
        """One vector (shape ``(dim,)``) per case, shared by classifier and retrieval."""
        return self.encoder.encode([self.case_text(case)])[0]

    def encode_cases(self, cases: Sequence[CaseIn]) -> np.ndarray:
        return self.encoder.encode([self.case_text(c) for c in cases])

    def retrieve(self, case: CaseIn, vector: np.ndarray | None = None) -> Retrieved:
        vec = vector if vector is not None else self.encode_case(case)
        return self.retrieve_many([case], np.atleast_2d(vec))[0]

    def retrieve_many(
        self, cases: Sequence[CaseIn], vectors: np.ndarray | None = None
    ) -> list[Retrieved]:
        """Batch retrieval (one Chroma query per collection for the whole batch)."""
        if not cases:
            return []
        vecs = vectors if vectors is not None else self.encode_cases(cases)
        passages = self.kb.search_vectors(vecs, self.config.k_passages)
        similar = self.cases.similar_many(vecs, self.config.k_similar)
        return [Retrieved(p, s) for p, s in zip(passages, similar, strict=True)]

    def request(
        self,
        case: CaseIn,
        case_id: str,
        classifier: ClassifierView | None,
        queues: list[str],
        retrieved: Retrieved,
    ) -> AdviceRequest:
        return AdviceRequest(
            case=case,
            case_id=case_id,
            classifier=classifier,
            passages=retrieved.passages,
            similar_cases=[s for s in retrieved.similar if s.case_id != case_id],
            queues=queues,
        )

    async def advise(
        self,
        case: CaseIn,
        case_id: str,
        classifier: ClassifierView | None,
        queues: list[str],
        retrieved: Retrieved | None = None,
    ) -> Suggestion:
        """Retrieve (unless given) and advise; always returns a contract-checked suggestion."""
        got = retrieved if retrieved is not None else self.retrieve(case)
        return await self.advisor.advise(self.request(case, case_id, classifier, queues, got))
