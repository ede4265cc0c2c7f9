"""A full disk under a real server, on SQLite and on PostgreSQL: intake answers 507 with what
to do, predictions go on, /metrics shows the disk, and nothing acknowledged is lost.

The database lives on a small tmpfs this test mounts and fills (SQLite: STATE_DIR;
PostgreSQL: a tablespace, so the server's own WAL stays on a roomy disk and a full
tablespace is its "could not extend file" error, SQLSTATE 53100). Mounting needs root.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from tests.helpers import AUTH, TOKEN, bentoml_serve, own_model_store, scrape, wait_until
from tests.pg import SUPERUSER, PostgresServer

FREE = 'selftune_filesystem_free_bytes{dir="state_dir"}'


@contextlib.contextmanager
def small_disk(size: str) -> Iterator[Path]:
    """A tmpfs of `size` mounted for the block; skips where mounting is refused.

    Its mount point is one PostgreSQL's server user can reach (pytest's are root's only).
    """
    if os.geteuid() != 0:
        pytest.skip("a full disk is tested on a tmpfs, and mounting one needs root")
    where = Path(tempfile.mkdtemp(prefix="selftune-disk-"))
    where.chmod(0o755)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        where.rmdir()
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.strip()})")
    try:
        yield where
    finally:
        subprocess.run(["umount", "--lazy", str(where)], check=True)
        where.rmdir()


def fill(disk: Path) -> Path:
    """Write a file until the disk refuses another byte."""
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        for chunk in (1 << 16, 1 << 12, 1):
            while True:
                try:
                    os.write(fd, b"\0" * chunk)
                except OSError as exc:
                    assert exc.errno == errno.ENOSPC, exc
                    break
    finally:
        os.close(fd)
    return filler


@contextlib.contextmanager
def postgres_on(disk: Path, server: PostgresServer) -> Iterator[str]:
    """A database whose tables live in a tablespace on `disk`; its URL."""
    location = disk / "tablespace"
    location.mkdir()
    shutil.chown(location, user=SUPERUSER)
    name = f"full_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(server.url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f"CREATE TABLESPACE {name} LOCATION '{location}'")
        conn.exec_driver_sql(f"CREATE DATABASE {name} TABLESPACE {name}")
    try:
        yield server.url_for(name)
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
            conn.exec_driver_sql(f"DROP TABLESPACE IF EXISTS {name}")
        admin.dispose()


def rows(n: int, tag: str) -> list[dict[str, str]]:
    """`n` distinct examples of ~300 characters each."""
    filler = " ".join(["the service was plain and the day was ordinary"] * 6)
    return [{"text": f"{tag} {i} {filler}", "label": "neutral"} for i in range(n)]


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_a_full_disk_refuses_intake_with_507_while_predictions_go_on_and_nothing_is_lost(
    database: str,
    request: pytest.FixtureRequest,
    tiny_version: str,
    bentoml_home: Path,
    tmp_path: Path,
) -> None:
    name = tiny_version.split(":")[0]
    env = {
        "ADMIN_TOKEN": TOKEN,
        "BENTOML_HOME": str(own_model_store(tmp_path, bentoml_home, name)),
        "STATE_DIR": str(tmp_path / "state"),
    }
    with contextlib.ExitStack() as stack:
        # PostgreSQL copies its template database (~8 MB) into the tablespace.
        disk = stack.enter_context(small_disk("8m" if database == "sqlite" else "16m"))
        if database == "sqlite":
            env["STATE_DIR"] = str(disk)
        else:
            env["DATABASE_URL"] = stack.enter_context(
                postgres_on(disk, request.getfixturevalue("postgres"))
            )
        server = stack.enter_context(bentoml_serve(name, tmp_path / "bentoml.log", env))
        wait_until(f"{server.url}/readyz", 200)
        http = stack.enter_context(httpx.Client(base_url=server.url, timeout=60, headers=AUTH))
        acknowledged = rows(50, "kept")
        assert http.post("/examples", json={"examples": acknowledged}).status_code == 200

        filler = fill(disk)
        refused = http.post("/examples", json={"examples": rows(4000, "refused")})

        assert refused.status_code == 507, refused.text
        error = refused.json()["error"]
        assert "disk is full, so nothing of this request was stored" in error
        assert "free space on the volume of STATE_DIR" in error
        assert http.post("/predict", json={"texts": ["the food was great"]}).status_code == 200
        assert http.get("/readyz").status_code == 200
        listed = http.get("/examples", params={"limit": 1000}).json()["items"]
        assert sorted(r["text"] for r in listed) == sorted(r["text"] for r in acknowledged)
        if database == "sqlite":  # our disk: /metrics shows it full (PostgreSQL's is its own)
            deadline = time.monotonic() + 10  # the gauges follow at the next job-runner poll
            while (metrics := scrape(http)).get(FREE, 1 << 30) > 1 << 16:
                assert time.monotonic() < deadline, metrics.get(FREE)
                time.sleep(0.5)
            used = metrics['selftune_directory_bytes{dir="state_dir"}']
            assert used >= filler.stat().st_size

        filler.unlink()
        retried = http.post("/examples", json={"examples": rows(4000, "refused")})
        assert retried.status_code == 200, retried.text
        assert retried.json()["total"] == 4050
