"""The retrain queue: one job at a time, FIFO, each in a process of its own.

Every serving worker runs a `JobRunner` thread. Each poll it
1. looks at jobs whose heartbeat stopped (their runner died or left: a crash, a
   SIGKILL, a replica scaled down): one whose training outlives its runner (a
   Kubernetes Job) it takes over and watches, judged by the Job's own status;
   any other it fails, so a job is never stuck in "running";
2. tries to claim the oldest queued job; the database lets exactly one
   worker in the whole deployment win (`store.jobs.claim_next`);
3. if it won, launches `python -m retrain run --job-id ID` through the
   configured backend and heartbeats while it runs, killing it at the time
   limit or once its record says it was cancelled (whichever worker took the
   request); after it, applies the version retention (`service.retention`).

The training process records its own progress, result and promotion in the
store; the runner only watches it, and fails the job if the process died
without saying why. A failed database write (a database down or locked for a
while) is logged and tried again at the next beat or poll; it never ends the
watch. Training never runs in a serving worker or a request.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import IO, Protocol

import bentoml
from bentoml.exceptions import BentoMLException
from sqlalchemy.exc import SQLAlchemyError

from core.periodic import Periodic
from service.retention import apply_retention
from service.settings import Settings
from store import Store, jobs
from store.db import utcnow
from store.jobs import HEARTBEAT_SECONDS, Job, JobState

log = logging.getLogger(__name__)

LOG_TAIL_BYTES = 2000
# A standby starts this long after the runner does: the workers load their models first.
STANDBY_AFTER_S = 15.0
STANDBY_RETRY_S = 60.0  # after a standby died unasked: not a crash loop of imports
STANDBY_LOG = "standby.log"  # what a standby prints before it is handed a job
_PR_SET_PDEATHSIG = 1


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

    def idle(self) -> None:
        """Called at each poll that found no job to run: a chance to prepare for the next."""

    def close(self) -> None:
        """The runner is stopping."""


def _autogroup_nice(nice: int) -> None:
    """In the child, which `start_new_session` made a session of its own: nice that session.

    Under the kernel's autogroup scheduling (`/proc/sys/kernel/sched_autogroup_enabled`,
    on by default in most distributions) CPU is shared between sessions before nice
    counts, and BentoML starts each worker in a session of its own. Left in the
    worker's session, the retrain competed only with the worker that launched it: at
    nice 10 it ran ~13x slower under 64 clients; at nice 0 it halved that one worker
    and predict p99 tripled (bench/RETRAIN.md, 2026-12-01). In a session of its own it
    takes an even share from every worker. Without autogroup the file is absent and
    `os.nice` alone ranks it against every process: the same policy.
    """
    with contextlib.suppress(OSError), Path("/proc/self/autogroup").open("w") as group:
        group.write(str(nice))


def _die_with_parent() -> None:
    """In the child: be killed when the worker that launched us dies (no orphan training)."""
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


class LocalProcess:
    def __init__(self, process: subprocess.Popen[bytes], log_path: Path) -> None:
        self.process = process
        self.log_path = log_path

    def exit_code(self) -> int | None:
        return self.process.poll()

    def kill(self) -> None:
        _kill(self.process)

    def log_tail(self) -> str:
        try:
            with self.log_path.open("rb") as f:
                f.seek(max(0, self.log_path.stat().st_size - LOG_TAIL_BYTES))
                return f.read().decode("utf-8", errors="replace")
        except OSError:
            return ""


class LocalBackend:
    """Training as a thread-capped child process of the serving worker, in a session of
    its own (`_autogroup_nice`) at RETRAIN_NICE.

    One thread at nice 0 is one more task with an even share of the CPU: on 2 cores
    under 64 predict clients an incremental retrain took 1.6-1.8x its quiet time while
    predict p99 rose 2-2.9x (bench/RETRAIN.md, 2026-12-01; targets 3x and 2x). So the
    job steers its session's nice level itself to RETRAIN_SLOWDOWN
    (retrain/cpu_share.py). The child dies with its parent, so a killed server leaves
    no orphan training behind.

    Between jobs it keeps a standby (`python -m retrain standby`, RETRAIN_STANDBY):
    the same process, started and imported ahead, which the next job is handed to.
    Given the workers' activity file, a job evaluates on every core while they are quiet.
    """

    jobs_outlive_runner = False

    def __init__(
        self,
        settings: Settings,
        activity: Path | None = None,
        standby_after_s: float = STANDBY_AFTER_S,
    ) -> None:
        self.settings = settings
        self.activity = activity
        self._logs = settings.state_dir.resolve() / "jobs"
        self._standby: subprocess.Popen[bytes] | None = None
        self._standby_from = time.monotonic() + standby_after_s
        self._last_job = time.monotonic()  # start-up opens the first idle window too
        self._in_job = False

    def _start(
        self, args: list[str], out: IO[bytes], stdin: int | None = None
    ) -> subprocess.Popen[bytes]:
        threads = str(self.settings.retrain_threads)
        serving = {"SERVING_ACTIVITY": str(self.activity)} if self.activity else {}
        env = (
            os.environ
            | self.settings.retrain_env()
            | serving
            | {
                "OMP_NUM_THREADS": threads,
                "MKL_NUM_THREADS": threads,
                "TOKENIZERS_PARALLELISM": "false",
            }
        )
        nice = self.settings.retrain_nice

        def prepare() -> None:
            _autogroup_nice(nice)
            os.nice(nice)
            _die_with_parent()

        return subprocess.Popen(
            [sys.executable, "-m", "retrain", *args],
            stdin=stdin,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=Path(__file__).resolve().parent.parent,
            start_new_session=True,  # its own autogroup (_autogroup_nice)
            # only one write to /proc, nice and prctl: safe between fork and exec
            preexec_fn=prepare,
        )

    def idle(self) -> None:
        """No job is running here: have a standby ready for the next one (once past start-up,
        so its imports do not compete with the workers loading their models), until
        RETRAIN_STANDBY_IDLE_S pass without a job: a server that stopped retraining gets
        the memory back, and its next job starts cold and brings the standby back."""
        now = time.monotonic()
        if self._in_job:  # the first poll after a job: when it ended
            self._in_job, self._last_job = False, now
        if self._standby is not None and (code := self._standby.poll()) is not None:
            log.warning("retrain standby exited with code %s; the next in %g s (log: %s)",
                        code, STANDBY_RETRY_S, self._logs / STANDBY_LOG)  # fmt: skip
            self._standby = None
            self._standby_from = now + STANDBY_RETRY_S
        if now - self._last_job > self.settings.retrain_standby_idle_s:
            if self._standby is not None:
                log.info("closing the retrain standby: no job for %g s", now - self._last_job)
                self.close()
            return
        if not self.settings.retrain_standby or self._standby is not None:
            return
        if now >= self._standby_from:
            self._logs.mkdir(parents=True, exist_ok=True)
            with (self._logs / STANDBY_LOG).open("ab") as out:
                self._standby = self._start(["standby"], out, stdin=subprocess.PIPE)

    def launch(self, job: Job) -> RunningJob:
        self._logs.mkdir(parents=True, exist_ok=True)
        log_path = self._logs / f"{job.id}.log"
        args = ["run", "--job-id", job.id, "--log", str(log_path)]
        self._in_job = True
        standby, self._standby = self._standby, None
        if standby is not None:
            if _hand_over(standby, args):
                log.info("job=%s handed to standby pid=%d log=%s", job.id, standby.pid, log_path)
                return LocalProcess(standby, log_path)
            _kill(standby)  # it died meanwhile: start cold
        with log_path.open("ab") as out:
            process = self._start(args, out)
        log.info("job=%s started pid=%d log=%s", job.id, process.pid, log_path)
        return LocalProcess(process, log_path)

    def adopt(self, job: Job) -> None:
        """A local training process dies with the worker that started it (`_die_with_parent`)."""

    def cancel(self, job_id: str) -> None:
        """Only the runner that started the process can kill it: it does at its next beat."""

    def close(self) -> None:
        """Stop the standby, if any: the end of its input tells it to exit."""
        standby, self._standby = self._standby, None
        if standby is None:
            return
        with contextlib.suppress(OSError):
            if standby.stdin is not None:
                standby.stdin.close()
        try:
            standby.wait(timeout=10)
        except subprocess.TimeoutExpired:
            _kill(standby)


def _hand_over(standby: subprocess.Popen[bytes], args: list[str]) -> bool:
    """Give a waiting standby its job (`run`'s arguments, one line); False if it is gone."""
    if standby.poll() is not None or standby.stdin is None:
        return False
    try:
        standby.stdin.write(shlex.join(args).encode() + b"\n")
        standby.stdin.close()
    except OSError:
        return False
    return True


def _kill(process: subprocess.Popen[bytes]) -> None:
    process.kill()
    process.wait(timeout=30)


class JobRunner:
    """Claims queued jobs and watches each one to its end; one thread per worker."""

    def __init__(
        self,
        store: Store,
        backend: Backend,
        settings: Settings,
        on_finished: Callable[[Job], None] | None = None,
        on_poll: Callable[[], None] | None = None,
    ) -> None:
        self.store = store
        self.backend = backend
        self.settings = settings
        self.stale_after = timedelta(seconds=settings.job_stale_seconds)
        self._loop = Periodic("job-runner", settings.model_poll_seconds, self.poll_once)
        self.on_finished = on_finished
        self.on_poll = on_poll

    def start(self) -> None:
        self._loop.start()

    def stop(self) -> None:
        self._loop.stop()
        self.backend.close()

    def wake(self) -> None:
        """Look for a queued job now: this worker just queued one."""
        self._loop.wake()

    def poll_once(self) -> Job | None:
        """Look after stale jobs, then claim and run one queued job; returns the job it ran."""
        self._tick()
        job = self._reap_stale()
        if job is None:
            job = jobs.claim_next(self.store)
            if job is None:
                self.backend.idle()
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


def make_backend(settings: Settings, activity: Path | None = None) -> Backend:
    """The retrain backend RETRAIN_BACKEND names; `activity`: this worker's activity file."""
    if settings.retrain_backend == "kubernetes":
        from service.k8s_backend import KubernetesBackend

        return KubernetesBackend(settings)
    return LocalBackend(settings, activity)


def _this_worker_runner() -> JobRunner | None:
    try:
        service = bentoml.get_current_service()
    except BentoMLException:  # no server in this process (a test's in-process app)
        return None
    runner = getattr(service, "jobs", None)
    return runner if isinstance(runner, JobRunner) else None


def wake_job_runner() -> None:
    """Have this worker's runner claim a job it just queued now, not at its next poll."""
    if (runner := _this_worker_runner()) is not None:
        runner.wake()


def stop_cancelled(job_id: str) -> None:
    """After a running job was cancelled: stop its training from this worker if the
    backend can (a Kubernetes Job is deleted); the runner watching it kills it anyway."""
    if (runner := _this_worker_runner()) is not None:
        runner.backend.cancel(job_id)
