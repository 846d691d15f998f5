"""Similar resolved cases: a second Chroma collection, one entry per resolved case.

Contract:
- ``add_resolved`` is an upsert keyed by ``case_id``: resolving a case twice keeps one entry
  (the latest resolution). The stored text is redacted first when a redactor is given, so
  personal data does not reach the index.
- ``similar(query, k)`` accepts text or a precomputed encoder vector (the pipeline encodes a
  case once and reuses the vector for the classifier and this search). ``score`` is cosine
  similarity; ``exclude_case_id`` drops the case itself when it is already indexed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from contracts.suggestion import SimilarCase
from retrieval.embeddings import Encoder
from retrieval.store import as_rows, open_collection, reindex_collection

if TYPE_CHECKING:
    from chromadb.api import ClientAPI

MetadataValue = str | int | float | bool


class TextRedactor(Protocol):
    def redact_text(self, text: str) -> str: ...


class SimilarCaseHit(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    case_id: str
    score: float
    text: str
    resolution: str | None = None
    metadata: dict[str, MetadataValue] = Field(default_factory=dict)

    def to_contract(self) -> SimilarCase:
        exception_type = self.metadata.get("exception_type")
        return SimilarCase(
            case_id=self.case_id,
            score=round(self.score, 4),
            exception_type=str(exception_type) if exception_type is not None else None,
            resolution=self.resolution,
        )


class CaseIndex:
    """Resolved cases in one Chroma collection, embedded with ``encoder``."""

    def __init__(
        self,
        client: ClientAPI,
        encoder: Encoder,
        collection: str = "similar_cases",
        *,
        redactor: TextRedactor | None = None,
    ) -> None:
        self.encoder = encoder
        self.redactor = redactor
        self._collection = open_collection(client, collection, encoder)

    def add_resolved(
        self,
        case_id: str,
        text: str,
        metadata: dict[str, MetadataValue] | None = None,
        resolution: str | None = None,
        *,
        vector: np.ndarray | None = None,
    ) -> None:
        """Insert or replace the entry for ``case_id`` (see module docstring)."""
        self.add_many([(case_id, text, metadata or {}, resolution)], vectors=vector)

    def add_many(
        self,
        items: list[tuple[str, str, dict[str, MetadataValue], str | None]],
        *,
        vectors: np.ndarray | None = None,
    ) -> None:
        """Batch form of :meth:`add_resolved`; ``items`` are (case_id, text, metadata,
        resolution)."""
        if not items:
            return
        texts = [self.redactor.redact_text(t) if self.redactor else t for _, t, _, _ in items]
        embedded = vectors if vectors is not None else self.encoder.encode(texts)
        metadatas: list[dict[str, Any]] = []
        for _, _, meta, resolution in items:
            clean = {k: v for k, v in meta.items() if isinstance(v, str | int | float | bool)}
            clean["resolution"] = resolution or ""
            metadatas.append(clean)
        for start in range(0, len(items), 2000):
            end = start + 2000
            self._collection.upsert(
                ids=[cid for cid, _, _, _ in items[start:end]],
                documents=texts[start:end],
                embeddings=as_rows(embedded[start:end]),
                metadatas=metadatas[start:end],  # type: ignore[arg-type]
            )

    def similar(
        self,
        query: str | np.ndarray,
        k: int = 5,
        *,
        exclude_case_id: str | None = None,
    ) -> list[SimilarCaseHit]:
        """Top ``k`` resolved cases for a text or a precomputed vector, best first."""
        vector = self.encoder.encode([query]) if isinstance(query, str) else query
        return self.similar_many(vector, k, exclude_case_id=exclude_case_id)[0]

    def similar_many(
        self, vectors: np.ndarray, k: int = 5, *, exclude_case_id: str | None = None
    ) -> list[list[SimilarCaseHit]]:
        rows = as_rows(vectors)
        if k <= 0:
            return [[] for _ in rows]
        n = k + (1 if exclude_case_id else 0)  # Chroma returns fewer when it has fewer
        result = self._collection.query(
            query_embeddings=rows,
            n_results=n,
            include=["documents", "metadatas", "distances"],
        )
        out: list[list[SimilarCaseHit]] = []
        for ids, docs, metas, dists in zip(
            result["ids"],
            result["documents"] or [],
            result["metadatas"] or [],
            result["distances"] or [],
            strict=True,
        ):
            hits = []
            for cid, doc, meta, dist in zip(ids, docs, metas, dists, strict=True):
                if cid == exclude_case_id:
                    continue
                meta_d = {k: v for k, v in dict(meta).items() if isinstance(v, MetadataValue)}
                resolution = meta_d.pop("resolution", None)
                hits.append(
                    SimilarCaseHit(
                        case_id=cid,
                        score=round(1.0 - float(dist), 6),
                        text=doc or "",
                        resolution=str(resolution) if resolution else None,
                        metadata=meta_d,
                    )
                )
            out.append(hits[:k])
        return out

    def count(self) -> int:
        return int(self._collection.count())

    @staticmethod
    def reindex(client: ClientAPI, encoder: Encoder, collection: str = "similar_cases") -> int:
        """Re-embed every stored case (already redacted) with ``encoder``."""
        return reindex_collection(client, collection, encoder, lambda document, _meta: document)
