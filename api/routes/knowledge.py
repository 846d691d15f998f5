"""The knowledge base over the API: what it holds (staff) and ingesting documents (admins).

Ingesting here goes through the server's own vector store, so it works while the server runs
on the embedded store, which serves one process (``triage kb ingest`` needs the server
stopped there; see docs/retrieval.md). Each ingest is audited ``knowledge.ingest_started``
then ``knowledge.ingested``."""

from __future__ import annotations

import base64
import binascii
import re
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    WithJsonSchema,
    field_validator,
    model_validator,
)

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
# a PDF manual may be large; the request's own limit (TRIAGE_MAX_UPLOAD_BYTES) still applies
MAX_DOCUMENT_BYTES = 24 * 1024 * 1024
# a file name, never a path: letters, digits, dot, dash, underscore; a known suffix
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,120}\.(md|markdown|txt|text|pdf)$"


def _from_base64(value: object) -> object:
    """``content_base64`` as bytes, decoded once while the request is validated (strict
    alphabet and padding). Bytes from a Python caller (the console's upload) are the file's
    bytes already and pass as they are."""
    if isinstance(value, str):
        try:
            return base64.b64decode(value, validate=True)
        except binascii.Error as exc:
            raise ValueError(f"is not valid base64 ({exc})") from exc
    return value


Base64Content = Annotated[
    bytes | None,
    BeforeValidator(_from_base64),
    WithJsonSchema(
        {
            "anyOf": [
                {
                    "type": "string",
                    "contentEncoding": "base64",
                    "maxLength": (MAX_DOCUMENT_BYTES + 2) // 3 * 4,
                },
                {"type": "null"},
            ]
        }
    ),
]


class DocumentIn(BaseModel):
    """One document: its file name and either ``content`` (UTF-8 text) or ``content_base64``
    (the file's bytes, needed for a PDF; a text file may be sent either way)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(
        max_length=128,
        description="File name (letters, digits, `.`, `_`, `-`): the suffix (.md, .markdown, "
        ".txt, .text, .pdf) says how it is read; the stem is the document id unless Markdown "
        "front matter sets `id`.",
        examples=["returns-policy.md"],
        json_schema_extra={"pattern": NAME_PATTERN},
    )
    content: str | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_DOCUMENT_CHARS,
        description="The text (Markdown or plain text). Give this or `content_base64`.",
    )
    content_base64: Base64Content = Field(
        default=None,
        min_length=1,
        max_length=MAX_DOCUMENT_BYTES,
        description="The file's bytes, base64-encoded (standard alphabet, padded): a PDF's "
        "text layer is read page by page, and its pages are cited. Give this or `content`.",
    )

    @field_validator("name")
    @classmethod
    def _file_name(cls, value: str) -> str:
        if not re.fullmatch(NAME_PATTERN, value):
            raise ValueError(
                "must be a file name of letters, digits, '.', '_' and '-' ending .md, "
                ".markdown, .txt, .text or .pdf"
            )
        return value

    @model_validator(mode="after")
    def _one_content(self) -> DocumentIn:
        if (self.content is None) == (self.content_base64 is None):
            raise ValueError("give exactly one of content (text) and content_base64 (bytes)")
        if self.content is not None and self.name.lower().endswith(".pdf"):
            raise ValueError("a PDF is sent as content_base64 (its bytes), not as content")
        return self

    @property
    def content_field(self) -> str:
        """The field the document's content came in (for error messages)."""
        return "content" if self.content is not None else "content_base64"

    def data(self) -> bytes:
        """The document's bytes."""
        if self.content_base64 is not None:
            return self.content_base64
        return (self.content or "").encode("utf-8")


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


def ingest_documents(ctx: Any, principal: Principal, documents: list[DocumentIn]) -> dict[str, Any]:
    """Ingest documents; shared by this route and the console. Two documents of one name, or
    one that cannot be read, are refused (422) before anything is written. Audited around the
    ingest (``audit.with_intent``): ``knowledge.ingest_started`` names the documents,
    ``knowledge.ingested`` gives each one's outcome (``knowledge.ingest_failed`` the error),
    and no database lock is held while the documents are encoded."""
    stage = knowledge_stage(ctx)
    seen: dict[str, int] = {}
    for i, doc in enumerate(documents):
        if doc.name in seen:
            raise ValidationFailed(
                f"document name {doc.name!r} appears twice (documents[{seen[doc.name]}] and [{i}])",
                fields={f"documents[{i}].name": "appears twice"},
            )
        seen[doc.name] = i
    docs = stage.read_documents([(d.name, d.data(), d.content_field) for d in documents])

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
    return IngestResult.model_validate(ingest_documents(ctx, principal, body.documents))


@router.delete(
    "/documents/{doc_id}",
    response_model=RemovedDocument,
    responses=ERRORS,
    summary="Remove a document: it is no longer retrieved or cited; audited",
)
def remove(doc_id: DocId, ctx: ContextDep, principal: Admin) -> RemovedDocument:
    return RemovedDocument.model_validate(remove_document(ctx, principal, doc_id))
