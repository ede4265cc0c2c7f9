"""Concurrent writers on SQLite and PostgreSQL: serialised, never a constraint error or a lost
update (store.changes.lock, store.db.write_lock)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from store import Store, examples, versions
from store.examples import NewExample
from store.versions import ActiveChangedError, VersionStatus

# Long enough for the other thread to reach its read while the first holds its transaction.
HOLD_S = 1.0


@pytest.fixture
def store(database_url: str) -> Store:
    return Store(database_url)


def test_identical_intakes_at_once_store_each_text_once(store: Store) -> None:
    """A client retrying a slow request: every copy succeeds, one stores, the rest count
    duplicates (before, the second read before the first committed and hit UNIQUE)."""
    rows = [NewExample(f"retried text {i}", "pos") for i in range(20)]
    start = threading.Barrier(6)

    def intake(_: int) -> examples.IntakeResult:
        start.wait()
        with store.transaction() as tx:
            return examples.add(tx, rows, "tool")

    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(intake, range(6)))

    assert sorted(r.accepted for r in results) == [0] * 5 + [20]
    assert sorted(r.duplicates for r in results) == [0] + [20] * 5
    with store.transaction() as tx:
        assert examples.count(tx) == 20


def _holding(store: Store, first: Callable[[Any], object], then: Callable[[], object]) -> Any:
    """Run `first(tx)` and keep its transaction open while `then()` starts in another thread;
    returns what `then` returned (or raised), once both are done."""
    holding = threading.Event()

    def hold() -> None:
        with store.transaction() as tx:
            first(tx)
            holding.set()
            time.sleep(HOLD_S)

    with ThreadPoolExecutor(2) as pool:
        held = pool.submit(hold)
        assert holding.wait(30)
        racing = pool.submit(then)
        held.result()
        return racing


def _activate(store: Store, tag: str, **kw: Any) -> Callable[[], str | None]:
    def run() -> str | None:
        with store.transaction() as tx:
            return versions.activate(tx, "m", tag, "test", **kw)

    return run


def _active_statuses(store: Store) -> list[str]:
    with store.transaction() as tx:
        return sorted(
            tag for tag, s in versions.states(tx, "m").items() if s.status == VersionStatus.ACTIVE
        )


def test_activations_during_a_promotion_wait_for_it_and_leave_one_version_active(
    store: Store,
) -> None:
    versions.adopt_if_none(store, "m", "m:v1")

    def promote(tx: Any) -> None:  # what retrain/job.py's _promote does
        versions.activate(tx, "m", "m:v2", "job", expected="m:v1", check_expected=True)

    racing = _holding(store, promote, _activate(store, "m:v3"))

    assert racing.result() == "m:v2"  # it saw the promotion, and retired its version
    assert _active_statuses(store) == ["m:v3"]
    with store.transaction() as tx:
        assert versions.active_tag(tx, "m") == "m:v3"


def test_a_promotion_during_an_activation_sees_it_and_refuses(store: Store) -> None:
    """Compare-and-swap holds on SQLite too: a rollback made while a job ran wins."""
    versions.adopt_if_none(store, "m", "m:v1")

    def roll_back(tx: Any) -> None:
        versions.activate(tx, "m", "m:v0", "rollback")

    promote = _activate(store, "m:v2", expected="m:v1", check_expected=True)
    racing = _holding(store, roll_back, promote)

    with pytest.raises(ActiveChangedError, match="active version is now m:v0"):
        racing.result()
    assert _active_statuses(store) == ["m:v0"]
