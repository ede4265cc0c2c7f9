"""Version statuses and the active-version record: promotion and rollback move one row.

Artifacts live in the model store (`core.registry`); this is only what the
service decided about them. `activate` can be compare-and-swap: a retrain
promotes only if the version it was compared with is still the active one.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from sqlalchemy import DateTime, Integer, String, Text, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, Session, mapped_column

from store.db import Base, Store, aware, rowcount, utcnow, write_lock


class VersionStatus(StrEnum):
    ACTIVE = "active"
    CANDIDATE = "candidate"
    REJECTED = "rejected"
    RETIRED = "retired"
    DELETED = "deleted"  # by version retention (runner/retention.py): its files are gone


class VersionRow(Base):
    __tablename__ = "versions"
    tag: Mapped[str] = mapped_column(String(200), primary_key=True)
    model_name: Mapped[str] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str | None] = mapped_column(Text)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    # The examples revision this version's training data was read at (None: not from the store).
    data_revision: Mapped[int | None] = mapped_column(Integer)


class ActiveRow(Base):
    __tablename__ = "active_versions"
    model_name: Mapped[str] = mapped_column(String(200), primary_key=True)
    tag: Mapped[str] = mapped_column(String(200))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


@dataclass(frozen=True)
class VersionState:
    status: VersionStatus
    reason: str | None
    data_revision: int | None
    updated_at: datetime  # when the status last changed


class ActiveChangedError(RuntimeError):
    """The active version moved since the caller read it; nothing was changed."""

    def __init__(self, expected: str | None, actual: str | None) -> None:
        super().__init__(
            f"the active version is now {actual}, not {expected} that this candidate was "
            "compared with; retrain again to compare against it"
        )
        self.actual = actual


def active_tag(tx: Session, model_name: str) -> str | None:
    row = tx.get(ActiveRow, model_name)
    return row.tag if row else None


def adopt_if_none(store: Store, model_name: str, tag: str) -> str:
    """Make `tag` active only if nothing is; returns the tag active afterwards."""
    try:
        with store.transaction() as tx:
            tx.add(ActiveRow(model_name=model_name, tag=tag))
            set_status(tx, model_name, tag, VersionStatus.ACTIVE, "adopted: no active version yet")
    except IntegrityError:
        pass  # another worker adopted one first
    with store.transaction() as tx:
        return active_tag(tx, model_name) or tag


def activate(
    tx: Session,
    model_name: str,
    tag: str,
    reason: str,
    *,
    expected: str | None = None,
    check_expected: bool = False,
) -> str | None:
    """Make `tag` active and retire the previous one; returns the previous tag.

    With `check_expected`, raises ActiveChangedError unless `expected` is active.
    Activations and promotions run one at a time on both backends: the active
    row is read under the write lock (SQLite) or FOR UPDATE (PostgreSQL), so a
    concurrent one waits and then retires what this one made active.
    """
    write_lock(tx)
    row = tx.get(ActiveRow, model_name, with_for_update=True)
    previous = row.tag if row else None
    if check_expected and previous != expected:
        raise ActiveChangedError(expected, previous)
    if row is None:
        tx.add(ActiveRow(model_name=model_name, tag=tag, updated_at=utcnow()))
    else:
        row.tag, row.updated_at = tag, utcnow()
    if previous and previous != tag:
        set_status(tx, model_name, previous, VersionStatus.RETIRED, f"replaced by {tag}")
    set_status(tx, model_name, tag, VersionStatus.ACTIVE, reason)
    return previous


def set_status(
    tx: Session,
    model_name: str,
    tag: str,
    status: VersionStatus,
    reason: str | None,
    data_revision: int | None = None,
) -> None:
    row = tx.get(VersionRow, tag)
    if row is None:
        tx.add(
            VersionRow(
                tag=tag,
                model_name=model_name,
                status=status,
                reason=reason,
                data_revision=data_revision,
            )
        )
        tx.flush()
        return
    row.status, row.reason, row.updated_at = status, reason, utcnow()
    if data_revision is not None:
        row.data_revision = data_revision


def states(tx: Session, model_name: str) -> dict[str, VersionState]:
    rows = tx.execute(
        select(
            VersionRow.tag,
            VersionRow.status,
            VersionRow.reason,
            VersionRow.data_revision,
            VersionRow.updated_at,
        ).where(VersionRow.model_name == model_name)
    )
    return {tag: VersionState(VersionStatus(s), r, d, aware(u)) for tag, s, r, d, u in rows}


def mark_deleted(
    tx: Session, model_name: str, tag: str, status: VersionStatus, reason: str
) -> bool:
    """Mark a version deleted if it still has `status` and is not active; False otherwise.

    Conditional, so of several replicas applying retention at once exactly one
    deletes a version's files, and a version activated meanwhile is never deleted.
    """
    active = select(ActiveRow.tag).where(ActiveRow.model_name == model_name)
    return bool(
        rowcount(
            tx.execute(
                update(VersionRow)
                .where(
                    VersionRow.tag == tag,
                    VersionRow.status == status,
                    VersionRow.tag.not_in(active),
                )
                .values(status=VersionStatus.DELETED, reason=reason, updated_at=utcnow())
            )
        )
    )


def data_revision(tx: Session, tag: str) -> int | None:
    row = tx.get(VersionRow, tag)
    return row.data_revision if row else None
