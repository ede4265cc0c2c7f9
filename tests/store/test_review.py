"""The review queue on SQLite and PostgreSQL: capped to the least sure, each text once, TTL'd,
and never a labeled text."""

from __future__ import annotations

from datetime import timedelta

import pytest

from core.text import text_hash
from store import Store, examples, review
from store.db import utcnow
from store.examples import NewExample
from store.review import Candidate

WEEK = timedelta(days=7)


@pytest.fixture
def store(database_url: str) -> Store:
    return Store(database_url)


def candidate(text: str, margin: float, age: timedelta = timedelta(0)) -> Candidate:
    return Candidate(text_hash=text_hash(text), text=text, label="positive", margin=margin,
                     model_version="v1", created_at=utcnow() - age)  # fmt: skip


def queued(store: Store) -> list[tuple[str, float]]:
    with store.transaction() as tx:
        return [(c.text, c.margin) for c in review.listing(tx, 100, WEEK)]


def test_the_queue_keeps_the_least_sure_texts_once_each_up_to_its_capacity(store: Store) -> None:
    with store.transaction() as tx:
        review.offer(tx, [candidate(t, m) for t, m in [("a", 0.5), ("b", 0.1), ("c", 0.9)]], 2,
                     WEEK)  # fmt: skip
    assert queued(store) == [("b", 0.1), ("a", 0.5)]
    with store.transaction() as tx:
        review.offer(tx, [candidate("a", 0.05), candidate("b", 0.3)], 2, WEEK)
    assert queued(store) == [("a", 0.05), ("b", 0.1)]  # the smaller margin of each text


def test_expired_and_labeled_texts_leave_the_queue(store: Store) -> None:
    with store.transaction() as tx:
        review.offer(tx, [candidate("old", 0.1, timedelta(days=8)), candidate("x", 0.2),
                          candidate("y", 0.3)], 10, WEEK)  # fmt: skip
    assert [t for t, _ in queued(store)] == ["x", "y"]
    with store.transaction() as tx:
        examples.add(tx, [NewExample("x", "negative")], "tool")
    assert [t for t, _ in queued(store)] == ["y"]  # never listed once labeled
    with store.transaction() as tx:
        review.offer(tx, [], 10, WEEK)
        assert review.size(tx) == 1  # and gone at the next offer
