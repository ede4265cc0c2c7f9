"""RETRAIN_BACKEND=kubernetes against a fake API server that validates like the real one.

The backend speaks real HTTP through the official client to tests/fake_k8s.py,
which serves the PodTemplate rendered from k8s/overlays/scaled and checks every
submitted Job strictly against the Kubernetes 1.33 schema: the manifest and
the code that copies it are tested together. Nothing of ours is mocked.
"""

from __future__ import annotations

import copy
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
from kubernetes import client

from core.settings import RunnerSettings
from runner.k8s import (
    KubernetesBackend,
    KubernetesBackendError,
    KubernetesJob,
    forwarded_settings,
)
from runner.queue import JobRunner, make_backend
from store import Store, jobs
from store.jobs import Job, JobState
from tests.deploy.conftest import Manifest
from tests.deploy.manifests import build_retrain_job
from tests.fake_k8s import NAMESPACE, TEMPLATE, FakeKubernetes, write_kubeconfig

TIMEOUT_S = 60


STALE_S = 1.0


def settings() -> RunnerSettings:
    return RunnerSettings(
        retrain_backend="kubernetes",
        pod_namespace=NAMESPACE,
        retrain_pod_template=TEMPLATE,
        retrain_timeout_s=TIMEOUT_S,
        gate_margin=0.05,
        job_stale_seconds=STALE_S,
    )


def backend_for(fake: FakeKubernetes) -> KubernetesBackend:
    configuration = client.Configuration()
    configuration.host = fake.url
    return KubernetesBackend(settings(), api_client=client.ApiClient(configuration))


def a_job(job_id: str | None = None) -> Job:
    return Job(
        id=job_id or uuid.uuid4().hex,
        model_name="text-classifier",
        state=JobState.RUNNING,
        params={},
        progress=0.0,
        message=None,
        candidate_version=None,
        metrics=None,
        decision=None,
        error=None,
        mode=None,
        summary=None,
        created_at=datetime.now(UTC),
        started_at=datetime.now(UTC),
        finished_at=None,
    )


def launched(fake: FakeKubernetes, job: Job) -> tuple[KubernetesJob, Manifest]:
    running = backend_for(fake).launch(job)
    stored = fake.job(NAMESPACE, f"selftune-retrain-{job.id}")
    assert stored is not None
    return running, stored


