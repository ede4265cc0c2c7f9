"""Retraining over HTTP against real server processes: intake, jobs, gate, swap, rollback, crash.

Each server here has its own model name and database (STATE_DIR), so these
tests can promote and roll back without touching what the other tests serve.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from core import registry
from store import Store
from store.examples import count
from tests.helpers import (
    AUTH,
    GATE_MARGIN,
    LOSING,
    TOKEN,
    WINNING,
    Retrainer,
    kill_tree,
    read_examples,
    scrape,
    served_version,
    wait_for_job,
    wait_for_version,
    wait_until,
)


@pytest.fixture(scope="module")
def retrainer(
    tiny_base_model: Path, sentiment_csv: Path, tmp_path_factory: pytest.TempPathFactory
) -> Retrainer:
    return Retrainer(
        tmp_path_factory.mktemp("retrain"), "tiny-retrain", tiny_base_model, sentiment_csv, {}
    )


@pytest.fixture(scope="module")
def admin(retrainer: Retrainer) -> Iterator[httpx.Client]:
    with retrainer.serve() as server:
        wait_until(f"{server.url}/readyz", 200)
        with httpx.Client(base_url=server.url, timeout=30) as http:
            yield http


def test_admin_endpoints_refuse_without_configured_token(client: httpx.Client) -> None:
    response = client.post("/examples", json={"examples": [{"text": "a", "label": "b"}]})
    assert response.status_code == 403
    assert "set the ADMIN_TOKEN environment variable" in response.json()["error"]


@pytest.mark.parametrize(
    "headers", [{}, {"Authorization": "Bearer wrong-token-xxxxxxxxxx"}, {"Authorization": TOKEN}]
)
def test_missing_or_wrong_token_is_401(admin: httpx.Client, headers: dict[str, str]) -> None:
    response = admin.get("/models", headers=headers)
    assert response.status_code == 401
    assert "Authorization: Bearer" in response.json()["error"]


def test_bad_rows_are_refused_row_by_row_and_nothing_is_stored(admin: httpx.Client) -> None:
    before = admin.post(
        "/examples",
        headers=AUTH,
        json={"examples": [{"text": "good great day", "label": "positive"}]},
    )
    assert before.status_code == 200
    total = before.json()["total"]
    bad = {
        "examples": [
            {"text": "a fine new text", "label": "positive"},
            {"text": "   ", "label": "negative"},
            {"text": "another one", "label": "postive"},
            {"text": "no label here"},
        ]
    }
    response = admin.post("/examples", headers=AUTH, json=bad)
    assert response.status_code == 422
    locations = {d["loc"] for d in response.json()["details"]}
    assert {"examples[1].text", "examples[3].label"} <= locations
    unknown = admin.post("/examples", headers=AUTH, json={"examples": bad["examples"][2:3]})
    assert unknown.status_code == 409  # valid as written; conflicts with the model's labels
    assert "'postive' is not one of negative, neutral, positive" in unknown.text
    conflict = admin.post(
        "/examples",
        headers=AUTH,
        json={"examples": [{"text": "good great day", "label": "negative"}]},
    )
    assert conflict.status_code == 409 and "with label 'positive'" in conflict.text
    after = admin.post(
        "/examples",
        headers=AUTH,
        json={"examples": [{"text": "good great day", "label": "positive"}]},
    )
    assert after.json() | {"revision": 0} == {
        "accepted": 0,
        "relabeled": 0,
        "duplicates": 1,
        "total": total,
        "revision": 0,
    }


def test_malformed_and_oversize_admin_bodies_are_4xx(admin: httpx.Client) -> None:
    malformed = admin.post(
        "/retrain", headers=AUTH | {"Content-Type": "application/json"}, content=b"{nope"
    )
    assert malformed.status_code == 400 and "not valid JSON" in malformed.json()["error"]
    huge = {"examples": [{"text": "x" * 300, "label": "positive"}] * 400}  # ~130 kB > the 64 kB cap
    response = admin.post("/examples", headers=AUTH, json=huge)
    assert response.status_code == 413 and "MAX_ADMIN_BODY_BYTES" in response.json()["error"]
    assert admin.get("/jobs/does-not-exist", headers=AUTH).status_code == 404
    assert admin.post("/models/nope/activate", headers=AUTH).status_code == 404


def test_retrain_promotes_a_better_candidate_and_every_request_succeeds_through_the_swap(
    admin: httpx.Client, retrainer: Retrainer, sentiment_csv: Path
) -> None:
    old = served_version(admin)
    before = scrape(admin)
    # What the active model was trained on goes into the store first (as `make serve`
    # does on first run), so the candidate replays it with the new examples.
    imported = admin.post(
        "/examples", headers=AUTH, json={"examples": read_examples(sentiment_csv)}
    )
    assert imported.status_code == 200
    new_examples = [
        {"text": f"really {r['text']} indeed", "label": r["label"]}
        for r in read_examples(sentiment_csv)[:60]
    ]
    started = admin.post(
        "/retrain",
        headers=AUTH,
        json={"examples": new_examples, "source": "labeling-tool", **WINNING},
    )
    assert started.status_code == 202, started.text
    job_id = started.json()["job_id"]

    failures: list[str] = []
    versions: set[str] = set()
    stop = time.monotonic() + 240

    def hammer() -> None:
        with httpx.Client(base_url=str(admin.base_url), timeout=30) as http:
            while time.monotonic() < stop:
                r = http.post("/predict", json={"texts": ["bad awful day", "the food was great"]})
                if r.status_code != 200:
                    failures.append(f"{r.status_code}: {r.text}")
                    return
                versions.add(r.json()[0]["model_version"])
                job = http.get(f"/jobs/{job_id}", headers=AUTH).json()
                if job["state"] != "queued" and job["state"] != "running" and len(versions) > 1:
                    return

    with ThreadPoolExecutor(4) as pool:
        for future in [pool.submit(hammer) for _ in range(4)]:
            future.result()
    job = wait_for_job(admin, job_id)
    assert job["state"] == "succeeded", (job["decision"], job["error"])
    assert job["decision"].startswith("promoted")
    candidate_f1, active_f1 = (job["metrics"][k]["macro_f1"] for k in ("candidate", "active"))
    assert candidate_f1 >= active_f1 - float(GATE_MARGIN)
    new = job["candidate_version"].split(":")[1]
    wait_for_version(admin, new)
    assert failures == []
    assert old in versions
    models = admin.get("/models", headers=AUTH).json()
    status = {v["version"]: v["status"] for v in models["versions"]}
    assert status[new] == "active" and status[old] == "retired"
    assert models["active"].endswith(new)
    parent = next(v for v in models["versions"] if v["version"] == new)["provenance"]["parent"]
    assert parent is not None and parent.endswith(old)
    # The runner that watched the job counts it once it sees the process exit.
    key = 'selftune_retrain_jobs_total{outcome="succeeded"}'
    deadline = time.monotonic() + 15
    while (after := scrape(admin)).get(key, 0) < before.get(key, 0) + 1:
        assert time.monotonic() < deadline, f"{key} did not count the job"
        time.sleep(0.5)
    assert after["selftune_examples_stored"] >= 60


def test_a_worse_candidate_is_rejected_and_the_active_version_stays(admin: httpx.Client) -> None:
    active = served_version(admin)
    started = admin.post("/retrain", headers=AUTH, json=LOSING)
    job = wait_for_job(admin, started.json()["job_id"])
    assert job["state"] == "rejected", job
    assert "the active version stays" in job["decision"]
    time.sleep(1.5)
    assert served_version(admin) == active
    models = admin.get("/models", headers=AUTH).json()
    rejected = next(v for v in models["versions"] if v["tag"] == job["candidate_version"])
    assert rejected["status"] == "rejected" and "rejected" in rejected["reason"]


def test_activate_rolls_back_through_the_same_path(
    admin: httpx.Client, retrainer: Retrainer
) -> None:
    current = served_version(admin)
    first = retrainer.first.split(":")[1]
    response = admin.post(f"/models/{first}/activate", headers=AUTH)
    assert response.status_code == 200 and response.json()["active"] == retrainer.first
    wait_for_version(admin, first)
    admin.post(f"/models/{current}/activate", headers=AUTH)
    wait_for_version(admin, current)


def test_drift_signals_compare_against_the_served_versions_own_profile(
    admin: httpx.Client, retrainer: Retrainer
) -> None:
    """After a swap the window starts empty and the reference is the new version's profile."""
    current = served_version(admin)
    first = retrainer.first.split(":")[1]
    assert first != current, "the promotion test runs first and leaves its candidate active"
    for version in (first, current):
        admin.post(f"/models/{version}/activate", headers=AUTH)
        wait_for_version(admin, version)
        folder = registry.get(f"{retrainer.name}:{version}").path
        profile = json.loads((folder / "profile.json").read_text())
        deadline = time.monotonic() + 10
        while (worker := admin.get("/monitoring", headers=AUTH).json()["worker"])[
            "reference_version"
        ] != version:
            assert time.monotonic() < deadline, worker
            time.sleep(0.3)
        assert worker["reference_accuracy"] == profile["accuracy"]
        assert worker["predictions"] <= 1  # the window emptied; wait_for_version's one text


