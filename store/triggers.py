"""Automatic retrains: after enough new labels, or on drift, debounced on the store.

Every worker of every replica asks `maybe_queue` at each job-runner poll. It
queues only when no job of the model is queued or running, the newest job was
queued at least the minimum interval ago, and there are new labels: rows added
or relabeled after the newest of (the labels the newest job read, the active
version's data). The check is repeated under the writers' lock
(`store.changes.lock`) before the job is created, so of many replicas exactly
one queues. A retrain asked for by hand (POST /retrain, Label Studio's
START_TRAINING) is not held back by any of this; it queues as always.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from store import changes, jobs, versions
from store.db import Store, aware, utcnow
from store.examples import ExampleRow
from store.jobs import Job, JobRow, JobState

log = logging.getLogger(__name__)
LABELS, DRIFT = "labels", "drift"


@dataclass(frozen=True)
class Policy:
    after_labels: int  # queue once this many labels are new; 0: never by count
    min_interval: timedelta
    on_drift: bool  # queue on drift when at least one label is new

    @property
    def active(self) -> bool:
        return self.after_labels > 0 or self.on_drift


def _newest_job(tx: Session, model_name: str) -> JobRow | None:
    return tx.scalar(
        select(JobRow).where(JobRow.model_name == model_name).order_by(JobRow.created_at.desc())
    )


def new_labels(tx: Session, model_name: str, newest: JobRow | None = None) -> int:
    """Rows added or relabeled since the newest job's data (or its queueing) and the active
    version's data, whichever is later (`newest`: that job, when the caller has read it)."""
    newest = newest or _newest_job(tx, model_name)
    read = (newest.summary or {}).get("data_revision") if newest else None
    queued_at = newest.trigger_revision if newest else None
    active = versions.active_tag(tx, model_name)
    since = max(read or 0, queued_at or 0, (active and versions.data_revision(tx, active)) or 0)
    return int(tx.scalar(select(func.count()).where(ExampleRow.revision > since)) or 0)


def due(tx: Session, model_name: str, policy: Policy, drifting: bool) -> str | None:
    """The trigger a job should be queued for now (LABELS or DRIFT), or None."""
    pending = tx.scalar(
        select(func.count()).where(
            JobRow.model_name == model_name,
            JobRow.state.in_([JobState.QUEUED, JobState.RUNNING]),
        )
    )
    if pending:
        return None
    newest = _newest_job(tx, model_name)
    if newest is not None and utcnow() - aware(newest.created_at) < policy.min_interval:
        return None
    count = new_labels(tx, model_name, newest)
    if policy.after_labels and count >= policy.after_labels:
        return LABELS
    if policy.on_drift and drifting and count > 0:
        return DRIFT
    return None


def maybe_queue(
    store: Store, model_name: str, policy: Policy, drifting: bool, params: dict[str, Any]
) -> Job | None:
    """Queue a job with `params` if the policy says one is due; the job, or None."""
    if not policy.active:
        return None
    with store.transaction() as tx:  # the cheap look, taken by every poll of every worker
        if due(tx, model_name, policy, drifting) is None:
            return None
    with store.transaction() as tx:
        changes.lock(tx)
        trigger = due(tx, model_name, policy, drifting)
        if trigger is None:
            return None
        job = jobs.create(tx, model_name, params, trigger=trigger)
    log.info("queued job %s (trigger: %s)", job.id, trigger)
    return job
