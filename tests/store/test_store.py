"""The durable store on SQLite and on PostgreSQL: the same code, the same guarantees."""

from __future__ import annotations

import multiprocessing
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from sqlalchemy import select

from store import Store, examples, versions
from store.examples import ConflictError, DeletedExampleRow, InvalidExamplesError, NewExample
from store.revert import revert
from store.versions import ActiveChangedError


@pytest.fixture
def store(database_url: str) -> Store:
    return Store(database_url)


def add(store: Store, rows: list[tuple[str, str]], source: str | None = None, **kw: Any) -> Any:
    with store.transaction() as tx:
        return examples.add(tx, [NewExample(t, label) for t, label in rows], source, **kw)


def test_examples_are_deduplicated_and_counted(store: Store) -> None:
    first = add(store, [("good day", "pos"), ("bad day", "neg")], "tool")
    assert (first.accepted, first.duplicates, first.total) == (2, 0, 2)
    again = add(store, [("good day", "pos"), ("meh", "neu"), ("meh", "neu")])
    assert (again.accepted, again.duplicates, again.total) == (1, 2, 3)
    with store.transaction() as tx:
        assert [e.text for e in examples.snapshot(tx).rows] == ["good day", "bad day", "meh"]


def test_a_conflicting_row_refuses_the_whole_request_unless_it_relabels(store: Store) -> None:
    add(store, [("good day", "pos")])
    with pytest.raises(ConflictError, match=r"already stored \(id 1\) with label 'pos'"):
        add(store, [("fresh text", "neg"), ("good day", "neg")])
    with store.transaction() as tx:
        assert examples.count(tx) == 1  # "fresh text" was not stored either
    result = add(store, [("fresh text", "neg"), ("good day", "neg")], relabel=True)
    assert (result.accepted, result.relabeled) == (1, 1)
    with store.transaction() as tx:
        assert examples.get(tx, 1) is not None and examples.get(tx, 1).label == "neg"  # type: ignore[union-attr]


def test_every_change_moves_the_revision_and_stamps_what_it_touched(store: Store) -> None:
    assert add(store, [("a", "x"), ("b", "y"), ("c", "y")], "batch").revision == 1
    assert add(store, [("a", "x")]).revision == 1  # a duplicate changes nothing
    with store.transaction() as tx:
        relabeled = examples.relabel(tx, 2, "x", "api")
    assert relabeled is not None and relabeled.revision == 2 and relabeled.label == "x"
    with store.transaction() as tx:
        assert examples.delete_one(tx, 3, reason="typo")
        snap = examples.snapshot(tx)
    assert snap.revision == 3
    assert [(r.id, r.label, r.revision) for r in snap.rows] == [(1, "x", 1), (2, "x", 2)]
    with store.transaction() as tx:
        reverted = revert(tx, "batch", reason="bad batch")
        assert examples.count(tx) == 1  # row 2's label is the api's now: kept
        deleted = tx.scalars(select(DeletedExampleRow.id)).all()
    assert (reverted.deleted, reverted.revision) == (1, 4)
    assert [k.id for k in reverted.kept] == [2]
    assert sorted(deleted) == [1, 3]  # kept for audit


def test_examples_page_by_cursor_and_filter(store: Store) -> None:
    add(store, [(f"text {i}", "pos" if i % 2 else "neg") for i in range(7)], "tool")
    with store.transaction() as tx:
        first = examples.page(tx, label="pos", limit=2)
        rest = examples.page(tx, label="pos", after_id=first[-1].id, limit=10)
        assert examples.page(tx, source="other") == []
    assert [e.text for e in first + rest] == ["text 1", "text 3", "text 5"]


def test_activation_retires_the_previous_version_and_rollback_restores_it(store: Store) -> None:
    assert versions.adopt_if_none(store, "m", "m:v1") == "m:v1"
    assert versions.adopt_if_none(store, "m", "m:v2") == "m:v1"  # only when nothing is active
    with store.transaction() as tx:
        assert versions.activate(tx, "m", "m:v2", "promoted") == "m:v1"
        assert versions.active_tag(tx, "m") == "m:v2"
        states = versions.states(tx, "m")
        assert states["m:v1"].status == "retired" and states["m:v2"].status == "active"
        assert versions.activate(tx, "m", "m:v1", "rollback") == "m:v2"
        assert versions.active_tag(tx, "m") == "m:v1"


