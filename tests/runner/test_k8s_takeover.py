"""The job runner over RETRAIN_BACKEND=kubernetes: failed Jobs, stopping replicas, takeover.

The server's real path (make_backend from a kubeconfig, a JobRunner, a real
Store) against tests/fake_k8s.py: a replica that launched a Job may go away
while the Job trains, and another replica judges it by the Job's status.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from runner.queue import JobRunner, make_backend
from store import Store, jobs
from store.jobs import Job, JobState
from tests.fake_k8s import NAMESPACE, STALE_S, FakeKubernetes, runner_settings, write_kubeconfig


def wait_for(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError("timed out waiting")


@dataclass
class Launched:
    """A real Store and JobRunner whose runner thread has launched one job's Kubernetes Job."""

    store: Store
    runner: JobRunner
    job: Job
    name: str
    poll: threading.Thread


def launched_by_runner(
    fake: FakeKubernetes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, active: bool = True
) -> Launched:
    """The server's real path: make_backend from kubeconfig, JobRunner, a real Store.

    `active`: the Job's pod runs; else the Job stays pending (image pull, scheduling).
    """
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("KUBECONFIG", str(write_kubeconfig(tmp_path / "kubeconfig", fake.url, "x")))
    store = Store(f"sqlite:///{tmp_path}/s.db")
    runner = JobRunner(store, make_backend(runner_settings()), runner_settings(), 2)
    with store.transaction() as tx:
        job = jobs.create(tx, "text-classifier", {})
    name = f"selftune-retrain-{job.id}"
    poll = threading.Thread(target=runner.poll_once, daemon=True)
    poll.start()
    wait_for(lambda: fake.job(NAMESPACE, name) is not None)
    with store.transaction() as tx:
        current = jobs.get(tx, job.id)
    assert current is not None and current.state == "running"
    if active:
        fake.set_job_active(NAMESPACE, name)
    return Launched(store, runner, job, name, poll)


def job_of(store: Store, job_id: str) -> Job:
    with store.transaction() as tx:
        job = jobs.get(tx, job_id)
    assert job is not None
    return job


def test_the_job_runner_fails_a_job_whose_kubernetes_job_failed(
    fake: FakeKubernetes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = launched_by_runner(fake, tmp_path, monkeypatch)
    fake.set_job_condition(
        NAMESPACE,
        run.name,
        "Failed",
        "BackoffLimitExceeded",
        "Job has reached the specified backoff limit",
    )
    run.poll.join(timeout=15)

    assert not run.poll.is_alive()
    with run.store.transaction() as tx:
        finished = jobs.get(tx, run.job.id)
    assert finished is not None
    assert finished.state == "failed"
    assert finished.error is not None
    assert "exited with code 1" in finished.error
    assert f"Kubernetes Job {NAMESPACE}/{run.name} failed (BackoffLimitExceeded" in finished.error


def test_a_stopping_replica_leaves_its_kubernetes_job_training(
    fake: FakeKubernetes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """HPA scale-down or a rollout stops the runner; the Job is not deleted with it."""
    run = launched_by_runner(fake, tmp_path, monkeypatch)
    run.runner.stop()
    run.poll.join(timeout=15)

    assert not run.poll.is_alive()
    assert fake.job(NAMESPACE, run.name) is not None  # still there, still training
    with run.store.transaction() as tx:
        left = jobs.get(tx, run.job.id)
        assert left is not None and left.state == "running"
        # the Job's pod finishes the record itself (retrain/job.py does exactly this)
        assert jobs.finish(tx, run.job.id, JobState.SUCCEEDED, decision="promoted")


@pytest.mark.parametrize("ending", ["Complete", "Failed", "deleted"])
def test_another_replica_takes_over_a_pending_job_whose_launcher_stopped_and_judges_it_by_the_job(
    fake: FakeKubernetes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ending: str
) -> None:
    """Scale-down while the pod pulls its image: nothing heartbeats the job for a while."""
    run = launched_by_runner(fake, tmp_path, monkeypatch, active=False)
    run.runner.stop()  # the launching replica goes away; its Job stays pending
    run.poll.join(timeout=15)
    other = JobRunner(run.store, make_backend(runner_settings()), runner_settings(), 2)
    took_over = threading.Thread(target=other.poll_once, daemon=True)
    time.sleep(STALE_S + 0.5)
    took_over.start()

    time.sleep(3 * STALE_S)  # long past stale: still running, watched by the other replica
    assert job_of(run.store, run.job.id).state == JobState.RUNNING
    assert took_over.is_alive()
    assert [r.method for r in fake.requests if r.path.endswith(run.name)][-1] == "GET"
    if ending == "Complete":
        fake.set_job_active(NAMESPACE, run.name)  # the pod runs, records its result...
        with run.store.transaction() as tx:
            assert jobs.finish(tx, run.job.id, JobState.SUCCEEDED, decision="promoted")
        fake.set_job_condition(NAMESPACE, run.name, "Complete", "CompletionsReached")
    elif ending == "Failed":
        fake.set_job_condition(NAMESPACE, run.name, "Failed", "DeadlineExceeded", "too long")
    else:
        fake.jobs.pop((NAMESPACE, run.name))
    took_over.join(timeout=15)

    assert not took_over.is_alive()
    ended = job_of(run.store, run.job.id)
    if ending == "Complete":
        assert ended.state == JobState.SUCCEEDED and ended.decision == "promoted"
    else:
        assert ended.state == JobState.FAILED
        reason = "failed (DeadlineExceeded: too long)" if ending == "Failed" else "does not exist"
        assert f"Kubernetes Job {NAMESPACE}/{run.name} {reason}" in (ended.error or "")


def test_the_runner_of_a_cancelled_job_deletes_its_kubernetes_job(
    fake: FakeKubernetes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = launched_by_runner(fake, tmp_path, monkeypatch)
    with run.store.transaction() as tx:  # a cancel that reached no backend (another pod's)
        jobs.cancel(tx, run.job.id, by="ops", reason=None)

    run.poll.join(timeout=15)

    assert not run.poll.is_alive()
    assert fake.job(NAMESPACE, run.name) is None
    assert job_of(run.store, run.job.id).state == JobState.CANCELLED


def test_a_job_taken_over_keeps_its_time_limit_from_its_start(
    fake: FakeKubernetes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = launched_by_runner(fake, tmp_path, monkeypatch, active=False)
    run.runner.stop()
    run.poll.join(timeout=15)
    time.sleep(10.5)  # past RETRAIN_TIMEOUT_S (10 s here) since the job started
    short = runner_settings().model_copy(update={"retrain_timeout_s": 10})
    other = JobRunner(run.store, make_backend(short), short, 2)
    before = len(fake.requests)

    assert other.poll_once() is not None

    ended = job_of(run.store, run.job.id)
    assert ended.state == JobState.FAILED and "timed out after 10 s" in (ended.error or "")
    # At once: one look at the Job's status, then it is deleted with the job.
    calls = [r.method for r in fake.requests[before:] if r.path.endswith(run.name)]
    assert calls == ["GET", "DELETE"]
