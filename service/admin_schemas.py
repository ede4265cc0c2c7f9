"""Request and response models of the admin API: what goes over the wire, typed.

Texts and labels go through `core.text` exactly as training reads them, so a
stored example is always one training can use.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, ClassVar, Literal

from fastapi import Path, Query
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StringConstraints,
)

from core.text import (
    MAX_LABEL_CHARS,
    check_storable,
    clean_label,
    clean_name,
    clean_text,
)
from service.schemas import NOT_A_BOOL
from service.settings import get_settings
from store.examples import StoredExample
from store.jobs import Job, JobState

_settings = get_settings()

# The documented `pattern`s admit exactly what `core.text` accepts, which enforces them with a
# message that says what is wrong. Whitespace is spelled out (JSON Schema's \s is ECMA's, which
# keeps U+001C); U+0000 is refused anywhere (PostgreSQL cannot store it). Lone surrogates,
# which no database stores either, are no Unicode string, so no pattern can name them (Rust's
# regex, behind schemathesis, refuses to); pydantic refuses them before `core.text` does.
_STRIPPED = "".join(f"\\u{ord(c):04x}" for c in map(chr, range(0x3001)) if c.isspace())
_STORABLE_RUN = "[^\\u0000]*"
STORABLE = f"^{_STORABLE_RUN}$"


def _with_one(char_class: str) -> str:
    """A pattern: storable throughout, with at least one character of `char_class`."""
    return f"^{_STORABLE_RUN}{char_class}{_STORABLE_RUN}$"


# `core.text.VISIBLE_CATEGORIES`: a letter, number, punctuation mark or symbol.
NAME = _with_one("[\\p{L}\\p{N}\\p{P}\\p{S}]")

ExampleText = Annotated[
    str,
    StringConstraints(max_length=_settings.max_text_chars),
    AfterValidator(clean_text),
    Field(json_schema_extra={"pattern": _with_one(f"[^{_STRIPPED}\\u0000]")}),
]
# A label or a source: a name a person reads (`core.text.clean_name`).
Label = Annotated[
    str,
    StringConstraints(max_length=MAX_LABEL_CHARS),
    AfterValidator(clean_label),
    Field(json_schema_extra={"pattern": NAME}),
]
Source = Annotated[
    str,
    StringConstraints(max_length=MAX_LABEL_CHARS),
    AfterValidator(clean_name),
    Field(json_schema_extra={"pattern": NAME}),
]
# A query value compared with stored text (label, source, reason): storable, else a 422 on both
# backends (PostgreSQL refuses U+0000 in a parameter; SQLite would quietly match nothing).
Storable = Annotated[
    str, AfterValidator(check_storable), Field(json_schema_extra={"pattern": STORABLE})
]
RetrainMode = Literal["auto", "incremental", "refit"]
# StrictBool: JSON 0 is not false (numbers: service.schemas.NOT_A_BOOL).


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ExampleIn(_Strict):
    text: ExampleText
    label: Label


SOURCE = "Who sent this: DELETE /examples?source= undoes what it did."


class Intake(_Strict):
    examples: list[ExampleIn] = Field(min_length=1, max_length=_settings.max_examples_per_request)
    source: Source | None = Field(None, description=SOURCE)
    allow_new_labels: StrictBool = Field(
        False, description="Accept labels the active model does not know (the head grows)."
    )
    on_conflict: Literal["refuse", "relabel"] = Field(
        "refuse",
        description="A text already stored with another label: refuse the request, or "
        "take the new label (a correction, as a labeling tool sends it).",
    )


class RetrainRequest(Intake):
    examples: list[ExampleIn] | None = Field(  # type: ignore[assignment]
        None, max_length=_settings.max_examples_per_request
    )
    mode: RetrainMode = Field(
        "auto",
        description="incremental: warm-start from the active version on what changed since "
        "it, plus replay; refit: from the base model on everything; auto: chooses.",
    )
    strategy: Literal["full", "freeze", "lora"] | None = None
    epochs: Annotated[float, Field(gt=0, le=20), NOT_A_BOOL] | None = None
    lr: Annotated[float, Field(gt=0, lt=1), NOT_A_BOOL] | None = None
    batch_size: Annotated[int, Field(ge=1, le=1024), NOT_A_BOOL] | None = None
    seed: Annotated[int, Field(ge=0, le=2**31 - 1), NOT_A_BOOL] | None = Field(
        None, description="Seeds the replay sample and the training run, to reproduce a job."
    )

    def job_params(self) -> dict[str, Any]:
        """What the job records, and an identical queued job is joined on: the mode and
        the training settings asked for. `RetrainRequest().job_params()` is what an
        automatic retrain (store.triggers) and Label Studio's START_TRAINING ask for."""
        fields = ("strategy", "epochs", "lr", "batch_size", "seed")
        training = {f: getattr(self, f) for f in fields if getattr(self, f) is not None}
        return {"mode": self.mode, "training": training}


class Relabel(_Strict):
    label: Label
    source: Source = Field("api", description=SOURCE)
    allow_new_labels: StrictBool = False


class IntakeOut(BaseModel):
    accepted: int
    relabeled: int
    duplicates: int
    total: int
    revision: int = Field(description="The examples revision after this request.")


class RetrainOut(BaseModel):
    job_id: str
    deduplicated: bool = Field(
        False,
        description="True: an identical retrain (same mode and training settings) was already "
        "queued, and this request joined it instead of queueing another; the examples it "
        "sent are stored and that job trains on them.",
    )
    message: str
    intake: IntakeOut | None = None


