"""Retrain jobs: a FIFO queue with at most one running job, enforced by the database.

A partial unique index on `state = 'running'` makes a second running row
impossible, so two workers (or pods) racing to claim cannot both start one.
A running job is heartbeated by whoever runs or watches it; one whose beats
stop is `stale`: a runner either takes over watching it (`take_over`, when its
training outlives runners, as a Kubernetes Job does) or fails it
(`fail_stale`), so a job is never stuck in "running". Both are conditional on
the job still being stale, so of several replicas exactly one acts.

Every change to a job's state is a conditional UPDATE on the state it expects
(queued -> running, running -> final, queued or running -> cancelled): a
cancelled job's training process can no longer report, finish or promote.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict
from sqlalchemy import (
    JSON,
    DateTime,
    Float,
    Index,
    Integer,
    String,
    Text,
    func,
    select,
    text,
    update,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, Session, mapped_column

from core.periodic import Periodic
from store.changes import current_revision
from store.db import Base, Store, aware, rowcount, utcnow

log = logging.getLogger(__name__)

# How often a running job proves it is alive; JOB_STALE_SECONDS must be well above it.
HEARTBEAT_SECONDS = 2.0


class JobState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    REJECTED = "rejected"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def final(self) -> bool:
        return self not in (JobState.QUEUED, JobState.RUNNING)


class JobRow(Base):
    __tablename__ = "jobs"
    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    model_name: Mapped[str] = mapped_column(String(200))
    state: Mapped[str] = mapped_column(String(16), default=JobState.QUEUED)
    params: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    message: Mapped[str | None] = mapped_column(Text)
    candidate_version: Mapped[str | None] = mapped_column(String(200))
    metrics: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    decision: Mapped[str | None] = mapped_column(Text)
    error: Mapped[str | None] = mapped_column(Text)
    mode: Mapped[str | None] = mapped_column(String(16))
    trigger: Mapped[str | None] = mapped_column(String(32))
    trigger_revision: Mapped[int | None] = mapped_column(Integer)
    summary: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    __table_args__ = (
        Index(
            "one_running_job",
            "state",
            unique=True,
            sqlite_where=text("state = 'running'"),
            postgresql_where=text("state = 'running'"),
        ),
    )


class Job(BaseModel):
    """A job as stored. `summary` holds what the run reports (counts, timings, skipped rows)."""

    model_config = ConfigDict(frozen=True, from_attributes=True)
    id: str
    model_name: str
    state: JobState
    params: dict[str, Any]
    progress: float
    message: str | None
    candidate_version: str | None
    metrics: dict[str, Any] | None
    decision: str | None
    error: str | None
    mode: str | None
    trigger: str  # who queued it: api, bootstrap, labels, drift, label-studio (migration 0005)
    summary: dict[str, Any] | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


def _job(row: JobRow) -> Job:
    job = Job.model_validate(row)
    return job.model_copy(
        update={
            "params": dict(row.params or {}),
            "created_at": aware(row.created_at),
            "started_at": aware(row.started_at),
            "finished_at": aware(row.finished_at),
        }
    )


def create(tx: Session, model_name: str, params: dict[str, Any], trigger: str = "api") -> Job:
    """Queue a job; it records who asked and the examples' revision now (`store.triggers`)."""
    row = JobRow(
        id=uuid.uuid4().hex,
        model_name=model_name,
        state=JobState.QUEUED,
        params=params,
        trigger=trigger,
        trigger_revision=current_revision(tx),
    )
    tx.add(row)
    tx.flush()
    return _job(row)


def get(tx: Session, job_id: str) -> Job | None:
    row = tx.get(JobRow, job_id)
    return _job(row) if row else None


def get_many(tx: Session, job_ids: list[str]) -> list[Job]:
    return [_job(r) for r in tx.scalars(select(JobRow).where(JobRow.id.in_(job_ids)))]


def running(tx: Session) -> Job | None:
    """The one running job of the deployment, if any."""
    row = tx.scalar(select(JobRow).where(JobRow.state == JobState.RUNNING))
    return _job(row) if row else None


def queued_count(tx: Session) -> int:
    return int(tx.scalar(select(func.count()).where(JobRow.state == JobState.QUEUED)) or 0)


def recent(tx: Session, limit: int = 100) -> list[Job]:
    rows = tx.scalars(select(JobRow).order_by(JobRow.created_at.desc()).limit(limit))
    return [_job(r) for r in rows]


def claim_next(store: Store) -> Job | None:
    """Atomically move the oldest queued job to running, unless one already runs."""
    with store.transaction() as tx:
        job_id = tx.scalar(
            select(JobRow.id)
            .where(JobRow.state == JobState.QUEUED)
            .order_by(JobRow.created_at)
            .limit(1)
        )
    if job_id is None:
        return None
    now = utcnow()
    try:
        with store.transaction() as tx:
            claimed = rowcount(
                tx.execute(
                    update(JobRow)
                    .where(JobRow.id == job_id, JobRow.state == JobState.QUEUED)
                    .values(
                        state=JobState.RUNNING, started_at=now, heartbeat_at=now, message="starting"
                    )
                )
            )
    except IntegrityError:
        return None  # another job is running
    if not claimed:
        return None
    with store.transaction() as tx:
        return get(tx, job_id)


def _update_running(tx: Session, job_id: str, **values: Any) -> bool:
    return bool(
        rowcount(
            tx.execute(
                update(JobRow)
                .where(JobRow.id == job_id, JobRow.state == JobState.RUNNING)
                .values(**values)
            )
        )
    )


