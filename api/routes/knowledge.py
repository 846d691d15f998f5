"""The knowledge base over the API: what it holds (staff) and ingesting documents (admins).

Ingesting here goes through the server's own vector store, so it works while the server runs
on the embedded store, which serves one process (``triage kb ingest`` needs the server
stopped there; see docs/retrieval.md). Each ingest is audited ``knowledge.ingest_started``
then ``knowledge.ingested``."""

from __future__ import annotations

import re
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path
from pydantic import BaseModel, ConfigDict, Field, field_validator

from api.deps import ContextDep, R, allow
from api.routes.cases import ERRORS
from triage import audit
from triage.auth import Principal
from triage.errors import Conflict, NotFound, ValidationFailed
from triage.stages import (
    RetrievalStage,
    knowledge_ingest_intent,
    knowledge_ingested,
    knowledge_removed,
)

router = APIRouter(prefix="/v1/knowledge", tags=["knowledge"])
Admin = Annotated[Principal, Depends(allow(R.admin))]
Staff = Annotated[Principal, Depends(allow(R.agent, R.approver, R.auditor, R.admin))]

MAX_DOCUMENTS = 50
MAX_DOCUMENT_CHARS = 2_000_000
# a file name, never a path: letters, digits, dot, dash, underscore; a text suffix
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,120}\.(md|markdown|txt|text)$"


class DocumentIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(
        max_length=128,
        description="File name (letters, digits, `.`, `_`, `-`): the suffix (.md, .markdown, "
        ".txt, .text) says how it is read; the stem is the document id unless Markdown front "
        "matter sets `id`.",
        examples=["returns-policy.md"],
        json_schema_extra={"pattern": NAME_PATTERN},
    )
    content: str = Field(min_length=1, max_length=MAX_DOCUMENT_CHARS, description="UTF-8 text.")

    @field_validator("name")
    @classmethod
    def _file_name(cls, value: str) -> str:
        if not re.fullmatch(NAME_PATTERN, value):
            raise ValueError(
                "must be a file name of letters, digits, '.', '_' and '-' ending .md, "
                ".markdown, .txt or .text (PDFs: `triage kb ingest`)"
            )
        return value


class IngestRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    documents: list[DocumentIn] = Field(min_length=1, max_length=MAX_DOCUMENTS)


class DocumentResult(BaseModel):
    name: str
    doc_id: str | None
    version: str | None
    status: str = Field(description="added | updated | unchanged | error")
    chunks_added: int
    chunks_removed: int
    error: str | None = None


class IngestResult(BaseModel):
    documents: list[DocumentResult]
    added: int
    updated: int
    unchanged: int
    errors: int
    chunks: int = Field(description="Chunks in the knowledge base after the ingest.")


class KnowledgeInfo(BaseModel):
    chunks: int
    documents: dict[str, str] = Field(description="document id -> version")
    encoder: str
    encoder_dim: int


def knowledge_stage(ctx: Any) -> RetrievalStage:
    """The server's retrieval stage; Conflict (409) when retrieval is disabled."""
    stage: RetrievalStage | None = ctx.retrieval
    if stage is None:
        raise Conflict(
            "retrieval is disabled in this deployment (TRIAGE_RETRIEVAL_ENABLED=false): there "
            "is no knowledge base",
            field="retrieval",
        )
    return stage


def ingest_documents(
    ctx: Any, principal: Principal, documents: list[tuple[str, str]]
) -> dict[str, Any]:
    """Ingest ``(name, text)`` documents; shared by this route and the console. Two documents
    of one name, or one that cannot be read, are refused (422) before anything is written.
    Audited around the ingest (``audit.with_intent``): ``knowledge.ingest_started`` names the
    documents, ``knowledge.ingested`` gives each one's outcome (``knowledge.ingest_failed`` the
    error), and no database lock is held while the documents are encoded."""
    stage = knowledge_stage(ctx)
    seen: dict[str, int] = {}
    for i, (name, _) in enumerate(documents):
        if name in seen:
            raise ValidationFailed(
                f"document name {name!r} appears twice (documents[{seen[name]}] and [{i}])",
                fields={f"documents[{i}].name": "appears twice"},
            )
        seen[name] = i
    docs = stage.read_texts(documents)

    def go() -> dict[str, Any]:
        report = stage.ingest_read(docs)
        return knowledge_ingested(report, stage.knowledge_chunks())

    return audit.with_intent(ctx.db, principal.actor, knowledge_ingest_intent(docs), go)


class RemovedDocument(BaseModel):
    doc_id: str
    version: str
    chunks_removed: int
    chunks: int = Field(description="Chunks in the knowledge base after the removal.")


DocId = Annotated[str, Path(min_length=1, max_length=200)]


def remove_document(ctx: Any, principal: Principal, doc_id: str) -> dict[str, Any]:
    """Remove a document from the knowledge base (audited ``knowledge.removed``); NotFound if
    it holds no such document. Shared by this route and the console."""
    stage = knowledge_stage(ctx)

    def go() -> dict[str, Any]:
        removed = stage.remove_document(doc_id)
        if removed is None:  # raised inside the step: no event is written
            raise NotFound(f"the knowledge base holds no document {doc_id!r}", field="doc_id")
        return knowledge_removed(removed, stage.knowledge_chunks())

    return audit.with_event(ctx.db, principal.actor, "knowledge.removed", go)


@router.get("", response_model=KnowledgeInfo, responses=ERRORS, summary="The knowledge base")
def knowledge_info(ctx: ContextDep, _p: Staff) -> KnowledgeInfo:
    stats = knowledge_stage(ctx).knowledge_stats()
    return KnowledgeInfo(
        chunks=stats.chunks,
        documents=stats.documents,
        encoder=stats.encoder,
        encoder_dim=stats.encoder_dim,
    )


@router.post(
    "/documents",
    response_model=IngestResult,
    responses=ERRORS,
    summary="Ingest documents (unchanged ones skipped, changed ones replaced); audited",
)
def ingest(body: IngestRequest, ctx: ContextDep, principal: Admin) -> IngestResult:
    documents = [(d.name, d.content) for d in body.documents]
    return IngestResult.model_validate(ingest_documents(ctx, principal, documents))


@router.delete(
    "/documents/{doc_id}",
    response_model=RemovedDocument,
    responses=ERRORS,
    summary="Remove a document: it is no longer retrieved or cited; audited",
)
def remove(doc_id: DocId, ctx: ContextDep, principal: Admin) -> RemovedDocument:
    return RemovedDocument.model_validate(remove_document(ctx, principal, doc_id))
