"""What the HTTP edge answers: JSON bodies, refusals of bad bodies, and the error boundary.

Every error this service sends has one shape, `{"error": message}` (plus
`details` for row-level problems), whatever route or protocol raised it: the
Open Inference Protocol asks for exactly that, and BentoML's own bodies
already look like it. `ErrorBoundary` sits around our FastAPI routes and
BentoML's router (/predict catches its own): an
exception nothing else handled is logged once, with a request id, and
answered at once with a JSON 500 naming that id, instead of reaching no
`send` (BentoML's timeout middleware would then hold the client for
REQUEST_TIMEOUT_S and answer a bare 500). Error answers without a JSON body
(the routers' plain-text 404 and 405) get one, and BentoML's own generic 500
names the request id its log line carries (its span id).

`RequestGuard` refuses a body that is not JSON or too large before anything
reads it whole: BentoML and FastAPI read a whole body into memory before they
look at it; the guard counts bytes as they arrive and stops at the cap.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Mapping, Sequence
from http import HTTPStatus
from typing import Any

from pydantic import BaseModel, Field
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

JSON_MEDIA_TYPE = "application/json"
log = logging.getLogger(__name__)


class ErrorDetail(BaseModel):
    loc: str = Field(description="Where in the request, e.g. examples[3].label.")
    msg: str = Field(description="What is wrong there.")


class ErrorBody(BaseModel):
    """Every error answer: what went wrong and what to do about it."""

    error: str = Field(description="What is wrong, and what to change.")
    details: list[ErrorDetail] | None = Field(
        None, description="One entry per problem, for requests with several."
    )


class RefusedError(Exception):
    """A request we answer with a 4xx (or a 503): the message says what to change."""

    def __init__(self, status: int, message: str, details: list[ErrorDetail] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.details = status, message, details

    def body(self) -> ErrorBody:
        return ErrorBody(error=self.message, details=self.details)


MAX_DETAILS = 50


def location(loc: tuple[int | str, ...]) -> str:
    """pydantic's ('body', 'examples', 3, 'label') as 'examples[3].label'."""
    out = ""
    for part in loc[1:] if loc and loc[0] == "body" else loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "body"


def invalid_request(errors: Sequence[Mapping[str, Any]]) -> ErrorBody:
    """pydantic's errors as one answer: the first few in the message, each in `details`."""
    details = [ErrorDetail(loc=location(tuple(e["loc"])), msg=e["msg"]) for e in errors]
    summary = "; ".join(f"{d.loc}: {d.msg}" for d in details[:5])
    return ErrorBody(error=f"invalid request: {summary}", details=details[:MAX_DETAILS])


def error_bytes(message: str) -> bytes:
    return json.dumps({"error": message}).encode()


