"""The retrain queue: one job at a time, FIFO, each in a process of its own.

Every serving worker runs a `JobRunner` thread (the service starts it; nothing
here is HTTP). Each poll it
1. looks at jobs whose heartbeat stopped (their runner died or left: a crash, a
   SIGKILL, a replica scaled down): one whose training outlives its runner (a
   Kubernetes Job) it takes over and watches, judged by the Job's own status;
   any other it fails, so a job is never stuck in "running";
2. tries to claim the oldest queued job; the database lets exactly one
   worker in the whole deployment win (`store.jobs.claim_next`);
3. if it won, launches `python -m retrain run --job-id ID` through the
   configured backend and heartbeats while it runs, killing it at the time
   limit or once its record says it was cancelled (whichever worker took the
   request); after it, applies the version retention (`runner.retention`).

The training process records its own progress, result and promotion in the
store; the runner only watches it, and fails the job if the process died
without saying why. A failed database write (a database down or locked for a
while) is logged and tried again at the next beat or poll; it never ends the
watch. Training never runs in a serving worker or a request.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Protocol

from sqlalchemy.exc import SQLAlchemyError

from core.periodic import Periodic
from core.settings import RunnerSettings
from runner.local import LocalBackend
from runner.retention import apply_retention
from store import Store, jobs
from store.db import utcnow
from store.jobs import HEARTBEAT_SECONDS, Job, JobState

log = logging.getLogger(__name__)


class RunningJob(Protocol):
    def exit_code(self) -> int | None:
        """None while running, else the exit code."""

    def kill(self) -> None: ...

    def log_tail(self) -> str: ...


class Backend(Protocol):
    # True where training runs apart from the runner and outlives it (a Kubernetes
    # Job): a runner shutting down then leaves it running instead of killing it.
    jobs_outlive_runner: bool

    def launch(self, job: Job) -> RunningJob: ...

    def adopt(self, job: Job) -> RunningJob | None:
        """A handle on the training of a running job whose runner went away, if it
        outlives runners (a Kubernetes Job); None: it died with its runner."""

    def cancel(self, job_id: str) -> None:
        """Stop a cancelled job's training from any replica, where the backend can."""


