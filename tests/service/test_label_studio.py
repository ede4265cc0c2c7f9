"""The Label Studio protocol against a real server, with the requests Label Studio 1.23.2
sent (captured in tests/service/data/label_studio), and the review queue it loads tasks from.
The end-to-end run with a real Label Studio is test_label_studio_e2e.py."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers import AUTH, TOKEN, mixed_texts, scrape, serve_copy

DATA = Path(__file__).parent / "data" / "label_studio"
BASIC = {"Authorization": "Basic " + base64.b64encode(f"labelstudio:{TOKEN}".encode()).decode()}
PROJECT = 1  # the captured project
SOURCE = f"label-studio:{PROJECT}"
BOMB = (
    '<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
    '<!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">]><View>&lol2;</View>'
)


# Label Studio's own sentiment template spells the choices with capitals; the tiny model's
# labels are lower case. "Mixed" is a choice the model has no label for.
TEMPLATE_PROJECT = 2
TEMPLATE = (
    '<View><Text name="text" value="$text"/>'
    '<Choices name="sentiment" toName="text" choice="single-radio" showInLine="true">'
    '<Choice value="Positive"/><Choice value="Negative"/><Choice value="Neutral"/>'
    '<Choice value="Mixed"/></Choices></View>'
)


def captured(name: str) -> dict[str, Any]:
    body: dict[str, Any] = json.loads((DATA / f"{name}.json").read_text())["body"]
    return body


@pytest.fixture(scope="module")
def http(
    tiny_version: str, bentoml_home: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[httpx.Client]:
    env = {"REVIEW_QUEUE": "true", "REVIEW_SAMPLE_RATE": "1", "REVIEW_CAPACITY": "5"}
    with (
        serve_copy(tmp_path_factory.mktemp("label-studio"), tiny_version, bentoml_home, env) as s,
        httpx.Client(base_url=s.url, timeout=30) as client,
    ):
        yield client


def hook(http: httpx.Client, body: dict[str, Any]) -> dict[str, Any]:
    response = http.post("/label-studio/webhook", json=body, headers=AUTH)
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


def examples(http: httpx.Client) -> dict[str, str]:
    listed = http.get("/examples", params={"source": SOURCE}, headers=AUTH).json()["items"]
    return {e["text"]: e["label"] for e in listed}


def test_label_studio_routes_take_the_token_as_bearer_or_basic_password(
    http: httpx.Client,
) -> None:
    assert http.get("/label-studio/health", headers=BASIC).json()["status"] == "UP"
    assert http.get("/label-studio/health", headers=AUTH).status_code == 200
    wrong = {"Authorization": "Basic " + base64.b64encode(b"labelstudio:nope").decode()}
    refused = http.get("/label-studio/health", headers=wrong)
    assert refused.status_code == 401 and "basic auth" in refused.json()["error"]
    assert http.get("/label-studio/health").status_code == 401
    assert http.get("/examples", headers=BASIC).status_code == 401  # the rest is bearer-only


def test_setup_reads_the_label_config_and_refuses_broken_or_hostile_xml(
    http: httpx.Client,
) -> None:
    setup = captured("setup")
    answer = http.post("/label-studio/setup", json=setup, headers=BASIC)
    assert answer.status_code == 200, answer.text
    version = http.post("/predict", json={"texts": ["ok"]}).json()[0]["model_version"]
    assert answer.json() == {"model_version": version}

    broken = http.post("/label-studio/setup", json=setup | {"schema": "<View><Text"}, headers=BASIC)
    assert broken.status_code == 422 and "not well-formed" in broken.json()["error"]
    bomb = http.post("/label-studio/setup", json=setup | {"schema": BOMB}, headers=BASIC)
    assert bomb.status_code == 422 and "refused" in bomb.json()["error"]
    no_choices = setup | {"schema": '<View><Text name="t" value="$text"/></View>'}
    refused = http.post("/label-studio/setup", json=no_choices, headers=BASIC)
    assert refused.status_code == 422 and "<Choices>" in refused.json()["error"]


def test_predict_pre_annotates_every_task_through_the_batches(http: httpx.Client) -> None:
    body = captured("predict")
    answer = http.post("/label-studio/predict", json=body, headers=BASIC)
    assert answer.status_code == 200, answer.text
    results = answer.json()["results"]
    assert len(results) == len(body["tasks"])
    served = http.post("/predict", json={"texts": ["ok"]})
    assert served.status_code == 200, served.text
    version = served.json()[0]["model_version"]
    for task, result in zip(body["tasks"], results, strict=True):
        [region] = result["result"]
        ours = http.post("/predict", json={"texts": [task["data"]["text"]]}).json()[0]
        assert region == {
            "from_name": "sentiment", "to_name": "text", "type": "choices",
            "value": {"choices": [ours["label"]]},
        }  # fmt: skip
        assert result["model_version"] == version and result["score"] == ours["score"]
    missing = body | {"tasks": [{"id": 9, "data": {"other": "x"}}]}
    refused = http.post("/label-studio/predict", json=missing, headers=BASIC)
    assert refused.status_code == 422 and "tasks[0]" in refused.json()["error"]


def test_annotations_become_examples_idempotently_and_follow_updates_and_deletes(
    http: httpx.Client,
) -> None:
    created = hook(http, captured("webhook_annotation_created"))
    assert created["stored"] == 1 and examples(http)["it was ok"] == "neutral"
    again = hook(http, captured("webhook_annotation_created"))  # delivered twice
    assert again["stored"] == 0 and again["unchanged"] == 1

    assert hook(http, captured("webhook_annotation_updated"))["stored"] == 1
    assert examples(http)["it was ok"] == "positive"
    cancelled = hook(http, captured("webhook_annotation_cancelled"))
    assert cancelled["stored"] == 0 and "cancelled" in cancelled["skipped"][0]["reason"]
    bulk = hook(http, captured("webhook_annotations_created"))
    assert bulk["stored"] == len(captured("webhook_annotations_created")["annotation"])
    assert examples(http)["awful service"] == "positive"  # what the captured bulk action chose

    odd = captured("webhook_annotation_created")
    odd["annotation"] = odd["annotation"] | {"id": 99, "result": [
        {"from_name": "sentiment", "to_name": "text", "type": "choices",
         "value": {"choices": ["furious"]}}
    ]}  # fmt: skip
    skipped = hook(http, odd)
    assert skipped["stored"] == 0 and "furious" in skipped["skipped"][0]["reason"]
    # In a bulk event, a task without the config's text field skips only its annotation.
    bulk = captured("webhook_annotations_created")
    bulk["task"][0] = bulk["task"][0] | {"data": {"other": "x"}}
    partly = hook(http, bulk)
    assert len(partly["skipped"]) == 1 and "text field" in partly["skipped"][0]["reason"]
    assert partly["unchanged"] == len(bulk["annotation"]) - 1

    before = examples(http)
    removed = hook(http, captured("webhook_annotations_deleted_bulk"))
    assert removed["removed"] >= 2
    assert examples(http) == {}, (before, removed)
    assert hook(http, captured("webhook_annotations_deleted_bulk"))["removed"] == 0
    assert hook(http, {"action": "PROJECT_UPDATED"})["message"].startswith("ignored")
    counted = scrape(http)  # by a route family of their own, not "other"
    assert counted.get('selftune_http_requests_total{route="/label-studio",status="200"}', 0) > 0


def test_a_webhook_label_studio_would_not_send_is_refused_or_skipped_with_the_reason(
    http: httpx.Client,
) -> None:
    no_action = http.post("/label-studio/webhook", json={"annotation": {"id": 1}}, headers=AUTH)
    assert no_action.status_code == 422 and "action" in no_action.json()["error"]
    # One malformed annotation in a bulk event skips only itself, saying what is wrong.
    bulk = captured("webhook_annotations_created")
    bulk["annotation"][0] = bulk["annotation"][0] | {"id": "first", "result": "positive"}
    answer = hook(http, bulk)
    [skipped] = answer["skipped"]
    assert skipped["annotation"] is None, skipped
    assert "id:" in skipped["reason"] and "result:" in skipped["reason"], skipped
    assert answer["stored"] + answer["unchanged"] == len(bulk["annotation"]) - 1


def set_up_template_project(http: httpx.Client) -> None:
    body = {"project": f"{TEMPLATE_PROJECT}.1796296939", "schema": TEMPLATE}
    assert http.post("/label-studio/setup", json=body, headers=BASIC).status_code == 200


def test_choices_and_model_labels_match_whatever_their_case(http: httpx.Client) -> None:
    set_up_template_project(http)
    texts = ["the food was great", "awful service"]
    tasks = [{"id": 300 + i, "data": {"text": t}} for i, t in enumerate(texts)]
    answer = http.post("/label-studio/predict", headers=BASIC,
                       json={"tasks": tasks, "project": f"{TEMPLATE_PROJECT}.1"})  # fmt: skip
    assert answer.status_code == 200, answer.text
    ours = http.post("/predict", json={"texts": texts}).json()
    for result, mine in zip(answer.json()["results"], ours, strict=True):
        [region] = result["result"]  # "positive" is offered as the config's "Positive"
        assert region["value"]["choices"] == [mine["label"].capitalize()]

    def annotate(annotation: int, text: str, choice: str) -> dict[str, Any]:
        task = {"id": annotation, "data": {"text": text}, "project": TEMPLATE_PROJECT}
        region = {"from_name": "sentiment", "to_name": "text", "type": "choices",
                  "value": {"choices": [choice]}}  # fmt: skip
        return hook(http, {"action": "ANNOTATION_CREATED", "task": task, "annotation": {
            "id": annotation, "task": annotation, "project": TEMPLATE_PROJECT,
            "result": [region], "was_cancelled": False}})  # fmt: skip

    assert annotate(301, "the soup was cold", "Negative")["stored"] == 1
    assert annotate(302, "good and bad in equal parts", "Mixed")["stored"] == 1
    source = f"label-studio:{TEMPLATE_PROJECT}"
    listed = http.get("/examples", params={"source": source}, headers=AUTH).json()["items"]
    assert {e["text"]: e["label"] for e in listed} == {
        "the soup was cold": "negative",  # the model's class, not a new "Negative" one
        "good and bad in equal parts": "Mixed",  # a label the model does not have yet
    }


def test_start_training_queues_a_retrain_that_says_who_asked(http: httpx.Client) -> None:
    answer = hook(http, captured("webhook_start_training"))
    job = http.get(f"/jobs/{answer['job_id']}", headers=AUTH).json()
    assert job["trigger"] == "label-studio"


def test_the_review_queue_holds_the_least_sure_texts_never_labeled_ones(
    http: httpx.Client,
) -> None:
    texts = mixed_texts(40, seed=21)
    for i in range(0, len(texts), 8):
        assert http.post("/predict", json={"texts": texts[i : i + 8]}).status_code == 200
    queued: list[dict[str, Any]] = []
    for _ in range(40):  # the workers hand their samples over at their next poll
        queued = http.get("/review-queue", headers=AUTH).json()["texts"]
        if len(queued) == 5:
            break
        time.sleep(0.25)
    assert len(queued) == 5  # REVIEW_CAPACITY
    margins = [t["margin"] for t in queued]
    assert margins == sorted(margins)

    labeled = queued[0]["text"]
    http.post("/examples", headers=AUTH, json={"examples": [{"text": labeled, "label": "neutral"}]})
    after = http.get("/review-queue", headers=AUTH).json()["texts"]
    assert labeled not in [t["text"] for t in after]

    tasks = http.get(
        "/review-queue", params={"format": "label-studio", "project": PROJECT}, headers=AUTH
    ).json()
    assert tasks and set(tasks[0]["data"]) == {"text"}
    [prediction] = tasks[0]["predictions"]
    assert prediction["result"][0]["from_name"] == "sentiment" and "score" not in prediction
    assert tasks[0]["meta"]["margin"] == after[0]["margin"]
    set_up_template_project(http)
    template = http.get("/review-queue", params={"format": "label-studio",
                        "project": TEMPLATE_PROJECT}, headers=AUTH).json()  # fmt: skip
    [region] = template[0]["predictions"][0]["result"]
    assert region["value"]["choices"][0] in {"Positive", "Negative", "Neutral"}
    unknown = http.get("/review-queue", params={"format": "label-studio", "project": 777},
                       headers=AUTH)  # fmt: skip
    assert unknown.status_code == 404