def test_a_killed_server_leaves_no_stuck_job_and_loses_no_example(
    tiny_base_model: Path, sentiment_csv: Path, tmp_path: Path
) -> None:
    killed = Retrainer(tmp_path, "tiny-crash", tiny_base_model, sentiment_csv, {})
    rows = read_examples(sentiment_csv)
    with killed.serve() as server:
        wait_until(f"{server.url}/readyz", 200)
        with httpx.Client(base_url=server.url, timeout=30) as http:
            accepted = http.post("/examples", headers=AUTH, json={"examples": rows})
            assert accepted.status_code == 200
            job_id = http.post("/retrain", headers=AUTH, json={"epochs": 20}).json()["job_id"]
            deadline = time.monotonic() + 60
            while http.get(f"/jobs/{job_id}", headers=AUTH).json()["state"] != "running":
                assert time.monotonic() < deadline
                time.sleep(0.2)
            kill_tree(server.pid)
    with killed.serve() as server:
        wait_until(f"{server.url}/readyz", 200)
        with httpx.Client(base_url=server.url, timeout=30) as http:
            job = wait_for_job(http, job_id, timeout_s=60)
            assert job["state"] == "failed" and "submit POST /retrain again" in job["error"]
            assert served_version(http) == killed.first.split(":")[1]
    with Store(f"sqlite:///{killed.state / 'service.db'}").transaction() as tx:
        assert count(tx) == len(rows)
