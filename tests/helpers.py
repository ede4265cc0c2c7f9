"""Helpers the tests share: data, the training CLI, a real `bentoml serve`, admin calls.

Fixtures live in the conftest files; everything a test module imports lives here.
"""

from __future__ import annotations

import contextlib
import csv
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import onnxruntime as ort
import pytest
import sqlalchemy as sa

from tests.tiny_model import FILLER, NEGATIVE, NEUTRAL, POSITIVE

ROOT = Path(__file__).resolve().parent.parent
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


def unavailable(what: str, why: Exception) -> None:
    """A tool `make test` installs is missing: skipped where it cannot be installed (not
    root, no package), a failure under CI, where its absence is a broken set-up."""
    if os.environ.get("CI"):
        pytest.fail(f"{what} is required under CI: {why}", pytrace=False)
    pytest.skip(f"{what} tests skipped: {why}")


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


@contextmanager
def serve_copy(
    root: Path, tiny_version: str, bentoml_home: Path, env: dict[str, str]
) -> Iterator[Server]:
    """A ready server of a copy of the session's tiny version, admin API on, its own state
    and model store (what it stores or registers stays its own), the default body limits."""
    name = tiny_version.split(":")[0]
    extra = {
        "BENTOML_HOME": str(own_model_store(root, bentoml_home, name)),
        "STATE_DIR": str(root / "state"),
        "ADMIN_TOKEN": TOKEN,
        "MAX_BODY_BYTES": "1048576",  # schemathesis' valid bodies can pass the tests' 16 KiB
        "RETRAIN_TIMEOUT_S": "10",  # the jobs a test queues end quickly
        **env,
    }
    with bentoml_serve(name, root / "bentoml.log", extra) as running:
        wait_until(f"{running.url}/readyz", 200)
        yield running


def make_texts(words: list[str], n: int, rng: random.Random) -> list[str]:
    """Short texts whose sentiment word decides the label, among neutral filler."""
    texts = set()
    while len(texts) < n:
        body = rng.sample(FILLER, rng.randint(2, 6)) + rng.sample(words, rng.randint(1, 2))
        rng.shuffle(body)
        texts.add(" ".join(body))
    return sorted(texts)


def write_sentiment_csv(path: Path, per_class: int, seed: int = 0) -> Path:
    """A learnable 3-class CSV (negative/neutral/positive) with `per_class` rows each."""
    rng = random.Random(seed)
    rows = [
        (text, label)
        for label, words in (("negative", NEGATIVE), ("neutral", NEUTRAL), ("positive", POSITIVE))
        for text in make_texts(words, per_class, rng)
    ]
    rng.shuffle(rows)
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label"])
        writer.writerows(rows)
    return path


