"""What the served traffic looked like (admin): GET /monitoring and GET /review-queue."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Security
from pydantic import BaseModel

from service.admin import bearer
from service.docs import error_responses
from service.errors import RefusedError
from service.monitoring import Merged, Monitor, Signals, merged_gauges
from service.settings import Settings
from store import Store, label_studio, review
from store.review import Candidate

PROJECT = (
    "label-studio: the project whose text field and controls the tasks use (their data key, "
    "and our prediction as a pre-annotation)."
)


class MonitoringOut(BaseModel):
    """GET /monitoring: the merged gauges (as /metrics has them) and the answering worker's
    detail (its window's label mix and histograms beside the reference's)."""

    merged: Merged
    worker: Signals


class ReviewQueueOut(BaseModel):
    enabled: bool
    texts: list[Candidate]


def build_router(monitor: Monitor, store: Store, settings: Settings) -> APIRouter:
    router = APIRouter(
        tags=["admin"],
        dependencies=[Security(bearer)],
        responses=error_responses(401, 403, 500),
    )
    ttl = timedelta(hours=settings.review_ttl_hours)

    def monitoring() -> MonitoringOut:
        """Drift signals against the served version's reference profile."""
        worker = monitor.publish()
        return MonitoringOut(merged=merged_gauges(), worker=worker)

    def review_queue(
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        format: Annotated[
            Literal["json", "label-studio"],
            Query(description="label-studio: a task-import JSON list, to load as tasks."),
        ] = "json",
        project: Annotated[int | None, Query(ge=1, le=2**31 - 1, description=PROJECT)] = None,
    ) -> Any:
        """Served texts the active model was least sure of, the least sure first (REVIEW_QUEUE)."""
        with store.transaction() as tx:
            texts = review.listing(tx, limit, ttl)
            mapping = label_studio.project_mapping(tx, project) if project is not None else None
        if project is not None and mapping is None:
            raise RefusedError(
                404, f"Label Studio project {project} never called /label-studio/setup; "
                "connect this service as its ML backend first, or leave out project",
            )  # fmt: skip
        if format == "json":
            return ReviewQueueOut(enabled=settings.review_queue, texts=texts)
        return [label_studio_task(t, mapping) for t in texts]

    router.add_api_route("/monitoring", monitoring, methods=["GET"])
    router.add_api_route(
        "/review-queue", review_queue, methods=["GET"], responses=error_responses(404, 422)
    )
    return router


def label_studio_task(text: Candidate, mapping: label_studio.Mapping | None) -> dict[str, Any]:
    """One entry of Label Studio's task import format, with our prediction when the project's
    controls are known. No prediction score: the queue keeps the margin (in `meta`), not the
    model's confidence, and 1 - margin would read as one."""
    task: dict[str, Any] = {
        "data": {mapping.text_field if mapping else "text": text.text},
        "meta": {"margin": text.margin, "model_version": text.model_version},
    }
    if mapping is not None and (result := mapping.region(text.label)):
        task["predictions"] = [{"model_version": text.model_version, "result": result}]
    return task
