"""A retrain Job outlives the replica that launched it: real servers, a fake Kubernetes API.

The launching replica scales down while the Job's pod is still pending (pulling its
image), so nothing heartbeats the job for longer than JOB_STALE_SECONDS; the replica
still serving takes the job over, judges it by the Job's status (pending: not stale),
and once the pod has run (`python -m retrain run`, as the Job's container does, with
the Job's environment) and the Job completed, it serves the promoted version.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.fake_k8s import NAMESPACE, TEMPLATE, FakeKubernetes, write_kubeconfig
from tests.helpers import (
    AUTH,
    ROOT,
    Retrainer,
    bentoml_serve,
    own_model_store,
    read_examples,
    wait_for_job,
    wait_for_version,
    wait_until,
)

STALE_S = 5


def wait_for(condition: object, what: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not callable(condition) or not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.2)


def pod_env(fake: FakeKubernetes, name: str, replica: Retrainer) -> dict[str, str]:
    """The Job's container environment, its cluster paths swapped for this machine's."""
    job = fake.job(NAMESPACE, name)
    assert job is not None
    [container] = job["spec"]["template"]["spec"]["containers"]
    values = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    local = {k: replica.env[k] for k in ("BENTOML_HOME", "STATE_DIR")}
    return os.environ | values | local | {"HOME": os.environ.get("HOME", "/root")}


def test_a_job_whose_launching_replica_scaled_down_is_taken_over_and_its_result_promoted(
    fake: FakeKubernetes,
    tiny_version: str,
    tiny_base_model: Path,
    sentiment_csv: Path,
    bentoml_home: Path,
    tmp_path: Path,
) -> None:
    name = tiny_version.split(":")[0]
    extra = {
        "BENTOML_HOME": str(own_model_store(tmp_path, bentoml_home, name)),
        "RETRAIN_BACKEND": "kubernetes",
        "KUBECONFIG": str(write_kubeconfig(tmp_path / "kubeconfig", fake.url, NAMESPACE)),
        "POD_NAMESPACE": NAMESPACE,
        "RETRAIN_POD_TEMPLATE": TEMPLATE,
        "JOB_STALE_SECONDS": str(STALE_S),
        "WORKERS": "1",
        "REFIT_EPOCHS": "1",
        # This test is about who follows the Job, not the gate: any candidate is promoted.
        "GATE_MARGIN": "1",
        "GATE_MIN_EVAL": "1",
        "GATE_MIN_NEW": "1000000",  # neither the new slice nor the labels are judged
    }
    replica = Retrainer(tmp_path, name, tiny_base_model, sentiment_csv, extra, first=tiny_version)
    with bentoml_serve(name, tmp_path / "launcher.log", replica.env) as launcher:
        wait_until(f"{launcher.url}/readyz", 200)
        with httpx.Client(base_url=launcher.url, timeout=30, headers=AUTH) as http:
            assert http.post("/examples", json={"examples": read_examples(sentiment_csv)})
            job_id = http.post("/retrain", json={}).json()["job_id"]
        job_name = f"selftune-retrain-{job_id}"
        wait_for(lambda: fake.job(NAMESPACE, job_name), "the launcher created no Job")
    # Scaled down (SIGTERM): the Job is left, its pod still pending.
    assert fake.job(NAMESPACE, job_name) is not None
    time.sleep(STALE_S + 1)

    with bentoml_serve(name, tmp_path / "other.log", replica.env) as other:
        wait_until(f"{other.url}/readyz", 200)
        with httpx.Client(base_url=other.url, timeout=30, headers=AUTH) as http:
            log = other.log
            wait_for(lambda: f"job={job_id} taken over" in log.read_text(), "no takeover")
            time.sleep(STALE_S + 2)  # pending, stale long ago: judged by the Job, not failed
            assert http.get(f"/jobs/{job_id}").json()["state"] == "running"

            fake.set_job_active(NAMESPACE, job_name)  # the pod runs the Job's command
            pod = subprocess.run(
                [sys.executable, "-m", "retrain", "run", "--job-id", job_id],
                cwd=ROOT,
                env=pod_env(fake, job_name, replica),
                capture_output=True,
                text=True,
                timeout=600,
            )
            assert pod.returncode == 0, pod.stderr[-3000:]
            fake.set_job_condition(NAMESPACE, job_name, "Complete", "CompletionsReached")

            job = wait_for_job(http, job_id)
            assert job["state"] == "succeeded" and job["decision"].startswith("promoted"), job
            wait_for_version(http, job["candidate_version"].split(":")[1])
            wait_for(
                lambda: f"job={job_id} finished state=succeeded" in log.read_text(),
                "the replica that took the job over did not see it end",
            )
