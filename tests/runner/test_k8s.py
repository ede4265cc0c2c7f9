"""RETRAIN_BACKEND=kubernetes against a fake API server that validates like the real one.

The backend speaks real HTTP through the official client to tests/fake_k8s.py,
which serves the PodTemplate rendered from k8s/overlays/scaled and checks every
submitted Job strictly against the Kubernetes 1.33 schema: the manifest and
the code that copies it are tested together. Nothing of ours is mocked.
"""

from __future__ import annotations

import copy
import uuid
from datetime import UTC, datetime

import pytest
from kubernetes import client

from runner.k8s import (
    KubernetesBackend,
    KubernetesBackendError,
    KubernetesJob,
    forwarded_settings,
)
from store.jobs import Job, JobState
from tests.deploy.conftest import Manifest
from tests.deploy.manifests import build_retrain_job
from tests.fake_k8s import NAMESPACE, TEMPLATE, TIMEOUT_S, FakeKubernetes, runner_settings


def backend_for(fake: FakeKubernetes) -> KubernetesBackend:
    configuration = client.Configuration()
    configuration.host = fake.url
    return KubernetesBackend(runner_settings(), api_client=client.ApiClient(configuration))


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
        trigger="api",
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
        podtemplate, job.id, timeout_s=TIMEOUT_S, settings_env=forwarded_settings(runner_settings())
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


def test_cancelling_a_job_deletes_its_kubernetes_job_from_any_replica(
    fake: FakeKubernetes,
) -> None:
    running, _ = launched(fake, a_job())

    backend_for(fake).cancel(running.name.removeprefix("selftune-retrain-"))

    assert fake.job(NAMESPACE, running.name) is None
