"""Refuse bodies that are not JSON or too large before anything reads them whole.

BentoML and FastAPI read a whole body into memory before they look at it; this
counts bytes as they arrive and stops at the cap.
"""

from __future__ import annotations

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import JSON_MEDIA_TYPE, send_json_error

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
