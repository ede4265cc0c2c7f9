"""Labeled examples: intake, paging, correction, deletion, and the snapshot a retrain reads.

Every write goes through `store.changes`: it takes the writers' lock before it
reads, takes the next revision, stamps the rows it touched and logs, per row,
the label and source before and after. A row's `source` is the source of its
current label: a relabel moves it to the relabeling source, and a revert
(`store.revert`) moves it back. Deleted rows move to `deleted_examples` with
the revision and reason, for audit.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from pydantic import BaseModel, ConfigDict
from sqlalchemy import DateTime, Integer, String, Text, delete, func, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from core.text import clean_name, clean_text, text_hash
from store import changes
from store.changes import CREATED, DELETED, RELABELED, RowChange
from store.db import Base, aware, chunked, utcnow


class ExampleRow(Base):
    __tablename__ = "examples"
    # An id is never handed out twice, even after its row is deleted (migration 0003).
    __table_args__ = ({"sqlite_autoincrement": True},)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    text_hash: Mapped[str] = mapped_column(String(64), unique=True)
    text: Mapped[str] = mapped_column(Text)
    label: Mapped[str] = mapped_column(String(200))
    source: Mapped[str | None] = mapped_column(String(200), index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    # Nullable as migration 0002 added it; every write sets it.
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, nullable=True
    )
    revision: Mapped[int] = mapped_column(Integer, default=0, index=True)


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


class RowProblemsError(ValueError):
    """A refusal naming each row's problem as (location, message); nothing was stored."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        super().__init__("; ".join(f"{loc}: {msg}" for loc, msg in problems))
        self.problems = problems


class ConflictError(RowProblemsError):
    """Submitted rows contradict stored ones."""


class InvalidExamplesError(RowProblemsError):
    """Rows that break `core.text`'s rules, which every caller of the store is held to."""


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


def _rule_break(loc: str, value: str, clean: Callable[[str], str]) -> list[tuple[str, str]]:
    """[(loc, why)] if `value` is not what `clean` makes of it, else []."""
    try:
        if clean(value) == value:
            return []
        return [(loc, "is not stripped of surrounding whitespace")]
    except ValueError as exc:
        return [(loc, str(exc))]


def _rule_breaks(examples: Sequence[NewExample], source: str | None) -> list[tuple[str, str]]:
    """Where the rows break the text rules: the same refusal on SQLite and PostgreSQL."""
    problems = _rule_break("source", source, clean_name) if source is not None else []
    for i, ex in enumerate(examples):
        problems += _rule_break(f"examples[{i}].text", ex.text, clean_text)
        problems += _rule_break(f"examples[{i}].label", ex.label, clean_name)
    return problems


def add(
    tx: Session, examples: Sequence[NewExample], source: str | None, relabel: bool = False
) -> IntakeResult:
    """Store new examples; exact duplicates are counted, a stored text with another label is
    relabeled (its source becomes `source`) if `relabel`, else the whole request is refused
    (ConflictError). Rows breaking `core.text`'s rules refuse it too (InvalidExamplesError).
    """
    broken = _rule_breaks(examples, source)
    if broken:
        raise InvalidExamplesError(broken)
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
    changes.lock(tx)  # what is stored cannot change between this read and the write
    stored = {row.text_hash: row for row in _by_hash(tx, list(by_hash))}
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
    if not new and not changed:
        return IntakeResult(0, 0, duplicates, count(tx), changes.current_revision(tx))
    revision = changes.next_revision(
        tx, "added", source, len(new) + len(changed), {"relabeled": len(changed)}
    )
    now = utcnow()
    created = [
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
    ]
    tx.add_all(created)
    logged = [_relabel(row, label, source, revision, now) for row, label in changed]
    tx.flush()  # the new rows' ids
    logged += [RowChange(r.id, CREATED, None, None, r.label, source) for r in created]
    changes.log_rows(tx, revision, logged)
    return IntakeResult(len(new), len(changed), duplicates, count(tx), revision)


