"""Every bad request gets a clear 4xx with a JSON message, never a 500."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.helpers import LIMITS, Server

MAX_TEXTS = int(LIMITS["MAX_TEXTS_PER_REQUEST"])
MAX_CHARS = int(LIMITS["MAX_TEXT_CHARS"])
MAX_BYTES = int(LIMITS["MAX_BODY_BYTES"])


@pytest.mark.parametrize(
    ("body", "what"),
    [
        ({"texts": []}, "texts"),
        ({"texts": ["fine", 3]}, "string"),
        ({"texts": ["fine", None]}, "string"),
        ({"texts": "not a list"}, "array"),
        ({"texts": [""]}, "at least 1 character"),
        ({"texts": ["ok"] * (MAX_TEXTS + 1)}, f"at most {MAX_TEXTS}"),
        ({"texts": ["a" * (MAX_CHARS + 1)]}, f"at most {MAX_CHARS}"),
        ({"text": ["wrong field name"]}, "texts"),
        (["a bare list"], "object"),
    ],
    ids=[
        "empty-list",
        "number-item",
        "null-item",
        "not-a-list",
        "empty-text",
        "too-many-texts",
        "text-too-long",
        "missing-field",
        "not-an-object",
    ],
)
def test_invalid_body_is_a_400_saying_what_is_wrong(
    client: httpx.Client, body: object, what: str
) -> None:
    response = client.post("/predict", json=body)

    assert response.status_code == 400
    assert what in json.dumps(response.json())


def test_malformed_json_is_a_400(client: httpx.Client) -> None:
    response = client.post(
        "/predict",
        content=b'{"texts": ["unterminated',
        headers={"content-type": "application/json"},
    )

    assert response.status_code == 400
    assert "Invalid JSON" in json.dumps(response.json())


@pytest.mark.parametrize(
    "content_type", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data", None]
)
def test_a_body_that_is_not_declared_json_is_a_415(
    client: httpx.Client, content_type: str | None
) -> None:
    headers = {"content-type": content_type} if content_type else {}
    response = client.post("/predict", content=b'{"texts": ["fine"]}', headers=headers)

    assert response.status_code == 415
    assert "application/json" in response.json()["error"]


def test_a_json_content_type_with_charset_is_accepted(client: httpx.Client) -> None:
    response = client.post(
        "/predict",
        content=b'{"texts": ["fine"]}',
        headers={"content-type": "application/json; charset=utf-8"},
    )

    assert response.status_code == 200


def test_a_body_over_the_byte_cap_is_a_413(client: httpx.Client) -> None:
    # Each text is within the character cap; together they pass the byte cap.
    texts = ["a" * MAX_CHARS] * (MAX_BYTES // MAX_CHARS + 1)

    response = client.post("/predict", json={"texts": texts})

    assert response.status_code == 413
    assert "MAX_BODY_BYTES" in response.json()["error"]


def test_a_chunked_body_over_the_byte_cap_is_a_413(client: httpx.Client) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"texts": ["'
        for _ in range(MAX_BYTES // 1024 + 1):
            yield b"a" * 1024
        yield b'"]}'

    response = client.post(
        "/predict", content=chunks(), headers={"content-type": "application/json"}
    )

    assert response.request.headers.get("transfer-encoding") == "chunked"
    assert response.status_code == 413


def _status_before_body_ends(server: Server, head: bytes, body_start: bytes) -> int:
    """Send a request whose body never finishes; return the status the server answers."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(head + body_start)
        start = time.monotonic()
        reply = sock.recv(4096)
        assert time.monotonic() - start < 5
    return int(reply.split(b" ", 2)[1])


def test_an_oversize_declared_length_is_refused_before_the_body_is_sent(server: Server) -> None:
    head = (
        b"POST /predict HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
        b"Content-Length: 100000000\r\n\r\n"
    )

    assert _status_before_body_ends(server, head, b'{"texts": ["') == 413


def test_an_oversize_chunked_body_is_refused_before_it_ends(server: Server) -> None:
    head = (
        b"POST /predict HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n"
    )
    chunk = b"a" * 4096
    # Past the cap, but without the terminating zero-size chunk: the body never ends.
    body = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(MAX_BYTES // 4096 + 2))

    assert _status_before_body_ends(server, head, body) == 413


def test_bad_requests_are_never_a_server_error(client: httpx.Client) -> None:
    """Odd but plausible inputs: deep nesting, huge numbers, unicode, a GET."""
    responses = [
        client.post("/predict", json={"texts": [["nested"]]}),
        client.post("/predict", json={"texts": [10**400]}),
        client.post("/predict", json={"texts": ["ünïcødé 😀 and emoji"]}),
        client.get("/predict"),
    ]

    assert [r.status_code < 500 for r in responses] == [True] * len(responses)
    assert responses[2].status_code == 200


def test_a_refused_request_is_one_log_line_without_a_traceback(
    client: httpx.Client, server: Server
) -> None:
    assert client.post("/predict", json={"wrong": 1}).status_code == 400
    assert client.post("/predict", json={"texts": []}).status_code == 400

    deadline = time.monotonic() + 10  # workers write their log lines asynchronously
    while "POST /predict: refused 400, invalid request: texts: List should" not in (
        server.log.read_text()
    ):
        assert time.monotonic() < deadline, server.log.read_text()[-2000:]
        time.sleep(0.1)
    log = server.log.read_text()
    assert "Traceback" not in log
    assert "ValidationError" not in log
