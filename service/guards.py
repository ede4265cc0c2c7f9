"""The ASGI middlewares in front of BentoML, outermost first (after `errors.ErrorBoundary`).

* `ApiRoutes` sends the paths of our FastAPI app (admin, Hugging Face, Open
  Inference Protocol) there, admin ones after the bearer-token check and
  before any body is read, and answers /docs.json for the whole surface;
  everything else goes on to BentoML.
* `RequestGuard` refuses a wrong content type (415) and a body over the cap
  (413) while reading it: BentoML would read a whole body into memory first.
* `ModelGate` answers /predict with 503 and what to do while no model is
  loaded (BentoML replaces the message of every 5xx an API raises).
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Callable

from fastapi import FastAPI
from starlette.datastructures import Headers
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api import ALSO_ALLOWED
from service.dataplane import DataPlane, call, no_model_message, served_model
from service.docs import merged_openapi
from service.errors import JSON_MEDIA_TYPE, send_json, send_json_error
from service.protocols.v2_binary import BinaryRequests
from service.schemas import PREDICT_ROUTE
from service.settings import get_settings

BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
ADMIN_PREFIXES = ("/examples", "/retrain", "/jobs", "/models")
V2_PREFIX = "/v2"
DOCS_ROUTE = "/docs.json"
BENTOML_ROUTES = frozenset({PREDICT_ROUTE, "/livez", "/readyz", "/healthz", "/metrics"})
# BentoML's index page shares "/" with our Hugging Face route (POST).
BENTOML_SHARED = frozenset({("/", "GET"), ("/", "HEAD")})
JSON_ONLY = frozenset({JSON_MEDIA_TYPE})
# tritonclient sends JSON without a Content-Type, and binary tensors as octet-stream.
V2_MEDIA_TYPES = frozenset({JSON_MEDIA_TYPE, "", "application/octet-stream"})


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


class ModelGate:
    """Answer /predict with 503 and what to do about it while no model is loaded.

    This lives in front of BentoML rather than in `predict` because BentoML
    replaces the message of every 5xx an API raises with a generic one.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == PREDICT_ROUTE and served_model() is None:
            await send_json_error(send, 503, no_model_message())
            return
        await self.app(scope, receive, send)


def admin_refusal(scope: Scope) -> tuple[int, str] | None:
    """Why an admin request may not go on (status, message), or None when its token is right."""
    token = get_settings().admin_token
    if token is None:
        return 403, (
            "admin endpoints are disabled: set the ADMIN_TOKEN environment variable "
            "(at least 16 characters) and restart the service"
        )
    header = Headers(scope=scope).get("authorization", "")
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(
        given.strip().encode(), token.get_secret_value().encode()
    ):
        return 401, "missing or wrong admin token: send 'Authorization: Bearer $ADMIN_TOKEN'"
    return None


class ApiRoutes:
    """Our FastAPI routes (admin, protocols) and /docs.json in front of BentoML's.

    A request goes to our app when one of its routes matches its path (a
    wrong method is then our 405, whose Allow also names BentoML's methods on
    a shared path); the rest goes on to BentoML. Admin requests are refused
    before their body is read when the token is wrong. Each family has its own
    body guard: admin uploads have a larger cap, and V2 clients send JSON
    without a Content-Type or binary tensors. Added outermost (after the error
    boundary).
    """

    def __init__(self, app: ASGIApp, api_factory: Callable[[DataPlane], FastAPI]) -> None:
        self.app = app
        self.api_factory = api_factory
        self._api: FastAPI | None = None
        self._guards: list[tuple[tuple[str, ...], ASGIApp]] = []

    def _ensure_api(self) -> FastAPI:
        if self._api is None:
            settings = get_settings()
            api = self.api_factory(DataPlane(self.app))
            self._guards = [
                (
                    ADMIN_PREFIXES,
                    RequestGuard(api, settings.max_admin_body_bytes, "MAX_ADMIN_BODY_BYTES"),
                ),
                (
                    (V2_PREFIX,),
                    RequestGuard(
                        BinaryRequests(api),
                        settings.max_body_bytes,
                        media_types=V2_MEDIA_TYPES,
                    ),
                ),
                (("/",), RequestGuard(api, settings.max_body_bytes)),
            ]
            self._api = api
        return self._api

    def _ours(self, scope: Scope) -> bool:
        """Whether our app answers: a route matches, or matches the path with another method."""
        if scope["path"] in BENTOML_ROUTES or (scope["path"], scope["method"]) in BENTOML_SHARED:
            return False  # the predict path pays no route matching
        matches = [route.matches(scope)[0] for route in self._ensure_api().router.routes]
        return Match.FULL in matches or Match.PARTIAL in matches

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        if path == DOCS_ROUTE and scope["method"] == "GET":
            await self._docs(scope, send)
            return
        if not self._ours(scope):
            await self.app(scope, receive, send)
            return
        if path.startswith(ADMIN_PREFIXES):
            refusal = admin_refusal(scope)
            if refusal is not None:
                await send_json_error(send, *refusal)
                return
        guard = next(g for prefixes, g in self._guards if path.startswith(prefixes))
        also = [m for p, m in BENTOML_SHARED if p == path]
        await guard({**scope, ALSO_ALLOWED: also}, receive, send)

    async def _docs(self, scope: Scope, send: Send) -> None:
        answer = await call(self.app, scope, "GET", DOCS_ROUTE)
        spec = merged_openapi(json.loads(answer.body), self._ensure_api())
        await send_json(send, 200, json.dumps(spec).encode())