class JobRunner:
    """Claims queued jobs and watches each one to its end; one thread per worker."""

    def __init__(
        self,
        store: Store,
        backend: Backend,
        settings: RunnerSettings,
        poll_seconds: float,
        on_finished: Callable[[Job], None] | None = None,
        on_poll: Callable[[], None] | None = None,
    ) -> None:
        self.store = store
        self.backend = backend
        self.settings = settings
        self.stale_after = timedelta(seconds=settings.job_stale_seconds)
        self._loop = Periodic("job-runner", poll_seconds, self.poll_once)
        self.on_finished = on_finished
        self.on_poll = on_poll

    def start(self) -> None:
        self._loop.start()

    def stop(self) -> None:
        self._loop.stop()

    def wake(self) -> None:
        """Look for a queued job now: this worker just queued one."""
        self._loop.wake()

    def cancel(self, job_id: str) -> None:
        """After a running job was cancelled: stop its training from this worker if the
        backend can (a Kubernetes Job is deleted); the runner watching it kills it anyway."""
        self.backend.cancel(job_id)

    def poll_once(self) -> Job | None:
        """Look after stale jobs, then claim and run one queued job; returns the job it ran."""
        self._tick()
        job = self._reap_stale()
        if job is None:
            job = jobs.claim_next(self.store)
            if job is None:
                return None
            self._run(job)
        return self._get(job.id)

    def _tick(self) -> None:
        """`on_poll`, at every poll and every beat while watching; a failure is only logged."""
        if self.on_poll is None:
            return
        try:
            self.on_poll()
        except Exception as exc:
            log.warning("job runner: %s failed, trying again: %s", self.on_poll, exc)

    def _reap_stale(self) -> Job | None:
        """Stale jobs: watch one whose training outlives its runner; fail the others."""
        for job in jobs.stale(self.store, self.stale_after):
            running = self.backend.adopt(job)
            if running is None:
                if jobs.fail_stale(self.store, job.id, self.stale_after):
                    log.warning("job=%s failed: its process stopped heartbeating", job.id)
                    self._finished(job.id)
            elif jobs.take_over(self.store, job.id, self.stale_after):
                # Its launcher is gone (scaled down, rolled over) while the Job was still
                # pending or its pod not yet beating: judged by the Job's status from here.
                log.info("job=%s taken over: its runner stopped heartbeating", job.id)
                self._watch(job, running)
                return job
        return None

    def _get(self, job_id: str) -> Job | None:
        with self.store.transaction() as tx:
            return jobs.get(tx, job_id)

    def _fail(self, job_id: str, error: str) -> bool:
        with self.store.transaction() as tx:
            return jobs.finish(tx, job_id, JobState.FAILED, error=error)

    def _run(self, job: Job) -> None:
        try:
            running = self.backend.launch(job)
        except Exception as exc:
            log.exception("job=%s could not be started", job.id)
            self._fail(job.id, f"could not start training: {exc}")
            self._finished(job.id)
            return
        self._watch(job, running)

    def _watch(self, job: Job, running: RunningJob) -> None:
        """Heartbeat the job until its training ends, is cancelled or runs out of time."""
        started = job.started_at or utcnow()
        deadline = time.monotonic() + self.settings.retrain_timeout_s
        deadline -= (utcnow() - started).total_seconds()  # a job taken over ran before
        while (code := running.exit_code()) is None:
            if time.monotonic() > deadline:
                running.kill()
                self._fail(
                    job.id,
                    f"timed out after {self.settings.retrain_timeout_s} s "
                    "(RETRAIN_TIMEOUT_S); the active version is unchanged",
                )
                break
            if self._loop.wait(HEARTBEAT_SECONDS):
                if self.backend.jobs_outlive_runner:
                    # This replica is going (scale-down, rolling update); the Job trains
                    # on, heartbeats and finishes its record itself, or another replica
                    # takes it over once its beats stop (a pod still pending, or dead).
                    log.info("job=%s left running in its Job: this runner is stopping", job.id)
                else:
                    running.kill()  # the child dies with us; the job is reaped as stale
                return
            self._tick()
            if self._cancelled(job.id):
                running.kill()
                log.info("job=%s cancelled: its training was stopped", job.id)
                break
        else:
            if self._fail(
                job.id, f"training exited with code {code} without a result: {running.log_tail()}"
            ):
                log.error("job=%s training exited with code %s", job.id, code)
        self._finished(job.id)

    def _cancelled(self, job_id: str) -> bool:
        """Heartbeat the job; True once its record says it was cancelled.

        The training process beats too (store.jobs.heartbeats), but only once it
        runs: these cover its start-up and a Kubernetes pod still pending. A
        failed write (the database down, or locked for longer than its busy
        timeout) is logged and tried again at the next beat: the watch goes on.
        """
        try:
            with self.store.transaction() as tx:
                if jobs.heartbeat(tx, job_id):
                    return False
                job = jobs.get(tx, job_id)
        except SQLAlchemyError as exc:
            log.warning("job=%s heartbeat not written, trying again: %s", job_id, exc)
            return False
        return job is not None and job.state == JobState.CANCELLED

    def _finished(self, job_id: str) -> None:
        job = self._get(job_id)
        if job is None:
            return
        log.info("job=%s finished state=%s decision=%s", job.id, job.state, job.decision)
        if self.on_finished is not None:
            self.on_finished(job)
        try:
            apply_retention(self.store, self.settings)
        except Exception:  # never a reason to stop running jobs; the next job tries again
            log.exception("version retention failed; the next finished job tries again")


def make_backend(settings: RunnerSettings) -> Backend:
    """The retrain backend RETRAIN_BACKEND names."""
    if settings.retrain_backend == "kubernetes":
        from runner.k8s import KubernetesBackend

        return KubernetesBackend(settings)
    return LocalBackend(settings)
