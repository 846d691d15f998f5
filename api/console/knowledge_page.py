"""The console's knowledge base page under ``/console/knowledge``.

Staff see which documents the knowledge base holds (id, version), its size and encoder; admins
upload Markdown, text or PDF files, ingested into the running server's own store through the same
function as ``POST /v1/knowledge/documents`` (same checks, same ``knowledge.ingested`` audit
event), so documents can be added without stopping the server.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from pydantic import ValidationError
from starlette.datastructures import UploadFile

from api.console.routes import AdminP, _error_text, _pydantic_text, redirect, render, upload_name
from api.console.security import COOKIE_PATH, ConsoleGuard, Form
from api.deps import ContextDep
from api.routes.knowledge import (
    MAX_DOCUMENTS,
    IngestRequest,
    ingest_documents,
    knowledge_stage,
    remove_document,
)
from triage.auth import Principal, Role
from triage.errors import Conflict, TriageError

router = APIRouter(prefix=COOKIE_PATH, include_in_schema=False)
KNOWLEDGE_URL = f"{COOKIE_PATH}/knowledge"
StaffP = Annotated[
    Principal, Depends(ConsoleGuard(Role.agent, Role.approver, Role.auditor, Role.admin))
]


class UploadProblem(Exception):
    """No file was chosen, or one is empty; the message says which."""


@router.get("/knowledge")
def knowledge_page(request: Request, ctx: ContextDep, p: StaffP) -> Response:
    stats: Any = None
    unavailable = None
    try:
        stats = knowledge_stage(ctx).knowledge_stats()
    except Conflict as exc:
        unavailable = exc.message
    return render(
        request,
        "knowledge.html",
        {
            "stats": stats,
            "documents": sorted((stats.documents if stats else {}).items()),
            "unavailable": unavailable,
            "can_change": p.role == Role.admin,
            "max_documents": MAX_DOCUMENTS,
            "section": "knowledge",
        },
    )


def _uploaded_documents(files: list[Any]) -> list[dict[str, Any]]:
    """The uploaded files as API documents, their bytes as ``content_base64`` (which takes
    bytes from Python as they are), so a PDF and a text file pass the same checks as over the
    API."""
    documents = []
    for upload in files:
        if not isinstance(upload, UploadFile) or not upload.filename:
            continue  # an empty file input
        # the form parser has spooled the file; the request limit caps its size
        data = upload.file.read()
        if not data:
            raise UploadProblem(f"{upload_name(upload)} is empty.")
        documents.append({"name": upload_name(upload), "content_base64": data})
    if not documents:
        raise UploadProblem("Choose one or more Markdown, text or PDF files to upload.")
    return documents


@router.post("/knowledge")
def upload(request: Request, ctx: ContextDep, p: AdminP, form: Form) -> Response:
    """Ingest the uploaded files (nothing is ingested when one of them is refused)."""
    try:
        body = IngestRequest.model_validate(
            {"documents": _uploaded_documents(form.getlist("files"))}
        )
        result = ingest_documents(ctx, p, body.documents)
    except UploadProblem as exc:
        return redirect(request, KNOWLEDGE_URL, str(exc), "error")
    except ValidationError as exc:
        message = "Nothing was ingested: " + _pydantic_text(exc)
        return redirect(request, KNOWLEDGE_URL, message, "error")
    except TriageError as exc:
        return redirect(
            request, KNOWLEDGE_URL, "Nothing was ingested: " + _error_text(exc), "error"
        )
    outcomes = ", ".join(f"{d['name']} {d['status']}" for d in result["documents"])
    return redirect(
        request,
        KNOWLEDGE_URL,
        f"Ingested {outcomes}; {result['chunks']} chunks in the knowledge base.",
    )


@router.post("/knowledge/{doc_id}/remove")
def remove(request: Request, doc_id: str, ctx: ContextDep, p: AdminP, form: Form) -> Response:
    """Remove one document (audited as over the API)."""
    try:
        result = remove_document(ctx, p, doc_id[:200])
    except TriageError as exc:
        return redirect(request, KNOWLEDGE_URL, _error_text(exc), "error")
    return redirect(
        request,
        KNOWLEDGE_URL,
        f"Removed {result['doc_id']} (version {result['version']}, {result['chunks_removed']} "
        f"chunks); it is no longer retrieved or cited.",
    )
