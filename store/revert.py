"""Undo what one source did to the examples, or one write of it: `DELETE /examples?source=`.

A labeling tool that pushed a wrong batch needs the store back as it was:
the rows the batch created go, and the labels it changed come back with the
source they had. The per-row change log (`store.changes`) holds both. A row
is reverted only while its current label is still the undone write's: a
label another source set since (a person's correction, a later batch) wins
over an undo of what came before it. Such a row is left as it is and named in
the answer (`kept`), so nothing is overwritten silently and nothing is
refused wholesale; reverting the later source first, then this one, walks
the row back further. A revert is a write itself (its own revision, logged
per row), never undone by another revert, and a second revert of the same
source finds nothing left to undo.

Rows stored before the per-row log (migration 0004) have no history there:
reverting the source they name deletes them, as `DELETE ?source=` did
before, and a write from before it cannot be reverted by revision.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, Select, func, select
from sqlalchemy.orm import Session

from store import changes
from store.changes import REVERTED, UNDOABLE, ChangeRow, RowChange, RowChangeRow
from store.db import chunked, utcnow
from store.examples import ExampleRow, remove

MAX_NAMED = 1000  # kept rows named in one answer; `kept_count` counts them all
REVERTIBLE = ("added", "relabeled")  # write kinds a revision revert undoes


@dataclass(frozen=True)
class KeptRow:
    """A row the reverted write changed that a later write changed again: left as it is."""

    id: int
    label: str
    source: str | None
    revision: int


@dataclass(frozen=True)
class Reverted:
    """What a revert did: rows deleted and restored, rows kept, the writes undone, and the
    revert's own revision (the store's current one when nothing was undone)."""

    deleted: int
    restored: int
    kept: list[KeptRow]
    kept_count: int
    revisions: list[int]
    revision: int


class RevisionNotFoundError(LookupError):
    """No write has this revision."""


class NotRevertibleError(ValueError):
    """This write cannot be undone by revision; the message says what to do instead."""


@dataclass(frozen=True)
class _Undo:
    row: ExampleRow
    entries: list[RowChangeRow]  # the log entries undone, newest first
    after: tuple[str, str | None] | None  # the label and source put back; None: delete


def revert(
    tx: Session, source: str, revision: int | None = None, reason: str | None = None
) -> Reverted:
    """Undo what `source` did: every write of it, or only its write at `revision`.

    Deleted rows go to `deleted_examples` with `reason` (default: what was reverted).
    """
    changes.lock(tx)
    if revision is not None:
        _check_revertible(tx, source, revision)
        ids = list(tx.scalars(select(RowChangeRow.example_id).where(_live_at(revision))))
        rows = [r for chunk in chunked(ids) for r in tx.scalars(_rows(ExampleRow.id.in_(chunk)))]
        what, still = f"revision {revision} of source {source!r}", _live_at(revision)
    else:
        rows = list(tx.scalars(_rows(ExampleRow.source == source)))
        what, still = f"source {source!r}", _by_source(source)
    history = _history(tx, [r.id for r in rows])
    undos = [
        undo for row in rows if (undo := _undo(row, history[row.id], source, revision)) is not None
    ]
    undone = sorted({e.revision for u in undos for e in u.entries})
    done = changes.current_revision(tx)
    if undos:
        detail = {"source": source, "revision": revision, "reason": reason, "revisions": undone}
        done = _apply(tx, undos, detail, reason or f"revert of {what}")
    kept_count, kept = _kept(tx, still)
    return Reverted(
        deleted=sum(u.after is None for u in undos),
        restored=sum(u.after is not None for u in undos),
        kept=kept,
        kept_count=kept_count,
        revisions=undone,
        revision=done,
    )


def _rows(where: ColumnElement[bool]) -> Select[ExampleRow]:
    return select(ExampleRow).where(where).order_by(ExampleRow.id)


def _check_revertible(tx: Session, source: str, revision: int) -> None:
    written = select(ChangeRow.revision).where(
        ChangeRow.revision == revision, ChangeRow.source == source, ChangeRow.kind.in_(REVERTIBLE)
    )
    if tx.scalar(written) is None:
        raise RevisionNotFoundError(
            f"source {source!r} made no intake or relabel at revision {revision}; "
            "each POST /examples answer names its revision"
        )
    logged = select(RowChangeRow.revision).where(RowChangeRow.revision == revision).limit(1)
    if tx.scalar(logged) is None:
        raise NotRevertibleError(
            f"revision {revision} was written before the store logged each row's previous "
            f"label (migration 0004); DELETE /examples?source={source} without a revision "
            "deletes the rows that name that source"
        )


def _in_effect() -> ColumnElement[bool]:
    """Log entries that set a row's label (created, relabeled) and no revert has undone."""
    return RowChangeRow.kind.in_(UNDOABLE) & RowChangeRow.reverted_in.is_(None)


