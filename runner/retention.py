"""Version retention: rejected, retired and abandoned versions are kept only so long.

Every retrain registers a version (~100 MB for MiniLM: ONNX, tokenizer and the
fine-tuned weights a later incremental run warm-starts from) and a local job
writes a log, so without a bound the model store and STATE_DIR fill their
volumes. After each job, the worker that ran it (`runner.queue`) deletes, from
the versions whose status is rejected, retired, or candidate with no job
running (a job that failed or was cancelled after registering it), all but the
RETAIN_VERSIONS most recently changed, and any whose status changed more than
RETAIN_VERSION_DAYS ago, with the logs of their jobs.

Never deleted: the active version; its rollback target (the most recently
retired version: retiring happens only when another is activated); and the
incremental chain of each: the `parent` walk from it while the version's mode
is incremental, down to and including the first version that is not, which the
quality gate compares candidates with. Nor a version registered outside the
service (`python -m training fit`: it has no status here). A version is marked
`deleted` in the database first, conditionally (still that status, not
active), so of several replicas exactly one removes its files, and a version
activated meanwhile is kept.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path

from bentoml.exceptions import BentoMLException

from core import registry
from core.registry import ModelVersion
from core.settings import RunnerSettings
from store import Store, jobs, versions
from store.db import utcnow
from store.versions import VersionState, VersionStatus

log = logging.getLogger(__name__)

JOB_LOG = re.compile(r"^[0-9a-f]{32}\.log$")  # STATE_DIR/jobs/<job id>.log (runner.local)
EXPIRED = (VersionStatus.REJECTED, VersionStatus.RETIRED)


def chain(tag: str | None, registered: Mapping[str, ModelVersion]) -> set[str]:
    """`tag` and its parents while each is incremental, down to the first that is not."""
    kept: set[str] = set()
    while tag is not None and tag in registered and tag not in kept:
        kept.add(tag)
        metadata = registered[tag].metadata
        tag = metadata.get("parent") if metadata.get("mode") == "incremental" else None
    return kept


def doomed(
    active: str | None,
    states: Mapping[str, VersionState],
    registered: Mapping[str, ModelVersion],
    job_running: bool,
    settings: RunnerSettings,
) -> list[str]:
    """The versions retention deletes now, oldest status change last."""
    retired = [t for t, s in states.items() if s.status == VersionStatus.RETIRED]
    rollback = max(retired, key=lambda t: states[t].updated_at, default=None)
    protected = chain(active, registered) | chain(rollback, registered)
    deletable = EXPIRED if job_running else (*EXPIRED, VersionStatus.CANDIDATE)
    ordered = sorted(
        (
            tag
            for tag, state in states.items()
            if state.status in deletable and tag in registered and tag not in protected
        ),
        key=lambda t: states[t].updated_at,
        reverse=True,
    )
    now = utcnow()
    max_age = timedelta(days=settings.retain_version_days)
    kept = {
        tag
        for tag in ordered[: settings.retain_versions]
        if not settings.retain_version_days or now - states[tag].updated_at <= max_age
    }
    return [tag for tag in ordered if tag not in kept]


def apply_retention(store: Store, settings: RunnerSettings) -> list[str]:
    """Delete what the retention settings no longer keep; returns the deleted versions."""
    name = settings.model_name
    registered = {v.tag: v for v in registry.list_versions(name)}
    with store.transaction() as tx:
        active = versions.active_tag(tx, name)
        states = versions.states(tx, name)
        job_running = jobs.running(tx) is not None
    reason = (
        f"deleted by retention (RETAIN_VERSIONS={settings.retain_versions}, "
        f"RETAIN_VERSION_DAYS={settings.retain_version_days:g})"
    )
    deleted = []
    for tag in doomed(active, states, registered, job_running, settings):
        with store.transaction() as tx:
            if not versions.mark_deleted(tx, name, tag, states[tag].status, reason):
                continue  # another replica took it, or it was activated meanwhile
        try:
            registry.delete(tag)
        except (OSError, BentoMLException) as exc:  # e.g. a file another process holds open
            log.error("version=%s is marked deleted but its folder could not be removed (%s); "
                      "remove it with `bentoml models delete %s`", tag, exc, tag)  # fmt: skip
            continue
        deleted.append(tag)
        log.info("version=%s deleted (was %s): %s", tag, states[tag].status, reason)
    _delete_job_logs(store, settings)
    return deleted


def _delete_job_logs(store: Store, settings: RunnerSettings) -> None:
    """Job logs go with their job's version; a job that left none keeps its log by the
    same count and age as the versions (newest first, by the log's modification time)."""
    folder = settings.state_dir.resolve() / "jobs"
    logs = {p.stem: p for p in folder.glob("*.log") if JOB_LOG.match(p.name)}
    if not logs:
        return
    with store.transaction() as tx:
        found = {job.id: job for job in jobs.get_many(tx, list(logs))}
        gone = {
            tag
            for tag, state in versions.states(tx, settings.model_name).items()
            if state.status == VersionStatus.DELETED
        }
    versionless: list[Path] = []
    for job_id, path in logs.items():
        job = found.get(job_id)
        if job is not None and not job.state.final:
            continue
        if job is not None and job.candidate_version is not None:
            if job.candidate_version in gone:
                _unlink(path)
        else:
            versionless.append(path)
    versionless.sort(key=_mtime, reverse=True)
    max_age = settings.retain_version_days * 86400
    now = utcnow().timestamp()
    for index, path in enumerate(versionless):
        too_old = bool(settings.retain_version_days) and now - _mtime(path) > max_age
        if index >= settings.retain_versions or too_old:
            _unlink(path)


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def _unlink(path: Path) -> None:
    path.unlink(missing_ok=True)
    log.info("job log %s deleted by retention", path.name)
