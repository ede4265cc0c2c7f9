"""The HTTP service: `bentoml serve service.service:TextClassifier`.

BentoML runs the workers and builds, in each, its app (health, readiness,
/metrics, its index page) and this service class. Our routes are ASGI layers
added through BentoML's public `Service.add_asgi_middleware`, so a request
first passes BentoML's own layers (its request metrics, tracing, access log
and REQUEST_TIMEOUT_S), then ours, outermost first:

1. `service.balance.ConnectionBalancer`: the workers' shares of the connections evened out;
2. `service.metrics.RequestMetrics`: every request counted and timed by route family;
3. `service.predict_route.PredictRoute`: POST /predict answered, batched;
4. `service.errors.ErrorBoundary`: anything unexpected below is a prompt JSON 500;
5. `service.guards.ApiRoutes`: the admin API and the protocols (FastAPI), /docs.json;

and what none of them answers goes on to BentoML's router (docs/DESIGN.md #4).

BentoML builds a worker's app, and so our layers, before it builds the service
class, and no request arrives before the class is built. So the layers are
handed this worker's `Worker` when they are registered, and the class starts it.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import cast

import bentoml
from fastapi import FastAPI

from core import registry
from runner.queue import JobRunner, make_backend
from service.admin_schemas import RetrainRequest
from service.api import build_api
from service.balance import ConnectionBalancer
from service.errors import ErrorBoundary
from service.guards import ApiRoutes
from service.metrics import RequestMetrics, ServiceMetrics
from service.model_holder import ModelHolder, active_version_resolver
from service.monitoring import Monitor
from service.predict_route import PredictRoute, Scoring
from service.review import ReviewSampler
from service.settings import Settings, get_settings
from store import Store, open_store, triggers
from store.jobs import Job
from store.triggers import Policy

log = logging.getLogger(__name__)
settings = get_settings()


class Worker:
    """What one BentoML worker runs: its store, metrics, served model, scoring path and
    job runner, built by `start` in the worker (the service class's `__init__`)."""

    store: Store
    metrics: ServiceMetrics
    holder: ModelHolder
    monitor: Monitor
    review: ReviewSampler
    scoring: Scoring
    runner: JobRunner

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def start(self) -> None:
        # Our loggers speak at BentoML's level (INFO unless --quiet/--debug), not the
        # root's WARNING: model swaps, jobs and refused requests are worth a line.
        for name in ("service", "store", "core", "runner"):
            logging.getLogger(name).setLevel(logging.getLogger("bentoml").getEffectiveLevel())
        s = self.settings
        self.store = open_store(s.resolved_database_url)
        self.metrics = ServiceMetrics(s.max_batch_size, s.monitor_window)
        self.holder = ModelHolder(
            resolver=active_version_resolver(self.store, s.model_name),
            threads=s.threads_per_worker,
            poll_seconds=s.model_poll_seconds,
            spin=s.ort_spin,
        )
        self.monitor = Monitor(s, self.metrics.window)
        self.review = ReviewSampler(s)
        self.review.start(self.store)
        self.holder.on_swap(self.metrics.swapped)
        self.holder.on_swap(self.monitor.swapped)
        self.holder.start()
        self.scoring = Scoring(self.holder, self.metrics, self.review, s)
        self.policy = Policy(
            after_labels=s.retrain_after_labels,
            min_interval=timedelta(minutes=s.retrain_min_interval_minutes),
            on_drift=s.retrain_on_drift,
        )
        self.runner = JobRunner(
            self.store,
            make_backend(s),
            s,
            s.model_poll_seconds,
            on_finished=self._job_finished,
            on_poll=self._refresh_gauges,
        )
        self.runner.start()
        log.info("model=%s threads=%d batch=%d/%dms", s.model_name, s.threads_per_worker,
                 s.max_batch_size, s.max_latency_ms)  # fmt: skip

    def stop(self) -> None:
        self.holder.stop()
        self.runner.stop()
        self.scoring.batcher.close()

    def api(self) -> FastAPI:
        """Our FastAPI app (admin, protocols), which `ApiRoutes` builds at its first request."""
        return build_api(self.store, self.settings, self.scoring, self.runner, self.monitor)

    def _job_finished(self, job: Job) -> None:
        self.metrics.job_finished(job)
        self.holder.wake()  # serve a promoted candidate now, not at the next poll

    def _refresh_gauges(self) -> None:
        """At every job-runner poll and beat: disk use and drift first, which a down database
        cannot stop; then the store's counts, and an automatic retrain if one is due."""
        self.metrics.observe_disk(
            {"model_store": registry.store_dir(), "state_dir": self.settings.state_dir.resolve()}
        )
        drifting = self.monitor.publish().drift_confirmed
        self.metrics.observe_store(self.store)
        self.review.flush(self.store)
        if triggers.maybe_queue(self.store, self.settings.model_name, self.policy, drifting,
                                RetrainRequest().job_params()):  # fmt: skip
            self.runner.wake()


worker = Worker(settings)


@bentoml.service(
    workers=settings.workers,
    traffic={"timeout": settings.request_timeout_s},
    http={"host": settings.host, "port": settings.port},
    logging={"access": {"enabled": settings.access_log}},
)
class TextClassifier:
    """Classifies texts with the active version of MODEL_NAME, swapping versions live."""

    def __init__(self) -> None:
        worker.start()

    def __is_ready__(self) -> bool:
        """/readyz: ready once a model is loaded, so no traffic reaches a worker before."""
        return worker.holder.ready

    @bentoml.on_shutdown
    def stop(self) -> None:
        worker.stop()


# `@bentoml.service` returns a Service, but mypy sees the bare class: the package
# that defines the decorator ships no type information.
_service = cast("bentoml.Service[TextClassifier]", TextClassifier)
_service.add_asgi_middleware(ConnectionBalancer, workers=settings.workers)
_service.add_asgi_middleware(RequestMetrics, worker=worker)
_service.add_asgi_middleware(PredictRoute, worker=worker, max_body_bytes=settings.max_body_bytes)
_service.add_asgi_middleware(ErrorBoundary)
_service.add_asgi_middleware(ApiRoutes, api_factory=worker.api, settings=settings)
