"""Label Studio's ML-backend protocol and webhooks, under /label-studio/.

A user types `http://HOST:PORT/label-studio` as the ML backend URL; Label
Studio appends `/health`, `/setup` (with the project's label config), `/predict`
(tasks to pre-annotate) and `/webhook`. Predictions go through the same
batches as /predict. Webhook events become examples (`store.label_studio`):
an annotation's choice of the project's `<Choices>` control, on the text of
its task, with `source` = `label-studio:<project id>` and the label as the
served model spells it (a config's "Positive" is a model's "positive", both ways);
an update relabels, a
delete removes, `START_TRAINING` (Label Studio's "Start training", sent to the
ML backend) queues a retrain. Every event is idempotent: Label Studio 1.23 does
not retry a webhook, but a project connected to this backend also gets Label
Studio's own webhook to the same URL, so an event can come twice. Events we do
not use are answered 200 and ignored.
Authentication (`service.guards`): the admin bearer token, or basic auth with
the token as the password (what Label Studio's ML-backend form sends).
"""

from __future__ import annotations

import logging

from fastapi import APIRouter
from sqlalchemy.orm import Session

from core.text import clean_text
from runner.queue import JobRunner
from service.admin_schemas import RetrainRequest
from service.docs import error_responses
from service.errors import ErrorDetail, RefusedError
from service.predict_route import Scoring
from service.protocols.label_config import LabelConfigError, parse
from service.protocols.label_studio_schemas import (
    LabelStudioAnnotation,
    LabelStudioEvent,
    LabelStudioPredict,
    LabelStudioPredictOut,
    LabelStudioSetup,
    LabelStudioSetupOut,
    LabelStudioTask,
    LabelStudioWebhookOut,
    One,
    Region,
    Skipped,
    TaskPrediction,
    object_id,
    project_id,
)
from service.settings import Settings
from store import Store, jobs, label_studio
from store.label_studio import Annotation, Mapping

log = logging.getLogger(__name__)
PREFIX = "/label-studio"
MODEL_CLASS = "selftune"
STORED = ("ANNOTATION_CREATED", "ANNOTATIONS_CREATED", "ANNOTATION_UPDATED")
# Label Studio 1.23 sends ANNOTATIONS_DELETED (ids only) for one delete or many; the
# singular name is what its docs once listed.
DELETED = ("ANNOTATION_DELETED", "ANNOTATIONS_DELETED")
START_TRAINING = "START_TRAINING"


