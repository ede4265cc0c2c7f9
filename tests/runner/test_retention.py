"""Version retention in-process, against a real model store and a real database: what is
kept (the active version, its rollback target, their incremental chains, the newest few),
what is deleted with its job log, and that two replicas never delete one version twice."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import time
import uuid
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import update

from core import registry
from core.settings import RunnerSettings
from runner.retention import apply_retention
from store import Store, jobs, versions
from store.db import utcnow
from store.jobs import JobState
from store.versions import VersionRow, VersionStatus

DAY = 86400


@pytest.fixture
def name() -> str:
    """A model of this test's own in the session's store."""
    return f"retention-{uuid.uuid4().hex[:8]}"


def register(source: str, name: str, tmp_path: Path, mode: str = "refit", parent: str = "") -> str:
    """A real version of `name`: the session tiny model's files, this provenance."""
    staging = tmp_path / uuid.uuid4().hex
    staging.mkdir()
    origin = registry.get(source)
    for file in (registry.ONNX_FILE, registry.TOKENIZER_FILE, registry.METRICS_FILE):
        shutil.copy2(origin.path / file, staging / file)
    metadata = {**origin.metadata, "mode": mode, "parent": parent or None}
    return registry.register(name, staging, metadata).tag


def set_status(
    store: Store, name: str, tag: str, status: VersionStatus, days_ago: float = 0
) -> None:
    with store.transaction() as tx:
        versions.set_status(tx, name, tag, status, f"test: {status}")
        if days_ago:
            when = utcnow() - timedelta(days=days_ago)
            tx.execute(update(VersionRow).where(VersionRow.tag == tag).values(updated_at=when))
    time.sleep(0.01)  # distinct times: retention orders by them


def finished_job(store: Store, candidate: str | None, logs: Path, age_days: float = 0) -> Path:
    """A job that ran (and, given `candidate`, registered it), with its log file."""
    with store.transaction() as tx:
        job = jobs.create(tx, "m", {})
    assert jobs.claim_next(store) is not None
    with store.transaction() as tx:
        if candidate:
            jobs.report(tx, job.id, 0.9, "gate", candidate_version=candidate)
        jobs.finish(tx, job.id, JobState.REJECTED)
    return job_log(logs, job.id, age_days)


def job_log(logs: Path, job_id: str, age_days: float = 0) -> Path:
    logs.mkdir(parents=True, exist_ok=True)
    path = logs / f"{job_id}.log"
    path.write_text("training...\n")
    when = time.time() - age_days * DAY
    os.utime(path, (when, when))
    return path


def test_retention_keeps_the_active_chain_the_rollback_target_and_the_newest_few(
    tiny_version: str, name: str, tmp_path: Path
) -> None:
    settings = RunnerSettings(
        model_name=name, state_dir=tmp_path, retain_versions=2, retain_version_days=30
    )
    store = Store(settings.resolved_database_url)
    logs = tmp_path / "jobs"
    old = register(tiny_version, name, tmp_path)  # retired long before: deleted
    root = register(tiny_version, name, tmp_path, "refit", old)
    step = register(tiny_version, name, tmp_path, "incremental", root)
    active = register(tiny_version, name, tmp_path, "incremental", step)
    rollback = register(tiny_version, name, tmp_path)
    rejected = [register(tiny_version, name, tmp_path) for _ in range(4)]
    abandoned = register(tiny_version, name, tmp_path)  # its job failed after registering it
    outside = register(tiny_version, name, tmp_path)  # `training fit`: no status here
    for tag in (old, root, step):
        set_status(store, name, tag, VersionStatus.RETIRED)
    set_status(store, name, rejected[0], VersionStatus.REJECTED, days_ago=40)
    set_status(store, name, rejected[1], VersionStatus.REJECTED)
    set_status(store, name, abandoned, VersionStatus.CANDIDATE)
    set_status(store, name, rejected[2], VersionStatus.REJECTED)
    set_status(store, name, rollback, VersionStatus.RETIRED)
    set_status(store, name, rejected[3], VersionStatus.REJECTED)
    with store.transaction() as tx:
        versions.activate(tx, name, active, "test")
    deleted_log = finished_job(store, rejected[1], logs)
    kept_log = finished_job(store, rejected[3], logs)
    versionless = [finished_job(store, None, logs, age_days=age) for age in (3, 2, 1)]
    stray = logs / "notes.log"  # not a job log: never ours to delete
    stray.write_text("kept\n")

    deleted = apply_retention(store, settings)

    assert sorted(deleted) == sorted([old, rejected[0], rejected[1], abandoned])
    left = {v.tag for v in registry.list_versions(name)}
    assert left == {root, step, active, rollback, rejected[2], rejected[3], outside}
    for tag in deleted:
        with pytest.raises(registry.VersionNotFoundError):
            registry.get(tag)
    with store.transaction() as tx:
        states = versions.states(tx, name)
    assert states[old].status == VersionStatus.DELETED
    assert "RETAIN_VERSIONS=2" in (states[old].reason or "")
    assert not deleted_log.exists() and kept_log.exists() and stray.exists()
    assert [p.exists() for p in versionless] == [False, True, True]  # the newest two
    assert apply_retention(store, settings) == []  # nothing more to do


