"""The bodies of Label Studio's ML-backend calls and webhooks, as it sends them.

Shapes from Label Studio 1.23 (captured in tests/service/data/label_studio):
a project arrives as an id, as `"<id>.<timestamp>"` (setup) or as an object;
a webhook carries one annotation and its task, lists of both
(ANNOTATIONS_CREATED), or ids only (ANNOTATIONS_DELETED). Everything is open
to fields we do not read (Label Studio adds them between versions). A
webhook's items stay objects until each annotation is read on its own, so
one that cannot become an example is skipped with its reason, not the event.
"""

from __future__ import annotations

from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    StrictStr,
    ValidationError,
    field_validator,
)

from service.errors import invalid_request

One = dict[str, Any]
# A project as Label Studio names one (`project_id` reads it); strict, so `false` is not 0.
ProjectRef = StrictInt | StrictStr | One | None


def project_id(value: object) -> int:
    """Label Studio's project: an id, `"<id>.<timestamp>"` (setup), or an object with `id`."""
    if isinstance(value, dict):
        value = value.get("id")
    if isinstance(value, bool) or value is None:
        raise ValueError("no project id")
    if isinstance(value, int):
        return value
    head = str(value).split(".", 1)[0]
    if not head.isdigit():
        raise ValueError(f"{value!r} is not a project id (an integer, or '<id>.<timestamp>')")
    return int(head)


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class LabelStudioSetup(_Open):
    project: int
    label_config: str = Field(alias="schema", description="The project's label config (XML).")
    extra_params: str | dict[str, Any] | None = None

    _project = field_validator("project", mode="before")(lambda cls, v: project_id(v))


class LabelStudioSetupOut(BaseModel):
    model_version: str


class LabelStudioTask(_Open):
    id: int | None = None
    data: dict[str, Any]


class LabelStudioPredict(_Open):
    tasks: list[LabelStudioTask]
    label_config: str | None = None
    project: int | None = None

    _project = field_validator("project", mode="before")(
        lambda cls, v: None if v is None else project_id(v)
    )


class TaskPrediction(BaseModel):
    result: list[dict[str, Any]]
    score: float
    model_version: str


class LabelStudioPredictOut(BaseModel):
    results: list[TaskPrediction]


class Skipped(BaseModel):
    annotation: int | None
    reason: str


class LabelStudioWebhookOut(BaseModel):
    action: str
    stored: int = Field(0, description="Annotations that created or relabeled an example.")
    unchanged: int = Field(0, description="Annotations already stored as they are (retries).")
    removed: int = Field(0, description="Deleted annotations that were linked to an example.")
    skipped: list[Skipped] = Field(default_factory=list)
    job_id: str | None = Field(None, description="START_TRAINING: the retrain queued or joined.")
    message: str


class Region(_Open):
    """One result region of an annotation; a text classifier reads `choices` ones."""

    from_name: str = ""
    type: str = ""
    value: dict[str, Any] = Field(default_factory=dict)


class LabelStudioAnnotation(_Open):
    id: StrictInt
    task: StrictInt | One | None = None
    project: ProjectRef = None
    result: list[Region] = Field(default_factory=list)
    was_cancelled: bool = False

    @classmethod
    def read(cls, item: One) -> LabelStudioAnnotation:
        """`item` as an annotation; ValueError naming what is wrong with it."""
        try:
            return cls.model_validate(item)
        except ValidationError as exc:
            message = invalid_request(exc.errors(include_url=False, include_input=False)).error
            raise ValueError(f"the annotation is not one Label Studio sends: {message}") from None


class LabelStudioEvent(_Open):
    """A webhook: `action` says which; the rest depends on it."""

    action: str = Field(description="ANNOTATION_CREATED, ANNOTATIONS_DELETED, START_TRAINING, ...")
    project: ProjectRef = None
    annotation: One | list[One] | None = None
    annotations: One | list[One] | None = None
    task: One | list[One] | None = None
    tasks: One | list[One] | None = None

    def all_annotations(self) -> list[One]:
        """`annotation` (one, or a list in ANNOTATIONS_CREATED) and `annotations`
        (ANNOTATIONS_DELETED, ids only)."""
        return _listed(self.annotation) + _listed(self.annotations)

    def annotation_ids(self) -> list[int]:
        return [i for a in self.all_annotations() if (i := object_id(a)) is not None]

    def tasks_by_id(self) -> dict[int, One]:
        """The event's tasks (`task`: one, or a list in ANNOTATIONS_CREATED) by id."""
        tasks = _listed(self.task) + _listed(self.tasks)
        return {i: t for t in tasks if (i := object_id(t)) is not None}

    def label_config(self) -> str | None:
        """The project's label config, when the event carries the project object."""
        config = self.project.get("label_config") if isinstance(self.project, dict) else None
        return config if isinstance(config, str) else None


def object_id(item: One) -> int | None:
    """An event item's integer `id` (not a bool, not a string); None without one."""
    value = item.get("id")
    return value if type(value) is int else None


def _listed(value: One | list[One] | None) -> list[One]:
    return value if isinstance(value, list) else [] if value is None else [value]
