"""The examples' change log: every write, and what it did to each row it touched.

Every write takes the next *revision* from one counter row and logs itself
(`example_changes`: kind, source, count) and, per row, the label and source
before and after (`example_row_changes`; migration 0004). The per-row log is
what makes every write reversible (`store.revert`): a batch relabel keeps the
labels it replaced. Writers take the counter's lock before they read what they
will change, so they run one at a time and committed revisions are always a
prefix: "rows with revision > r" is exactly what changed after a snapshot at r.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, DateTime, Integer, String, insert, select, update
from sqlalchemy.orm import Mapped, Session, mapped_column

from store.db import Base, utcnow, write_lock

REVISION_KEY = "examples_revision"
# Row-change kinds a revert undoes; "deleted" and "reverted" rows are history only.
CREATED, RELABELED, DELETED, REVERTED = "created", "relabeled", "deleted", "reverted"
UNDOABLE = (CREATED, RELABELED)


class MetaRow(Base):
    __tablename__ = "store_meta"
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[int] = mapped_column(Integer)


class ChangeRow(Base):
    """One write to the examples: what kind, how many rows, from where."""

    __tablename__ = "example_changes"
    revision: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    kind: Mapped[str] = mapped_column(String(16))
    source: Mapped[str | None] = mapped_column(String(200))
    count: Mapped[int] = mapped_column(Integer)
    detail: Mapped[dict[str, Any] | None] = mapped_column(JSON)


class RowChangeRow(Base):
    """What one write did to one row: its label and source before (None: created) and after
    (None: deleted); `reverted_in` is the revision of the revert that undid it."""

    __tablename__ = "example_row_changes"
    revision: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    example_id: Mapped[int] = mapped_column(
        Integer, primary_key=True, autoincrement=False, index=True
    )
    kind: Mapped[str] = mapped_column(String(16))
    old_label: Mapped[str | None] = mapped_column(String(200))
    old_source: Mapped[str | None] = mapped_column(String(200))
    new_label: Mapped[str | None] = mapped_column(String(200))
    new_source: Mapped[str | None] = mapped_column(String(200), index=True)
    reverted_in: Mapped[int | None] = mapped_column(Integer)


@dataclass(frozen=True)
class RowChange:
    example_id: int
    kind: str
    old_label: str | None
    old_source: str | None
    new_label: str | None
    new_source: str | None


def lock(tx: Session) -> None:
    """Take the writers' lock (the counter row) before reading what this write changes.

    Held until commit; a concurrent writer waits here and then reads what this
    one committed, so two identical intakes store the text once and the second
    counts it as a duplicate.
    """
    write_lock(tx)
    tx.execute(select(MetaRow.value).where(MetaRow.key == REVISION_KEY).with_for_update())


def current_revision(tx: Session) -> int:
    return tx.scalar(select(MetaRow.value).where(MetaRow.key == REVISION_KEY)) or 0


def next_revision(
    tx: Session, kind: str, source: str | None, count: int, detail: dict[str, Any] | None
) -> int:
    """Take the next revision and log the write; the caller holds `lock`."""
    revision = tx.scalar(
        update(MetaRow)
        .where(MetaRow.key == REVISION_KEY)
        .values(value=MetaRow.value + 1)
        .returning(MetaRow.value)
    )
    if revision is None:
        raise RuntimeError("store_meta has no revision counter: run the migrations")
    tx.add(ChangeRow(revision=revision, kind=kind, source=source, count=count, detail=detail))
    return int(revision)


def log_rows(tx: Session, revision: int, rows: Sequence[RowChange]) -> None:
    """Record what the write at `revision` did to each row."""
    if rows:
        tx.execute(insert(RowChangeRow), [{"revision": revision, **asdict(r)} for r in rows])