def test_launch_creates_the_documented_job(fake: FakeKubernetes, podtemplate: Manifest) -> None:
    job = a_job()
    _, stored = launched(fake, job)

    name = f"selftune-retrain-{job.id}"
    assert len(name) <= 63
    meta, spec = stored["metadata"], stored["spec"]
    assert meta["name"] == name
    assert meta["labels"] == {**podtemplate["metadata"]["labels"], "selftune.io/job-id": job.id}
    assert spec["backoffLimit"] == 0
    assert spec["activeDeadlineSeconds"] == TIMEOUT_S
    assert spec["ttlSecondsAfterFinished"] == 86400
    pod = spec["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    [container] = pod["containers"]
    assert container["command"] == [
        "python", "-m", "retrain", "run", "--job-id", "$(JOB_ID)",
    ]  # fmt: skip
    env = {e["name"]: e for e in container["env"]}
    assert env["JOB_ID"] == {"name": "JOB_ID", "value": job.id}
    assert env["DATABASE_URL"]["valueFrom"]["secretKeyRef"]["name"] == "selftune-secrets"
    # Exactly the shape the manifests' own test documents (and validates for 1.33 and 1.37).
    [post] = [r for r in fake.requests if r.method == "POST"]
    assert post.body == build_retrain_job(
        podtemplate, job.id, timeout_s=TIMEOUT_S, settings_env=forwarded_settings(settings())
    )
    assert env["GATE_MARGIN"] == {"name": "GATE_MARGIN", "value": "0.05"}


def test_launching_a_job_that_exists_adopts_it(fake: FakeKubernetes) -> None:
    job = a_job()
    first, _ = launched(fake, job)
    fake.set_job_active(NAMESPACE, first.name)

    second, _ = launched(fake, job)  # e.g. after a server restart: 409, followed, not failed

    assert second.name == first.name
    assert len(fake.jobs) == 1
    assert [r.method for r in fake.requests if "/jobs" in r.path] == ["POST", "POST"]
    assert second.exit_code() is None


def test_exit_code_follows_a_job_to_complete(fake: FakeKubernetes) -> None:
    running, _ = launched(fake, a_job())
    assert running.exit_code() is None  # pending: no pod yet
    fake.set_job_active(NAMESPACE, running.name)
    assert running.exit_code() is None

    fake.set_job_condition(NAMESPACE, running.name, "Complete", "CompletionsReached")

    assert running.exit_code() == 0
    assert "completed" in running.log_tail()


def test_exit_code_of_a_failed_job_says_why(fake: FakeKubernetes) -> None:
    running, _ = launched(fake, a_job())
    fake.set_job_active(NAMESPACE, running.name)
    fake.set_job_condition(
        NAMESPACE,
        running.name,
        "Failed",
        "DeadlineExceeded",
        "Job was active longer than specified deadline",
    )

    assert running.exit_code() == 1
    tail = running.log_tail()
    assert "DeadlineExceeded: Job was active longer than specified deadline" in tail
    assert f"kubectl -n {NAMESPACE} logs job/{running.name}" in tail


def test_kill_deletes_the_job_in_the_background(fake: FakeKubernetes) -> None:
    running, _ = launched(fake, a_job())
    fake.set_job_active(NAMESPACE, running.name)

    running.kill()

    assert fake.job(NAMESPACE, running.name) is None
    [delete] = [r for r in fake.requests if r.method == "DELETE"]
    # The client sends it in the query string or a DeleteOptions body; the API accepts either.
    policy = delete.query.get("propagationPolicy", [None])[0] or (delete.body or {}).get(
        "propagationPolicy"
    )
    assert policy == "Background"
    running.kill()  # already gone: fine
    # A Job that disappeared can no longer succeed.
    assert running.exit_code() == 1
    assert "does not exist" in running.log_tail()


def test_a_missing_pod_template_says_how_to_create_it(fake: FakeKubernetes) -> None:
    fake.podtemplates.clear()

    with pytest.raises(KubernetesBackendError) as error:
        backend_for(fake).launch(a_job())

    message = str(error.value)
    assert f"PodTemplate '{TEMPLATE}' in namespace '{NAMESPACE}' does not exist" in message
    assert "kubectl apply -k k8s/overlays/scaled" in message
    assert not fake.jobs


def test_a_template_the_api_server_rejects_fails_with_its_reason(
    fake: FakeKubernetes, podtemplate: Manifest
) -> None:
    broken = copy.deepcopy(podtemplate)
    broken["template"]["spec"]["restartPolicy"] = "Always"  # fine for a pod, not for a Job
    fake.add_podtemplate(broken)

    with pytest.raises(KubernetesBackendError) as error:
        backend_for(fake).launch(a_job())

    message = str(error.value)
    assert "the API server rejected the retrain Job" in message
    assert 'restartPolicy: Unsupported value: "Always"' in message
    assert "retrain-podtemplate.yaml" in message
    assert not fake.jobs


def test_a_template_of_the_wrong_shape_is_refused_before_sending(
    fake: FakeKubernetes, podtemplate: Manifest
) -> None:
    broken = copy.deepcopy(podtemplate)
    broken["template"]["spec"]["containers"][0]["resources"]["limits"]["cpu"] = {"many": 2}
    fake.add_podtemplate(broken)

    with pytest.raises(KubernetesBackendError, match="does not make a valid Job"):
        backend_for(fake).launch(a_job())
    assert [r.method for r in fake.requests] == ["GET"]


def test_a_template_without_job_id_env_is_refused(
    fake: FakeKubernetes, podtemplate: Manifest
) -> None:
    broken = copy.deepcopy(podtemplate)
    container = broken["template"]["spec"]["containers"][0]
    container["env"] = [e for e in container["env"] if e["name"] != "JOB_ID"]
    fake.add_podtemplate(broken)

    with pytest.raises(KubernetesBackendError, match=r"no container with an env var JOB_ID"):
        backend_for(fake).launch(a_job())
    assert not fake.jobs


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
    runner = JobRunner(store, make_backend(settings()), settings(), 2)
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
    other = JobRunner(run.store, make_backend(settings()), settings(), 2)
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


def test_cancelling_a_job_deletes_its_kubernetes_job_from_any_replica(
    fake: FakeKubernetes,
) -> None:
    running, _ = launched(fake, a_job())

    backend_for(fake).cancel(running.name.removeprefix("selftune-retrain-"))

    assert fake.job(NAMESPACE, running.name) is None


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
    short = settings().model_copy(update={"retrain_timeout_s": 10})
    other = JobRunner(run.store, make_backend(short), short, 2)
    before = len(fake.requests)

    assert other.poll_once() is not None

    ended = job_of(run.store, run.job.id)
    assert ended.state == JobState.FAILED and "timed out after 10 s" in (ended.error or "")
    # At once: one look at the Job's status, then it is deleted with the job.
    calls = [r.method for r in fake.requests[before:] if r.path.endswith(run.name)]
    assert calls == ["GET", "DELETE"]
