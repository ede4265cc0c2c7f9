"""The HTTP service: `bentoml serve service.service:TextClassifier`.

A prediction travels through three files:

1. `service.schemas` — the request and answer types BentoML validates against
   (the middlewares of `service.guards` have already checked type and size);
2. here — BentoML's adaptive batching merges the `texts` of concurrent
   requests into one list, `predict` scores it with the model the
   `ModelHolder` serves right now, and BentoML splits the answers back;
3. `core.runtime` — `tokenizers` + ONNX Runtime, one text per run.

Every worker process builds its own `TextClassifier`: its own ORT session with
THREADS_PER_WORKER threads, its own model poller, its own metric files.
"""

from __future__ import annotations

import logging
import time
from typing import Annotated, cast

import bentoml
from bentoml.validators import ContentType

from service.activity import this_worker_activity
from service.api import build_api
from service.balance import ConnectionBalancer
from service.batching import dispatch_without_learned_wait
from service.client_errors import log_client_errors_in_one_line
from service.errors import ErrorBoundary
from service.guards import ApiRoutes, ModelGate, RequestGuard
from service.metrics import ServiceMetrics
from service.model_holder import ModelHolder, active_version_resolver
from service.runner import JobRunner, make_backend
from service.schemas import PREDICT_ROUTE, Prediction, Texts, predictions
from service.settings import get_settings
from store import examples, open_store
from store.jobs import Job

log = logging.getLogger(__name__)

# The media type stated, because BentoML otherwise works it out per response from the
# answer's JSON schema: 0.55 ms of every request for list[Prediction] (bench/SERVING.md).
Answers = Annotated[list[Prediction], ContentType("application/json")]

settings = get_settings()
# Before BentoML builds the app and its batching dispatchers (see service.batching).
dispatch_without_learned_wait()
log_client_errors_in_one_line()


@bentoml.service(
    workers=settings.workers,
    traffic={"timeout": settings.request_timeout_s},
    http={"host": settings.host, "port": settings.port},
    logging={"access": {"enabled": settings.access_log}},
)
class TextClassifier:
    """Classifies texts with the active version of MODEL_NAME, swapping versions live."""

    def __init__(self) -> None:
        self.metrics = ServiceMetrics(settings.max_batch_size)
        self.store = open_store(settings.resolved_database_url)
        self.activity = this_worker_activity()
        wide_activity = self.activity if settings.wide_threads else None
        self.holder = ModelHolder(
            resolver=active_version_resolver(self.store, settings.model_name),
            threads=settings.threads_per_worker,
            poll_seconds=settings.model_poll_seconds,
            spin=settings.ort_spin,
            wide_threads=settings.wide_threads,
            activity=wide_activity,
        )
        self.holder.on_swap(self.metrics.swapped)
        self.holder.start()
        self.jobs = JobRunner(
            self.store,
            make_backend(settings, wide_activity.path if wide_activity else None),
            settings,
            on_finished=self._job_finished,
            on_poll=self._count_examples,
        )
        self.jobs.start()
        log.info(
            "model=%s threads=%d batch=%d/%dms",
            settings.model_name,
            settings.threads_per_worker,
            settings.max_batch_size,
            settings.max_latency_ms,
        )

    def _job_finished(self, job: Job) -> None:
        self.metrics.job_finished(job)
        self.holder.wake()  # serve a promoted candidate now, not at the next poll

    def _count_examples(self) -> None:
        with self.store.transaction() as tx:
            self.metrics.examples_stored.set(examples.count(tx))

    def __is_ready__(self) -> bool:
        """/readyz: ready once a model is loaded, so no traffic reaches a worker before."""
        return self.holder.ready

    @bentoml.on_shutdown
    def stop_polling(self) -> None:
        self.holder.stop()
        self.jobs.stop()
        if self.activity is not None:
            self.activity.close()

    @bentoml.api(
        route=PREDICT_ROUTE,
        batchable=True,
        max_batch_size=settings.max_batch_size,
        max_latency_ms=settings.max_latency_ms,
    )
    def predict(self, texts: Texts) -> Answers:
        """Classify each text; one answer per text, in input order."""
        # Read the reference once: a swap during this batch must not split it
        # across two models, and `model_version` must name the one that scored it.
        loaded = self.holder.current()
        start = time.perf_counter()
        scored, wide = self.holder.score(loaded, texts)
        seconds = time.perf_counter() - start
        version = loaded.version.version
        answers = predictions(scored, loaded.version.labels, version)
        self.metrics.observe_batch(
            version,
            [a.label for a in answers],
            [a.score for a in answers],
            seconds,
            scored.tokens,
            wide,
        )
        return answers


# `@bentoml.service` returns a Service, but mypy sees the bare class: the package
# that defines the decorator ships no type information.
_service = cast("bentoml.Service[TextClassifier]", TextClassifier)
# Outermost first: any exception is a prompt JSON 500; the workers' shares of the
# connections are evened out (service.balance); our routes (admin after auth, the
# protocols) are answered before the predict guards see them; size and content type
# are checked before the model gate.
_service.add_asgi_middleware(ErrorBoundary)
_service.add_asgi_middleware(ConnectionBalancer, workers=settings.workers)
_service.add_asgi_middleware(
    ApiRoutes,
    api_factory=lambda plane: build_api(
        open_store(settings.resolved_database_url), settings, plane
    ),
)
_service.add_asgi_middleware(RequestGuard, max_body_bytes=settings.max_body_bytes)
_service.add_asgi_middleware(ModelGate)