class CancelRequest(_Strict):
    by: Annotated[str, StringConstraints(max_length=200)] | None = Field(
        None, description="Who cancels (a name, a tool); default: the client's address."
    )
    reason: Annotated[str, StringConstraints(max_length=500)] | None = Field(
        None, description="Why; kept in the job's record."
    )


class Cancelled(BaseModel):
    by: str
    reason: str | None
    at: datetime


class ExampleOut(StoredExample):
    in_eval_split: bool = Field(description="Held out for evaluation: never trained on.")


class ExamplePage(BaseModel):
    items: list[ExampleOut]
    next_cursor: str | None = Field(description="Pass as ?cursor= for the next page; null: done.")


class Deleted(BaseModel):
    deleted: int


class KeptOut(BaseModel):
    id: int
    label: str = Field(description="Its label now, set by the later write.")
    source: str | None
    revision: int = Field(description="The later write that changed it.")


class RevertOut(BaseModel):
    """What DELETE /examples?source= undid, and what it left because a later write changed it."""

    deleted: int = Field(description="Rows the source created, deleted (kept for audit).")
    restored: int = Field(description="Rows whose previous label and source came back.")
    kept: list[KeptOut] = Field(
        description="Rows the source changed that another source changed again since: "
        "left as they are (the first 1000); revert that source first to undo both."
    )
    kept_count: int
    revisions: list[int] = Field(description="The writes undone, wholly or in part.")
    revision: int = Field(
        description="This revert's revision (the store's revision when nothing was undone)."
    )


class JobOut(BaseModel):
    """GET /jobs/{id}: what the job is doing or did, and why."""

    id: str
    state: JobState
    progress: float
    message: str | None
    trigger: str = Field(
        description="Who queued it: api (POST /retrain), bootstrap (make serve's first run), "
        "labels (RETRAIN_AFTER_LABELS), drift (RETRAIN_ON_DRIFT), label-studio (START_TRAINING)."
    )
    mode: str | None = Field(description="The mode that ran: incremental or refit.")
    mode_reason: str | None = Field(description="Why this mode ran (what auto decided).")
    compared_with: str | None = Field(
        description="The version active when the job read the store: the candidate is "
        "gated against it and promoted only if it is still active."
    )
    new_examples: int | None = Field(
        description="Rows added or relabeled since the active version's snapshot "
        "(evaluation split included)."
    )
    replayed_examples: int | None
    trained_examples: int | None
    skipped_examples: list[dict[str, Any]] = Field(
        default_factory=list, description="Stored rows the job could not use, with the reason."
    )
    phases: dict[str, float] = Field(
        default_factory=dict,
        description="Seconds per phase: start (claim to the job running), plan, fit, gate.",
    )
    candidate_version: str | None
    metrics: dict[str, Any]
    gate: dict[str, Any] | None = Field(description="The decision record: slices, interval.")
    decision: str | None
    error: str | None
    cancelled: Cancelled | None = Field(description="Who cancelled the job, why and when.")
    params: dict[str, Any]
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None

    @classmethod
    def of(cls, job: Job) -> JobOut:
        summary = job.summary or {}
        metrics = job.metrics or {}
        return cls(
            id=job.id,
            state=job.state,
            progress=round(job.progress, 4),
            message=job.message,
            trigger=job.trigger,
            mode=job.mode,
            mode_reason=summary.get("reason"),
            compared_with=summary.get("compared_with"),
            new_examples=summary.get("new_examples"),
            replayed_examples=summary.get("replayed_examples"),
            trained_examples=summary.get("trained_examples"),
            skipped_examples=summary.get("skipped_examples", []),
            phases=summary.get("phases", {}),
            candidate_version=job.candidate_version,
            metrics={"candidate": metrics.get("candidate"), "active": metrics.get("active")},
            gate=metrics.get("gate"),
            decision=job.decision,
            error=job.error,
            cancelled=summary.get("cancelled"),
            params=job.params,
            created_at=job.created_at,
            started_at=job.started_at,
            finished_at=job.finished_at,
        )


class JobList(BaseModel):
    jobs: list[JobOut]


class VersionOut(BaseModel):
    METRICS: ClassVar[tuple[str, ...]] = ("macro_f1", "macro_recall", "accuracy", "samples")
    PROVENANCE: ClassVar[tuple[str, ...]] = (
        "parent",
        "base_model",
        "precision",
        "data_fingerprint",
        "examples",
        "libraries",
        "config",
        "mode",
    )

    tag: str
    version: str
    status: str
    reason: str | None
    created_at: datetime
    labels: list[str]
    metrics: dict[str, Any]
    provenance: dict[str, Any]
    data_revision: int | None


class ModelsOut(BaseModel):
    model_name: str
    active: str | None
    versions: list[VersionOut]


class Activated(BaseModel):
    active: str
    previous: str | None


# Path and query parameters of the admin routes.
MAX_ID = 2**63 - 1  # the databases' integer
Reason = Annotated[
    Storable | None, Query(max_length=500, description="Kept with the deleted rows.")
]
ExampleId = Annotated[
    int, Path(ge=1, le=MAX_ID, description="The example's id (GET /examples lists them).")
]
JobId = Annotated[str, Path(max_length=100, description="The job's id (GET /jobs lists them).")]


def iso_time(value: object) -> object:
    """pydantic would read '0.5' as a Unix time; the documented format is ISO 8601."""
    try:
        float(str(value))
    except ValueError:
        return value
    raise ValueError("since must be an ISO 8601 time, as YYYY-MM-DDTHH:MM:SSZ")


Since = Annotated[
    datetime | None,
    BeforeValidator(iso_time),
    Query(description="Only examples changed at or after this ISO 8601 time."),
]
