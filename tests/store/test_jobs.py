"""The job queue on SQLite and on PostgreSQL: one running job, stale jobs, cancel, joining."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest

from store import Store, jobs
from store.jobs import JobFinishedError, JobState
from tests.helpers import database_down

A_WHILE = timedelta(hours=1)
NOW = timedelta(seconds=-1)  # every running job is older than this: stale at once


@pytest.fixture
def store(database_url: str) -> Store:
    return Store(database_url)


def running_job(store: Store, params: dict[str, object] | None = None) -> str:
    with store.transaction() as tx:
        job = jobs.create(tx, "m", params or {})
    claimed = jobs.claim_next(store)
    assert claimed is not None and claimed.id == job.id
    return job.id


def test_only_one_job_runs_at_a_time_in_fifo_order(store: Store) -> None:
    with store.transaction() as tx:
        first = jobs.create(tx, "m", {})
        second = jobs.create(tx, "m", {})
    claimed = jobs.claim_next(store)
    assert claimed is not None and claimed.id == first.id and claimed.state == JobState.RUNNING
    assert jobs.claim_next(store) is None  # one is running
    with store.transaction() as tx:
        assert jobs.finish(tx, first.id, JobState.SUCCEEDED, decision="ok")
    claimed = jobs.claim_next(store)
    assert claimed is not None and claimed.id == second.id


def test_a_job_whose_heartbeat_stopped_is_failed_not_stuck(store: Store) -> None:
    job_id = running_job(store)
    assert jobs.stale(store, A_WHILE) == []
    assert not jobs.fail_stale(store, job_id, A_WHILE)  # beaten within the hour
    assert [j.id for j in jobs.stale(store, NOW)] == [job_id]
    assert jobs.fail_stale(store, job_id, NOW)
    with store.transaction() as tx:
        failed = jobs.get(tx, job_id)
        assert failed is not None and failed.state == "failed" and "stopped" in (failed.error or "")
        # a finished job cannot be finished again (a late training process cannot promote)
        assert not jobs.finish(tx, job_id, JobState.SUCCEEDED)
        assert not jobs.heartbeat(tx, job_id)
    assert jobs.stale(store, NOW) == []


def test_a_job_that_heartbeats_itself_is_not_reaped(store: Store) -> None:
    """The training process beats on its own: it stays alive with no runner watching it."""
    job_id = running_job(store)
    with jobs.heartbeats(store, job_id, every=0.05):
        time.sleep(1.0)
        assert jobs.stale(store, timedelta(seconds=0.5)) == []
    time.sleep(1.0)  # beats stopped with the block
    assert [j.id for j in jobs.stale(store, timedelta(seconds=0.5))] == [job_id]


def test_the_heartbeat_thread_outlives_a_database_outage(database_url: str) -> None:
    store = Store(database_url)
    job_id = running_job(store)
    with jobs.heartbeats(store, job_id, every=0.05):
        with database_down(database_url):
            time.sleep(1.0)  # every beat meanwhile fails
        time.sleep(0.5)
        assert jobs.stale(store, timedelta(seconds=0.3)) == []  # beating again


def test_exactly_one_replica_takes_a_stale_job_over_and_then_nobody_fails_it(
    store: Store,
) -> None:
    job_id = running_job(store)
    time.sleep(0.2)
    stale_after = timedelta(seconds=0.1)

    assert jobs.take_over(store, job_id, stale_after)  # the first replica to look
    assert not jobs.take_over(store, job_id, stale_after)  # beaten just now: not stale
    assert not jobs.fail_stale(store, job_id, stale_after)
    with store.transaction() as tx:
        job = jobs.get(tx, job_id)
    assert job is not None and job.state == JobState.RUNNING


def test_a_cancelled_job_records_who_and_why_and_can_never_finish_or_promote(
    store: Store,
) -> None:
    job_id = running_job(store)

    with store.transaction() as tx:
        cancelled = jobs.cancel(tx, job_id, by="ops", reason="wrong data")
    assert cancelled is not None and cancelled.state == JobState.CANCELLED
    assert cancelled.decision == "cancelled by ops: wrong data"
    assert cancelled.summary is not None and cancelled.summary["cancelled"]["by"] == "ops"
    assert cancelled.finished_at is not None
    with store.transaction() as tx:
        assert not jobs.heartbeat(tx, job_id)  # its runner learns it from here
        assert not jobs.finish(tx, job_id, JobState.SUCCEEDED, decision="promoted")
        with pytest.raises(JobFinishedError, match=r"already ended \(cancelled\)"):
            jobs.cancel(tx, job_id, by="ops", reason=None)
        assert jobs.cancel(tx, "no-such-job", by="ops", reason=None) is None


def test_a_cancelled_queued_job_is_never_claimed(store: Store) -> None:
    with store.transaction() as tx:
        first = jobs.create(tx, "m", {})
        second = jobs.create(tx, "m", {})
        jobs.cancel(tx, first.id, by="ops", reason=None)
    claimed = jobs.claim_next(store)
    assert claimed is not None and claimed.id == second.id


def test_a_retrain_joins_only_a_queued_job_with_the_same_params(store: Store) -> None:
    auto = {"mode": "auto", "training": {}}
    job_id = running_job(store, auto)  # running: not joinable
    with store.transaction() as tx:
        assert jobs.queued_like(tx, "m", auto) is None
        refit = jobs.create(tx, "m", {"mode": "refit", "training": {"epochs": 1}})
        queued = jobs.create(tx, "m", auto)
    with store.transaction() as tx:
        joined = jobs.queued_like(tx, "m", {"mode": "auto", "training": {}})
        assert joined is not None and joined.id == queued.id
        same = jobs.queued_like(tx, "m", {"mode": "refit", "training": {"epochs": 1.0}})
        assert same is not None and same.id == refit.id
        assert jobs.queued_like(tx, "m", {"mode": "refit", "training": {"epochs": 2}}) is None
        assert jobs.queued_like(tx, "other-model", auto) is None
    assert job_id not in (queued.id, refit.id)
