"""The HTTP service: `bentoml serve service.service:TextClassifier`.

A prediction travels through three files:

1. `service.schemas` — the request and answer types;
2. `service.predict_route` — POST /predict, answered in front of BentoML's
   app: body checks, the batches of concurrent requests, and `score_batch`
   with the model the `ModelHolder` serves right now;
3. `core.runtime` — `tokenizers` + ONNX Runtime, length-sorted unpadded runs.

BentoML runs the workers, builds this class in each (its own ORT session with
ORT_THREADS threads, its own model poller, its own batcher and metric files),
and serves the health and metrics endpoints; every other route is ours, answered
in front of its app (`in_front_of_bentoml`). `predict` below declares /predict to BentoML (its
OpenAPI, /schema.json, its Python clients) and serves in-process callers.
"""

from __future__ import annotations

import logging
from typing import cast

import bentoml
from bentoml._internal.server.http.access import AccessLogMiddleware
from starlette.types import ASGIApp

from core import registry
from service.activity import this_worker_activity
from service.api import build_api
from service.balance import ConnectionBalancer
from service.errors import ErrorBoundary
from service.guards import ApiRoutes
from service.metrics import RequestMetrics, ServiceMetrics
from service.model_holder import ModelHolder, active_version_resolver
from service.predict_route import Batcher, PredictRoute, put_in_front, score_batch
from service.request_body import RequestGuard
from service.runner import JobRunner, make_backend
from service.schemas import PREDICT_ROUTE, Prediction, Texts
from service.settings import get_settings
from store import examples, open_store
from store.jobs import Job

log = logging.getLogger(__name__)
settings = get_settings()


@bentoml.service(
    workers=settings.workers,
    traffic={"timeout": settings.request_timeout_s},
    http={"host": settings.host, "port": settings.port},
    logging={"access": {"enabled": False}},  # ours covers every route: in_front_of_bentoml
)
class TextClassifier:
    """Classifies texts with the active version of MODEL_NAME, swapping versions live."""

    def __init__(self) -> None:
        # Our loggers speak at BentoML's level (INFO unless --quiet/--debug), not the
        # root's WARNING: model swaps, jobs and refused requests are worth a line.
        for name in ("service", "store", "core"):
            logging.getLogger(name).setLevel(logging.getLogger("bentoml").getEffectiveLevel())
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
        self.batcher = Batcher(self.score, settings.max_batch_size, settings.max_latency_ms / 1000)
        self.jobs = JobRunner(
            self.store,
            make_backend(settings, wide_activity.path if wide_activity else None),
            settings,
            on_finished=self._job_finished,
            on_poll=self._refresh_gauges,
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

    def _refresh_gauges(self) -> None:
        """At every job-runner poll and beat: disk use first, which a down database cannot stop."""
        self.metrics.observe_disk(
            {"model_store": registry.store_dir(), "state_dir": settings.state_dir.resolve()}
        )
        with self.store.transaction() as tx:
            self.metrics.examples_stored.set(examples.count(tx))

    def __is_ready__(self) -> bool:
        """/readyz: ready once a model is loaded, so no traffic reaches a worker before."""
        return self.holder.ready

    @bentoml.on_shutdown
    def stop_polling(self) -> None:
        self.holder.stop()
        self.jobs.stop()
        self.batcher.close()
        if self.activity is not None:
            self.activity.close()

    def score(self, texts: list[str]) -> list[Prediction]:
        """One batch, on the batcher's model thread (or the caller's, in-process)."""
        return score_batch(self.holder, self.metrics, texts)

    @bentoml.api(route=PREDICT_ROUTE)
    def predict(self, texts: Texts) -> list[Prediction]:
        """Classify each text; one answer per text, in input order."""
        return self.score(texts)


# `@bentoml.service` returns a Service, but mypy sees the bare class: the package
# that defines the decorator ships no type information.
_service = cast("bentoml.Service[TextClassifier]", TextClassifier)


def in_front_of_bentoml(app: ASGIApp) -> ASGIApp:
    """Our layers around BentoML's app, which then answers only its own routes.

    Outermost first: the access log (ACCESS_LOG), the workers' shares of the
    connections evened out (service.balance), every request counted, POST /predict
    answered (service.predict_route); then any exception is a prompt JSON 500, our
    routes are answered (admin after auth, the protocols), and what BentoML gets is
    size-checked. In front, none of them pays BentoML's middlewares (docs/DESIGN.md #4).
    """
    api = ApiRoutes(
        RequestGuard(app, max_body_bytes=settings.max_body_bytes),
        api_factory=lambda plane: build_api(
            open_store(settings.resolved_database_url), settings, plane
        ),
    )
    stack: ASGIApp = RequestMetrics(PredictRoute(ErrorBoundary(api)))
    stack = ConnectionBalancer(stack, workers=settings.workers)
    return AccessLogMiddleware(stack) if settings.access_log else stack


put_in_front(_service, in_front_of_bentoml)