def test_compare_and_swap_activation_refuses_when_the_active_moved(store: Store) -> None:
    versions.adopt_if_none(store, "m", "m:v1")
    with store.transaction() as tx:
        versions.activate(tx, "m", "m:v0", "rollback")
    with (
        pytest.raises(ActiveChangedError, match="active version is now m:v0"),
        store.transaction() as tx,
    ):
        versions.activate(tx, "m", "m:v2", "job", expected="m:v1", check_expected=True)
    with store.transaction() as tx:
        assert versions.active_tag(tx, "m") == "m:v0"


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
    with Store(database_url).transaction() as tx:
        assert examples.count(tx) == 0


def test_an_id_is_never_handed_out_again_after_its_example_is_deleted(store: Store) -> None:
    """A labeling tool keeps our ids: one must never come to name another example."""
    add(store, [("first", "pos"), ("second", "neg")])
    with store.transaction() as tx:
        newest = max(r.id for r in examples.page(tx, after_id=0, limit=10))
        assert examples.delete_one(tx, newest, reason="typo")
    add(store, [("third", "pos")])
    with store.transaction() as tx:
        [third] = examples.page(tx, after_id=newest, limit=10)
        assert third.text == "third" and third.id > newest
        assert examples.delete_one(tx, third.id, reason="typo")
        audited = tx.scalars(select(DeletedExampleRow.text)).all()
    assert sorted(audited) == ["second", "third"]


@pytest.mark.parametrize(
    ("text", "label", "source", "where", "why"),
    [
        ("nul\x00inside", "pos", "tool", "examples[0].text", "U+0000"),
        ("fine", "p\x00s", "tool", "examples[0].label", "U+0000"),
        ("fine", "pos", "to\x00l", "source", "U+0000"),
        ("lone \ud800 surrogate", "pos", "tool", "examples[0].text", "surrogate U+D800"),
        ("fine", "\u200b", "tool", "examples[0].label", "no visible character"),
        ("fine", "\u200b\u00a0\ufe0f", "tool", "examples[0].label", "no visible character"),
        ("fine", "pos", "\u2060", "source", "no visible character"),
        ("fine", " pos", "tool", "examples[0].label", "not stripped"),
    ],
)
def test_text_either_backend_cannot_store_is_refused_on_both_naming_the_row(
    store: Store, text: str, label: str, source: str, where: str, why: str
) -> None:
    """One rule: SQLite would store NUL where PostgreSQL fails the whole batch with no row."""
    with pytest.raises(InvalidExamplesError) as refused:
        add(store, [("a good row", "pos"), (text, label)][::-1], source)
    assert [loc for loc, _ in refused.value.problems] == [where]
    assert why in refused.value.problems[0][1]
    with store.transaction() as tx:
        assert examples.count(tx) == 0
    add(store, [("a good row", "pos")], "tool")
    with (
        pytest.raises(InvalidExamplesError, match="label: has no visible"),
        store.transaction() as tx,
    ):
        examples.relabel(tx, 1, "\u200b", "tool")


@pytest.mark.parametrize("offset", ["+05:00", "Z", "-08:00"])
def test_since_is_compared_in_utc_whatever_offset_is_sent(store: Store, offset: str) -> None:
    add(store, [("stored just now", "pos")])
    hours = {"+05:00": 5, "Z": 0, "-08:00": -8}[offset]
    ten_minutes_ago = datetime.now(UTC) - timedelta(minutes=10)
    local = ten_minutes_ago.astimezone(timezone(timedelta(hours=hours)))
    in_ten_minutes = local + timedelta(minutes=20)
    with store.transaction() as tx:
        assert [e.text for e in examples.page(tx, since=local)] == ["stored just now"]
        assert examples.page(tx, since=in_ten_minutes) == []