def heartbeat(tx: Session, job_id: str) -> bool:
    """Prove the job alive; False when it is no longer running (finished or cancelled)."""
    return _update_running(tx, job_id, heartbeat_at=utcnow())


def report(tx: Session, job_id: str, progress: float, message: str, **fields: Any) -> None:
    """Progress, a message a person reads, and any of `mode`, `summary`, `candidate_version`."""
    _update_running(tx, job_id, progress=progress, message=message, heartbeat_at=utcnow(), **fields)


def finish(
    tx: Session,
    job_id: str,
    state: JobState,
    *,
    decision: str | None = None,
    error: str | None = None,
    metrics: dict[str, Any] | None = None,
) -> bool:
    """Move a running job to a final state; False if it was no longer running."""
    if not state.final:
        raise ValueError(f"{state!r} is not a final job state")
    values: dict[str, Any] = {
        "state": state,
        "finished_at": utcnow(),
        "decision": decision,
        "error": error,
    }
    if state != JobState.FAILED:
        values["progress"] = 1.0
    if metrics is not None:
        values["metrics"] = metrics
    return _update_running(tx, job_id, **values)


def stale(store: Store, older_than: timedelta) -> list[Job]:
    """Running jobs nothing has heartbeated for `older_than`: their runner (and their
    training process, if it started) stopped beating."""
    cutoff = utcnow() - older_than
    with store.transaction() as tx:
        rows = tx.scalars(
            select(JobRow).where(JobRow.state == JobState.RUNNING, JobRow.heartbeat_at < cutoff)
        )
        return [_job(r) for r in rows]


def _still_stale(job_id: str, older_than: timedelta) -> Any:
    return update(JobRow).where(
        JobRow.id == job_id,
        JobRow.state == JobState.RUNNING,
        JobRow.heartbeat_at < utcnow() - older_than,
    )


def take_over(store: Store, job_id: str, older_than: timedelta) -> bool:
    """Heartbeat a stale job if it is still stale: True means the caller now watches it,
    and no other replica can take it over or fail it as stale until its beats stop again."""
    with store.transaction() as tx:
        return bool(
            rowcount(tx.execute(_still_stale(job_id, older_than).values(heartbeat_at=utcnow())))
        )


def fail_stale(store: Store, job_id: str, older_than: timedelta) -> bool:
    """Fail a job whose heartbeat stopped (its process died), if it is still stale."""
    with store.transaction() as tx:
        return bool(
            rowcount(
                tx.execute(
                    _still_stale(job_id, older_than).values(
                        state=JobState.FAILED,
                        finished_at=utcnow(),
                        error="the process running this job stopped (server restart or "
                        "crash); submit POST /retrain again — every stored example is still there",
                    )
                )
            )
        )


class JobFinishedError(RuntimeError):
    """The job already ended; nothing was changed."""

    def __init__(self, job: Job) -> None:
        super().__init__(
            f"job {job.id} already ended ({job.state}); only a queued or running job "
            "can be cancelled"
        )
        self.job = job


def cancel(tx: Session, job_id: str, by: str, reason: str | None) -> Job | None:
    """Move a queued or running job to `cancelled`, saying who asked and why.

    None if there is no such job; JobFinishedError if it already ended. The
    training of a running job is stopped by whoever can reach it (its runner,
    or any replica for a Kubernetes Job); from here on it cannot finish or promote.
    """
    changed = rowcount(
        tx.execute(
            update(JobRow)
            .where(JobRow.id == job_id, JobRow.state.in_([JobState.QUEUED, JobState.RUNNING]))
            .values(
                state=JobState.CANCELLED,
                finished_at=utcnow(),
                decision=f"cancelled by {by}" + (f": {reason}" if reason else ""),
            )
        )
    )
    row = tx.get(JobRow, job_id)
    if row is None:
        return None
    if not changed:
        raise JobFinishedError(_job(row))
    record = {"by": by, "reason": reason, "at": utcnow().isoformat()}
    row.summary = dict(row.summary or {}) | {"cancelled": record}
    row.message = "cancelled"
    tx.flush()
    return _job(row)


def queued_like(tx: Session, model_name: str, params: dict[str, Any]) -> Job | None:
    """The oldest queued job of `model_name` with exactly these `params`, locked until
    the transaction ends: it cannot be claimed before what the caller writes commits."""
    rows = tx.scalars(
        select(JobRow)
        .where(JobRow.model_name == model_name, JobRow.state == JobState.QUEUED)
        .order_by(JobRow.created_at)
        .with_for_update()
    )
    return next((_job(r) for r in rows if r.params == params), None)


def queue_or_join(
    tx: Session, model_name: str, params: dict[str, Any], trigger: str = "api"
) -> tuple[Job, bool]:
    """The queued job with exactly these params (True: joined), else a new one (False).

    Called after the request's examples are written: the job joined is locked
    (`queued_like`), so it cannot start, and read the store, before they
    commit; it trains on them as a new job would.
    """
    queued = queued_like(tx, model_name, params)
    if queued is not None:
        return queued, True
    return create(tx, model_name, params, trigger=trigger), False


@contextmanager
def heartbeats(store: Store, job_id: str, every: float = HEARTBEAT_SECONDS) -> Iterator[None]:
    """Heartbeat `job_id` from a background thread for as long as the block runs.

    The training process beats itself, not only the runner watching it: a
    Kubernetes Job outlives the replica that launched it.
    """

    def beat() -> None:
        with store.transaction() as tx:
            heartbeat(tx, job_id)

    beater = Periodic(f"heartbeat-{job_id}", every, beat)
    beater.start()
    try:
        yield
    finally:
        beater.stop(timeout=every + 5)
