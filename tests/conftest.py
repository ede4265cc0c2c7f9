"""Fixtures shared by every test package: a tiny base model, small data, a model store.

The expensive ones are session-scoped: the tiny BERT is built once, and one
tiny version is fine-tuned and registered once through the real training CLI,
into a temporary BENTOML_HOME that the whole session (and every server the
tests start) uses.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.deploy.conftest import Manifest, render
from tests.fake_k8s import NAMESPACE, TEMPLATE, FakeKubernetes, fake_kubernetes
from tests.helpers import fit_tiny, unavailable, write_sentiment_csv
from tests.pg import PostgresServer, PostgresUnavailableError, postgres_server
from tests.tiny_model import build_tiny_bert

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def tiny_base_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(scope="session")
def sentiment_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_sentiment_csv(tmp_path_factory.mktemp("data") / "train.csv", per_class=120)


@pytest.fixture(scope="session", autouse=True)
def bentoml_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Every test, and every process a test starts, uses one temporary model store."""
    home = tmp_path_factory.mktemp("bentoml-home")
    old = os.environ.get("BENTOML_HOME")
    os.environ["BENTOML_HOME"] = str(home)
    # The example/job database too: never the checkout's var/ (the Makefile's default).
    os.environ["STATE_DIR"] = str(tmp_path_factory.mktemp("state"))
    os.environ.pop("DATABASE_URL", None)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")
    yield home
    if old is None:
        os.environ.pop("BENTOML_HOME", None)
    else:
        os.environ["BENTOML_HOME"] = old


@pytest.fixture(scope="session")
def tiny_version(tiny_base_model: Path, sentiment_csv: Path, bentoml_home: Path) -> str:
    """One tiny model fine-tuned and registered once per session: its `name:version` tag.

    Served as int8, so the service tests exercise batched static int8: with 36
    evaluation texts one text is 2.8 macro-F1 points, which static int8 of this
    32-wide encoder can cost, so the budget here is 5 points.
    """
    return fit_tiny(tiny_base_model, sentiment_csv, "tiny-sentiment", "--int8-budget", "0.05")


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """One throwaway PostgreSQL for the session (see tests/pg.py).

    Skipped only where no server can be installed (not root, no package);
    under CI, where `make test` installs it, its absence is a failure.
    """
    try:
        with postgres_server() as server:
            yield server
    except PostgresUnavailableError as exc:
        unavailable("PostgreSQL", exc)


@pytest.fixture(scope="session")
def postgres_url(postgres: PostgresServer) -> str:
    """SQLAlchemy URL (postgresql+psycopg://) of a fresh database on the throwaway server."""
    return postgres.create_database("selftune_test")


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty database per test on each backend the store supports."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'store.db'}"
    server: PostgresServer = request.getfixturevalue("postgres")
    return server.create_database(f"t_{uuid.uuid4().hex[:16]}")


@pytest.fixture(scope="session")
def podtemplate() -> Manifest:
    """The retrain PodTemplate exactly as `kubectl apply -k k8s/overlays/scaled` sends it."""
    [template] = [
        o
        for o in render("scaled")
        if o["kind"] == "PodTemplate" and o["metadata"]["name"] == TEMPLATE
    ]
    assert template["metadata"]["namespace"] == NAMESPACE
    return template


@pytest.fixture
def fake(podtemplate: Manifest) -> Iterator[FakeKubernetes]:
    """A fake Kubernetes API serving the retrain PodTemplate (tests/fake_k8s.py)."""
    with fake_kubernetes() as server:
        server.add_podtemplate(podtemplate)
        yield server