class LabelStudioApi:
    """The /label-studio/ routes over one worker's scoring path, store and job runner."""

    def __init__(
        self, scoring: Scoring, store: Store, settings: Settings, runner: JobRunner
    ) -> None:
        self.scoring, self.store, self.settings, self.runner = scoring, store, settings, runner
        self.router = APIRouter(
            prefix=PREFIX,
            tags=["label-studio"],
            responses=error_responses(400, 401, 403, 413, 422, 500),
        )
        add = self.router.add_api_route
        add("/health", self.health, methods=["GET"])
        add("/setup", self.setup, methods=["POST"])
        add("/predict", self.predict, methods=["POST"], responses=error_responses(503))
        add("/webhook", self.webhook, methods=["POST"])

    def health(self) -> dict[str, str]:
        """What Label Studio checks when a backend is connected."""
        return {"status": "UP", "model_class": MODEL_CLASS}

    def setup(self, body: LabelStudioSetup) -> LabelStudioSetupOut:
        """Remember how the project's label config names the text and the label."""
        mapping = _mapping(body.label_config, "schema")
        with self.store.transaction() as tx:
            label_studio.save_project(tx, body.project, mapping, body.label_config)
        log.info("label studio project %d: %s", body.project, mapping)
        loaded = self.scoring.model()
        if loaded is None:
            return LabelStudioSetupOut(model_version="none")
        known = loaded.version.labels
        if new := [c for c in mapping.choices if mapping.label(c, known) not in known]:
            log.warning("label studio project %d: the model has no label for the choices %s; "
                        "annotations with them add labels", body.project, new)  # fmt: skip
        return LabelStudioSetupOut(model_version=loaded.version_id)

    def _labels(self) -> list[str]:
        """The labels of the model this worker serves (none before the first is loaded)."""
        loaded = self.scoring.model()
        return list(loaded.version.labels) if loaded else []

    async def predict(self, body: LabelStudioPredict) -> LabelStudioPredictOut:
        """Pre-annotations for the tasks, from the active version."""
        mapping = self._project_mapping(body.label_config, body.project)
        texts = [_predict_text(task, mapping.text_field, i) for i, task in enumerate(body.tasks)]
        step = self.settings.max_texts_per_request
        predictions = [
            p for i in range(0, len(texts), step)
            for p in await self.scoring.classify(texts[i : i + step])
        ]  # fmt: skip
        return LabelStudioPredictOut(
            results=[
                TaskPrediction(
                    result=mapping.region(p.label),
                    score=p.score,
                    model_version=p.model_version,
                )
                for p in predictions
            ]
        )

    def webhook(self, event: LabelStudioEvent) -> LabelStudioWebhookOut:
        """Annotation events become examples; START_TRAINING queues a retrain."""
        action = event.action
        if action == START_TRAINING:
            with self.store.transaction() as tx:
                params = RetrainRequest().job_params()
                job, joined = jobs.queue_or_join(
                    tx, self.settings.model_name, params, trigger="label-studio"
                )
            self.runner.wake()
            verb = "joined the queued" if joined else "queued"
            return LabelStudioWebhookOut(
                action=action, job_id=job.id, message=f"{verb} retrain {job.id}"
            )
        if action in DELETED:
            with self.store.transaction() as tx:
                removed = label_studio.forget(tx, event.annotation_ids(), f"Label Studio {action}")
            return LabelStudioWebhookOut(
                action=action, removed=removed, message=f"{removed} removed"
            )
        if action not in STORED:
            return LabelStudioWebhookOut(
                action=action, message="ignored: not an event this service uses"
            )
        return self._store_annotations(event)

    def _store_annotations(self, event: LabelStudioEvent) -> LabelStudioWebhookOut:
        out = LabelStudioWebhookOut(action=event.action, message="")
        tasks, known = event.tasks_by_id(), self._labels()
        with self.store.transaction() as tx:
            for item in event.all_annotations():
                try:
                    found = self._annotation(tx, LabelStudioAnnotation.read(item), tasks, event,
                                             known)  # fmt: skip
                except ValueError as exc:
                    out.skipped.append(Skipped(annotation=object_id(item), reason=str(exc)))
                    continue
                if label_studio.record(tx, found) == "unchanged":
                    out.unchanged += 1
                else:
                    out.stored += 1
        out.message = f"{out.stored} stored, {out.unchanged} unchanged, {len(out.skipped)} skipped"
        if out.skipped:
            log.info("label studio %s: %s", event.action, out.skipped)
        return out

    def _annotation(
        self, tx: Session, annotation: LabelStudioAnnotation, tasks: dict[int, One],
        event: LabelStudioEvent, known: list[str],
    ) -> Annotation:  # fmt: skip
        """The example an annotation makes (its choice in the `known` labels' spelling);
        ValueError saying why it makes none."""
        if annotation.was_cancelled:
            raise ValueError("the annotation was cancelled (skipped) in Label Studio")
        task_ref = annotation.task
        task = task_ref if isinstance(task_ref, dict) else tasks.get(task_ref or 0, {})
        if (task_id := object_id(task)) is None:
            raise ValueError("the event carries no task for this annotation")
        project = project_id(annotation.project or task.get("project") or event.project)
        mapping = label_studio.project_mapping(tx, project)
        if mapping is None and (config := event.label_config()):
            try:
                mapping = parse(config)
            except LabelConfigError as exc:
                raise ValueError(str(exc)) from None
        if mapping is None:
            raise ValueError(
                f"project {project} is unknown: connect this service as its ML backend "
                "(Label Studio then calls /label-studio/setup), or send the project's label_config"
            )
        label = mapping.label(_choice(annotation.result, mapping), known)
        text = _task_text(LabelStudioTask.model_validate(task), mapping.text_field)
        return Annotation(annotation.id, project, task_id, text, label)

    def _project_mapping(self, config: str | None, project: int | None) -> Mapping:
        if config:
            return _mapping(config, "label_config")
        if project is not None:
            with self.store.transaction() as tx:
                mapping = label_studio.project_mapping(tx, project)
            if mapping is not None:
                return mapping
        raise RefusedError(
            422, "send the project's label_config, or connect the project first (setup)"
        )


def _mapping(config: str, where: str) -> Mapping:
    try:
        return parse(config)
    except LabelConfigError as exc:
        raise RefusedError(422, str(exc), [ErrorDetail(loc=where, msg=str(exc))]) from None


def _task_text(task: LabelStudioTask, field: str) -> str:
    """The task's text; ValueError saying why there is none."""
    value = task.data.get(field)
    if not isinstance(value, str):
        raise ValueError(f"its data has no text field {field!r} (the <Text> value)")
    return clean_text(value)


def _predict_text(task: LabelStudioTask, field: str, index: int) -> str:
    try:
        return _task_text(task, field)
    except ValueError as exc:
        where = f"tasks[{index}]"
        raise RefusedError(422, f"{where}: {exc}", [ErrorDetail(loc=where, msg=str(exc))]) from None


def _choice(result: list[Region], mapping: Mapping) -> str:
    """The label an annotation's result gives the project's <Choices> control."""
    for region in result:
        if region.from_name == mapping.from_name and region.type == "choices":
            chosen = region.value.get("choices") or []
            if isinstance(chosen, list) and chosen and chosen[0] in mapping.choices:
                return str(chosen[0])
            raise ValueError(f"choice {chosen!r} is not one of {mapping.choices}")
    raise ValueError(f"the result has no choice of the <Choices name={mapping.from_name!r}>")
