"""Our Prometheus series appear on BentoML's /metrics and count, across both workers."""

from __future__ import annotations

import httpx

from tests.helpers import mixed_texts, scrape


def delta(before: dict[str, float], after: dict[str, float], name: str) -> float:
    return after.get(name, 0.0) - before.get(name, 0.0)


def test_prediction_metrics_count_every_text(client: httpx.Client) -> None:
    texts = mixed_texts(30, seed=3)
    before = scrape(client)

    answers = []
    for i in range(0, len(texts), 5):
        answers += client.post("/predict", json={"texts": texts[i : i + 5]}).json()
    after = scrape(client)

    version = answers[0]["model_version"]
    for label in {a["label"] for a in answers}:
        expected = sum(a["label"] == label for a in answers)
        name = f'selftune_predictions_total{{label="{label}",model_version="{version}"}}'
        assert delta(before, after, name) == expected
    assert delta(before, after, "selftune_prediction_confidence_count") == len(texts)
    assert delta(before, after, "selftune_prediction_confidence_sum") > len(texts) / 3 - 1e-6
    assert delta(before, after, "selftune_inference_batch_size_sum") == len(texts)
    assert delta(before, after, "selftune_inference_batch_seconds_count") >= 1
    assert delta(before, after, "selftune_inference_batch_seconds_sum") > 0


def test_token_metric_counts_the_tokens_the_model_ran_on(client: httpx.Client) -> None:
    before = scrape(client)

    client.post("/predict", json={"texts": ["it was great", "the food was awful and so sad"]})
    after = scrape(client)

    # [CLS] + 3 words + [SEP], and [CLS] + 7 words + [SEP]: nothing is padded.
    assert delta(before, after, "selftune_inference_batch_tokens_sum") == 5 + 9


def test_active_model_version_is_exported(client: httpx.Client, tiny_version: str) -> None:
    name, version = tiny_version.split(":")

    samples = scrape(client)

    key = f'selftune_model_version_info{{model_name="{name}",version="{version}"}}'
    assert samples[key] == 1.0


def test_predict_requests_are_counted_by_status_whoever_answered_them(
    client: httpx.Client,
) -> None:
    """/predict is answered in front of BentoML, whose request series never see it."""
    before = scrape(client)

    assert client.post("/predict", json={"texts": ["fine"]}).status_code == 200
    assert client.post("/predict", json={"texts": []}).status_code == 400
    assert (
        client.post("/predict", content=b"hi", headers={"content-type": "text/plain"}).status_code
        == 415
    )
    after = scrape(client)

    for status in ("200", "400", "415"):
        assert delta(before, after, f'selftune_predict_requests_total{{status="{status}"}}') == 1
    assert delta(before, after, "selftune_predict_request_seconds_count") == 3
    assert delta(before, after, "selftune_predict_request_seconds_sum") > 0
