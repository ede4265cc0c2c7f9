"""The job runner in-process: a training process past RETRAIN_TIMEOUT_S is killed and failed,
a cancelled one is killed by its runner, a database outage does not stop the queue, a woken
runner claims a queued job at once, and a local job runs in a session of its own and exits
when the worker that launched it dies."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

from core.settings import RunnerSettings
from runner.local import LocalBackend, LocalProcess
from runner.queue import JobRunner, RunningJob
from store import Store, jobs
from store.jobs import HEARTBEAT_SECONDS, Job, JobState
from tests.helpers import ROOT, database_down


class SleepingTraining:
    """A backend whose training is a real process that never ends by itself."""

    jobs_outlive_runner = False

    def __init__(self, log: Path, seconds: float = 600) -> None:
        self.log = log
        self.seconds = seconds
        self.launched: list[subprocess.Popen[bytes]] = []

    def launch(self, job: Job) -> RunningJob:
        process = subprocess.Popen(["sleep", str(self.seconds)])
        self.launched.append(process)
        return LocalProcess(process, self.log)

    def adopt(self, job: Job) -> None:
        pass

    def cancel(self, job_id: str) -> None:
        pass


def wait_for(condition: Callable[[], object], what: str, timeout_s: float = 15) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def job_state(store: Store, job_id: str) -> Job:
    with store.transaction() as tx:
        job = jobs.get(tx, job_id)
    assert job is not None
    return job


def test_a_job_past_its_time_limit_is_killed_and_failed(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'jobs.db'}")
    with store.transaction() as tx:
        job = jobs.create(tx, "m", {})
    backend = SleepingTraining(tmp_path / "job.log")
    runner = JobRunner(store, backend, RunnerSettings(retrain_timeout_s=10, state_dir=tmp_path), 2)

    started = time.monotonic()
    finished = runner.poll_once()

    assert finished is not None and finished.id == job.id
    assert finished.state == JobState.FAILED and "timed out after 10 s" in (finished.error or "")
    assert 10 <= time.monotonic() - started < 20
    assert backend.launched[0].poll() is not None  # the process is gone


def test_a_queued_job_starts_when_the_runner_is_woken_not_at_its_next_poll(
    tmp_path: Path,
) -> None:
    store = Store(f"sqlite:///{tmp_path / 'jobs.db'}")
    backend = SleepingTraining(tmp_path / "job.log")
    runner = JobRunner(store, backend, RunnerSettings(state_dir=tmp_path), 60)
    runner.start()
    try:
        with store.transaction() as tx:
            jobs.create(tx, "m", {})
        runner.wake()  # what POST /retrain does in the worker that queued the job
        deadline = time.monotonic() + 10
        while not backend.launched and time.monotonic() < deadline:
            time.sleep(0.05)
        assert backend.launched, "the woken runner did not claim the job"
    finally:
        runner.stop()
    assert backend.launched[0].wait(timeout=10) is not None  # stopping killed the child


def test_a_job_cancelled_through_another_worker_is_killed_by_its_runner_and_the_queue_goes_on(
    tmp_path: Path,
) -> None:
    store = Store(f"sqlite:///{tmp_path / 'jobs.db'}")
    with store.transaction() as tx:
        first, second = jobs.create(tx, "m", {}), jobs.create(tx, "m", {})
    backend = SleepingTraining(tmp_path / "job.log")
    runner = JobRunner(store, backend, RunnerSettings(state_dir=tmp_path), 0.2)
    runner.start()
    try:
        wait_for(lambda: backend.launched, "the first job did not start")
        with store.transaction() as tx:  # what POST /jobs/{id}/cancel does, in any worker
            jobs.cancel(tx, first.id, by="ops", reason="wrong data")

        assert backend.launched[0].wait(timeout=HEARTBEAT_SECONDS + 5) is not None
        wait_for(lambda: len(backend.launched) == 2, "the next job did not start")
    finally:
        runner.stop()
    cancelled = job_state(store, first.id)
    assert cancelled.state == JobState.CANCELLED and cancelled.error is None
    assert cancelled.decision == "cancelled by ops: wrong data"
    assert job_state(store, second.id).state == JobState.RUNNING


def test_a_database_outage_during_a_job_does_not_stop_the_runner_or_the_queue(
    database_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = Store(database_url)
    with store.transaction() as tx:
        first, second = jobs.create(tx, "m", {}), jobs.create(tx, "m", {})
    backend = SleepingTraining(tmp_path / "job.log", seconds=4 * HEARTBEAT_SECONDS)
    runner = JobRunner(store, backend, RunnerSettings(state_dir=tmp_path), 0.2)
    runner.start()
    try:
        wait_for(lambda: backend.launched, "the first job did not start")
        with caplog.at_level(logging.WARNING, logger="runner.queue"):
            with database_down(database_url):
                time.sleep(2.5 * HEARTBEAT_SECONDS)  # the beats meanwhile fail
            # Back: the runner saw its training end and moved on to the next job.
            wait_for(lambda: len(backend.launched) == 2, "the queue stopped after the outage")
    finally:
        runner.stop()
    assert f"job={first.id} heartbeat not written, trying again" in caplog.text
    ended = job_state(store, first.id)  # `sleep` records no result: failed, and says so
    assert ended.state == JobState.FAILED and "exited with code 0" in (ended.error or "")
    assert job_state(store, second.id).state == JobState.RUNNING


def _claimed_job(store: Store) -> Job:
    with store.transaction() as tx:
        job = jobs.create(tx, "m", {})
    claimed = jobs.claim_next(store)
    assert claimed is not None and claimed.id == job.id
    return claimed


def test_a_local_job_runs_the_real_retrain_in_a_session_of_its_own(tmp_path: Path) -> None:
    settings = RunnerSettings(state_dir=tmp_path)
    store = Store(settings.resolved_database_url)
    job = _claimed_job(store)

    running = LocalBackend(settings).launch(job)

    assert isinstance(running, LocalProcess)
    pid = running.process.pid
    # Its own session, so autogroup scheduling gives it a share of its own (DESIGN #2).
    assert os.getsid(pid) == pid != os.getsid(0)
    assert running.process.wait(timeout=120) == 0
    ended = job_state(store, job.id)
    # An empty store: the real job ran and said so in its record and its own log.
    assert ended.state == JobState.REJECTED and "nothing to train on" in (ended.decision or "")
    assert "rejected" in (tmp_path / "jobs" / f"{job.id}.log").read_text()


LAUNCHER = """
import sys, time
from core.settings import RunnerSettings
from runner.local import LocalBackend
from store import Store, jobs
settings = RunnerSettings(state_dir=sys.argv[1])
with Store(settings.resolved_database_url).transaction() as tx:
    job = jobs.get(tx, sys.argv[2])
print(LocalBackend(settings).launch(job).process.pid, flush=True)
time.sleep(600)
"""


def test_a_local_job_exits_when_the_worker_that_launched_it_dies(tmp_path: Path) -> None:
    """No orphan trains on unwatched (no time limit, no cancel) holding the running slot."""
    settings = RunnerSettings(state_dir=tmp_path)
    store = Store(settings.resolved_database_url)
    job = _claimed_job(store)
    launcher = subprocess.Popen(
        [sys.executable, "-c", LAUNCHER, str(tmp_path), job.id],
        cwd=ROOT,
        stdout=subprocess.PIPE,
    )
    assert launcher.stdout is not None
    child = psutil.Process(int(launcher.stdout.readline()))
    launcher.kill()  # the worker dies hard: no runner is left to stop its job
    launcher.wait(timeout=10)

    child.wait(timeout=30)  # before its imports are done and the job would have ended
    log = (tmp_path / "jobs" / f"{job.id}.log").read_text()
    assert f"(pid {launcher.pid}) is gone: exiting" in log, log[-2000:]
    # It stopped heartbeating unfinished: stale in JOB_STALE_SECONDS, then any runner fails it.
    assert job_state(store, job.id).state == JobState.RUNNING
