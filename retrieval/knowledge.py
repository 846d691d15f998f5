"""The knowledge base: SOPs, policies and contract terms in a Chroma collection.

Contract:
- ``ingest(paths)`` accepts files and folders (searched recursively for .md, .txt, .pdf). A
  document is keyed by its id (front matter ``id`` or file stem). Re-ingesting a document whose
  content hash is unchanged adds nothing; a changed document has all its old chunks deleted and
  its new chunks added, so a search never mixes two versions of one document.
- A file that cannot be read is reported in ``IngestReport.errors`` and does not stop the rest.
- ``search(text, k)`` returns at most ``k`` passages, best first, with ``score`` = cosine
  similarity in [-1, 1] (1 = same direction) and everything needed to cite the chunk.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from contracts.suggestion import Citation
from retrieval.chunking import (
    SUPPORTED_SUFFIXES,
    Chunk,
    SourceDocument,
    chunk_document,
    load_document,
)
from retrieval.embeddings import Encoder
from retrieval.errors import IngestError
from retrieval.store import as_rows, open_collection, reindex_collection

if TYPE_CHECKING:
    from chromadb.api import ClientAPI


class Passage(BaseModel):
    """One retrieved chunk with its score and provenance."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    chunk_id: str
    doc_id: str
    title: str
    version: str
    heading: str
    text: str
    chunk_hash: str
    source_path: str
    score: float
    page: int | None = None

    def citation(self, quote_chars: int = 240) -> Citation:
        """The contract's citation for this passage (with a short quote)."""
        quote = self.text if len(self.text) <= quote_chars else self.text[:quote_chars] + "..."
        return Citation(
            chunk_id=self.chunk_id,
            document_id=self.doc_id,
            title=self.title,
            chunk_hash=self.chunk_hash,
            quote=quote,
        )


class DocumentOutcome(BaseModel):
    model_config = ConfigDict(extra="forbid")

    path: str
    doc_id: str | None = None
    version: str | None = None
    status: str = Field(description="added | updated | unchanged | error | removed")
    chunks_added: int = 0
    chunks_removed: int = 0
    error: str | None = None


class IngestReport(BaseModel):
    """What one ``ingest`` call did, per document and in total."""

    model_config = ConfigDict(extra="forbid")

    documents: list[DocumentOutcome] = Field(default_factory=list)

    def _count(self, status: str) -> int:
        return sum(1 for d in self.documents if d.status == status)

    @property
    def added(self) -> int:
        return self._count("added")

    @property
    def updated(self) -> int:
        return self._count("updated")

    @property
    def unchanged(self) -> int:
        return self._count("unchanged")

    @property
    def errors(self) -> list[DocumentOutcome]:
        return [d for d in self.documents if d.status == "error"]

    @property
    def chunks_added(self) -> int:
        return sum(d.chunks_added for d in self.documents)

    @property
    def chunks_removed(self) -> int:
        return sum(d.chunks_removed for d in self.documents)


class KnowledgeStats(BaseModel):
    model_config = ConfigDict(extra="forbid")

    collection: str
    chunks: int
    documents: dict[str, str] = Field(description="document id -> version")
    encoder: str
    encoder_dim: int


def expand_paths(paths: Iterable[Path]) -> list[Path]:
    """Files as given plus supported files under given folders, sorted, without duplicates."""
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            found.extend(
                p for p in sorted(path.rglob("*")) if p.suffix.lower() in SUPPORTED_SUFFIXES
            )
        else:
            found.append(path)
    seen: set[Path] = set()
    unique = []
    for p in found:
        key = p.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(p)
    return unique


