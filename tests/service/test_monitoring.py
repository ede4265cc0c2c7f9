"""Drift signals against a real two-worker server: traffic like the evaluation's stays quiet,
one-sided traffic raises the label-mix distance and the drift gauge, on /metrics and
/monitoring alike."""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from core import registry
from core.runtime import Classifier
from service.metrics import PredictionWindow
from service.model_holder import LoadedModel
from service.monitoring import Monitor
from service.settings import Settings
from tests.helpers import AUTH, make_texts, scrape, serve_copy
from tests.tiny_model import NEGATIVE, NEUTRAL, POSITIVE

DRIFT = 'selftune_drift_detected{signal="label"}'
DISTANCE = "selftune_drift_label_distance"


@pytest.fixture(scope="module")
def server_url(
    tiny_version: str, bentoml_home: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    root = tmp_path_factory.mktemp("monitoring")
    env = {"RETRAIN_ON_DRIFT": "true", "RETRAIN_MIN_INTERVAL_MINUTES": "0"}
    with serve_copy(root, tiny_version, bentoml_home, env) as server:
        yield server.url


def send(url: str, texts: list[str]) -> None:
    """`texts` as /predict requests of 16 from four threads, a fresh connection each, so
    that the workers' accept loops share them out (kept-alive connections can leave one
    worker with a quarter of the traffic)."""
    chunks = [texts[i : i + 16] for i in range(0, len(texts), 16)]

    def post(chunk: list[str]) -> None:
        response = httpx.post(f"{url}/predict", json={"texts": chunk}, timeout=30)
        assert response.status_code == 200, response.text

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(post, chunks))


def settled(url: str, wanted: float) -> dict[str, float]:
    """/metrics once every worker has published its window (MODEL_POLL_SECONDS is 0.5)."""
    with httpx.Client(base_url=url, timeout=30) as http:
        deadline = time.monotonic() + 10
        while (samples := scrape(http)).get(DRIFT) != wanted:
            if time.monotonic() > deadline:
                return samples
            time.sleep(0.5)
        time.sleep(1.0)  # the other worker's next poll
        return scrape(http)


def monitoring(url: str) -> dict[str, Any]:
    """GET /monitoring from a worker whose window is full enough to judge (the connections
    need not have split the traffic evenly): a few fresh connections reach both."""
    for _ in range(20):
        response = httpx.get(f"{url}/monitoring", headers=AUTH, timeout=30)
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        if body["worker"]["status"] == "ready":
            return body
    raise AssertionError(f"no worker's window is ready: {body}")


def jobs(url: str) -> list[dict[str, Any]]:
    listed: list[dict[str, Any]] = httpx.get(f"{url}/jobs", headers=AUTH).json()["jobs"]
    return listed


def test_reference_like_traffic_stays_quiet_and_one_sided_traffic_is_drift(
    server_url: str,
) -> None:
    # One new label: RETRAIN_ON_DRIFT has something to train on, once there is drift.
    new = {"examples": [{"text": "the refund never came", "label": "negative"}]}
    assert httpx.post(f"{server_url}/examples", json=new, headers=AUTH).status_code == 200
    rng = random.Random(11)
    mixed = [t for words in (NEGATIVE, NEUTRAL, POSITIVE) for t in make_texts(words, 150, rng)]
    rng.shuffle(mixed)
    send(server_url, mixed)
    quiet = settled(server_url, 0.0)
    assert quiet[DRIFT] == 0.0 and quiet[DISTANCE] < 0.1, quiet
    assert quiet["selftune_monitor_window_predictions"] >= 200
    assert quiet['selftune_drift_detected{signal="confidence"}'] == 0.0
    worker = monitoring(server_url)["worker"]
    assert worker["status"] == "ready" and worker["reference_version"] == worker["model_version"]
    assert worker["window"] == 200 and not any(worker["drift"].values()), worker
    assert jobs(server_url) == []  # a new label alone queues nothing

    # Only complaints: every worker that took some of them now predicts "negative" more
    # often than its reference (how much depends on its share of the connections), and
    # one that took over 2 x 200 has confirmed it (drift in two windows running).
    send(server_url, make_texts(NEGATIVE, 900, random.Random(12)))
    drifted = settled(server_url, 1.0)
    assert drifted[DRIFT] == 1.0 and drifted[DISTANCE] >= 0.1, drifted
    assert drifted["selftune_drift_label_pvalue"] < 0.01
    body = monitoring(server_url)
    assert body["merged"]["drift_detected"]["label"] == 1.0
    worker = body["worker"]
    assert worker["label_share"]["negative"] > worker["reference_label_share"]["negative"], worker
    [job] = jobs(server_url)  # queued at the poll that saw the drift, by one worker only
    assert job["trigger"] == "drift"


def test_monitoring_is_admin_only_and_the_review_queue_stays_off_unless_asked(
    server_url: str,
) -> None:
    assert httpx.get(f"{server_url}/monitoring").status_code == 401
    queue = httpx.get(f"{server_url}/review-queue", headers=AUTH).json()
    assert queue == {"enabled": False, "texts": []}  # after the predictions above


def test_a_retrain_on_drift_waits_for_drift_in_two_windows_running(tiny_version: str) -> None:
    """One window's flag may be chance (each is looked at every poll); RETRAIN_ON_DRIFT acts
    on drift in the latest window and in the predictions before it."""
    version = registry.get(tiny_version)
    classifier = Classifier(version.path, version.max_length, 1)
    settings = Settings(monitor_window=100, monitor_min_predictions=100)
    window = PredictionWindow(2 * settings.monitor_window)
    monitor = Monitor(settings, window)
    monitor.swapped(LoadedModel.of(version, classifier), None)
    rng = random.Random(3)
    mixed = [t for words in (NEGATIVE, NEUTRAL, POSITIVE) for t in make_texts(words, 34, rng)]
    rng.shuffle(mixed)
    complaints = make_texts(NEGATIVE, 200, rng)
    looks = []
    for texts in (mixed[:100], complaints[:100], complaints[100:]):
        window.add(version.version, classifier.score(texts).probabilities)
        signals = monitor.publish()
        looks.append((signals.drift["label"], signals.drift_confirmed))
    assert looks == [(False, False), (True, False), (True, True)]