def _live_at(revision: int) -> ColumnElement[bool]:
    return (RowChangeRow.revision == revision) & _in_effect()


def _by_source(source: str) -> ColumnElement[bool]:
    return (RowChangeRow.new_source == source) & _in_effect()


def _history(tx: Session, ids: Sequence[int]) -> dict[int, list[RowChangeRow]]:
    """Each row's log entries in effect, newest first."""
    history: dict[int, list[RowChangeRow]] = defaultdict(list)
    for chunk in chunked(ids):
        entries = tx.scalars(
            select(RowChangeRow)
            .where(RowChangeRow.example_id.in_(chunk), _in_effect())
            .order_by(RowChangeRow.revision.desc())
        )
        for entry in entries:
            history[entry.example_id].append(entry)
    return history


def _undo(
    row: ExampleRow, history: list[RowChangeRow], source: str, revision: int | None
) -> _Undo | None:
    """What reverting does to `row`, or None when a later write keeps it as it is."""
    if revision is not None:  # only that write, and only while it is the newest in effect
        if not history or history[0].revision != revision:
            return None
        newest = history[0]
        put_back = None if newest.old_label is None else (newest.old_label, newest.old_source)
        return _Undo(row, [newest], put_back)
    # Every write of `source` on top of the row's history, newest first, until the label
    # is another source's again; a row older than the per-row log is deleted, as before it.
    label, owner = row.label, row.source
    undone: list[RowChangeRow] = []
    for entry in history:
        if owner != source:
            break
        undone.append(entry)
        if entry.old_label is None:
            return _Undo(row, undone, None)
        label, owner = entry.old_label, entry.old_source
    return _Undo(row, undone, None if owner == source else (label, owner))


def _apply(tx: Session, undos: list[_Undo], detail: dict[str, Any], reason: str) -> int:
    """Put each row back (or delete it), mark the entries undone, log it all; the revision."""
    revision = changes.next_revision(tx, REVERTED, None, len(undos), detail)
    now = utcnow()
    logged, gone = [], []
    for undo in undos:
        row, after = undo.row, undo.after
        new_label, new_source = after if after else (None, None)
        logged.append(RowChange(row.id, REVERTED, row.label, row.source, new_label, new_source))
        for entry in undo.entries:
            entry.reverted_in = revision
        if after is None:
            gone.append(row)
        else:
            row.label, row.source, row.updated_at, row.revision = *after, now, revision
    changes.log_rows(tx, revision, logged)
    remove(tx, gone, revision, reason)
    tx.flush()
    return revision


def _kept(tx: Session, still: ColumnElement[bool]) -> tuple[int, list[KeptRow]]:
    """Live rows whose entries of the reverted write are still in effect: a later write
    changed them again. Their count, and the first MAX_NAMED."""
    kept = (
        select(ExampleRow.id, ExampleRow.label, ExampleRow.source, ExampleRow.revision)
        .join(RowChangeRow, RowChangeRow.example_id == ExampleRow.id)
        .where(still)
        .distinct()
    )
    count = tx.scalar(select(func.count()).select_from(kept.subquery())) or 0
    named = tx.execute(kept.order_by(ExampleRow.id).limit(MAX_NAMED))
    return count, [KeptRow(*row) for row in named]
