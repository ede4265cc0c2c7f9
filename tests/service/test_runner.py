"""The job runner in-process: a training process past RETRAIN_TIMEOUT_S is killed and failed,
and a woken runner claims a queued job at once."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from service.runner import JobRunner, LocalProcess, RunningJob
from service.settings import Settings
from store import Store, jobs
from store.jobs import Job, JobState


class SleepingTraining:
    """A backend whose training is a real process that never ends by itself."""

    jobs_outlive_runner = False

    def __init__(self, log: Path) -> None:
        self.log = log
        self.launched: list[subprocess.Popen[bytes]] = []

    def launch(self, job: Job) -> RunningJob:
        process = subprocess.Popen(["sleep", "600"])
        self.launched.append(process)
        return LocalProcess(process, self.log)


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
