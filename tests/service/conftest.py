"""A real `bentoml serve` of the tiny model, spoken to over HTTP.

The server is a child process on a free loopback port, using the session's
temporary BENTOML_HOME (tests/conftest.py), with small limits so that every
limit is cheap to hit. Nothing of ours is mocked: what these tests see is what
a client sees.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.tiny_model import FILLER, NEGATIVE, NEUTRAL, POSITIVE

ROOT = Path(__file__).resolve().parents[2]
STARTUP_TIMEOUT_S = 60.0

# Small limits, so each one is cheap to exceed; two workers, so metrics and
# answers are checked across processes as production runs them.
LIMITS = {
    "MAX_TEXTS_PER_REQUEST": "32",
    "MAX_TEXT_CHARS": "400",
    "MAX_BODY_BYTES": "16384",
    "MAX_BATCH_SIZE": "16",
    "MAX_LATENCY_MS": "5000",
    "WORKERS": "2",
    "ORT_THREADS": "1",
    "MODEL_POLL_SECONDS": "0.5",
}


@dataclass(frozen=True)
class Server:
    url: str
    port: int
    model_name: str
    pid: int  # also the process group of the server and its workers
    log: Path  # its stdout and stderr


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_until(url: str, status: int, timeout_s: float = STARTUP_TIMEOUT_S) -> float:
    """Poll `url` until it answers `status`; returns the seconds it took."""
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        try:
            if httpx.get(url, timeout=2).status_code == status:
                return time.monotonic() - start
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{url} did not answer {status} within {timeout_s} s")


@contextmanager
def bentoml_serve(
    model_name: str, log_path: Path, extra_env: dict[str, str] | None = None
) -> Iterator[Server]:
    """Run `bentoml serve service.service:TextClassifier` until the block ends.

    Yields once the server is alive (/livez), not necessarily ready: the
    readiness tests need to see it before a model exists.
    """
    port = free_port()
    env = {**os.environ, **LIMITS, "MODEL_NAME": model_name, "PORT": str(port), **(extra_env or {})}
    env["TOKENIZERS_PARALLELISM"] = "false"
    with log_path.open("w") as log:
        # A session of its own, so teardown can stop the server and its workers together.
        proc = subprocess.Popen(
            [sys.executable, "-m", "bentoml", "serve", "service.service:TextClassifier"],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = Server(f"http://127.0.0.1:{port}", port, model_name, proc.pid, log_path)
    try:
        wait_until(f"{server.url}/livez", 200)
        yield server
    finally:
        if proc.poll() is None:  # a test may have killed it already
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


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


def mixed_texts(n: int, seed: int = 1) -> list[str]:
    """`n` distinct texts from 1 to ~60 words, built from the tiny model's vocabulary."""
    rng = random.Random(seed)
    texts: set[str] = set()
    while len(texts) < n:
        words = rng.choices(FILLER, k=rng.randint(0, 58))
        words += rng.sample(rng.choice([POSITIVE, NEGATIVE, NEUTRAL]), rng.randint(1, 2))
        rng.shuffle(words)
        texts.add(" ".join(words))
    return sorted(texts)


def scrape(client: httpx.Client) -> dict[str, float]:
    """/metrics as {sample name with labels: value}, e.g. 'x_total{label="positive"}'."""
    from prometheus_client.parser import text_string_to_metric_families

    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(client.get("/metrics").text):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return samples