def _by_hash(tx: Session, hashes: list[str]) -> Iterable[ExampleRow]:
    for chunk in chunked(hashes):
        yield from tx.scalars(select(ExampleRow).where(ExampleRow.text_hash.in_(chunk)))


def ids_by_hash(tx: Session, hashes: list[str]) -> dict[str, int]:
    """The id of each stored text among `hashes` (`core.text.text_hash`)."""
    return {row.text_hash: row.id for row in _by_hash(tx, hashes)}


def _relabel(
    row: ExampleRow, label: str, source: str | None, revision: int, now: datetime
) -> RowChange:
    """Give `row` a new label from `source`; returns the log entry saying what it replaced."""
    change = RowChange(row.id, RELABELED, row.label, row.source, label, source)
    row.label, row.source, row.updated_at, row.revision = label, source, now, revision
    return change


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
    """Examples with id > `after_id`, oldest first, filtered; at most `limit`.

    `since` is compared in UTC, whatever its offset (a naive time is taken as
    UTC): SQLite keeps times as UTC text and would drop the offset.
    """
    query = select(ExampleRow).where(ExampleRow.id > after_id)
    if label is not None:
        query = query.where(ExampleRow.label == label)
    if source is not None:
        query = query.where(ExampleRow.source == source)
    if since is not None:
        utc = since.astimezone(UTC) if since.tzinfo else since.replace(tzinfo=UTC)
        query = query.where(ExampleRow.updated_at >= utc)
    rows = tx.scalars(query.order_by(ExampleRow.id).limit(limit))
    return [_stored(r) for r in rows]


def relabel(tx: Session, example_id: int, label: str, source: str | None) -> StoredExample | None:
    """Correct one label (its source becomes `source`); the row counts as new data for the
    next incremental retrain. A label breaking `core.text`'s rules: InvalidExamplesError."""
    broken = _rule_break("label", label, clean_name)
    broken += _rule_break("source", source, clean_name) if source is not None else []
    if broken:
        raise InvalidExamplesError(broken)
    changes.lock(tx)
    row = tx.get(ExampleRow, example_id, populate_existing=True)
    if row is None:
        return None
    if row.label != label:
        revision = changes.next_revision(
            tx, "relabeled", source, 1, {"id": example_id, "from": row.label, "to": label}
        )
        changes.log_rows(tx, revision, [_relabel(row, label, source, revision, utcnow())])
        tx.flush()
    return _stored(row)


def delete_one(tx: Session, example_id: int, reason: str | None) -> bool:
    """Delete one example; it is kept in `deleted_examples` with this revision and reason."""
    changes.lock(tx)
    row = tx.get(ExampleRow, example_id, populate_existing=True)
    if row is None:
        return False
    revision = changes.next_revision(tx, "deleted", None, 1, {"id": example_id, "reason": reason})
    changes.log_rows(tx, revision, [RowChange(row.id, DELETED, row.label, row.source, None, None)])
    remove(tx, [row], revision, reason)
    return True


def remove(tx: Session, rows: Sequence[ExampleRow], revision: int, reason: str | None) -> None:
    """Move `rows` to `deleted_examples` (revision, reason); the caller logs the change."""
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
    for chunk in chunked([r.id for r in rows]):
        tx.execute(delete(ExampleRow).where(ExampleRow.id.in_(chunk)))


@dataclass(frozen=True)
class Snapshot:
    """Every stored example at one revision: the fixed input of a retrain."""

    revision: int
    rows: tuple[StoredExample, ...]


def snapshot(tx: Session) -> Snapshot:
    """The rows and the revision they were read at, from one statement: one view of the
    database on both backends, so a write committed meanwhile is in both or in neither."""
    at = (
        select(changes.MetaRow.value)
        .where(changes.MetaRow.key == changes.REVISION_KEY)
        .scalar_subquery()
    )
    read = list(tx.execute(select(ExampleRow, at.label("at")).order_by(ExampleRow.id)))
    revision = read[0].at if read else changes.current_revision(tx)
    return Snapshot(revision, tuple(_stored(r.ExampleRow) for r in read))
