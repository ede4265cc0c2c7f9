"""A real `bentoml serve` of the tiny model, spoken to over HTTP.

The server is a child process on a free loopback port, using the session's
temporary BENTOML_HOME (tests/conftest.py), with small limits so that every
limit is cheap to hit. Nothing of ours is mocked: what these tests see is what
a client sees.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.helpers import Server, bentoml_serve, wait_until


@pytest.fixture(scope="session")
def server(tiny_version: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The tiny model served by two workers, ready to answer."""
    log_path = tmp_path_factory.mktemp("serve") / "bentoml.log"
    with bentoml_serve(tiny_version.split(":")[0], log_path) as running:
        wait_until(f"{running.url}/readyz", 200)
        yield running


@pytest.fixture(scope="session")
def client(server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=30) as http:
        yield http
