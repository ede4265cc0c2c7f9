"""Labeled examples: intake, paging, correction, deletion, and the snapshot a retrain reads.

Every write takes the next *revision* from one counter row, which also stamps
the rows it touched and logs the change (`example_changes`). The counter's row
lock orders concurrent writers, so committed revisions are always a prefix:
"rows with revision > r" is exactly what changed after a snapshot taken at r.
That is how an incremental retrain finds its new data. Deleted rows move to
`deleted_examples` with the revision and reason, for audit.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict
from sqlalchemy import JSON, DateTime, Integer, String, Text, delete, func, select, update
from sqlalchemy.orm import Mapped, Session, mapped_column

from core.text import text_hash
from store.db import Base, aware, utcnow

REVISION_KEY = "examples_revision"
_IN_CHUNK = 500  # bound parameters per IN (...) query


class ExampleRow(Base):
    __tablename__ = "examples"
    # An id is never handed out twice, even after its row is deleted (migration 0003).
    __table_args__ = ({"sqlite_autoincrement": True},)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    text_hash: Mapped[str] = mapped_column(String(64), unique=True)
    text: Mapped[str] = mapped_column(Text)
    label: Mapped[str] = mapped_column(String(200))
    source: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    revision: Mapped[int] = mapped_column(Integer, default=0, index=True)


class ChangeRow(Base):
    """One write to the examples: what kind, how many rows, from where."""

    __tablename__ = "example_changes"
    revision: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    kind: Mapped[str] = mapped_column(String(16))
    source: Mapped[str | None] = mapped_column(String(200))
    count: Mapped[int] = mapped_column(Integer)
    detail: Mapped[dict[str, Any] | None] = mapped_column(JSON)


class DeletedExampleRow(Base):
    """A deleted example as it was; keyed by (id, revision), so reused ids stay auditable."""

    __tablename__ = "deleted_examples"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    text: Mapped[str] = mapped_column(Text)
    label: Mapped[str] = mapped_column(String(200))
    source: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    deleted_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    revision: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    reason: Mapped[str | None] = mapped_column(Text)


class MetaRow(Base):
    __tablename__ = "store_meta"
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[int] = mapped_column(Integer)


@dataclass(frozen=True)
class NewExample:
    text: str
    label: str


class StoredExample(BaseModel):
    """An example as stored; `id` is stable for its lifetime."""

    model_config = ConfigDict(frozen=True)
    id: int
    text: str
    label: str
    source: str | None
    created_at: datetime
    updated_at: datetime
    revision: int


@dataclass(frozen=True)
class IntakeResult:
    accepted: int
    relabeled: int
    duplicates: int
    total: int
    revision: int


class ConflictError(ValueError):
    """Submitted rows contradict stored ones; nothing of the request was stored."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        super().__init__("; ".join(f"{loc}: {msg}" for loc, msg in problems))
        self.problems = problems


def _stored(row: ExampleRow) -> StoredExample:
    return StoredExample(
        id=row.id,
        text=row.text,
        label=row.label,
        source=row.source,
        created_at=aware(row.created_at),
        updated_at=aware(row.updated_at or row.created_at),
        revision=row.revision,
    )


def current_revision(tx: Session) -> int:
    return tx.scalar(select(MetaRow.value).where(MetaRow.key == REVISION_KEY)) or 0


def _next_revision(
    tx: Session, kind: str, source: str | None, count: int, detail: dict[str, Any] | None = None
) -> int:
    """Take the next revision (locking the counter until commit) and log the change."""
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


