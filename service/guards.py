"""The ASGI middlewares in front of BentoML, outermost first.

* `AdminRoutes` sends admin paths, after the bearer-token check and before any
  body is read, to the admin router; everything else goes on.
* `RequestGuard` refuses a wrong content type (415) and a body over the cap
  (413) while reading it: BentoML would read a whole body into memory first.
* `ModelGate` answers /predict with 503 and what to do while no model is
  loaded (BentoML replaces the message of every 5xx an API raises).
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Callable

import bentoml
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.settings import get_settings

JSON_MEDIA_TYPE = "application/json"
BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
PREDICT_ROUTE = "/predict"
ADMIN_PREFIXES = ("/examples", "/retrain", "/jobs", "/models")


async def send_json_error(send: Send, status: int, message: str) -> None:
    """Answer with `{"error": message}`, the same shape as BentoML's own error bodies."""
    body = json.dumps({"error": message}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", JSON_MEDIA_TYPE.encode()),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class RequestGuard:
    """Refuse bodies that are not JSON or too large before the app reads them.

    A body within the cap is read here, counting bytes as they arrive, and
    replayed to the app; one over the cap is refused at the first byte past it
    (or at once, when Content-Length already says so).
    """

    def __init__(
        self, app: ASGIApp, max_body_bytes: int, limit_name: str = "MAX_BODY_BYTES"
    ) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.limit_name = limit_name

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
        if media_type != JSON_MEDIA_TYPE:
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


class ModelGate:
    """Answer /predict with 503 and what to do about it while no model is loaded.

    This lives in front of BentoML rather than in `predict` because BentoML
    replaces the message of every 5xx an API raises with a generic one.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == PREDICT_ROUTE:
            service = bentoml.get_current_service()
            if service is None or not service.holder.ready:
                settings = get_settings()
                await send_json_error(
                    send,
                    503,
                    f"no version of model {settings.model_name!r} is loaded yet: train one with "
                    f"`make serve` (first run) or `python -m training fit --data FILE.csv "
                    f"--name {settings.model_name}`; every worker picks it up within "
                    f"{settings.model_poll_seconds:g} s",
                )
                return
        await self.app(scope, receive, send)


class AdminRoutes:
    """Admin paths go to the admin router (after auth and body limits), others on.

    Added outermost, so an unauthenticated request is refused before its body is read.
    """

    def __init__(self, app: ASGIApp, router_factory: Callable[[], ASGIApp]) -> None:
        self.app = app
        self.settings = get_settings()
        self.router_factory = router_factory
        self._api: ASGIApp | None = None

    def _admin_app(self) -> ASGIApp:
        if self._api is None:
            self._api = RequestGuard(
                self.router_factory(), self.settings.max_admin_body_bytes, "MAX_ADMIN_BODY_BYTES"
            )
        return self._api

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or not path.startswith(ADMIN_PREFIXES):
            await self.app(scope, receive, send)
            return
        token = self.settings.admin_token
        if token is None:
            await send_json_error(
                send,
                403,
                "admin endpoints are disabled: set the ADMIN_TOKEN environment variable "
                "(at least 16 characters) and restart the service",
            )
            return
        header = dict(scope.get("headers", [])).get(b"authorization", b"").decode("latin-1")
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            given.strip().encode(), token.get_secret_value().encode()
        ):
            await send_json_error(
                send, 401, "missing or wrong admin token: send 'Authorization: Bearer $ADMIN_TOKEN'"
            )
            return
        await self._admin_app()(scope, receive, send)
