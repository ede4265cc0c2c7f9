"""A server with no model starts, says how to get one, and picks one up live.

It also exercises the hot-swap mechanism (docs/DESIGN.md #5): the first
version registered is adopted; a newer one replaces it in every worker, without
a failed request, once the active-version record names it, and the answers say
which version scored them.
"""

from __future__ import annotations

import time
from pathlib import Path

import httpx

from core import registry
from service.model_holder import active_version_resolver
from service.settings import Settings
from store import open_store, versions
from tests.helpers import bentoml_serve

STREAK = 20


def copy_version(tag: str, name: str) -> str:
    """Register the files of version `tag` again under model `name`; returns the new version."""
    source = registry.get(tag)
    return registry.register(name, source.path, source.metadata).version


def serving(client: httpx.Client, version: str, unready_ok: bool, timeout_s: float = 30) -> bool:
    """True once STREAK answers in a row (spread over both workers) come from `version`.

    Until every worker has loaded a first model some answers are 503
    (`unready_ok`); during a swap none may fail.
    """
    deadline = time.monotonic() + timeout_s
    streak = 0
    while time.monotonic() < deadline and streak < STREAK:
        response = client.post("/predict", json={"texts": ["the food was great"]})
        if unready_ok and response.status_code == 503:
            streak = 0
            continue
        assert response.status_code == 200, response.text
        streak = streak + 1 if response.json()[0]["model_version"] == version else 0
    return streak >= STREAK


def test_no_model_means_not_ready_then_new_versions_are_served(
    tiny_version: str, tmp_path: Path
) -> None:
    name = "late-model"
    with (
        bentoml_serve(name, tmp_path / "bentoml.log") as server,
        httpx.Client(base_url=server.url, timeout=30) as client,
    ):
        assert client.get("/livez").status_code == 200
        assert client.get("/readyz").status_code == 503
        refused = client.post("/predict", json={"texts": ["fine"]})
        assert refused.status_code == 503
        assert "python -m training fit" in refused.json()["error"]

        first = copy_version(tiny_version, name)
        assert serving(client, first, unready_ok=True)
        assert client.get("/readyz").status_code == 200

        # A newer version is only served once it is made active (promotion or the API).
        second = copy_version(tiny_version, name)
        assert not serving(client, second, unready_ok=False, timeout_s=3)
        store = open_store(Settings().resolved_database_url)  # the server's database
        with store.transaction() as tx:
            versions.activate(tx, name, f"{name}:{second}", "test")
        assert serving(client, second, unready_ok=False)


def test_a_new_database_never_adopts_a_retrain_candidate(tiny_version: str, tmp_path: Path) -> None:
    """With no active record (a new or lost database) the newest plain fit is adopted.

    A newer version that a retrain trained to replace another one may have been
    rejected by the gate, and that decision was in the database.
    """
    source = registry.get(tiny_version)
    fitted = registry.register("adoption", source.path, source.metadata)
    candidate = registry.register("adoption", source.path, source.metadata | {"parent": fitted.tag})
    assert registry.latest("adoption") == candidate  # the newest, yet not the one to serve

    resolve = active_version_resolver(open_store(f"sqlite:///{tmp_path}/new.db"), "adoption")
    assert resolve() == fitted.tag
