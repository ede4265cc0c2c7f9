"""The Hugging Face and Open Inference Protocol routes, spoken to by the real clients."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from huggingface_hub import InferenceClient
from tritonclient.utils import InferenceServerException

from tests.helpers import LIMITS, Server, mixed_texts

TEXTS = ["the food was great", "it was awful and terrible", "the service was normal"]


@pytest.fixture
def hf_client(server: Server, monkeypatch: pytest.MonkeyPatch) -> InferenceClient:
    # The Makefile exports HF_HUB_OFFLINE=1, under which huggingface_hub refuses every
    # request, loopback included: lifted for this client only (the constant is read at import).
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    return InferenceClient(model=server.url, timeout=30)


@pytest.fixture
def triton_client(server: Server) -> Iterator[triton.InferenceServerClient]:
    client = triton.InferenceServerClient(url=server.url.removeprefix("http://"))
    yield client
    client.close()


def _predict(client: httpx.Client, texts: list[str]) -> list[dict[str, object]]:
    response = client.post("/predict", json={"texts": texts})
    assert response.status_code == 200, response.text
    answers: list[dict[str, object]] = response.json()
    return answers


def test_inference_client_classifies_a_text_as_predict_does(
    hf_client: InferenceClient, client: httpx.Client
) -> None:
    [expected] = _predict(client, [TEXTS[0]])

    top = hf_client.text_classification(TEXTS[0], top_k=2)

    assert len(top) == 2
    assert top[0].label == expected["label"]
    assert top[0].score == pytest.approx(expected["score"], abs=1e-6)
    assert top[0].score >= top[1].score
    assert hf_client.text_classification(TEXTS[0], top_k=1)[0].label == expected["label"]


def test_inference_client_function_to_apply_uses_the_logits(
    hf_client: InferenceClient, client: httpx.Client
) -> None:
    [expected] = _predict(client, [TEXTS[1]])
    logits: dict[str, float] = expected["logits"]  # type: ignore[assignment]

    raw = hf_client.text_classification(TEXTS[1], function_to_apply="none")
    sigmoid = hf_client.text_classification(TEXTS[1], function_to_apply="sigmoid")

    assert {e.label: e.score for e in raw} == pytest.approx(logits, abs=1e-5)
    assert {e.label: e.score for e in sigmoid} == pytest.approx(
        {k: 1 / (1 + math.exp(-v)) for k, v in logits.items()}, abs=1e-5
    )


def test_hf_route_gives_one_ranked_list_per_input_with_the_version(client: httpx.Client) -> None:
    texts = mixed_texts(5, seed=3)
    expected = _predict(client, texts)

    response = client.post("/", json={"inputs": texts})

    assert response.status_code == 200, response.text
    lists = response.json()
    assert [items[0]["label"] for items in lists] == [e["label"] for e in expected]
    assert all(len(items) == 3 for items in lists)
    assert all(items[0]["model_version"] == expected[0]["model_version"] for items in lists)
    assert all(
        [i["score"] for i in items] == sorted((i["score"] for i in items), reverse=True)
        for items in lists
    )


@pytest.mark.parametrize(
    ("body", "what"),
    [
        ({"inputs": []}, "inputs"),
        ({"inputs": ""}, "inputs"),
        ({"inputs": "ok", "parameters": {"top_k": 0}}, "top_k"),
        ({"inputs": "ok", "parameters": {"function_to_apply": "relu"}}, "function_to_apply"),
        ({"text": "ok"}, "inputs"),
    ],
)
def test_bad_hf_requests_are_a_422_naming_the_field(
    client: httpx.Client, body: object, what: str
) -> None:
    response = client.post("/", json=body)

    assert response.status_code == 422, response.text
    assert what in response.json()["error"]


def test_tritonclient_infers_texts_with_binary_tensors_as_predict_does(
    triton_client: triton.InferenceServerClient, client: httpx.Client, server: Server
) -> None:
    texts = mixed_texts(6, seed=4)
    expected = _predict(client, texts)
    text = triton.InferInput("text", [len(texts)], "BYTES")
    text.set_data_from_numpy(np.array(texts, dtype=object))  # binary_data=True, the default

    result = triton_client.infer(server.model_name, [text])  # every output, binary

    assert [x.decode() for x in result.as_numpy("label")] == [e["label"] for e in expected]
    assert result.as_numpy("score").tolist() == pytest.approx([e["score"] for e in expected])
    labels = triton_client.get_model_metadata(server.model_name)["outputs"][2]["parameters"]
    scores = result.as_numpy("scores")
    assert scores.shape == (len(texts), 3)
    np.testing.assert_allclose(
        scores,
        [[e["scores"][k] for k in labels["labels"]] for e in expected],
        rtol=1e-6,  # type: ignore[index]
    )
    assert result.get_response()["model_version"] == expected[0]["model_version"]


def test_tritonclient_json_tensors_and_chosen_outputs(
    triton_client: triton.InferenceServerClient, client: httpx.Client, server: Server
) -> None:
    [expected] = _predict(client, [TEXTS[2]])
    text = triton.InferInput("text", [1], "BYTES")
    text.set_data_from_numpy(np.array([TEXTS[2]], dtype=object), binary_data=False)
    wanted = [triton.InferRequestedOutput("label", binary_data=False)]

    result = triton_client.infer(server.model_name, [text], outputs=wanted)

    assert result.as_numpy("label").tolist() == [expected["label"]]  # JSON data: str
    assert result.as_numpy("score") is None


def test_tritonclient_health_and_metadata(
    triton_client: triton.InferenceServerClient, server: Server
) -> None:
    assert triton_client.is_server_live()
    assert triton_client.is_server_ready()
    assert triton_client.is_model_ready(server.model_name)
    metadata = triton_client.get_model_metadata(server.model_name)
    assert metadata["inputs"] == [{"name": "text", "datatype": "BYTES", "shape": [-1]}]
    assert [o["name"] for o in metadata["outputs"]] == ["label", "score", "scores"]
    assert triton_client.get_server_metadata()["extensions"] == ["binary_tensor_data"]


def test_tritonclient_asks_by_version_and_only_the_served_one_answers(
    triton_client: triton.InferenceServerClient, client: httpx.Client, server: Server
) -> None:
    [expected] = _predict(client, [TEXTS[0]])
    version = str(expected["model_version"])
    text = triton.InferInput("text", [1], "BYTES")
    text.set_data_from_numpy(np.array([TEXTS[0]], dtype=object))

    result = triton_client.infer(server.model_name, [text], model_version=version)

    assert result.get_response()["model_version"] == version
    assert triton_client.is_model_ready(server.model_name, model_version=version)
    assert triton_client.get_model_metadata(server.model_name, model_version=version)["versions"]
    with pytest.raises(InferenceServerException, match="is not served"):
        triton_client.infer(server.model_name, [text], model_version="no-such-version")


def test_v2_errors_are_protocol_errors_the_client_reads(
    triton_client: triton.InferenceServerClient, server: Server
) -> None:
    text = triton.InferInput("text", [1], "BYTES")
    text.set_data_from_numpy(np.array(["ok"], dtype=object))
    number = triton.InferInput("text", [1], "FP32")
    number.set_data_from_numpy(np.array([1.0], dtype=np.float32))

    with pytest.raises(InferenceServerException, match="not served here"):
        triton_client.infer("no-such-model", [text])
    with pytest.raises(InferenceServerException, match="BYTES"):
        triton_client.infer(server.model_name, [number])


@pytest.mark.parametrize(
    ("body", "status", "what"),
    [
        (
            {"inputs": [{"name": "txt", "shape": [1], "datatype": "BYTES", "data": ["a"]}]},
            400,
            "named 'text'",
        ),
        (
            {"inputs": [{"name": "text", "shape": [2], "datatype": "BYTES", "data": ["a"]}]},
            400,
            "shape",
        ),
        (
            {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": [""]}]},
            400,
            "at least 1",
        ),
        (
            {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": [3]}]},
            400,
            "string",
        ),
        ({"inputs": []}, 422, "inputs"),
    ],
)
def test_bad_v2_requests_say_what_is_wrong(
    client: httpx.Client, server: Server, body: object, status: int, what: str
) -> None:
    response = client.post(f"/v2/models/{server.model_name}/infer", json=body)

    assert response.status_code == status, response.text
    assert what in response.json()["error"]


def test_v2_accepts_json_without_a_content_type(client: httpx.Client, server: Server) -> None:
    body = b'{"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["great"]}]}'

    response = client.post(f"/v2/models/{server.model_name}/infer", content=body)

    assert response.status_code == 200, response.text
    assert response.json()["outputs"][0]["data"] == [_predict(client, ["great"])[0]["label"]]


def test_v2_refuses_too_many_texts_like_predict(client: httpx.Client, server: Server) -> None:
    n = int(LIMITS["MAX_TEXTS_PER_REQUEST"]) + 1
    body = {"inputs": [{"name": "text", "shape": [n], "datatype": "BYTES", "data": ["a"] * n}]}

    response = client.post(f"/v2/models/{server.model_name}/infer", json=body)

    assert response.status_code == 400
    assert "at most" in response.json()["error"]


def test_a_binary_request_of_too_many_elements_is_refused_before_they_are_decoded(
    client: httpx.Client, server: Server
) -> None:
    """The decode runs in the event loop: it stops past MAX_TEXTS_PER_REQUEST elements."""
    n = int(LIMITS["MAX_TEXTS_PER_REQUEST"]) * 100
    raw = b"\x00\x00\x00\x00" * n  # n empty texts
    tensor = {"name": "text", "shape": [n], "datatype": "BYTES"}
    header = json.dumps({"inputs": [{**tensor, "parameters": {"binary_data_size": len(raw)}}]})

    response = client.post(
        f"/v2/models/{server.model_name}/infer",
        content=header.encode() + raw,
        headers={"Inference-Header-Content-Length": str(len(header))},
    )

    assert response.status_code == 400
    assert "more than 32 BYTES elements" in response.json()["error"]


def test_a_broken_binary_request_is_a_400(client: httpx.Client, server: Server) -> None:
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "text",
                    "shape": [1],
                    "datatype": "BYTES",
                    "parameters": {"binary_data_size": 7},
                }
            ]
        }
    ).encode()
    body = header + b"\x05\x00\x00\x00abc"  # says 5 bytes, 3 follow

    response = client.post(
        f"/v2/models/{server.model_name}/infer",
        content=body,
        headers={"Inference-Header-Content-Length": str(len(header))},
    )

    assert response.status_code == 400
    assert "binary" in response.json()["error"]
