"""Jobs over HTTP against a real server: joining a queued retrain, cancelling queued and
running jobs, and version retention after each job (RETAIN_VERSIONS=1).

The server has a model store and database of its own (a copy of the session's tiny
version), so the versions it registers and deletes are nobody else's.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from tests.helpers import (
    AUTH,
    LOSING,
    Retrainer,
    own_model_store,
    read_examples,
    served_version,
    wait_for_job,
    wait_until,
)

LONG = {"mode": "refit", "epochs": 20}  # runs for minutes unless cancelled


@pytest.fixture(scope="module")
def trainer(
    tiny_version: str,
    tiny_base_model: Path,
    sentiment_csv: Path,
    bentoml_home: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Retrainer:
    root = tmp_path_factory.mktemp("jobs")
    name = tiny_version.split(":")[0]
    home = own_model_store(root, bentoml_home, name)
    extra = {"BENTOML_HOME": str(home), "RETAIN_VERSIONS": "1"}
    return Retrainer(root, name, tiny_base_model, sentiment_csv, extra, first=tiny_version)


@pytest.fixture(scope="module")
def http(trainer: Retrainer) -> Iterator[httpx.Client]:
    with trainer.serve() as server:
        wait_until(f"{server.url}/readyz", 200)
        with httpx.Client(base_url=server.url, timeout=30, headers=AUTH) as client:
            yield client


def retrain(http: httpx.Client, **body: Any) -> dict[str, Any]:
    response = http.post("/retrain", json=body)
    assert response.status_code == 202, response.text
    answer: dict[str, Any] = response.json()
    return answer


def wait_for_state(http: httpx.Client, job_id: str, state: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while http.get(f"/jobs/{job_id}").json()["state"] != state:
        assert time.monotonic() < deadline, f"job {job_id} never reached {state}"
        time.sleep(0.2)


def training_process(log: Path) -> psutil.Process:
    """The process writing a job's log: its training (`python -m retrain run`)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for process in psutil.process_iter():
            try:
                if any(f.path == str(log) for f in process.open_files()):
                    return process
            except psutil.Error:
                continue
        time.sleep(0.2)
    raise AssertionError(f"no process writes {log}")


def test_identical_retrains_join_the_queued_job_and_jobs_cancel_queued_or_running(
    http: httpx.Client, trainer: Retrainer
) -> None:
    active = served_version(http)
    running = retrain(http, **LONG)["job_id"]
    wait_for_state(http, running, "running")

    queued = retrain(http)
    assert not queued["deduplicated"] and queued["message"].startswith("queued as job")
    again = retrain(http, mode="auto")
    assert again["job_id"] == queued["job_id"] and again["deduplicated"]
    assert "already queued as job" in again["message"]
    examples = [{"text": "the movie was so great", "label": "positive"}]
    joined = retrain(http, examples=examples, source="joined")
    assert joined["job_id"] == queued["job_id"] and joined["deduplicated"]
    assert joined["intake"]["accepted"] == 1 and "with the examples stored now" in joined["message"]
    other = retrain(http, mode="refit")
    assert other["job_id"] != queued["job_id"] and not other["deduplicated"]
    assert (
        http.get("/examples", params={"source": "joined"}).json()["items"][0]["text"]
        == (examples[0]["text"])
    )

    process = training_process(trainer.state / "jobs" / f"{running}.log")
    cancelled = http.post(f"/jobs/{running}/cancel", json={"by": "ops", "reason": "too slow"})
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["state"] == "cancelled"
    assert cancelled.json()["cancelled"] | {"at": None} == {
        "by": "ops",
        "reason": "too slow",
        "at": None,
    }
    process.wait(timeout=15)  # killed by the worker running it, whichever took the request
    queued_off = http.post(f"/jobs/{other['job_id']}/cancel")  # no body: who is the client
    assert queued_off.status_code == 200
    assert queued_off.json()["cancelled"]["by"] == "client 127.0.0.1"
    assert queued_off.json()["started_at"] is None

    again_off = http.post(f"/jobs/{running}/cancel")
    assert again_off.status_code == 409
    assert "already ended (cancelled); only a queued or running job" in again_off.json()["error"]
    assert http.post("/jobs/nope/cancel").status_code == 404
    wait_for_state(http, queued["job_id"], "running")  # the queue went on
    assert http.post(f"/jobs/{queued['job_id']}/cancel").status_code == 200
    job = wait_for_job(http, running)
    assert job["state"] == "cancelled" and job["decision"] == "cancelled by ops: too slow"
    assert job["candidate_version"] is None and job["error"] is None
    assert served_version(http) == active


def test_retention_deletes_all_but_the_newest_rejected_version_and_their_job_logs(
    http: httpx.Client, trainer: Retrainer, sentiment_csv: Path
) -> None:
    logs = trainer.state / "jobs"
    assert http.post("/examples", json={"examples": read_examples(sentiment_csv)}).is_success
    wait_until_idle(http)
    first = wait_for_job(http, retrain(http, **LOSING)["job_id"])
    second = wait_for_job(http, retrain(http, **LOSING)["job_id"])
    assert (first["state"], second["state"]) == ("rejected", "rejected"), (first, second)

    # The worker that ran the second job applies retention once it sees its process end.
    deadline = time.monotonic() + 20
    while first["candidate_version"] in (listed := versions(http)):
        assert time.monotonic() < deadline, f"retention kept {first['candidate_version']}"
        time.sleep(0.2)
    assert listed[second["candidate_version"]] == "rejected"
    assert listed[trainer.first] == "active"
    home = Path(trainer.env["BENTOML_HOME"]) / "models"
    assert not (home / first["candidate_version"].replace(":", "/")).exists()
    assert (home / second["candidate_version"].replace(":", "/")).exists()
    assert not (logs / f"{first['id']}.log").exists()
    assert (logs / f"{second['id']}.log").exists()
    refused = http.post(f"/models/{first['candidate_version']}/activate")
    assert refused.status_code == 404
    assert served_version(http) == trainer.first.split(":")[1]


def versions(http: httpx.Client) -> dict[str, str]:
    return {v["tag"]: v["status"] for v in http.get("/models").json()["versions"]}


def wait_until_idle(http: httpx.Client, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while any(j["state"] in ("queued", "running") for j in http.get("/jobs").json()["jobs"]):
        assert time.monotonic() < deadline, "a job of an earlier test is still going"
        time.sleep(0.5)
