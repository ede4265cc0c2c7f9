"""The /predict contract and BentoML's built-in endpoints, over real HTTP."""

from __future__ import annotations

import httpx
import numpy as np
import pytest

from tests.helpers import mixed_texts


def test_one_text_gets_one_answer_with_label_scores_and_version(
    client: httpx.Client, tiny_version: str
) -> None:
    response = client.post("/predict", json={"texts": ["the food was great"]})

    assert response.status_code == 200
    [answer] = response.json()
    assert set(answer) == {"label", "score", "scores", "logits", "model_version"}
    assert set(answer["scores"]) == {"negative", "neutral", "positive"}
    assert list(answer["logits"]) == list(answer["scores"])
    logits = np.array(list(answer["logits"].values()))
    softmax = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    assert list(answer["scores"].values()) == pytest.approx(softmax.tolist(), abs=1e-6)
    assert sum(answer["scores"].values()) == pytest.approx(1.0, abs=1e-5)
    assert answer["label"] == max(answer["scores"], key=answer["scores"].get)
    assert answer["score"] == answer["scores"][answer["label"]]
    assert answer["model_version"] == tiny_version.split(":")[1]


def test_many_texts_come_back_in_input_order(client: httpx.Client) -> None:
    texts = mixed_texts(20)

    together = client.post("/predict", json={"texts": texts}).json()
    reversed_ = client.post("/predict", json={"texts": texts[::-1]}).json()

    assert len(together) == len(texts)
    assert together == reversed_[::-1]


def test_each_answer_in_a_batch_is_the_answer_its_text_gets_alone(client: httpx.Client) -> None:
    """Guards against answers being shuffled between texts inside a batch."""
    texts = mixed_texts(12, seed=7)

    together = client.post("/predict", json={"texts": texts}).json()
    alone = [client.post("/predict", json={"texts": [t]}).json()[0] for t in texts]

    assert together == alone
    assert len({a["score"] for a in alone}) > 1  # distinct answers, so a shuffle would show


def test_the_served_model_learned_the_sentiment_words(client: httpx.Client) -> None:
    texts = {
        "it was great and wonderful": "positive",
        "the food was so good": "positive",
        "it was awful and terrible": "negative",
        "this movie was bad": "negative",
        "it was ok and average": "neutral",
        "the service was normal": "neutral",
    }

    answers = client.post("/predict", json={"texts": list(texts)}).json()

    right = sum(a["label"] == label for a, label in zip(answers, texts.values(), strict=True))
    assert right >= 5, answers  # chance is 2 of 6


def test_health_endpoints_answer(client: httpx.Client) -> None:
    assert client.get("/livez").status_code == 200
    assert client.get("/readyz").status_code == 200


def test_openapi_document_describes_predict(client: httpx.Client) -> None:
    spec = client.get("/docs.json").json()

    assert "/predict" in spec["paths"]
    assert "post" in spec["paths"]["/predict"]
