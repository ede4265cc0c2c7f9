"""The whole HTTP surface: documented in /docs.json, fuzzed against it, never hanging.

One server with the admin API on, its own state and model store (a copy of the
session's tiny version, so the retrain jobs schemathesis queues register
nothing where other tests look) and the default body limits.
"""

from __future__ import annotations

import asyncio
import re
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from tests.helpers import AUTH, LIMITS, TOKEN, Server, serve_copy

ADMIN_PATHS = {
    "/examples",
    "/examples/{example_id}",
    "/retrain",
    "/jobs",
    "/jobs/{job_id}",
    "/jobs/{job_id}/cancel",
    "/models",
    "/models/{version}/activate",
}
SCHEMATHESIS_CONFIG = Path(__file__).with_name("schemathesis.toml")
PROTOCOL_PATHS = {"/", "/v2", "/v2/models/{name}", "/v2/models/{name}/infer"}


@contextmanager
def _server(
    tmp_path_factory: pytest.TempPathFactory, tiny_version: str, bentoml_home: Path, **env: str
) -> Iterator[Server]:
    with serve_copy(tmp_path_factory.mktemp("surface"), tiny_version, bentoml_home, env) as running:
        yield running


@pytest.fixture(scope="module")
def admin_server(
    tmp_path_factory: pytest.TempPathFactory, tiny_version: str, bentoml_home: Path
) -> Iterator[Server]:
    with _server(tmp_path_factory, tiny_version, bentoml_home) as server:
        yield server


def test_docs_describe_every_route_with_its_security_and_errors(admin_server: Server) -> None:
    spec = httpx.get(f"{admin_server.url}/docs.json").json()

    assert {"/predict", *ADMIN_PATHS, *PROTOCOL_PATHS} <= set(spec["paths"])
    assert spec["components"]["securitySchemes"]["adminToken"]["scheme"] == "bearer"
    patch = spec["paths"]["/examples/{example_id}"]["patch"]
    assert patch["security"] == [{"adminToken": []}]
    assert {"401", "404", "409", "422", "500"} <= set(patch["responses"])
    predict = spec["paths"]["/predict"]["post"]["responses"]
    assert {"200", "400", "413", "415", "500", "503", "504"} <= set(predict)
    assert predict["400"]["content"]["application/json"]["schema"]["$ref"].endswith("ErrorBody")


def test_the_document_is_built_once_per_worker(admin_server: Server) -> None:
    """Anyone who reaches the port may call /docs.json: rebuilt per call, ten calls a
    second filled a worker's event loop."""
    bodies = {httpx.get(f"{admin_server.url}/docs.json").content for _ in range(20)}

    assert len(bodies) == 1
    time.sleep(1)  # the workers write their log lines asynchronously
    built = admin_server.log.read_text().count("/docs.json built")
    assert 1 <= built <= int(LIMITS["WORKERS"])


def test_schemathesis_finds_nothing_against_the_documented_api(
    admin_server: Server, tmp_path: Path
) -> None:
    """Every operation, admin included, fuzzed with all checks: no 5xx, nothing off-schema."""
    command = [
        *(sys.executable, "-m", "schemathesis.cli", "--config-file", str(SCHEMATHESIS_CONFIG)),
        *("run", f"{admin_server.url}/docs.json"),
        *("--header", f"Authorization: Bearer {TOKEN}", "--checks", "all"),
        *("--max-examples", "25", "--seed", "1", "--request-timeout", "20", "--no-color"),
        *("--phases", "examples,coverage,fuzzing,stateful", "--generation-database", "none"),
    ]

    # cwd: schemathesis writes its reports there.
    result = subprocess.run(command, capture_output=True, text=True, timeout=420, cwd=tmp_path)

    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert re.search(r"\d+ generated, \d+ passed", result.stdout), result.stdout[-2000:]


def test_an_invalid_version_name_is_a_fast_404(admin_server: Server) -> None:
    start = time.monotonic()
    response = httpx.post(f"{admin_server.url}/models/a%20b/activate", headers=AUTH, timeout=10)

    assert time.monotonic() - start < 1
    assert response.status_code == 404
    assert "GET /models" in response.json()["error"]


