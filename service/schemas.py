"""The HTTP contract of the service: what a request may carry, and what each text gets back.

Two layers guard the edge (shared/DESIGN.md #8):

* `RequestGuard`, an ASGI middleware, runs before BentoML touches a body. It
  refuses a wrong content type (415) and a body over MAX_BODY_BYTES (413)
  while *reading* it — BentoML would otherwise read the whole body into memory
  before validating anything, and a chunked body declares no length to check.
* The pydantic types below are what BentoML validates each request against;
  anything they refuse (empty list, non-string item, too many texts, a text
  over the character cap, malformed JSON) becomes a 400 with the reason.

All limits come from `Settings`, read once at import time because BentoML
builds the request schema when the service class is defined.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Annotated

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, Field, StrictStr
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.settings import get_settings

_settings = get_settings()

Text = Annotated[StrictStr, Field(min_length=1, max_length=_settings.max_text_chars)]
Texts = Annotated[
    list[Text],
    Field(
        min_length=1,
        max_length=_settings.max_texts_per_request,
        description="Texts to classify: one or many per request; answers come back in this order.",
        examples=[["I love this!", "the service was awful", "the train leaves at noon"]],
    ),
]

JSON_MEDIA_TYPE = "application/json"
BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


class Prediction(BaseModel):
    """The answer for one text."""

    label: str = Field(description="The most probable label.")
    score: float = Field(description="Probability of `label`.")
    scores: dict[str, float] = Field(description="Probability of every label.")
    model_version: str = Field(description="The model version that scored this text.")


def predictions(
    probabilities: npt.NDArray[np.float32], labels: Sequence[str], model_version: str
) -> list[Prediction]:
    """One Prediction per row of `probabilities` (columns in the order of `labels`)."""
    winners = probabilities.argmax(axis=1)
    return [
        Prediction(
            label=labels[best],
            score=float(row[best]),
            scores=dict(zip(labels, map(float, row), strict=True)),
            model_version=model_version,
        )
        for row, best in zip(probabilities, winners, strict=True)
    ]


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