def add(
    tx: Session, examples: Sequence[NewExample], source: str | None, relabel: bool = False
) -> IntakeResult:
    """Store new examples; exact duplicates are counted, a stored text with another label is
    relabeled if `relabel`, else the whole request is refused (ConflictError).

    Texts must already be clean (`core.text.clean_text`).
    """
    by_hash: dict[str, tuple[int, NewExample]] = {}
    problems: list[tuple[str, str]] = []
    duplicates = 0
    for i, ex in enumerate(examples):
        h = text_hash(ex.text)
        if h in by_hash:
            first_i, first = by_hash[h]
            if first.label != ex.label:
                problems.append(
                    (
                        f"examples[{i}]",
                        f"same text as examples[{first_i}] with another label "
                        f"({ex.label!r} vs {first.label!r})",
                    )
                )
            duplicates += 1
            continue
        by_hash[h] = (i, ex)
    stored: dict[str, ExampleRow] = {}
    hashes = list(by_hash)
    for start in range(0, len(hashes), _IN_CHUNK):
        rows = tx.scalars(
            select(ExampleRow).where(ExampleRow.text_hash.in_(hashes[start : start + _IN_CHUNK]))
        )
        stored.update({row.text_hash: row for row in rows})
    new: list[NewExample] = []
    changed: list[tuple[ExampleRow, str]] = []
    for h, (i, ex) in by_hash.items():
        row = stored.get(h)
        if row is None:
            new.append(ex)
        elif row.label == ex.label:
            duplicates += 1
        elif relabel:
            changed.append((row, ex.label))
        else:
            problems.append(
                (
                    f"examples[{i}]",
                    f"this text is already stored (id {row.id}) with label {row.label!r}; "
                    "send on_conflict: 'relabel' or PATCH /examples/{id} to correct it",
                )
            )
    if problems:
        raise ConflictError(problems)
    revision = current_revision(tx)
    if new or changed:
        revision = _next_revision(
            tx, "added", source, len(new) + len(changed), {"relabeled": len(changed)}
        )
        now = utcnow()
        tx.add_all(
            ExampleRow(
                text_hash=text_hash(ex.text),
                text=ex.text,
                label=ex.label,
                source=source,
                created_at=now,
                updated_at=now,
                revision=revision,
            )
            for ex in new
        )
        for row, label in changed:
            row.label, row.updated_at, row.revision = label, now, revision
    tx.flush()
    return IntakeResult(len(new), len(changed), duplicates, count(tx), revision)


def count(tx: Session) -> int:
    return tx.scalar(select(func.count()).select_from(ExampleRow)) or 0


def get(tx: Session, example_id: int) -> StoredExample | None:
    row = tx.get(ExampleRow, example_id)
    return _stored(row) if row else None


def page(
    tx: Session,
    *,
    label: str | None = None,
    source: str | None = None,
    since: datetime | None = None,
    after_id: int = 0,
    limit: int = 100,
) -> list[StoredExample]:
    """Examples with id > `after_id`, oldest first, filtered; at most `limit`."""
    query = select(ExampleRow).where(ExampleRow.id > after_id)
    if label is not None:
        query = query.where(ExampleRow.label == label)
    if source is not None:
        query = query.where(ExampleRow.source == source)
    if since is not None:
        query = query.where(ExampleRow.updated_at >= since)
    rows = tx.scalars(query.order_by(ExampleRow.id).limit(limit))
    return [_stored(r) for r in rows]


def relabel(tx: Session, example_id: int, label: str, source: str | None) -> StoredExample | None:
    """Correct one label; the row counts as new data for the next incremental retrain."""
    row = tx.get(ExampleRow, example_id, with_for_update=True)
    if row is None:
        return None
    if row.label != label:
        revision = _next_revision(
            tx, "relabeled", source, 1, {"id": example_id, "from": row.label, "to": label}
        )
        row.label, row.updated_at, row.revision = label, utcnow(), revision
        tx.flush()
    return _stored(row)


def delete_where(
    tx: Session, *, example_id: int | None = None, source: str | None = None, reason: str | None
) -> int:
    """Delete one example (by id) or a whole batch (by source); returns how many went.

    Each deleted row is kept in `deleted_examples` with this revision and reason.
    """
    query = select(ExampleRow)
    if example_id is not None:
        query = query.where(ExampleRow.id == example_id)
    elif source is not None:
        query = query.where(ExampleRow.source == source)
    else:
        raise ValueError("delete_where needs an id or a source")
    rows = list(tx.scalars(query))
    if not rows:
        return 0
    revision = _next_revision(
        tx, "deleted", source, len(rows), {"id": example_id, "reason": reason}
    )
    now = utcnow()
    tx.add_all(
        DeletedExampleRow(
            id=r.id,
            text=r.text,
            label=r.label,
            source=r.source,
            created_at=r.created_at,
            deleted_at=now,
            revision=revision,
            reason=reason,
        )
        for r in rows
    )
    ids = [r.id for r in rows]
    for start in range(0, len(ids), _IN_CHUNK):
        tx.execute(delete(ExampleRow).where(ExampleRow.id.in_(ids[start : start + _IN_CHUNK])))
    return len(rows)


@dataclass(frozen=True)
class Snapshot:
    """Every stored example at one revision: the fixed input of a retrain."""

    revision: int
    rows: tuple[StoredExample, ...]


def snapshot(tx: Session) -> Snapshot:
    revision = current_revision(tx)
    rows = tx.scalars(
        select(ExampleRow).where(ExampleRow.revision <= revision).order_by(ExampleRow.id)
    )
    return Snapshot(revision, tuple(_stored(r) for r in rows))
