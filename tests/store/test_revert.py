"""Every label change is reversible, on SQLite and PostgreSQL alike (store/revert.py)."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import select

from store import Store, examples
from store.changes import RowChangeRow
from store.examples import NewExample
from store.revert import NotRevertibleError, RevisionNotFoundError, revert


@pytest.fixture
def store(database_url: str) -> Store:
    return Store(database_url)


def add(store: Store, rows: list[tuple[str, str]], source: str, **kw: Any) -> Any:
    with store.transaction() as tx:
        return examples.add(tx, [NewExample(t, label) for t, label in rows], source, **kw)


def labels(store: Store) -> dict[str, tuple[str, str | None]]:
    with store.transaction() as tx:
        return {e.text: (e.label, e.source) for e in examples.page(tx, limit=1000)}


def undo(store: Store, source: str, revision: int | None = None) -> Any:
    with store.transaction() as tx:
        return revert(tx, source, revision)


def test_a_bad_relabel_batch_is_undone_and_every_label_is_back(store: Store) -> None:
    """The labeling tool's sequence: create, relabel by another source, revert, relabel again."""
    add(store, [("good day", "pos"), ("bad day", "neg")], "orig")
    before = labels(store)
    bad = add(store, [("good day", "neg"), ("bad day", "pos"), ("new one", "neu")], "bad-batch",
              relabel=True)  # fmt: skip
    assert (bad.accepted, bad.relabeled) == (1, 2)
    assert labels(store)["good day"] == ("neg", "bad-batch")  # the source of the label now

    reverted = undo(store, "bad-batch")

    assert (reverted.deleted, reverted.restored, reverted.kept) == (1, 2, [])
    assert reverted.revisions == [bad.revision] and reverted.revision == bad.revision + 1
    assert labels(store) == before
    again = add(store, [("good day", "neu")], "fixed-batch", relabel=True)
    assert again.relabeled == 1 and labels(store)["good day"] == ("neu", "fixed-batch")
    assert undo(store, "bad-batch").revisions == []  # nothing of it is left to undo
    undo(store, "fixed-batch")
    assert labels(store) == before


def test_every_write_logs_each_rows_old_and_new_label_and_source(store: Store) -> None:
    first = add(store, [("a", "x")], "one")
    second = add(store, [("a", "y"), ("b", "z")], "two", relabel=True)
    with store.transaction() as tx:
        examples.relabel(tx, 1, "w", "person")
        assert examples.delete_one(tx, 2, "typo")
        log = [
            (e.revision, e.example_id, e.kind, e.old_label, e.old_source, e.new_label, e.new_source)
            for e in tx.scalars(select(RowChangeRow).order_by(RowChangeRow.revision))
        ]
    r1, r2 = first.revision, second.revision
    assert log == [
        (r1, 1, "created", None, None, "x", "one"),
        (r2, 1, "relabeled", "x", "one", "y", "two"),
        (r2, 2, "created", None, None, "z", "two"),
        (r2 + 1, 1, "relabeled", "y", "two", "w", "person"),
        (r2 + 2, 2, "deleted", "z", "two", None, None),
    ]


def test_a_row_another_source_changed_since_is_kept_and_named(store: Store) -> None:
    add(store, [("a", "x"), ("b", "x")], "orig")
    add(store, [("a", "y"), ("b", "y")], "bad", relabel=True)
    later = add(store, [("a", "z")], "person", relabel=True)

    reverted = undo(store, "bad")

    assert (reverted.restored, reverted.kept_count) == (1, 1)
    [kept] = reverted.kept
    assert (kept.id, kept.label, kept.source, kept.revision) == (1, "z", "person", later.revision)
    assert labels(store) == {"a": ("z", "person"), "b": ("x", "orig")}
    undo(store, "person")  # the later source first, then the earlier: back to the start
    undo(store, "bad")
    assert labels(store) == {"a": ("x", "orig"), "b": ("x", "orig")}


def test_a_source_that_changed_a_row_twice_gives_it_back_to_the_one_before(store: Store) -> None:
    add(store, [("a", "x")], "orig")
    add(store, [("a", "y")], "tool", relabel=True)
    add(store, [("a", "z")], "tool", relabel=True)
    add(store, [("b", "x")], "tool")

    reverted = undo(store, "tool")

    assert (reverted.deleted, reverted.restored) == (1, 1)
    assert labels(store) == {"a": ("x", "orig")}


def test_one_write_of_a_source_is_undone_by_its_revision(store: Store) -> None:
    add(store, [("a", "x")], "tool")
    second = add(store, [("a", "y"), ("b", "y")], "tool", relabel=True)

    reverted = undo(store, "tool", second.revision)

    assert (reverted.deleted, reverted.restored, reverted.revisions) == (1, 1, [second.revision])
    assert labels(store) == {"a": ("x", "tool")}
    with pytest.raises(RevisionNotFoundError, match="made no intake or relabel at revision"):
        undo(store, "other", 1)  # a revision of another source
    with pytest.raises(RevisionNotFoundError):
        undo(store, "tool", reverted.revision)  # a revert is not a write of the source


def test_a_revision_a_later_write_changed_again_is_kept(store: Store) -> None:
    first = add(store, [("a", "x")], "tool")
    add(store, [("a", "y")], "person", relabel=True)

    reverted = undo(store, "tool", first.revision)

    assert (reverted.deleted, reverted.restored, reverted.kept_count) == (0, 0, 1)
    assert labels(store) == {"a": ("y", "person")}


def test_rows_from_before_the_per_row_log_revert_by_source_as_they_deleted_before(
    store: Store,
) -> None:
    """Migration 0004 found rows with no per-row history: their source's revert deletes them."""
    first = add(store, [("a", "x"), ("b", "x")], "old-tool")
    with store.transaction() as tx:
        tx.execute(RowChangeRow.__table__.delete())  # as a database migrated from 0003 has it

    with pytest.raises(NotRevertibleError, match="before the store logged"):
        undo(store, "old-tool", first.revision)
    reverted = undo(store, "old-tool")

    assert (reverted.deleted, reverted.revisions) == (2, [])
    assert labels(store) == {}
