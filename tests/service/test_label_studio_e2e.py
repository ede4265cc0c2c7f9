"""Label Studio end to end: a real Label Studio (tests/label_studio.py) and a real server.

Label Studio is connected as its users connect it: our /label-studio as the ML backend
with basic auth (any user, ADMIN_TOKEN as the password), and a webhook to
/label-studio/webhook whose custom header carries `Authorization: Bearer ADMIN_TOKEN`.
What it sends is what a deployment receives; tests/service/data/label_studio holds
captured copies of those requests for the faster tests.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers import (
    AUTH,
    TOKEN,
    Server,
    serve_copy,
    served_version,
    unavailable,
    wait_for_job,
)
from tests.label_studio import (
    LabelStudio,
    LabelStudioClient,
    LabelStudioUnavailableError,
    choice,
    label_studio_server,
)

pytestmark = pytest.mark.slow

LABELS = {"negative", "neutral", "positive"}  # the tiny model's; the config says "Negative"…
TEXTS = ["the food was great", "awful service", "it was ok", "the movie was so very bad"]
# Three new labels queue a retrain (the store's policy); no wait after the last job.
POLICY = {"RETRAIN_AFTER_LABELS": "3", "RETRAIN_MIN_INTERVAL_MINUTES": "0"}


@pytest.fixture(scope="module")
def label_studio() -> Iterator[LabelStudio]:
    """Skipped where Label Studio is not installed; under CI, where `make test`
    installs it, its absence is a failure."""
    try:
        with label_studio_server() as server:
            yield server
    except LabelStudioUnavailableError as exc:
        unavailable("Label Studio", exc)


@pytest.fixture(scope="module")
def service(
    tiny_version: str, bentoml_home: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("label-studio-e2e")
    with serve_copy(root, tiny_version, bentoml_home, POLICY) as running:
        yield running


@pytest.fixture(scope="module")
def admin(service: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=service.url, headers=AUTH, timeout=30) as http:
        yield http


@pytest.fixture(scope="module")
def studio(label_studio: LabelStudio) -> Iterator[LabelStudioClient]:
    with label_studio.client() as client:
        yield client


@pytest.fixture(scope="module")
def project(studio: LabelStudioClient, service: Server) -> dict[str, Any]:
    """A sentiment project with our service connected, and its tasks imported.

    The webhook is registered before the ML backend: connecting a backend makes Label
    Studio add a webhook of its own to <backend>/webhook, for every action and with
    no headers (so refused: 401), unless one to that URL exists already.
    """
    project_id = studio.create_project("sentiment")
    backend = f"{service.url}/label-studio"
    studio.add_webhook(
        project_id,
        f"{backend}/webhook",
        ["ANNOTATION_CREATED", "ANNOTATIONS_CREATED", "ANNOTATION_UPDATED", "ANNOTATIONS_DELETED"],
        {"Authorization": f"Bearer {TOKEN}"},
    )
    ml_backend = studio.connect_ml_backend(project_id, backend, ("labelstudio", TOKEN))
    tasks = studio.import_tasks(project_id, [{"text": text} for text in TEXTS])
    return {
        "id": project_id,
        "ml_backend": ml_backend["id"],
        "tasks": dict(zip(TEXTS, tasks, strict=True)),
    }


def stored(admin: httpx.Client, project_id: int) -> dict[str, str]:
    """The project's examples in our store, as {text: label}."""
    response = admin.get("/examples", params={"source": f"label-studio:{project_id}"})
    assert response.status_code == 200, response.text
    return {e["text"]: e["label"] for e in response.json()["items"]}


def eventually(probe: Callable[[], Any], expected: Any, timeout_s: float = 15) -> None:
    deadline = time.monotonic() + timeout_s
    while (found := probe()) != expected:
        assert time.monotonic() < deadline, f"still {found!r}, expected {expected!r}"
        time.sleep(0.2)


def jobs_by(admin: httpx.Client, trigger: str) -> list[dict[str, Any]]:
    response = admin.get("/jobs")
    assert response.status_code == 200, response.text
    return [job for job in response.json()["jobs"] if job["trigger"] == trigger]


def test_label_studio_stores_our_predictions_for_its_tasks(
    studio: LabelStudioClient, project: dict[str, Any], admin: httpx.Client
) -> None:
    version = served_version(admin)
    studio.retrieve_predictions(project["id"])
    for task in project["tasks"].values():
        [prediction] = studio.predictions(task)
        [region] = prediction["result"]
        assert {k: region[k] for k in ("from_name", "to_name", "type")} == {
            "from_name": "sentiment",
            "to_name": "text",
            "type": "choices",
        }
        [label] = region["value"]["choices"]
        assert label in {x.capitalize() for x in LABELS}
        assert prediction["model_version"] == version


def test_annotations_become_examples_that_follow_updates_and_deletes_and_queue_a_retrain(
    studio: LabelStudioClient, project: dict[str, Any], admin: httpx.Client
) -> None:
    tasks = project["tasks"]
    labels = {"the food was great": "positive", "awful service": "negative", "it was ok": "neutral"}
    annotations = {
        text: studio.annotate(tasks[text], [choice(label.capitalize())])
        for text, label in labels.items()
    }
    # A skipped task is no label.
    studio.annotate(tasks["the movie was so very bad"], [], was_cancelled=True)
    eventually(lambda: stored(admin, project["id"]), labels)
    # Three new labels: the policy queues a retrain at the next poll. Asked before the
    # delete below, which leaves two new rows: a deleted label is no data to train on.
    eventually(lambda: len(jobs_by(admin, "labels")) >= 1, True)

    studio.update_annotation(annotations["it was ok"]["id"], [choice("Positive")])
    eventually(lambda: stored(admin, project["id"]), labels | {"it was ok": "positive"})

    studio.delete_annotation(annotations["awful service"]["id"])
    eventually(
        lambda: stored(admin, project["id"]),
        {"the food was great": "positive", "it was ok": "positive"},
    )


def test_start_training_in_label_studio_queues_a_retrain(
    studio: LabelStudioClient, project: dict[str, Any], admin: httpx.Client
) -> None:
    for job in admin.get("/jobs").json()["jobs"]:  # one queued would be joined, not added
        wait_for_job(admin, job["id"])
    studio.train(project["ml_backend"])
    eventually(lambda: len(jobs_by(admin, "label-studio")), 1)
