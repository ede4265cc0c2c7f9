"""Our routes before BentoML's router: `ApiRoutes`, and the admin token check.

`ApiRoutes` sends the paths of our FastAPI app (admin, Hugging Face, Open
Inference Protocol) there, admin ones after the bearer-token check and before
any body is read, and answers /docs.json for the whole surface; everything else
goes on to BentoML's router. `RequestGuard` (`service.errors`) caps each
family's bodies.
"""

from __future__ import annotations

import base64
import binascii
import hmac
from collections.abc import Callable

from fastapi import FastAPI
from starlette.datastructures import Headers
from starlette.routing import Match
from starlette.types import ASGIApp, Receive, Scope, Send

from service.api import ALSO_ALLOWED
from service.docs import DOCS_ROUTE, OpenApiDocument
from service.errors import JSON_MEDIA_TYPE, RequestGuard, send_json, send_json_error
from service.protocols.v2_binary import BinaryRequests
from service.settings import Settings

ADMIN_PREFIXES = (
    "/examples",
    "/retrain",
    "/jobs",
    "/models",
    "/monitoring",
    "/review-queue",
    "/label-studio",
)
# Label Studio's ML-backend form sends basic auth: there, the token is also the password.
BASIC_AUTH_PREFIXES = ("/label-studio",)
V2_PREFIX = "/v2"
# BentoML's index page shares "/" with our Hugging Face route (POST).
BENTOML_SHARED = frozenset({("/", "GET"), ("/", "HEAD")})
# tritonclient sends JSON without a Content-Type, and binary tensors as octet-stream.
V2_MEDIA_TYPES = frozenset({JSON_MEDIA_TYPE, "", "application/octet-stream"})


def admin_refusal(scope: Scope, settings: Settings) -> tuple[int, str] | None:
    """Why an admin request may not go on (status, message), or None when its token is right."""
    token = settings.admin_token
    if token is None:
        return 403, (
            "admin endpoints are disabled: set the ADMIN_TOKEN environment variable "
            "(or ADMIN_TOKEN_FILE) to a random token and restart the service"
        )
    header = Headers(scope=scope).get("authorization", "")
    scheme, _, given = header.partition(" ")
    basic = scope["path"].startswith(BASIC_AUTH_PREFIXES)
    if scheme.lower() == "basic" and basic:
        given = basic_password(given)
    elif scheme.lower() != "bearer":
        given = ""
    if not given or not hmac.compare_digest(
        given.strip().encode(), token.get_secret_value().encode()
    ):
        also = " (or basic auth with it as the password)" if basic else ""
        return 401, f"missing or wrong admin token: send 'Authorization: Bearer $ADMIN_TOKEN'{also}"
    return None


def basic_password(credentials: str) -> str:
    """The password of HTTP basic credentials (any user name); "" if they do not decode."""
    try:
        decoded = base64.b64decode(credentials.strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return ""
    return decoded.partition(":")[2]


class ApiRoutes:
    """Our FastAPI routes (admin, protocols) and /docs.json, before BentoML's router.

    A request goes to our app when one of its routes matches its path (a
    wrong method is then our 405, whose Allow also names BentoML's methods on
    a shared path); the rest goes on to BentoML. Admin requests are refused
    before their body is read when the token is wrong. Each family has its own
    body guard: admin uploads have a larger cap, and V2 clients send JSON
    without a Content-Type or binary tensors. It sits inside the error boundary
    (`service.service`).
    """

    def __init__(
        self, app: ASGIApp, api_factory: Callable[[], FastAPI], settings: Settings
    ) -> None:
        self.app = app
        self.api_factory = api_factory
        self.settings = settings
        self._api: FastAPI | None = None
        self._guards: list[tuple[tuple[str, ...], ASGIApp]] = []
        self._document = OpenApiDocument()

    def _ensure_api(self) -> FastAPI:
        if self._api is None:
            settings = self.settings
            api = self.api_factory()
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
        """Whether our app answers: a route matches, or matches the path with another method.

        Starlette's own matching, per request: ~45 us, about 1% of the CPU a one-text
        request costs, so it is not cached (docs/DESIGN.md #4)."""
        if (scope["path"], scope["method"]) in BENTOML_SHARED:
            return False
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
            refusal = admin_refusal(scope, self.settings)
            if refusal is not None:
                await send_json_error(send, *refusal)
                return
        guard = next(g for prefixes, g in self._guards if path.startswith(prefixes))
        also = [m for p, m in BENTOML_SHARED if p == path]
        await guard({**scope, ALSO_ALLOWED: also}, receive, send)

    async def _docs(self, scope: Scope, send: Send) -> None:
        await send_json(send, 200, await self._document.body(self.app, scope, self._ensure_api()))