def run_training_cli(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """`python -m training ARGS` in a child process, as a user runs it."""
    return subprocess.run(
        [sys.executable, "-m", "training", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=check,
        timeout=600,
    )


def fit_tiny(base_model: Path, data: Path, name: str, *extra: str) -> str:
    """Fine-tune the tiny BERT through the CLI; returns the registered tag (last stdout line)."""
    result = run_training_cli(
        "fit",
        "--data",
        str(data),
        "--base-model",
        str(base_model),
        "--name",
        name,
        "--epochs",
        "15",
        "--lr",
        "2e-3",
        "--batch-size",
        "16",
        # A randomly initialised encoder must learn its embeddings, and must not stop early.
        "--no-freeze-embeddings",
        "--patience",
        "60",
        "--no-store",  # a test opts in with --store (the last flag wins)
        *extra,
    )
    return result.stdout.strip().splitlines()[-1]


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


TOKEN = "test-admin-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
# No overrides: a job reruns the active version's recipe (the one fit_tiny used).
WINNING: dict[str, float] = {}
LOSING = {"mode": "refit", "epochs": 0.2, "lr": 1e-7}
# The tiny models score 0.9-1.0 on ~40 held-out texts, where one text moves macro-F1
# by several points and the bootstrap's bounds are wide; the margin absorbs that noise,
# and a candidate that learned nothing (LOSING: ~0.2-0.4) still loses clearly. Each
# condition of the gate is unit-tested in tests/retrain/test_gate.py.
GATE_MARGIN = "0.2"


def read_examples(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return [{"text": r["text"], "label": r["label"]} for r in csv.DictReader(f)]


def wait_for_job(client: httpx.Client, job_id: str, timeout_s: float = 240) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        job: dict[str, Any] = client.get(f"/jobs/{job_id}", headers=AUTH).json()
        if job["state"] in ("succeeded", "rejected", "failed", "cancelled"):
            return job
        time.sleep(0.5)
    raise TimeoutError(f"job {job_id} did not finish in {timeout_s} s")


def served_version(client: httpx.Client) -> str:
    response = client.post("/predict", json={"texts": ["the food was great"]})
    assert response.status_code == 200, response.text
    version: str = response.json()[0]["model_version"]
    return version


def wait_for_version(client: httpx.Client, version: str, timeout_s: float = 20) -> None:
    deadline = time.monotonic() + timeout_s
    while served_version(client) != version:
        assert time.monotonic() < deadline, f"{version} not served within {timeout_s} s"
        time.sleep(0.2)


def own_model_store(root: Path, bentoml_home: Path, name: str) -> Path:
    """A BENTOML_HOME under `root` holding a copy of the session's versions of `name`:
    what a server there registers or deletes, no other test sees."""
    home = root / "home"
    shutil.copytree(bentoml_home / "models" / name, home / "models" / name)
    return home


class Retrainer:
    """A server with admin enabled, its own model, and its own database.

    `first`: the version to start from, already in the store the server uses
    (BENTOML_HOME in `extra`, e.g. `own_model_store`); else one is fitted here.
    """

    def __init__(
        self,
        root: Path,
        name: str,
        base: Path,
        data: Path,
        extra: dict[str, str],
        first: str | None = None,
    ) -> None:
        self.name = name
        self.state = root / "state"
        self.log = root / "bentoml.log"
        self.env = {
            "ADMIN_TOKEN": TOKEN,
            "STATE_DIR": str(self.state),
            "JOB_STALE_SECONDS": "5",
            "RETRAIN_THREADS": "1",
            "MAX_ADMIN_BODY_BYTES": "65536",
            # The first tiny version saw most evaluation texts in training (a stratified
            # split) and scores ~1.0 on them; a fair candidate may tie a hair below.
            "GATE_MARGIN": GATE_MARGIN,
            "GATE_MIN_EVAL": "10",  # ~40 held-out texts in the tiny data
            # The tiny BERT starts from random weights: a refit needs fit_tiny's 15 epochs.
            "REFIT_EPOCHS": "15",
            **extra,
        }
        # The hash split, as `make serve` trains the first model: the active version's
        # evaluation texts are then held out from it as well as from every candidate.
        self.first = first or fit_tiny(base, data, name, "--split", "hash")

    def serve(self) -> Any:
        return bentoml_serve(self.name, self.log, self.env)


def kill_tree(pid: int) -> None:
    """SIGKILL a process and every descendant at once, as when a pod or machine dies.

    BentoML's workers sit in process groups of their own, so killing the
    server's group alone would leave them running.
    """
    pids = [pid]
    for parent in pids:  # grows while we walk it: a breadth-first walk of the tree
        children = subprocess.run(
            ["ps", "-o", "pid=", "--ppid", str(parent)], capture_output=True, text=True
        ).stdout.split()
        pids.extend(int(c) for c in children)
    for victim in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(victim, signal.SIGKILL)


class CountingRuns:
    """ONNX Runtime's session, counting the runs made on it."""

    def __init__(self, session: ort.InferenceSession) -> None:
        self.session, self.runs = session, 0

    def run(self, *args: object) -> object:
        self.runs += 1
        return self.session.run(*args)


@contextmanager
def database_down(url: str) -> Iterator[None]:
    """Every job write fails while the block runs, as with a database that is down.

    PostgreSQL: the database refuses new connections and its open ones are
    terminated (the pool's pre-ping then fails too). SQLite, a file that cannot
    go away while open: the jobs table is renamed away, so each statement on it fails.
    """
    target = sa.make_url(url)
    sqlite = target.get_backend_name() == "sqlite"
    if sqlite:
        engine = sa.create_engine(url)
        down, up = "ALTER TABLE jobs RENAME TO jobs_away", "ALTER TABLE jobs_away RENAME TO jobs"
    else:
        engine = sa.create_engine(target.set(database="postgres"), isolation_level="AUTOCOMMIT")
        down = f'ALTER DATABASE "{target.database}" WITH ALLOW_CONNECTIONS false'
        up = f'ALTER DATABASE "{target.database}" WITH ALLOW_CONNECTIONS true'
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql(down)
            if not sqlite:
                conn.execute(
                    sa.text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                            "WHERE datname = :name AND pid <> pg_backend_pid()"),
                    {"name": target.database},
                )  # fmt: skip
        yield
    finally:
        with engine.begin() as conn:
            conn.exec_driver_sql(up)
        engine.dispose()
