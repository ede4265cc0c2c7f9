"""The durable store on SQLite and on PostgreSQL: the same code, the same guarantees."""

from __future__ import annotations

import multiprocessing
import time
from datetime import timedelta
from typing import Any

import pytest

from service.store import ConflictError, NewExample, Store


@pytest.fixture
def store(database_url: str) -> Store:
    return Store(database_url)


def test_examples_are_deduplicated_and_counted(store: Store) -> None:
    first = store.add_examples(
        [NewExample("good day", "pos"), NewExample("bad day", "neg")], "tool"
    )
    assert (first.accepted, first.duplicates, first.total) == (2, 0, 2)
    again = store.add_examples(
        [NewExample("good day ", "pos"), NewExample("meh", "neu"), NewExample("meh", "neu")], None
    )
    assert (again.accepted, again.duplicates, again.total) == (1, 2, 3)
    assert [e.text for e in store.all_examples()] == ["good day", "bad day", "meh"]


def test_a_conflicting_row_refuses_the_whole_request(store: Store) -> None:
    store.add_examples([NewExample("good day", "pos")], None)
    with pytest.raises(
        ConflictError, match=r"examples\[1\]: this text is already stored with label 'pos'"
    ):
        store.add_examples([NewExample("fresh text", "neg"), NewExample("good day", "neg")], None)
    assert store.count_examples() == 1  # "fresh text" was not stored either


def test_only_one_job_runs_at_a_time_in_fifo_order(store: Store) -> None:
    first = store.create_job("m", {})
    second = store.create_job("m", {})
    claimed = store.claim_next_job()
    assert claimed is not None and claimed.id == first.id and claimed.state == "running"
    assert store.claim_next_job() is None  # one is running
    assert store.finish_job(first.id, "succeeded", decision="ok")
    claimed = store.claim_next_job()
    assert claimed is not None and claimed.id == second.id


def test_a_job_whose_heartbeat_stopped_is_failed_not_stuck(store: Store) -> None:
    job = store.create_job("m", {})
    assert store.claim_next_job() is not None
    assert store.fail_stale_jobs(timedelta(hours=1)) == []
    assert store.fail_stale_jobs(timedelta(seconds=-1)) == [job.id]
    failed = store.get_job(job.id)
    assert failed is not None and failed.state == "failed" and "stopped" in (failed.error or "")
    # a finished job cannot be finished again (a late training process cannot promote)
    assert not store.finish_job(job.id, "succeeded")


def test_a_job_that_heartbeats_itself_is_not_reaped(store: Store) -> None:
    """The training process beats on its own: it stays alive with no runner watching it."""
    job = store.create_job("m", {})
    assert store.claim_next_job() is not None
    with store.heartbeats(job.id, every=0.05):
        time.sleep(1.0)
        assert store.fail_stale_jobs(timedelta(seconds=0.5)) == []
    time.sleep(1.0)  # beats stopped with the block
    assert store.fail_stale_jobs(timedelta(seconds=0.5)) == [job.id]


def test_activation_retires_the_previous_version_and_rollback_restores_it(store: Store) -> None:
    assert store.adopt_if_none("m", "m:v1") == "m:v1"
    assert store.adopt_if_none("m", "m:v2") == "m:v1"  # only when nothing is active
    assert store.activate("m", "m:v2", "promoted") == "m:v1"
    assert store.active_tag("m") == "m:v2"
    statuses = store.version_statuses("m")
    assert statuses["m:v1"][0] == "retired" and statuses["m:v2"][0] == "active"
    assert store.activate("m", "m:v1", "rollback") == "m:v2"
    assert store.active_tag("m") == "m:v1"


def _open_store_after(barrier: Any, url: str) -> None:
    barrier.wait()
    Store(url)


def test_many_processes_can_create_the_schema_at_once(database_url: str) -> None:
    """Every worker of every replica opens the store at start-up, all at once."""
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(8)
    workers = [
        context.Process(target=_open_store_after, args=(barrier, database_url)) for _ in range(8)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
    assert [worker.exitcode for worker in workers] == [0] * 8
    assert Store(database_url).count_examples() == 0