class KnowledgeBase:
    """Knowledge documents in one Chroma collection, embedded with ``encoder``."""

    def __init__(
        self,
        client: ClientAPI,
        encoder: Encoder,
        collection: str = "knowledge",
        *,
        max_chunk_chars: int = 1200,
    ) -> None:
        self.encoder = encoder
        self.collection_name = collection
        self.max_chunk_chars = max_chunk_chars
        self._collection = open_collection(client, collection, encoder)

    # -- ingestion -------------------------------------------------------------------------
    def ingest(
        self,
        paths: Iterable[Path],
        progress: Callable[[DocumentOutcome], None] | None = None,
    ) -> IngestReport:
        """Ingest files and folders; idempotent per document content (see module docstring)."""
        report = IngestReport()
        for path in expand_paths(paths):
            try:
                outcome = self._ingest_one(path)
            except IngestError as exc:
                outcome = DocumentOutcome(path=str(path), status="error", error=str(exc))
            report.documents.append(outcome)
            if progress is not None:
                progress(outcome)
        return report

    def ingest_documents(
        self,
        docs: Sequence[SourceDocument],
        progress: Callable[[DocumentOutcome], None] | None = None,
    ) -> IngestReport:
        """Ingest documents already read (:func:`~retrieval.chunking.parse_document` or
        :func:`~retrieval.chunking.load_document`), as :meth:`ingest` does files; each
        outcome's ``path`` is the document's ``source_path``."""
        report = IngestReport()
        for doc in docs:
            outcome = self._ingest_loaded(doc)
            report.documents.append(outcome)
            if progress is not None:
                progress(outcome)
        return report

    def _ingest_one(self, path: Path) -> DocumentOutcome:
        if not path.exists():
            raise IngestError(f"{path}: no such file")
        return self._ingest_loaded(load_document(path))

    def _ingest_loaded(self, doc: SourceDocument) -> DocumentOutcome:
        existing = self._collection.get(where={"doc_id": doc.doc_id}, include=["metadatas"])
        old_ids = list(existing["ids"])
        old_shas = {str(m.get("doc_sha256")) for m in existing["metadatas"] or []}
        if old_ids and old_shas == {doc.sha256}:
            return DocumentOutcome(
                path=doc.source_path, doc_id=doc.doc_id, version=doc.version, status="unchanged"
            )
        chunks = chunk_document(doc, self.max_chunk_chars)
        if old_ids:
            self._collection.delete(ids=old_ids)
        if chunks:
            self._add_chunks(chunks, doc_sha256=doc.sha256, kind=doc.kind)
        return DocumentOutcome(
            path=doc.source_path,
            doc_id=doc.doc_id,
            version=doc.version,
            status="updated" if old_ids else "added",
            chunks_added=len(chunks),
            chunks_removed=len(old_ids),
        )

    def _add_chunks(self, chunks: Sequence[Chunk], *, doc_sha256: str, kind: str) -> None:
        vectors = self.encoder.encode([c.embed_text for c in chunks])
        metadatas: list[dict[str, Any]] = []
        for c in chunks:
            meta: dict[str, Any] = {
                "doc_id": c.doc_id,
                "title": c.title,
                "version": c.version,
                "heading": c.heading,
                "chunk_hash": c.chunk_hash,
                "source_path": c.source_path,
                "position": c.position,
                "doc_sha256": doc_sha256,
                "kind": kind,
            }
            if c.page is not None:
                meta["page"] = c.page
            metadatas.append(meta)
        self._collection.add(
            ids=[c.chunk_id for c in chunks],
            documents=[c.text for c in chunks],
            embeddings=as_rows(vectors),
            metadatas=metadatas,  # type: ignore[arg-type]
        )

    def add_chunks(self, chunks: Sequence[Chunk]) -> None:
        """Add pre-built chunks (benchmarks and tests build large synthetic indexes this way)."""
        for start in range(0, len(chunks), 2000):
            self._add_chunks(chunks[start : start + 2000], doc_sha256="synthetic", kind="text")

    # -- search ----------------------------------------------------------------------------
    def search(self, text: str, k: int = 5) -> list[Passage]:
        """Top ``k`` passages for ``text`` (an empty knowledge base gives an empty list)."""
        return self.search_vectors(self.encoder.encode([text]), k)[0]

    def search_vectors(self, vectors: np.ndarray, k: int = 5) -> list[list[Passage]]:
        """Batch search with precomputed encoder vectors: one list of passages per row."""
        rows = as_rows(vectors)
        if not rows:
            return []
        if k <= 0:
            return [[] for _ in rows]
        # No count() round trip first: Chroma returns fewer hits (or none) when it has fewer.
        result = self._collection.query(
            query_embeddings=rows,
            n_results=k,
            include=["documents", "metadatas", "distances"],
        )
        out: list[list[Passage]] = []
        ids_all = result["ids"]
        docs_all = result["documents"] or []
        metas_all = result["metadatas"] or []
        dists_all = result["distances"] or []
        for ids, docs, metas, dists in zip(ids_all, docs_all, metas_all, dists_all, strict=True):
            passages = []
            for chunk_id, doc, meta, dist in zip(ids, docs, metas, dists, strict=True):
                page = meta.get("page")
                passages.append(
                    Passage(
                        chunk_id=chunk_id,
                        doc_id=str(meta.get("doc_id", "")),
                        title=str(meta.get("title", "")),
                        version=str(meta.get("version", "")),
                        heading=str(meta.get("heading", "")),
                        text=doc or "",
                        chunk_hash=str(meta.get("chunk_hash", "")),
                        source_path=str(meta.get("source_path", "")),
                        score=round(1.0 - float(dist), 6),
                        page=int(page) if isinstance(page, int) else None,
                    )
                )
            out.append(passages)
        return out

    def stats(self) -> KnowledgeStats:
        got = self._collection.get(include=["metadatas"])
        docs: dict[str, str] = {}
        for meta in got["metadatas"] or []:
            docs[str(meta.get("doc_id"))] = str(meta.get("version"))
        return KnowledgeStats(
            collection=self.collection_name,
            chunks=len(got["ids"]),
            documents=dict(sorted(docs.items())),
            encoder=self.encoder.fingerprint,
            encoder_dim=self.encoder.dim,
        )

    def count(self) -> int:
        return int(self._collection.count())

    def remove(self, doc_id: str) -> DocumentOutcome | None:
        """Remove every chunk of document ``doc_id`` (``None``: there is no such document); the
        outcome names the version removed and how many chunks. It is no longer retrieved or
        cited from the next search on."""
        existing = self._collection.get(where={"doc_id": doc_id}, include=["metadatas"])
        ids = list(existing["ids"])
        if not ids:
            return None
        self._collection.delete(ids=ids)
        first = (existing["metadatas"] or [{}])[0]
        return DocumentOutcome(
            path=str(first.get("source_path", "")),
            doc_id=doc_id,
            version=str(first.get("version")),
            status="removed",
            chunks_removed=len(ids),
        )

    @staticmethod
    def reindex(client: ClientAPI, encoder: Encoder, collection: str = "knowledge") -> int:
        """Re-embed the whole collection with ``encoder`` (see ``store.reindex_collection``)."""

        def embed_text(document: str, meta: dict[str, Any]) -> str:
            heading = str(meta.get("heading") or "")
            return f"{heading}\n{document}" if heading else document

        return reindex_collection(client, collection, encoder, embed_text)
