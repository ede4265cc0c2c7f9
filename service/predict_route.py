"""POST /predict, answered in front of BentoML's app, with batching of our own.

At 64 clients BentoML's request path (its middlewares, router, endpoint,
batch dispatcher and thread hop) spent 1.3-1.6 ms of event-loop CPU per
request against ~3.3 ms of ONNX Runtime per text, which held single-text
serving at ~0.7 of the model's in-process rate on 2 cores; answered here it
costs a fraction of that (docs/DESIGN.md #4, bench/SERVING.md). BentoML still
runs the workers, their start-up and shutdown, and its own routes (health,
metrics, its index page); `PredictRoute` passes everything but `POST /predict`
on to our other routes and BentoML's app behind them (`service.service`).

Batching is continuous: a request joins its worker's queue, and the model
thread takes every queued text (up to MAX_BATCH_SIZE) whenever it is free, so
a lone request never waits and a crowd fills batches by itself. A request is
shed with 503 when the texts ahead of it would take longer than MAX_LATENCY_MS
at the recent cost per text, or when it has waited that long already.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import bentoml
from pydantic import BaseModel, TypeAdapter, ValidationError
from starlette.types import ASGIApp, Receive, Scope, Send

from service.errors import (
    RefusedError,
    error_bytes,
    internal_error_message,
    invalid_request,
    log_failure,
    new_request_id,
    send_json,
)
from service.metrics import ServiceMetrics
from service.model_holder import LoadedModel, ModelHolder
from service.request_body import RequestGuard
from service.schemas import PREDICT_ROUTE, Prediction, Texts, predictions
from service.settings import get_settings

log = logging.getLogger(__name__)
COST_SMOOTHING = 0.2  # weight of the newest batch in the cost per text


class PredictRequest(BaseModel):
    """The body of POST /predict."""

    texts: Texts


_ANSWERS = TypeAdapter(list[Prediction])
_TEXTS = TypeAdapter(Texts)


class OverloadedError(Exception):
    """The queue ahead of a request would keep it past MAX_LATENCY_MS."""


@dataclass(eq=False)
class _Waiting:
    texts: list[str]
    answer: asyncio.Future[list[Prediction]]
    since: float = field(default_factory=time.monotonic)


class Batcher:
    """Continuous batching of one worker's requests onto its one model thread."""

    def __init__(
        self,
        score: Callable[[list[str]], list[Prediction]],
        max_batch_size: int,
        max_latency_s: float,
    ) -> None:
        self._score = score
        self._max_batch_size = max_batch_size
        self._max_latency_s = max_latency_s
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="predict")
        self._queue: deque[_Waiting] = deque()
        self._queued_texts = 0
        self._running_texts = 0
        self._drainer: asyncio.Task[None] | None = None  # running while the queue has work
        self._seconds_per_text = 0.0  # 0: unknown until the first batch ran

    async def submit(self, texts: list[str]) -> list[Prediction]:
        """One Prediction per text, scored in whatever batch the queue makes of it."""
        ahead = self._queued_texts + self._running_texts + len(texts)
        if ahead * self._seconds_per_text > self._max_latency_s:
            raise OverloadedError
        loop = asyncio.get_running_loop()
        waiting = _Waiting(texts, loop.create_future())
        self._queue.append(waiting)
        self._queued_texts += len(texts)
        if self._drainer is None or self._drainer.done():
            self._drainer = loop.create_task(self._drain())
        return await waiting.answer

    def _next_batch(self) -> list[_Waiting]:
        """The oldest requests that fit in one batch (a larger request runs alone)."""
        batch: list[_Waiting] = []
        size = 0
        now = time.monotonic()
        while self._queue and (
            not batch or size + len(self._queue[0].texts) <= self._max_batch_size
        ):
            waiting = self._queue.popleft()
            self._queued_texts -= len(waiting.texts)
            if waiting.answer.done():  # its client gave up (REQUEST_TIMEOUT_S)
                continue
            if now - waiting.since > self._max_latency_s:
                waiting.answer.set_exception(OverloadedError())
                continue
            batch.append(waiting)
            size += len(waiting.texts)
        return batch

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        while batch := self._next_batch():
            texts = [text for waiting in batch for text in waiting.texts]
            self._running_texts = len(texts)
            start = time.perf_counter()
            answers: list[Prediction] = []
            failure: Exception | None = None
            try:
                answers = await loop.run_in_executor(self._thread, self._score, texts)
            except Exception as exc:  # every request of the batch gets it
                failure = exc
            else:
                self._learn((time.perf_counter() - start) / len(texts))
            finally:
                self._running_texts = 0
            _settle(batch, answers, failure)

    def _learn(self, cost: float) -> None:
        if self._seconds_per_text == 0.0:
            self._seconds_per_text = cost
        else:
            self._seconds_per_text += COST_SMOOTHING * (cost - self._seconds_per_text)

    def close(self) -> None:
        self._thread.shutdown(wait=False, cancel_futures=True)


