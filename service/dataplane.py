"""One scoring path for every protocol: BentoML's batched /predict, called in-process.

The Hugging Face and Open Inference Protocol routes translate their wire
shapes into a list of texts and back (KServe's "one data plane, protocol
adapters at the edge"). Their texts join the same adaptive batches as
/predict's, because they *are* /predict calls: the adapter hands a
synthetic request to the ASGI app behind our routes (the model gate and
BentoML), without a socket, and reads the answer. BentoML offers no public
way to submit to an API's batch queue, and a second batchable API would
split the traffic into two queues that batch less.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import bentoml
from pydantic import TypeAdapter
from starlette.types import ASGIApp, Message, Scope

from service.errors import RefusedError, bentoml_error_message
from service.model_holder import LoadedModel
from service.schemas import PREDICT_ROUTE, Prediction
from service.settings import get_settings

_PREDICTIONS = TypeAdapter(list[Prediction])


@dataclass(frozen=True)
class Answer:
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes


async def call(app: ASGIApp, scope: Scope, method: str, path: str, body: bytes = b"") -> Answer:
    """Run one request through `app` in-process; `scope` lends the connection's details."""
    request: Scope = {
        "type": "http",
        "asgi": scope.get("asgi", {"version": "3.0"}),
        "http_version": scope.get("http_version", "1.1"),
        "scheme": scope.get("scheme", "http"),
        "server": scope.get("server"),
        "client": scope.get("client"),
        "root_path": "",
        "method": method,
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ],
    }
    sent = False
    start: Message = {}
    chunks: list[bytes] = []

    async def receive() -> Message:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: Message) -> None:
        nonlocal start
        if message["type"] == "http.response.start":
            start = message
        elif message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))

    await app(request, receive, send)
    return Answer(start.get("status", 500), list(start.get("headers", [])), b"".join(chunks))


def _message(answer: Answer) -> str:
    bentoml_message = bentoml_error_message(answer.status, dict(answer.headers))
    if bentoml_message is not None:
        return bentoml_message
    try:
        payload = json.loads(answer.body)
    except ValueError:
        return answer.body.decode(errors="replace")[:500]
    return str(payload.get("error", payload)) if isinstance(payload, dict) else str(payload)


class DataPlane:
    """What every protocol shares: scoring through /predict, and the model being served."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def predict(self, scope: Scope, texts: list[str]) -> list[Prediction]:
        """One Prediction per text, in order; a refusal of /predict keeps its status."""
        answer = await call(
            self.app, scope, "POST", PREDICT_ROUTE, json.dumps({"texts": texts}).encode()
        )
        if answer.status != 200:
            raise RefusedError(answer.status, _message(answer))
        return _PREDICTIONS.validate_json(answer.body)

    def model(self) -> LoadedModel | None:
        return served_model()

    def require_model(self) -> LoadedModel:
        loaded = served_model()
        if loaded is None:
            raise RefusedError(503, no_model_message())
        return loaded


def served_model() -> LoadedModel | None:
    """The model this worker serves now, or None before the first one is loaded."""
    holder = getattr(bentoml.get_current_service(), "holder", None)
    return holder.current() if holder is not None and holder.ready else None


def no_model_message() -> str:
    settings = get_settings()
    return (
        f"no version of model {settings.model_name!r} is loaded yet: train one with "
        f"`make serve` (first run) or `python -m training fit --data FILE.csv "
        f"--name {settings.model_name}`; every worker picks it up within "
        f"{settings.model_poll_seconds:g} s"
    )