def test_a_running_job_keeps_the_candidates_and_its_log(
    tiny_version: str, name: str, tmp_path: Path
) -> None:
    settings = RunnerSettings(model_name=name, state_dir=tmp_path, retain_versions=0)
    store = Store(settings.resolved_database_url)
    candidate = register(tiny_version, name, tmp_path)
    set_status(store, name, candidate, VersionStatus.CANDIDATE)
    with store.transaction() as tx:
        job = jobs.create(tx, "m", {})
    assert jobs.claim_next(store) is not None
    log = job_log(tmp_path / "jobs", job.id, age_days=100)

    assert apply_retention(store, settings) == []

    assert registry.get(candidate) and log.exists()


def test_a_version_is_marked_deleted_once_and_never_while_active(
    tiny_version: str, name: str, tmp_path: Path
) -> None:
    """Of two replicas applying retention at once, exactly one removes a version's files."""
    store = Store(f"sqlite:///{tmp_path / 's.db'}")
    rejected, activated = f"{name}:a", f"{name}:b"
    for tag in (rejected, activated):
        set_status(store, name, tag, VersionStatus.REJECTED)
    with store.transaction() as tx:
        versions.activate(tx, name, activated, "rolled forward meanwhile")

    with store.transaction() as tx:
        first = versions.mark_deleted(tx, name, rejected, VersionStatus.REJECTED, "r")
        second = versions.mark_deleted(tx, name, rejected, VersionStatus.REJECTED, "r")
        active = versions.mark_deleted(tx, name, activated, VersionStatus.REJECTED, "r")

    assert (first, second, active) == (True, False, False)


def test_a_version_whose_folder_cannot_be_removed_is_named_and_the_others_still_go(
    tiny_version: str, name: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """As when another process holds a file open on a network volume (NFS: EBUSY)."""
    if os.geteuid() != 0:
        pytest.skip("a folder that cannot be removed is made with a mount, which needs root")
    settings = RunnerSettings(model_name=name, state_dir=tmp_path, retain_versions=0)
    store = Store(settings.resolved_database_url)
    other, stuck = register(tiny_version, name, tmp_path), register(tiny_version, name, tmp_path)
    for tag in (other, stuck):  # `stuck` last: the newest, tried first
        set_status(store, name, tag, VersionStatus.REJECTED)
    busy = registry.get(stuck).path / "busy"
    busy.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(busy)], check=True)
    try:
        with caplog.at_level(logging.ERROR, logger="runner.retention"):
            deleted = apply_retention(store, settings)
    finally:
        subprocess.run(["umount", str(busy)], check=True)

    assert deleted == [other]
    assert f"version={stuck} is marked deleted but its folder could not be removed" in caplog.text
    assert f"remove it with `bentoml models delete {stuck}`" in caplog.text
    assert registry.list_versions(name) == []  # the half-removed folder is skipped, not fatal
