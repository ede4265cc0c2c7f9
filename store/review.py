"""The review queue: served texts the active model was least sure of, for a person to label.

Opt-in (REVIEW_QUEUE), because it keeps user text. Workers sample served texts
(`service.review`) and offer them here at each job-runner poll. The queue holds
at most `capacity` texts, the least sure first (smallest margin between the two
top scores), each once, none older than the TTL, and never a text that is
stored as an example: labeled texts are dropped on every offer and never listed.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

from pydantic import BaseModel, ConfigDict
from sqlalchemy import DateTime, Float, String, Text, delete, func, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from store.db import Base, aware, utcnow
from store.examples import ExampleRow


class ReviewRow(Base):
    __tablename__ = "review_queue"
    text_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    text: Mapped[str] = mapped_column(Text)
    label: Mapped[str] = mapped_column(String(200))
    margin: Mapped[float] = mapped_column(Float, index=True)
    model_version: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)


class Candidate(BaseModel):
    """A served text and how unsure the model was: `margin` = top score - second score."""

    model_config = ConfigDict(frozen=True, from_attributes=True)
    text_hash: str
    text: str
    label: str
    margin: float
    model_version: str
    created_at: datetime


def offer(tx: Session, candidates: Sequence[Candidate], capacity: int, ttl: timedelta) -> None:
    """Add candidates (a text already queued keeps its smaller margin), then drop expired and
    labeled texts and all but the `capacity` least sure."""
    queued = {
        row.text_hash: row
        for row in tx.scalars(
            select(ReviewRow).where(ReviewRow.text_hash.in_({c.text_hash for c in candidates}))
        )
    }
    for candidate in candidates:
        row = queued.get(candidate.text_hash)
        if row is None:
            queued[candidate.text_hash] = row = ReviewRow(**candidate.model_dump())
            tx.add(row)
        elif candidate.margin < row.margin:
            row.margin, row.label = candidate.margin, candidate.label
            row.model_version = candidate.model_version
    tx.flush()
    keep = select(ReviewRow.text_hash).order_by(ReviewRow.margin, ReviewRow.text_hash)
    for gone in (
        ReviewRow.created_at < utcnow() - ttl,
        ReviewRow.text_hash.in_(select(ExampleRow.text_hash)),
        ReviewRow.text_hash.not_in(keep.limit(capacity)),
    ):
        # The rows in this session are not used again: no need to match them in Python.
        tx.execute(delete(ReviewRow).where(gone).execution_options(synchronize_session=False))


def clear(tx: Session) -> None:
    tx.execute(delete(ReviewRow))


def listing(tx: Session, limit: int, ttl: timedelta) -> list[Candidate]:
    """The least sure texts first; never an expired or a labeled one."""
    rows = tx.scalars(
        select(ReviewRow)
        .where(
            ReviewRow.created_at >= utcnow() - ttl,
            ReviewRow.text_hash.not_in(select(ExampleRow.text_hash)),
        )
        .order_by(ReviewRow.margin, ReviewRow.text_hash)
        .limit(limit)
    )
    return [
        Candidate.model_validate(r).model_copy(update={"created_at": aware(r.created_at)})
        for r in rows
    ]


def size(tx: Session) -> int:
    return int(tx.scalar(select(func.count()).select_from(ReviewRow)) or 0)
