"""ASGI middleware: body size limit (413) and content type (415), before any parsing."""

from __future__ import annotations

import json
import re

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import error_body

_BODY_METHODS = {b"POST", b"PUT", b"PATCH"}


async def _reply(send: Send, status: int, code: str, message: str, field: str) -> None:
    body = json.dumps(error_body(code, message, fields=[{"field": field, "problem": message}]))
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body.encode()})


def _refuse(message: str) -> Receive:
    async def receive() -> Message:
        raise HTTPException(status_code=413, detail=message)

    return receive


class RequestLimits:
    """Refuse bodies over ``max_bytes`` (413) and non-JSON bodies on the JSON API (415).

    Checks Content-Length up front and also counts streamed chunks, so a chunked upload
    cannot bypass the limit.
    """

    def __init__(
        self,
        app: ASGIApp,
        max_bytes: int,
        json_prefix: str = "/v1/",
        upload_bytes: int | None = None,
        upload_paths: str | None = None,
        page_prefix: str | None = None,
    ) -> None:
        """``upload_paths`` (a regular expression matched against the whole path) get the
        larger ``upload_bytes`` limit: data-set uploads, not case traffic. Under
        ``page_prefix`` (the web console) an oversized body is refused through the app's
        exception handlers, so a person sees an error page instead of a JSON body."""
        self.app = app
        self.page_prefix = page_prefix
        self.max_bytes = max_bytes
        self.json_prefix = json_prefix
        self.upload_bytes = upload_bytes or max_bytes
        self.upload_paths = re.compile(upload_paths) if upload_paths else None

    def limit_for(self, path: str) -> int:
        if self.upload_paths is not None and self.upload_paths.fullmatch(path):
            return max(self.upload_bytes, self.max_bytes)
        return self.max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"].encode() not in _BODY_METHODS:
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        length = headers.get(b"content-length")
        max_bytes = self.limit_for(scope["path"])
        limit_msg = f"request body exceeds {max_bytes} bytes"
        if length is not None:
            try:
                too_big = int(length) > max_bytes
            except ValueError:
                await _reply(send, 400, "bad_request", "invalid Content-Length", "Content-Length")
                return
            if too_big:
                if self.page_prefix and scope["path"].startswith(self.page_prefix):
                    # nothing of the body is read: the first read raises the 413 inside the
                    # app, where the console's handler renders it as a page
                    await self.app(scope, _refuse(limit_msg), send)
                    return
                await _reply(send, 413, "payload_too_large", limit_msg, "body")
                return
        # An HTTP/1.x request with neither Content-Length nor Transfer-Encoding has no body
        # (RFC 9112 6.3): `curl -X POST .../activate` must not need a Content-Type for nothing.
        # HTTP/2 may stream a body without either header, so there the check stays.
        if length is not None:
            has_body = int(length) > 0
        else:
            http1 = str(scope.get("http_version", "1.1")).startswith("1")
            has_body = b"transfer-encoding" in headers or not http1
        if scope["path"].startswith(self.json_prefix) and has_body:
            ctype = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
            if ctype != b"application/json":
                await _reply(
                    send,
                    415,
                    "unsupported_media_type",
                    "Content-Type must be application/json",
                    "Content-Type",
                )
                return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > max_bytes:
                    # Surfaces through the app's HTTP error handler as a 413 body.
                    raise HTTPException(status_code=413, detail=limit_msg)
            return message

        await self.app(scope, limited_receive, send)