async def send_json(
    send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    """Answer with a JSON `body` straight from an ASGI middleware (`headers` kept, re-typed)."""
    kept = [(k, v) for k, v in headers or [] if k not in (b"content-length", b"content-type")]
    kept += [
        (b"content-type", JSON_MEDIA_TYPE.encode()),
        (b"content-length", str(len(body)).encode()),
    ]
    await send({"type": "http.response.start", "status": status, "headers": kept})
    await send({"type": "http.response.body", "body": body})


async def send_json_error(send: Send, status: int, message: str) -> None:
    """Answer with `{"error": message}` straight from an ASGI middleware."""
    await send_json(send, status, error_bytes(message))


def internal_error_message(request_id: str) -> str:
    return f"internal error (request_id {request_id}); the server log has the details"


def new_request_id() -> str:
    return uuid.uuid4().hex[:16]


def log_failure(request_id: str, scope: Scope) -> None:
    """The one traceback of a failed request, with the id its answer names."""
    log.exception("request_id=%s %s %s failed", request_id, scope["method"], scope["path"])


def bentoml_error_message(status: int, headers: dict[bytes, bytes]) -> str | None:
    """What BentoML's own 500 should have said ("unexpected error, check the server log")."""
    request_id = headers.get(b"x-bentoml-request-id", b"").decode("latin-1")
    if status == 500 and request_id:
        return internal_error_message(request_id)  # its span id, which its log line carries
    return None


def _json_error_for(scope: Scope, start: Message) -> bytes | None:
    """The JSON body to send instead of an error answer that has none of its own, or None.

    BentoML's and Starlette's routers answer unknown paths and methods in plain
    text, and BentoML's 500 and 503 say only "unexpected error, check the server log".
    """
    status: int = start["status"]
    if status < 400:  # the predict path's answers: nothing to look at
        return None
    headers = dict(start.get("headers", []))
    message = bentoml_error_message(status, headers)
    if message is None and headers.get(b"content-type", b"").startswith(JSON_MEDIA_TYPE.encode()):
        return None
    path, method = scope["path"], scope["method"]
    message = message or {
        404: f"no route {path}; /docs.json lists every route",
        405: f"{method} is not allowed on {path}; /docs.json lists the methods",
    }.get(status, HTTPStatus(status).phrase)
    return error_bytes(message)


class ErrorBoundary:
    """Answer any exception that escapes the app with a logged JSON 500 and a request id."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False
        replacing = False

        async def guarded_send(message: Message) -> None:
            nonlocal started, replacing
            if message["type"] == "http.response.start":
                started = True
                replacement = _json_error_for(scope, message)
                if replacement is not None:
                    replacing = True
                    await send_json(send, message["status"], replacement, message.get("headers"))
                    return
            if replacing:
                return  # the original body, already replaced
            await send(message)

        try:
            await self.app(scope, receive, guarded_send)
        except Exception:
            if started:
                # Answered already: Starlette re-raises after its 500 handler (ours, in
                # service.api) has answered and logged, so this would log it twice.
                return
            request_id = new_request_id()
            log_failure(request_id, scope)
            await send_json_error(send, 500, internal_error_message(request_id))


BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
JSON_ONLY = frozenset({JSON_MEDIA_TYPE})


class RequestGuard:
    """Refuse bodies that are not JSON or too large before the app reads them.

    A body within the cap is read here, counting bytes as they arrive, and
    replayed to the app; one over the cap is refused at the first byte past it
    (or at once, when Content-Length already says so).
    """

    def __init__(
        self,
        app: ASGIApp,
        max_body_bytes: int,
        limit_name: str = "MAX_BODY_BYTES",
        media_types: frozenset[str] = JSON_ONLY,
    ) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.limit_name = limit_name
        self.media_types = media_types

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in BODY_METHODS:
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        if headers.get("content-length", "0") == "0" and "transfer-encoding" not in headers:
            # No body at all (e.g. POST /models/{v}/activate): nothing to type or cap.
            await self.app(scope, receive, send)
            return
        media_type = headers.get("content-type", "").split(";")[0].strip().lower()
        if media_type not in self.media_types:
            await send_json_error(
                send,
                415,
                f"request bodies must be JSON sent with 'Content-Type: {JSON_MEDIA_TYPE}'"
                f" (got {media_type or 'no content type'!r})",
            )
            return
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_body_bytes:
            await self._too_large(send)
            return
        body = await self._read_capped(receive)
        if body is None:
            await self._too_large(send)
            return
        await self.app(scope, _replay(body, receive), send)

    async def _read_capped(self, receive: Receive) -> bytes | None:
        """The whole body, or None as soon as it grows past the cap."""
        chunks: list[bytes] = []
        size = 0
        more = True
        while more:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                break
            chunk: bytes = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                return None
            chunks.append(chunk)
            more = bool(message.get("more_body", False))
        return b"".join(chunks)

    async def _too_large(self, send: Send) -> None:
        await send_json_error(
            send,
            413,
            f"request body is larger than {self.max_body_bytes} bytes ({self.limit_name}); "
            "send less per request",
        )


def _replay(body: bytes, receive: Receive) -> Receive:
    """A `receive` that yields the already-read body once, then defers to the real one."""
    pending = True

    async def replay() -> Message:
        nonlocal pending
        if pending:
            pending = False
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay
