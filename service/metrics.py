"""Our Prometheus series, served beside BentoML's own on its /metrics endpoint.

BentoML runs `prometheus_client` in multiprocess mode: every worker process is
started with PROMETHEUS_MULTIPROC_DIR set and writes its samples to files
there, and /metrics merges the files of all workers. Metrics created with the
plain `prometheus_client` classes inside a worker therefore show up in that
merged view with no registration of our own; `ServiceMetrics` must only be
built in a worker (the service's `__init__`), never at import time in the
process that merely loads the service definition.

What a person can act on (docs/DESIGN.md #12): requests by route and status
and their latency (`RequestMetrics`), which version is live, what it
predicts and how sure it is, what batching costs, how
retraining goes (jobs by outcome, their duration, examples stored, the
evaluation macro-F1 of the version being served), and the disk: bytes in the
model store and STATE_DIR and what their filesystems have left (`observe_disk`).
"""

from __future__ import annotations

import collections
import os
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
import numpy.typing as npt
from prometheus_client import Counter, Gauge, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from core.runtime import Scored
from service.model_holder import LoadedModel
from service.schemas import PREDICT_ROUTE, Prediction
from store import Store, examples, jobs
from store.db import utcnow
from store.jobs import Job

NAMESPACE = "selftune"
CONFIDENCE_BUCKETS = (0.35, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99)
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
TOKEN_BUCKETS = tuple(float(2**i) for i in range(4, 16))
JOB_SECONDS_BUCKETS = (10, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200)
# The `route` label: these paths as they are, others by prefix, the rest "other".
FAMILIES = frozenset(
    {PREDICT_ROUTE, "/", "/livez", "/readyz", "/healthz", "/metrics", "/docs.json"}
)
PREFIX_FAMILIES = (
    "/v2", "/examples", "/retrain", "/jobs", "/models", "/monitoring", "/review-queue",
    "/label-studio",
)  # fmt: skip


def batch_size_buckets(max_batch_size: int) -> tuple[float, ...]:
    """Powers of two up to the configured batch limit, so the top bucket means "full"."""
    buckets = [1.0]
    while buckets[-1] < max_batch_size:
        buckets.append(min(buckets[-1] * 2, float(max_batch_size)))
    return tuple(buckets)


class PredictionWindow:
    """The scores of a worker's latest predictions by the version it serves, with their
    time: what drift is judged on (`service.monitoring`). Bounded by `size`: the service
    keeps 2 x MONITOR_WINDOW, the window judged and the one before it."""

    def __init__(self, size: int) -> None:
        self._rows: collections.deque[tuple[float, npt.NDArray[np.float32]]] = collections.deque(
            maxlen=size
        )
        self._version: str | None = None
        self._lock = threading.Lock()

    def add(self, version: str, probabilities: npt.NDArray[np.float32]) -> None:
        """Model thread, after a batch; a batch the previous version scored is not counted."""
        if version == self._version:
            now = time.monotonic()
            with self._lock:
                self._rows.extend((now, row) for row in probabilities)

    def restart(self, version: str) -> None:
        """Empty it for the version now served (a swap)."""
        with self._lock:
            self._rows.clear()
            self._version = version

    def recent(self, max_age: float) -> npt.NDArray[np.float64]:
        """The probabilities (predictions x labels) of the rows no older than `max_age` s."""
        cutoff = time.monotonic() - max_age
        with self._lock:
            rows = [row for at, row in self._rows if at >= cutoff]
        return np.array(rows, dtype=np.float64) if rows else np.zeros((0, 0))


class ServiceMetrics:
    """The service's own series; one instance per worker process."""

    def __init__(self, max_batch_size: int, window: int) -> None:
        # The latest window and the one before it: drift is confirmed on both (service.monitoring).
        self.window = PredictionWindow(2 * window)
        # livemax: across workers a version reads 1 while any live worker serves it,
        # and 0 once all of them have swapped away.
        self.model_version = Gauge(
            "model_version_info",
            "Model version a worker serves (1) or served before a swap (0).",
            ["model_name", "version"],
            namespace=NAMESPACE,
            multiprocess_mode="livemax",
        )
        # livemin: 0 while any live worker has no model (its /readyz says so too).
        self.model_loaded = Gauge(
            "model_loaded",
            "1 when a worker serves a model version, 0 before its first load.",
            namespace=NAMESPACE,
            multiprocess_mode="livemin",
        )
        self.model_loaded.set(0)
        self.predictions = Counter(
            "predictions",
            "Texts classified, by predicted label and the version that scored them.",
            ["label", "model_version"],
            namespace=NAMESPACE,
        )
        self.confidence = Histogram(
            "prediction_confidence",
            "Probability of the predicted label.",
            namespace=NAMESPACE,
            buckets=CONFIDENCE_BUCKETS,
        )
        self.batch_size = Histogram(
            "inference_batch_size",
            "Texts per inference batch, after batching merged concurrent requests.",
            namespace=NAMESPACE,
            buckets=batch_size_buckets(max_batch_size),
        )
        self.batch_seconds = Histogram(
            "inference_batch_seconds",
            "Tokenization plus ONNX Runtime time for one batch.",
            namespace=NAMESPACE,
            buckets=LATENCY_BUCKETS,
        )
        self.batch_tokens = Histogram(
            "inference_batch_tokens",
            "Tokens per batch (the model runs on exactly these: nothing is padded).",
            namespace=NAMESPACE,
            buckets=TOKEN_BUCKETS,
        )
        # BentoML's request series label each raw path (/examples/42, any unknown path);
        # these count every request by a bounded route family (docs/DESIGN.md #12).
        self.requests = Counter(
            "http_requests",
            "HTTP requests answered, by route family (see route_family) and status.",
            ["route", "status"],
            namespace=NAMESPACE,
        )
        self.request_seconds = Histogram(
            "http_request_seconds",
            "From a request's arrival to its answer's start: queueing and scoring included.",
            ["route"],
            namespace=NAMESPACE,
            buckets=LATENCY_BUCKETS,
        )

        self.retrain_jobs = Counter(
            "retrain_jobs",
            "Retrain jobs finished, by outcome (succeeded = promoted, rejected, failed).",
            ["outcome"],
            namespace=NAMESPACE,
        )
        self.retrain_seconds = Histogram(
            "retrain_job_seconds",
            "Wall time of finished retrain jobs, queue wait excluded.",
            ["outcome"],
            namespace=NAMESPACE,
            buckets=JOB_SECONDS_BUCKETS,
        )
        self.examples_stored = Gauge(
            "examples_stored",
            "Labeled examples in the durable store.",
            namespace=NAMESPACE,
            multiprocess_mode="max",
        )
        self.jobs_queued = Gauge(
            "retrain_jobs_queued",
            "Retrain jobs waiting in the queue.",
            namespace=NAMESPACE,
            multiprocess_mode="livemostrecent",
        )
        self.job_running_seconds = Gauge(
            "retrain_job_running_seconds",
            "How long the running retrain job has run; 0 when none runs.",
            namespace=NAMESPACE,
            multiprocess_mode="livemostrecent",
        )
        self.active_macro_f1 = Gauge(
            "active_model_eval_macro_f1",
            "Evaluation macro-F1 of the version a worker serves, from its held-out evaluation.",
            ["model_name", "version"],
            namespace=NAMESPACE,
            multiprocess_mode="livemax",
        )

        # Set by every worker from its job runner's poll (runner.queue); the most recent
        # value of a live worker is the one /metrics shows.
        self.directory_bytes = Gauge(
            "directory_bytes",
            "Bytes of the files under a directory: dir=model_store (every version), "
            "dir=state_dir (database, job logs).",
            ["dir"],
            namespace=NAMESPACE,
            multiprocess_mode="livemostrecent",
        )
        self.filesystem_free = Gauge(
            "filesystem_free_bytes",
            "Bytes an unprivileged process may still write on the filesystem holding `dir`.",
            ["dir"],
            namespace=NAMESPACE,
            multiprocess_mode="livemostrecent",
        )
        self.filesystem_size = Gauge(
            "filesystem_size_bytes",
            "Size of the filesystem holding `dir`.",
            ["dir"],
            namespace=NAMESPACE,
            multiprocess_mode="livemostrecent",
        )

    def observe_disk(self, dirs: Mapping[str, Path]) -> None:
        """Measure each directory (a walk: a few ms for tens of versions) and its filesystem."""
        for name, path in dirs.items():
            try:
                stat = os.statvfs(path)
            except OSError:  # not made yet (no version, no database): nothing to report
                continue
            self.directory_bytes.labels(name).set(directory_bytes(path))
            self.filesystem_free.labels(name).set(stat.f_bavail * stat.f_frsize)
            self.filesystem_size.labels(name).set(stat.f_blocks * stat.f_frsize)

    def observe_store(self, store: Store) -> None:
        """Examples stored and the job queue, from the database (job-runner poll)."""
        with store.transaction() as tx:
            self.examples_stored.set(examples.count(tx))
            self.jobs_queued.set(jobs.queued_count(tx))
            running = jobs.running(tx)
        started = running.started_at if running else None
        self.job_running_seconds.set((utcnow() - started).total_seconds() if started else 0)

    def swapped(self, new: LoadedModel, old: LoadedModel | None) -> None:
        """Move the version gauges; ModelHolder calls this after every swap."""
        self.model_loaded.set(1)
        if old is not None:
            self.model_version.labels(old.version.name, old.version.version).set(0)
            self.active_macro_f1.labels(old.version.name, old.version.version).set(0)
        self.model_version.labels(new.version.name, new.version.version).set(1)
        evaluation = new.version.metrics().get("evaluation", {})
        self.active_macro_f1.labels(new.version.name, new.version.version).set(
            float(evaluation.get("macro_f1", 0.0))
        )

    def job_finished(self, job: Job) -> None:
        self.retrain_jobs.labels(job.state).inc()
        if job.started_at and job.finished_at:
            seconds = (job.finished_at - job.started_at).total_seconds()
            self.retrain_seconds.labels(job.state).observe(seconds)

    def observe_request(self, route: str, status: int, seconds: float) -> None:
        self.requests.labels(route, str(status)).inc()
        self.request_seconds.labels(route).observe(seconds)

    def observe_batch(self, answers: Sequence[Prediction], scored: Scored, seconds: float) -> None:
        """Record one scored batch: its answers, and its scores for the drift window."""
        version = answers[0].model_version
        self.window.add(version, scored.probabilities)
        self.batch_size.observe(len(answers))
        self.batch_seconds.observe(seconds)
        self.batch_tokens.observe(scored.tokens)
        for label, count in collections.Counter(a.label for a in answers).items():
            self.predictions.labels(label, version).inc(count)
        for answer in answers:
            self.confidence.observe(answer.score)


def directory_bytes(root: Path) -> int:
    """Bytes of the regular files under `root` (links not followed; files that vanish
    during the walk, such as a version being deleted, are skipped)."""
    total = 0
    folders = [root]
    while folders:
        try:
            entries = list(os.scandir(folders.pop()))
        except OSError:
            continue
        for entry in entries:
            try:
                if entry.is_dir(follow_symlinks=False):
                    folders.append(Path(entry.path))
                elif entry.is_file(follow_symlinks=False):
                    total += entry.stat(follow_symlinks=False).st_size
            except OSError:
                continue
    return total


def route_family(path: str) -> str:
    """A request's path as a label of bounded cardinality: the route, or its prefix."""
    if path in FAMILIES:
        return path
    for prefix in PREFIX_FAMILIES:
        if path.startswith(prefix):
            return prefix
    return "other"


class HasMetrics(Protocol):
    """What `RequestMetrics` is handed: the worker, whose `metrics` exist before any request."""

    metrics: ServiceMetrics


class RequestMetrics:
    """ASGI: count every HTTP request by route family and status, and time it."""

    def __init__(self, app: ASGIApp, worker: HasMetrics) -> None:
        self.app = app
        self.worker = worker

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500  # unless an answer starts: the app raised, or the client went away
        answered = 0.0

        async def counted(message: Message) -> None:
            nonlocal status, answered
            if message["type"] == "http.response.start":
                status, answered = message["status"], time.perf_counter()
            await send(message)

        try:
            await self.app(scope, receive, counted)
        finally:
            seconds = (answered or time.perf_counter()) - start
            self.worker.metrics.observe_request(route_family(scope["path"]), status, seconds)
