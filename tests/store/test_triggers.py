"""Automatic retrains on SQLite and PostgreSQL: after N new labels, not while a job is pending,
not sooner than the interval, on drift only with new labels, and once among racing replicas."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest

from store import Store, examples, jobs, triggers
from store.examples import NewExample
from store.jobs import JobState
from store.triggers import Policy

PARAMS = {"mode": "auto", "training": {}}
EVERY_3 = Policy(after_labels=3, min_interval=timedelta(0), on_drift=False)


@pytest.fixture
def store(database_url: str) -> Store:
    return Store(database_url)


def label(store: Store, *texts: str, label: str = "positive") -> None:
    with store.transaction() as tx:
        examples.add(tx, [NewExample(t, label) for t in texts], "tool", relabel=True)


def finish(store: Store, job_id: str) -> None:
    claimed = jobs.claim_next(store)
    assert claimed is not None and claimed.id == job_id
    with store.transaction() as tx:
        jobs.finish(tx, job_id, JobState.REJECTED, decision="test")


def test_a_job_is_queued_after_n_new_labels_and_counting_restarts_after_it(store: Store) -> None:
    label(store, "a", "b")
    assert triggers.maybe_queue(store, "m", EVERY_3, False, PARAMS) is None
    label(store, "c")
    job = triggers.maybe_queue(store, "m", EVERY_3, False, PARAMS)
    assert job is not None and job.trigger == "labels" and job.params == PARAMS
    label(store, "d", "e", "f")
    assert triggers.maybe_queue(store, "m", EVERY_3, False, PARAMS) is None  # one is queued
    finish(store, job.id)
    with store.transaction() as tx:
        assert triggers.new_labels(tx, "m") == 3  # written after the job was queued
    label(store, "a", label="negative")  # a relabel counts too
    assert triggers.maybe_queue(store, "m", EVERY_3, False, PARAMS) is not None


def test_the_interval_holds_back_a_due_job(store: Store) -> None:
    hourly = Policy(after_labels=1, min_interval=timedelta(hours=1), on_drift=False)
    label(store, "a")
    first = triggers.maybe_queue(store, "m", hourly, False, PARAMS)
    assert first is not None
    finish(store, first.id)
    label(store, "b", "c")
    assert triggers.maybe_queue(store, "m", hourly, False, PARAMS) is None


def test_drift_queues_only_with_new_labels_and_only_when_asked(store: Store) -> None:
    on_drift = Policy(after_labels=0, min_interval=timedelta(0), on_drift=True)
    assert triggers.maybe_queue(store, "m", on_drift, True, PARAMS) is None  # nothing new
    label(store, "a")
    assert triggers.maybe_queue(store, "m", on_drift, False, PARAMS) is None  # no drift
    off = Policy(after_labels=0, min_interval=timedelta(0), on_drift=False)
    assert triggers.maybe_queue(store, "m", off, True, PARAMS) is None
    job = triggers.maybe_queue(store, "m", on_drift, True, PARAMS)
    assert job is not None and job.trigger == "drift"


def test_racing_replicas_queue_one_job(store: Store, database_url: str) -> None:
    label(store, "a", "b", "c")
    replicas = [Store(database_url) for _ in range(6)]
    start = threading.Barrier(6)

    def poll(replica: Store) -> str | None:
        start.wait()
        job = triggers.maybe_queue(replica, "m", EVERY_3, False, PARAMS)
        return job and job.id

    with ThreadPoolExecutor(6) as pool:
        queued = [j for j in pool.map(poll, replicas) if j]
    assert len(queued) == 1
    with store.transaction() as tx:
        assert [j.id for j in jobs.recent(tx)] == queued