def test_unknown_paths_and_methods_answer_json_with_what_to_do(admin_server: Server) -> None:
    missing = httpx.get(f"{admin_server.url}/nowhere")
    wrong = httpx.put(f"{admin_server.url}/examples", headers=AUTH)
    not_predict = httpx.get(f"{admin_server.url}/predict")

    assert missing.status_code == 404 and "/docs.json" in missing.json()["error"]
    assert wrong.status_code == 405
    assert wrong.headers["allow"] == "DELETE, GET, POST"
    assert "use DELETE, GET, POST" in wrong.json()["error"]
    assert not_predict.status_code == 405 and not_predict.headers["allow"] == "POST"
    assert not_predict.json() == {"error": "GET is not allowed on /predict; use POST"}


def test_a_handler_that_raises_answers_500_at_once_with_the_logged_request_id(
    tmp_path_factory: pytest.TempPathFactory, tiny_version: str, bentoml_home: Path
) -> None:
    with _server(tmp_path_factory, tiny_version, bentoml_home) as server:
        example = {"examples": [{"text": "a fine day", "label": "positive"}]}
        assert httpx.post(f"{server.url}/examples", headers=AUTH, json=example).is_success
        database = Path(server.log).parent / "state" / "service.db"
        with sqlite3.connect(database) as db:  # a real fault, which only DELETE meets
            db.execute("DROP TABLE deleted_examples")

        start = time.monotonic()
        response = httpx.delete(f"{server.url}/examples/1", headers=AUTH, timeout=30)
        seconds = time.monotonic() - start

        assert response.status_code == 500
        assert seconds < 1
        request_id = re.search(r"request_id (\w+)", response.json()["error"])
        assert request_id, response.text
        deadline = time.monotonic() + 10
        while f"request_id={request_id[1]}" not in server.log.read_text():
            assert time.monotonic() < deadline, server.log.read_text()[-3000:]
            time.sleep(0.1)
        log = server.log.read_text()
        assert log.count(f"request_id={request_id[1]}") == 1
        assert log.count("DELETE /examples/1 failed") == 1  # one record, not one per layer
        assert "Exception in ASGI application" not in log
        assert "no such table: deleted_examples" in log
        with httpx.Client(base_url=server.url, headers=AUTH) as client:  # nothing was lost
            assert client.get("/examples/1").json()["text"] == "a fine day"


async def _burst(url: str, n: int) -> list[httpx.Response]:
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        texts = [f"the food was great number {i}" for i in range(n)]
        return await asyncio.gather(*(client.post("/predict", json={"texts": [t]}) for t in texts))


def test_a_shed_request_is_a_json_503_and_one_log_line(
    tmp_path_factory: pytest.TempPathFactory, tiny_version: str, bentoml_home: Path
) -> None:
    """Also: with ACCESS_LOG on, /predict (answered by a layer of ours) has its line too."""
    with _server(
        tmp_path_factory,
        tiny_version,
        bentoml_home,
        MAX_LATENCY_MS="1",
        WORKERS="1",
        ACCESS_LOG="true",
    ) as server:
        # Before any batch has run, no cost per text is known: the first request is answered.
        first = httpx.post(f"{server.url}/predict", json={"texts": ["good"]}, timeout=30)
        assert first.status_code == 200, first.text
        shed: list[httpx.Response] = []
        for _ in range(10):
            shed = [r for r in asyncio.run(_burst(server.url, 64)) if r.status_code == 503]
            if shed:
                break
        assert shed, "MAX_LATENCY_MS=1 shed no request of 640"
        assert "overloaded" in shed[0].json()["error"]
        time.sleep(1)  # the worker writes its log lines asynchronously
        log = server.log.read_text()
        assert log.count(": shed, ") == len(shed)  # one line per shed request
        assert "Traceback" not in log
        assert re.search(r"method=POST,path=/predict\S*\) \(status=503", log), log[-3000:]
        assert re.search(r"method=POST,path=/predict\S*\) \(status=200", log)
