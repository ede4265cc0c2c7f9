"""POST /predict and the batches every protocol's texts join.

`PredictRoute` is an ASGI layer of ours inside BentoML's app (`service.service`):
it answers `POST /predict` itself, without BentoML's router, endpoint and batch
dispatcher, which cost 1.3-1.6 ms of event-loop CPU per request against ~3.3 ms
of ONNX Runtime per text (docs/DESIGN.md #4), and passes every other request on.

`Scoring` is one worker's scoring path, which /predict and the protocol adapters
(`service.protocols`) share. Its batching is continuous: a request joins the
worker's queue, and the model thread takes every queued text (up to
MAX_BATCH_SIZE) whenever it is free, so a lone request never waits and a crowd
fills batches by itself. A request is shed with 503 when the texts ahead of it
would take longer than MAX_LATENCY_MS at the recent cost per text, or when it has
waited that long already.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Protocol

from pydantic import BaseModel, TypeAdapter, ValidationError
from starlette.types import ASGIApp, Receive, Scope, Send

from core.runtime import Scored
from service.errors import (
    RefusedError,
    RequestGuard,
    error_bytes,
    internal_error_message,
    invalid_request,
    log_failure,
    new_request_id,
    send_json,
)
from service.metrics import ServiceMetrics
from service.model_holder import LoadedModel, ModelHolder
from service.review import ReviewSampler
from service.schemas import PREDICT_ROUTE, Prediction, Texts
from service.settings import Settings

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


def predictions(scored: Scored, labels: Sequence[str], model_version: str) -> list[Prediction]:
    """One Prediction per text of `scored` (columns in the order of `labels`)."""
    winners = scored.probabilities.argmax(axis=1)
    return [
        Prediction(
            label=labels[best],
            score=float(row[best]),
            scores=dict(zip(labels, map(float, row), strict=True)),
            logits=dict(zip(labels, map(float, raw), strict=True)),
            model_version=model_version,
        )
        for row, raw, best in zip(scored.probabilities, scored.logits, winners, strict=True)
    ]


OVERLOADED = (
    "the service is overloaded and shed this request (its wait would pass MAX_LATENCY_MS); "
    "retry after a short backoff"
)


class Scoring:
    """One worker's scoring path: the model it serves now, and the batches it runs.

    What /predict and each protocol adapter call; a refusal is a RefusedError
    with the status and message the client gets.
    """

    def __init__(
        self,
        holder: ModelHolder,
        metrics: ServiceMetrics,
        review: ReviewSampler,
        settings: Settings,
    ) -> None:
        self.holder = holder
        self.metrics = metrics
        self.review = review
        self.batcher = Batcher(self.score, settings.max_batch_size, settings.max_latency_ms / 1000)
        self.no_model = (
            f"no version of model {settings.model_name!r} is loaded yet: train one with "
            f"`make serve` (first run) or `python -m training fit --data FILE.csv "
            f"--name {settings.model_name}`; every worker picks it up within "
            f"{settings.model_poll_seconds:g} s"
        )

    def score(self, texts: Sequence[str]) -> list[Prediction]:
        """One batch, with the model served now, recorded in the metrics (model thread)."""
        # Read the reference once: a swap during this batch must not split it across two
        # models, and `model_version` must name the one that scored it.
        loaded = self.holder.current()
        start = time.perf_counter()
        scored = loaded.classifier.score(texts)
        seconds = time.perf_counter() - start
        answers = predictions(scored, loaded.version.labels, loaded.version_id)
        self.metrics.observe_batch(answers, scored, seconds)
        if self.review.enabled:
            self.review.observe(texts, scored.probabilities, loaded.version.labels,
                                loaded.version_id)  # fmt: skip
        return answers

    def model(self) -> LoadedModel | None:
        """The model this worker serves now, or None before the first one is loaded."""
        return self.holder.current() if self.holder.ready else None

    def require_model(self) -> LoadedModel:
        loaded = self.model()
        if loaded is None:
            raise RefusedError(503, self.no_model)
        return loaded

    async def classify(self, texts: Sequence[str]) -> list[Prediction]:
        """Every text's Prediction, in order, through this worker's batches."""
        try:
            checked = _TEXTS.validate_python(texts)
        except ValidationError as exc:
            raise _invalid(exc) from None
        return await self.submit(checked)

    async def submit(self, texts: list[str]) -> list[Prediction]:
        """Valid texts into the queue; BentoML's timeout (REQUEST_TIMEOUT_S) bounds the wait."""
        if not self.holder.ready:
            raise RefusedError(503, self.no_model)
        try:
            return await self.batcher.submit(texts)
        except OverloadedError:
            raise RefusedError(503, OVERLOADED) from None


def _parse(body: bytes) -> list[str]:
    """The texts of a /predict body, or a RefusedError (400) naming each problem."""
    try:
        return PredictRequest.model_validate_json(body).texts
    except ValidationError as exc:
        raise _invalid(exc) from None


def _invalid(exc: ValidationError) -> RefusedError:
    body = invalid_request(exc.errors(include_url=False, include_input=False))
    return RefusedError(400, body.error, body.details)


class HasScoring(Protocol):
    """What `PredictRoute` is handed: the worker, whose `scoring` exists before any request."""

    scoring: Scoring


class PredictRoute:
    """ASGI: answer `POST /predict` here, pass everything else on to `app` (our other
    routes, then BentoML's)."""

    def __init__(self, app: ASGIApp, worker: HasScoring, max_body_bytes: int) -> None:
        self.app = app
        self.worker = worker
        self.guarded = RequestGuard(self._predict, max_body_bytes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != PREDICT_ROUTE:
            await self.app(scope, receive, send)
        elif scope["method"] == "POST":
            await self.guarded(scope, receive, send)
        else:
            message = f"{scope['method']} is not allowed on {PREDICT_ROUTE}; use POST"
            await send_json(send, 405, error_bytes(message), [(b"allow", b"POST")])

    async def _predict(self, scope: Scope, receive: Receive, send: Send) -> None:
        message = await receive()  # RequestGuard replays the whole body in one message
        try:
            texts = _parse(message.get("body", b""))
            status, body = 200, _ANSWERS.dump_json(await self.worker.scoring.submit(texts))
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
