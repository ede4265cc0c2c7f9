"""Two service processes sharing one PostgreSQL database and one model store (the scaled setup).

A retrain run by either replica, or an activation sent to either, reaches both:
each worker of each process follows the active-version record in PostgreSQL.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import httpx
import pytest

from tests.helpers import (
    AUTH,
    GATE_MARGIN,
    TOKEN,
    WINNING,
    bentoml_serve,
    fit_tiny,
    read_examples,
    wait_for_job,
    wait_for_version,
    wait_until,
)


def test_a_version_promoted_through_one_replica_is_served_by_the_other(
    postgres_url: str, tiny_base_model: Path, sentiment_csv: Path, tmp_path: Path
) -> None:
    first = fit_tiny(tiny_base_model, sentiment_csv, "tiny-shared", "--split", "hash")
    env = {
        "ADMIN_TOKEN": TOKEN,
        "DATABASE_URL": postgres_url,
        "RETRAIN_THREADS": "1",
        "GATE_MARGIN": GATE_MARGIN,
    }
    with contextlib.ExitStack() as stack:
        servers = [
            stack.enter_context(bentoml_serve("tiny-shared", tmp_path / f"replica{i}.log", env))
            for i in range(2)
        ]
        clients = [stack.enter_context(httpx.Client(base_url=s.url, timeout=30)) for s in servers]
        for server in servers:
            wait_until(f"{server.url}/readyz", 200)
        a, b = clients
        for client in clients:
            wait_for_version(client, first.split(":")[1])

        assert (
            a.post(
                "/examples", headers=AUTH, json={"examples": read_examples(sentiment_csv)}
            ).status_code
            == 200
        )
        assert (
            b.post(
                "/examples", headers=AUTH, json={"examples": read_examples(sentiment_csv)[:5]}
            ).json()["accepted"]
            == 0
        )  # the same database: already stored through the other replica
        job_id = b.post("/retrain", headers=AUTH, json=WINNING).json()["job_id"]
        job = wait_for_job(a, job_id)  # one job list, whichever replica runs it
        assert job["state"] in ("succeeded", "rejected"), job
        assert (
            b.get(f"/jobs/{job_id}", headers=AUTH).json()
            == a.get(f"/jobs/{job_id}", headers=AUTH).json()
        )
        # Whatever the gate decided, promoting its candidate through B reaches A too.
        candidate = job["candidate_version"].split(":")[1]
        assert b.post(f"/models/{candidate}/activate", headers=AUTH).status_code == 200
        for client in clients:
            wait_for_version(client, candidate, timeout_s=15)

        rollback = a.post(f"/models/{first.split(':')[1]}/activate", headers=AUTH)
        assert rollback.status_code == 200
        wait_for_version(b, first.split(":")[1], timeout_s=15)
        assert b.get("/models", headers=AUTH).json()["active"] == first


@pytest.fixture(autouse=True)
def _needs_postgres(postgres_url: str) -> None:
    """Skips (outside CI) or fails (in CI) through the `postgres` fixture when none can run."""
