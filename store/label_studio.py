"""Label Studio's projects and annotations, as examples in the store.

A project's mapping (which `<Choices>` names the label, which `<Text>` and data
field hold the text, which choices exist) is saved by /label-studio/setup.
Each annotation is linked to the example it made (`label_studio_annotations`),
so an update relabels that example and a delete removes it. Every operation
is idempotent: the same event twice (Label Studio's own webhook to an ML
backend and the user's can both deliver it) leaves the store as once. An
example keeps the label of its newest annotation; deleting that annotation
gives it back the newest remaining one, and deleting the last removes the
example, unless its label has since come from elsewhere (its `source` is no
longer this project's).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict
from sqlalchemy import JSON, DateTime, Integer, String, Text, delete, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from core.text import text_hash
from store import examples
from store.db import Base, utcnow
from store.examples import ExampleRow, NewExample


def source_of(project: int) -> str:
    """The `source` of the examples a project's annotations made, e.g. `label-studio:7`."""
    return f"label-studio:{project}"


class ProjectRow(Base):
    __tablename__ = "label_studio_projects"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    from_name: Mapped[str] = mapped_column(String(200))
    to_name: Mapped[str] = mapped_column(String(200))
    text_field: Mapped[str] = mapped_column(String(200))
    choices: Mapped[list[str]] = mapped_column(JSON)
    label_config: Mapped[str] = mapped_column(Text)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class AnnotationRow(Base):
    __tablename__ = "label_studio_annotations"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    project: Mapped[int] = mapped_column(Integer, index=True)
    task: Mapped[int] = mapped_column(Integer, index=True)
    example_id: Mapped[int] = mapped_column(Integer, index=True)
    label: Mapped[str] = mapped_column(String(200))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Mapping(BaseModel):
    """How a project's label config names the text and the label."""

    model_config = ConfigDict(frozen=True)
    from_name: str  # the <Choices> control
    to_name: str  # the <Text> object it labels
    text_field: str  # the task data key the <Text> shows ($text -> text)
    choices: list[str]

    def region(self, label: str) -> list[dict[str, Any]]:
        """A model label as a Label Studio result: one region naming the config's choice for
        it, or none when the config lists no such choice."""
        choice = _same_name(label, self.choices)
        if choice is None:
            return []
        return [{
            "from_name": self.from_name, "to_name": self.to_name, "type": "choices",
            "value": {"choices": [choice]},
        }]  # fmt: skip

    def label(self, choice: str, known: Sequence[str]) -> str:
        """The label an annotation's choice stores: the model's own spelling when it knows
        the label, else the choice itself (a label the next retrain adds)."""
        return _same_name(choice, known) or choice.strip()


def _same_name(name: str, names: Sequence[str]) -> str | None:
    """`name` as `names` spell it, matched exactly or else ignoring case and outer spaces:
    Label Studio's templates say "Positive" where a model trained on a CSV says "positive",
    and the two must not become two classes."""
    if name in names:
        return name
    key = name.strip().casefold()
    return next((n for n in names if n.strip().casefold() == key), None)


def save_project(tx: Session, project: int, mapping: Mapping, label_config: str) -> None:
    row = tx.get(ProjectRow, project)
    if row is None:
        row = ProjectRow(id=project)
        tx.add(row)
    row.from_name, row.to_name = mapping.from_name, mapping.to_name
    row.text_field, row.choices = mapping.text_field, list(mapping.choices)
    row.label_config, row.updated_at = label_config, utcnow()


def project_mapping(tx: Session, project: int) -> Mapping | None:
    row = tx.get(ProjectRow, project)
    if row is None:
        return None
    return Mapping(
        from_name=row.from_name, to_name=row.to_name, text_field=row.text_field,
        choices=list(row.choices),
    )  # fmt: skip


@dataclass(frozen=True)
class Annotation:
    """An annotation reduced to what the store keeps."""

    id: int
    project: int
    task: int
    text: str
    label: str


def record(tx: Session, annotation: Annotation) -> str:
    """Store or update the example an annotation makes; returns what happened
    (`created`, `relabeled` or `unchanged`)."""
    source = source_of(annotation.project)
    result = examples.add(tx, [NewExample(annotation.text, annotation.label)], source, True)
    key = text_hash(annotation.text)
    example_id = examples.ids_by_hash(tx, [key])[key]
    link = tx.get(AnnotationRow, annotation.id)
    moved_from = link.example_id if link is not None and link.example_id != example_id else None
    if link is None:
        link = AnnotationRow(id=annotation.id)
        tx.add(link)
    link.project, link.task, link.example_id = annotation.project, annotation.task, example_id
    link.label, link.updated_at = annotation.label, utcnow()
    tx.flush()
    if moved_from is not None:  # the task's text was edited: the old text loses this label
        _settle(tx, moved_from, source, "its Label Studio task's text was changed")
    return "created" if result.accepted else "relabeled" if result.relabeled else "unchanged"


def forget(tx: Session, annotation_ids: Sequence[int], reason: str) -> int:
    """Unlink deleted annotations and settle their examples; returns how many were linked."""
    links = list(tx.scalars(select(AnnotationRow).where(AnnotationRow.id.in_(annotation_ids))))
    for link in links:
        tx.execute(delete(AnnotationRow).where(AnnotationRow.id == link.id))
        tx.flush()
        _settle(tx, link.example_id, source_of(link.project), reason)
    return len(links)


def _settle(tx: Session, example_id: int, source: str, reason: str) -> None:
    """After a link is gone: the newest remaining annotation's label, or no example at all,
    as long as the example's label still comes from this project."""
    row = tx.get(ExampleRow, example_id, populate_existing=True)
    if row is None or row.source != source:
        return
    newest = tx.scalar(
        select(AnnotationRow)
        .where(AnnotationRow.example_id == example_id)
        .order_by(AnnotationRow.updated_at.desc())
    )
    if newest is None:
        examples.delete_one(tx, example_id, reason)
    else:
        examples.relabel(tx, example_id, newest.label, source)