def _settle(
    batch: Sequence[_Waiting], answers: list[Prediction], failure: Exception | None
) -> None:
    """Hand each request its slice of the batch's answers (or the batch's failure)."""
    start = 0
    for waiting in batch:
        end = start + len(waiting.texts)
        if not waiting.answer.done():  # done: its client gave up while the batch ran
            if failure is None:
                waiting.answer.set_result(answers[start:end])
            else:
                waiting.answer.set_exception(failure)
        start = end


def score_batch(
    holder: ModelHolder, metrics: ServiceMetrics, texts: Sequence[str]
) -> list[Prediction]:
    """Score one batch with the model served now, and record it in the metrics."""
    # Read the reference once: a swap during this batch must not split it across two
    # models, and `model_version` must name the one that scored it.
    loaded = holder.current()
    start = time.perf_counter()
    scored, wide = holder.score(loaded, texts)
    seconds = time.perf_counter() - start
    version = loaded.version.version
    answers = predictions(scored, loaded.version.labels, version)
    metrics.observe_batch(
        version,
        [a.label for a in answers],
        [a.score for a in answers],
        seconds,
        scored.tokens,
        wide,
    )
    return answers


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


OVERLOADED = (
    "the service is overloaded and shed this request (its wait would pass MAX_LATENCY_MS); "
    "retry after a short backoff"
)


async def classify(texts: Sequence[str]) -> list[Prediction]:
    """Every text's Prediction, in order, through this worker's batches.

    What /predict and each protocol adapter call; a refusal is a RefusedError
    with the status and message the client gets.
    """
    try:
        checked = _TEXTS.validate_python(texts)
    except ValidationError as exc:
        raise _invalid(exc) from None
    return await _submit(checked)


def _parse(body: bytes) -> list[str]:
    """The texts of a /predict body, or a RefusedError (400) naming each problem."""
    try:
        return PredictRequest.model_validate_json(body).texts
    except ValidationError as exc:
        raise _invalid(exc) from None


async def _submit(texts: list[str]) -> list[Prediction]:
    service = bentoml.get_current_service()
    batcher: Batcher | None = getattr(service, "batcher", None)
    holder: ModelHolder | None = getattr(service, "holder", None)
    if batcher is None or holder is None or not holder.ready:
        raise RefusedError(503, no_model_message())
    timeout = get_settings().request_timeout_s
    try:
        async with asyncio.timeout(timeout):  # no task per request, unlike wait_for
            return await batcher.submit(texts)
    except OverloadedError:
        raise RefusedError(503, OVERLOADED) from None
    except TimeoutError:
        raise RefusedError(
            504, f"scoring took longer than REQUEST_TIMEOUT_S ({timeout} s); retry later"
        ) from None


def _invalid(exc: ValidationError) -> RefusedError:
    body = invalid_request(exc.errors(include_url=False, include_input=False))
    return RefusedError(400, body.error, body.details)


class PredictRoute:
    """ASGI: answer `POST /predict` here, pass everything else on to `app` (our other
    routes, then BentoML's app)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.guarded = RequestGuard(self._predict, get_settings().max_body_bytes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == PREDICT_ROUTE and scope["method"] == "POST":
            await self.guarded(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    async def _predict(self, scope: Scope, receive: Receive, send: Send) -> None:
        message = await receive()  # RequestGuard replays the whole body in one message
        try:
            texts = _parse(message.get("body", b""))
            status, body = 200, _ANSWERS.dump_json(await _submit(texts))
        except RefusedError as refused:
            _log_refusal(refused)
            status = refused.status
            body = refused.body().model_dump_json(exclude_none=True).encode()
        except Exception:
            request_id = new_request_id()
            log_failure(request_id, scope)
            status, body = 500, error_bytes(internal_error_message(request_id))
        await send_json(send, status, body)


def _log_refusal(refused: RefusedError) -> None:
    """One line per refused request, never a traceback: the client has its answer."""
    if refused.message == OVERLOADED:
        log.warning("POST %s: shed, %s", PREDICT_ROUTE, refused.message)
    else:
        log.info("POST %s: refused %d, %s", PREDICT_ROUTE, refused.status, refused.message)


def put_in_front(service: bentoml.Service[Any], wrap: Callable[[ASGIApp], ASGIApp]) -> None:
    """Make every worker of `service` serve `wrap(BentoML's app)` instead of BentoML's app.

    A worker builds its app with `Service.to_asgi`, the method BentoML also
    offers for mounting a service elsewhere; `bentoml` is pinned exactly, and
    the batching and request-metric tests over HTTP fail if this stops taking effect.
    """
    cls = type(service)
    bentoml_app = cls.to_asgi

    def to_asgi(self: bentoml.Service[Any], is_main: bool = True) -> ASGIApp:
        app = bentoml_app(self, is_main)
        return wrap(app) if self is service else app

    cls.to_asgi = to_asgi
