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


def test_every_request_is_counted_by_route_and_status(client: httpx.Client) -> None:
    """By route family, whatever answers: our layers, our FastAPI routes or BentoML's."""
    before = scrape(client)

    assert client.post("/predict", json={"texts": ["fine"]}).status_code == 200
    assert client.post("/predict", json={"texts": []}).status_code == 400
    refused = client.post("/predict", content=b"hi", headers={"content-type": "text/plain"})
    assert refused.status_code == 415
    assert client.post("/", json={"inputs": "fine"}).status_code == 200
    assert client.get("/v2/models/nope").status_code == 404
    assert client.get("/readyz").status_code == 200
    after = scrape(client)

    for route, status in [
        ("/predict", "200"),
        ("/predict", "400"),
        ("/predict", "415"),
        ("/", "200"),
        ("/v2", "404"),
        ("/readyz", "200"),
    ]:
        name = f'selftune_http_requests_total{{route="{route}",status="{status}"}}'
        assert delta(before, after, name) == 1, name
    name = 'selftune_http_request_seconds_count{route="/predict"}'
    assert delta(before, after, name) == 3
    assert delta(before, after, 'selftune_http_request_seconds_sum{route="/predict"}') > 0
