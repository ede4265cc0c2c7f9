"""The job runner in-process: a training process past RETRAIN_TIMEOUT_S is killed and failed,
a cancelled one is killed by its runner, a database outage does not stop the queue, a woken
runner claims a queued job at once, and a job goes to the standby started ahead."""

from __future__ import annotations

import logging
import re
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

from service.local_backend import STANDBY_LOG, LocalBackend, LocalProcess
from service.runner import JobRunner, RunningJob
from service.settings import Settings
from store import Store, jobs
from store.jobs import HEARTBEAT_SECONDS, Job, JobState
from tests.helpers import database_down


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

    def idle(self) -> None:
        pass

    def close(self) -> None:
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
    runner = JobRunner(store, backend, Settings(retrain_timeout_s=10, state_dir=tmp_path))

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
    runner = JobRunner(store, backend, Settings(model_poll_seconds=60, state_dir=tmp_path))
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
    runner = JobRunner(store, backend, Settings(model_poll_seconds=0.2, state_dir=tmp_path))
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
    runner = JobRunner(store, backend, Settings(model_poll_seconds=0.2, state_dir=tmp_path))
    runner.start()
    try:
        wait_for(lambda: backend.launched, "the first job did not start")
        with caplog.at_level(logging.WARNING, logger="service.runner"):
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


def _standbys() -> list[psutil.Process]:
    return [p for p in psutil.Process().children() if "standby" in p.cmdline()]


def _ready_standby(logs: Path, ready: int, timeout_s: float = 60) -> int:
    """The pid of this test's one standby once the log shows `ready` standbys imported."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if (logs / STANDBY_LOG).exists() and (logs / STANDBY_LOG).read_text().count(
            "ready"
        ) >= ready:
            (child,) = _standbys()
            return int(child.pid)
        time.sleep(0.1)
    raise TimeoutError(f"no standby became ready within {timeout_s} s")


def test_a_job_runs_in_the_standby_started_ahead_and_a_dead_standby_means_a_cold_start(
    tmp_path: Path,
) -> None:
    settings = Settings(state_dir=tmp_path, model_poll_seconds=60)
    store = Store(settings.resolved_database_url)
    backend = LocalBackend(settings, standby_after_s=0)
    try:
        for ready, round_ in enumerate(("warm", "cold"), start=1):
            backend.idle()
            standby = _ready_standby(tmp_path / "jobs", ready)
            if round_ == "cold":
                psutil.Process(standby).kill()
                psutil.Process(standby).wait(timeout=10)
            with store.transaction() as tx:
                job = jobs.create(tx, "m", {})
            claimed = jobs.claim_next(store)
            assert claimed is not None and claimed.id == job.id
            running = backend.launch(claimed)
            assert isinstance(running, LocalProcess)
            assert (running.process.pid == standby) == (round_ == "warm")
            assert running.process.wait(timeout=120) == 0
            with store.transaction() as tx:
                ended = jobs.get(tx, job.id)
            # An empty store: the real job ran and said so in its record and its own log.
            assert ended is not None and ended.state == JobState.REJECTED, ended
            assert "nothing to train on" in (ended.decision or ""), ended.decision
            assert "rejected" in (tmp_path / "jobs" / f"{job.id}.log").read_text()
        # A standby that dies unasked is not replaced at once (no crash loop of imports).
        backend.idle()
        psutil.Process(_ready_standby(tmp_path / "jobs", 3)).kill()
        time.sleep(0.5)
        backend.idle()
        assert not [p for p in _standbys() if p.status() != psutil.STATUS_ZOMBIE]
    finally:
        backend.close()


def test_the_standby_is_closed_after_an_idle_window_and_a_job_brings_it_back(
    tmp_path: Path,
) -> None:
    settings = Settings(state_dir=tmp_path, model_poll_seconds=60, retrain_standby_idle_s=4)
    store = Store(settings.resolved_database_url)
    backend = LocalBackend(settings, standby_after_s=0)
    try:
        backend.idle()
        standby = psutil.Process(_ready_standby(tmp_path / "jobs", 1))
        assert standby.is_running()
        deadline = time.monotonic() + 15
        while standby.is_running() and standby.status() != psutil.STATUS_ZOMBIE:
            backend.idle()  # past the window: closes it
            assert time.monotonic() < deadline, "the idle standby was not closed"
            time.sleep(0.2)
        backend.idle()
        assert not _standbys(), "a standby came back without a job"

        with store.transaction() as tx:
            jobs.create(tx, "m", {})
        claimed = jobs.claim_next(store)
        assert claimed is not None
        running = backend.launch(claimed)  # cold
        assert isinstance(running, LocalProcess) and running.process.wait(timeout=120) == 0
        backend.idle()  # the job reopened the window
        assert _ready_standby(tmp_path / "jobs", 2)
    finally:
        backend.close()


def _autogroup_nice(pid: int) -> int:
    return int(Path(f"/proc/{pid}/autogroup").read_text().split("nice")[-1])


@pytest.mark.skipif(
    not Path("/proc/self/autogroup").exists(), reason="the kernel has no autogroup scheduling"
)
def test_a_standby_imports_at_nice_19_and_its_job_starts_at_retrain_nice(tmp_path: Path) -> None:
    settings = Settings(state_dir=tmp_path, model_poll_seconds=60, retrain_nice=2)
    store = Store(settings.resolved_database_url)
    backend = LocalBackend(settings, standby_after_s=0)
    try:
        backend.idle()
        deadline = time.monotonic() + 10
        while not _standbys() or _autogroup_nice(_standbys()[0].pid) != 19:
            assert time.monotonic() < deadline, "the standby did not lower its priority"
            time.sleep(0.05)
        standby = _ready_standby(tmp_path / "jobs", 1)
        assert _autogroup_nice(standby) == 19  # imported, waiting: still out of the way
        with store.transaction() as tx:
            job = jobs.create(tx, "m", {})
        claimed = jobs.claim_next(store)
        assert claimed is not None
        running = backend.launch(claimed)
        assert isinstance(running, LocalProcess) and running.process.pid == standby
        assert running.process.wait(timeout=120) == 0
        # The job's governor started from RETRAIN_NICE, not from the standby's 19.
        log = (tmp_path / "jobs" / f"{job.id}.log").read_text()
        assert re.search(r"over the job \(per second\): (from )?2\b", log), log[-500:]
    finally:
        backend.close()
