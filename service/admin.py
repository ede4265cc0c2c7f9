"""The admin API: examples (intake, paging, correction, deletion), retrain jobs, versions.

These endpoints change what the service does, so they sit behind a bearer
token, checked before any body is read (`service.guards.ApiRoutes`); the
`HTTPBearer` dependency here documents that scheme in /docs.json. Handlers
are plain functions, which FastAPI runs in a thread pool: database work
never blocks the event loop. Every write commits before the answer is sent,
and a refused request stores nothing.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Path, Query, Request, Security
from fastapi.security import HTTPBearer

from core import registry
from core.text import EVAL_FRACTION, in_eval_split
from runner.queue import JobRunner
from service.admin_schemas import (
    MAX_ID,
    Activated,
    CancelRequest,
    Deleted,
    ExampleId,
    ExampleIn,
    ExampleOut,
    ExamplePage,
    Intake,
    IntakeOut,
    JobId,
    JobList,
    JobOut,
    ModelsOut,
    Reason,
    Relabel,
    RetrainOut,
    RetrainRequest,
    RevertOut,
    Since,
    Storable,
    VersionOut,
)
from service.docs import error_responses
from service.errors import ErrorDetail, RefusedError
from service.settings import Settings
from store import Store, examples, jobs, revert, versions
from store.examples import StoredExample
from store.jobs import Job, JobFinishedError
from store.versions import VersionStatus

MAX_PAGE = 1000
LIST_PARAMS = frozenset({"label", "source", "since", "cursor", "limit"})
# Documents the scheme; the token itself is checked before the body is read.
bearer = HTTPBearer(
    scheme_name="adminToken", auto_error=False, description="The ADMIN_TOKEN setting."
)


def _example_out(example: StoredExample) -> ExampleOut:
    return ExampleOut(
        **example.model_dump(), in_eval_split=in_eval_split(example.text, EVAL_FRACTION)
    )


def _not_found(example_id: int) -> RefusedError:
    return RefusedError(404, f"no example {example_id}; GET /examples lists them")


def _queued(job: Job, joined: bool, intake: IntakeOut | None) -> RetrainOut:
    if not joined:
        message = f"queued as job {job.id}; poll GET /jobs/{job.id}"
    else:
        stored = " with the examples stored now" if intake and intake.accepted else ""
        message = (
            f"an identical retrain (mode and training settings) is already queued as job "
            f"{job.id}: this request joined it instead of queueing another; it trains on "
            f"everything stored when it starts{stored}; poll GET /jobs/{job.id}"
        )
    return RetrainOut(job_id=job.id, deduplicated=joined, message=message, intake=intake)


def _no_job(job_id: str) -> RefusedError:
    return RefusedError(404, f"no job {job_id!r}; GET /jobs lists them")


class AdminApi:
    """The admin routes over one store; `router` is what the service mounts. `runner` is
    this worker's job runner: woken to claim a job it queued, told to stop a cancelled one."""

    def __init__(self, store: Store, settings: Settings, runner: JobRunner) -> None:
        self.store = store
        self.settings = settings
        self.runner = runner
        self.router = APIRouter(
            tags=["admin"],
            dependencies=[Security(bearer)],
            responses=error_responses(400, 401, 403, 413, 415, 422, 500, 507),
        )
        add = self.router.add_api_route
        add("/examples", self.add_examples, methods=["POST"], responses=error_responses(409))
        add("/examples", self.list_examples, methods=["GET"])
        add(
            "/examples", self.delete_source, methods=["DELETE"], responses=error_responses(404, 409)
        )
        one = "/examples/{example_id}"
        add(one, self.get_example, methods=["GET"], responses=error_responses(404))
        add(one, self.relabel, methods=["PATCH"], responses=error_responses(404, 409))
        add(one, self.delete_example, methods=["DELETE"], responses=error_responses(404))
        add(
            "/retrain",
            self.retrain,
            methods=["POST"],
            status_code=202,
            responses=error_responses(409),
        )
        add("/jobs", self.list_jobs, methods=["GET"])
        add("/jobs/{job_id}", self.get_job, methods=["GET"], responses=error_responses(404))
        add(
            "/jobs/{job_id}/cancel",
            self.cancel_job,
            methods=["POST"],
            responses=error_responses(404, 409),
        )
        add("/models", self.list_models, methods=["GET"])
        add(
            "/models/{version:path}/activate",
            self.activate,
            methods=["POST"],
            responses=error_responses(404),
        )

    # --- label policy ---------------------------------------------------------
    def _unknown_labels(self, labels: list[tuple[str, str]]) -> list[ErrorDetail]:
        """Problems for the (location, label) pairs whose label the active model does not know.

        A 409, not a 422: the request is valid as written; it conflicts with the
        active model's label set, and `allow_new_labels` (or another model) resolves it.
        """
        with self.store.transaction() as tx:
            active = versions.active_tag(tx, self.settings.model_name)
        if active is None:
            return []
        known = set(registry.get(active).labels)
        return [
            ErrorDetail(
                loc=loc,
                msg=f"label {label!r} is not one of {', '.join(sorted(known))}; "
                "fix it, or send allow_new_labels: true to add a label",
            )
            for loc, label in labels
            if label not in known
        ]

    def _store(self, body: Intake | RetrainRequest, job_params: dict[str, Any] | None) -> Any:
        rows: list[ExampleIn] = body.examples or []
        if not body.allow_new_labels:
            problems = self._unknown_labels(
                [(f"examples[{i}].label", ex.label) for i, ex in enumerate(rows)]
            )
            if problems:
                raise RefusedError(409, f"{len(problems)} example(s) have unknown labels", problems)
        new = [examples.NewExample(e.text, e.label) for e in rows]
        try:
            with self.store.transaction() as tx:
                result = (
                    examples.add(tx, new, body.source, relabel=body.on_conflict == "relabel")
                    if new
                    else None
                )
                job, joined = (
                    jobs.queue_or_join(tx, self.settings.model_name, job_params)
                    if job_params
                    else (None, False)
                )
        except examples.ConflictError as exc:
            details = [ErrorDetail(loc=loc, msg=msg) for loc, msg in exc.problems]
            raise RefusedError(
                409, "examples conflict with stored ones; nothing was stored", details
            ) from exc
        intake = IntakeOut(**vars(result)) if result else None
        return intake if job is None else _queued(job, joined, intake)

    # --- examples -------------------------------------------------------------
    def add_examples(self, body: Intake) -> IntakeOut:
        """Store labeled examples; a 2xx means committed. Nothing is stored on a 4xx."""
        out: IntakeOut = self._store(body, None)
        return out

    def list_examples(
        self,
        request: Request,
        label: Annotated[Storable | None, Query(max_length=200)] = None,
        source: Annotated[Storable | None, Query(max_length=200)] = None,
        since: Since = None,
        cursor: Annotated[
            int, Query(ge=0, le=MAX_ID, description="next_cursor of the last page.")
        ] = 0,
        limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 100,
    ) -> ExamplePage:
        """Stored examples, oldest first, a page at a time."""
        unknown = set(request.query_params) - LIST_PARAMS
        if unknown:
            raise RefusedError(
                422,
                f"unknown query parameter(s) {', '.join(sorted(unknown))}; "
                f"use {', '.join(sorted(LIST_PARAMS))}",
            )
        with self.store.transaction() as tx:
            rows = examples.page(
                tx, label=label, source=source, since=since, after_id=cursor, limit=limit
            )
        more = len(rows) == limit
        return ExamplePage(
            items=[_example_out(r) for r in rows],
            next_cursor=str(rows[-1].id) if more else None,
        )

    def get_example(self, example_id: ExampleId) -> ExampleOut:
        with self.store.transaction() as tx:
            found = examples.get(tx, example_id)
        if found is None:
            raise _not_found(example_id)
        return _example_out(found)

    def relabel(self, example_id: ExampleId, body: Relabel) -> ExampleOut:
        """Correct a label: counts as new data for the next incremental retrain."""
        if not body.allow_new_labels:
            problems = self._unknown_labels([("label", body.label)])
            if problems:
                raise RefusedError(409, problems[0].msg, problems)
        with self.store.transaction() as tx:
            changed = examples.relabel(tx, example_id, body.label, body.source)
        if changed is None:
            raise _not_found(example_id)
        return _example_out(changed)

    def delete_example(self, example_id: ExampleId, reason: Reason = None) -> Deleted:
        """Delete one example; it is kept, with the reason, for audit."""
        with self.store.transaction() as tx:
            gone = examples.delete_one(tx, example_id, reason)
        if not gone:
            raise _not_found(example_id)
        return Deleted(deleted=1)

    def delete_source(
        self,
        source: Annotated[
            Storable,
            Query(
                min_length=1,
                max_length=200,
                description="The source whose work to undo; one example: DELETE /examples/{id}.",
            ),
        ],
        revision: Annotated[
            int | None,
            Query(
                ge=1,
                le=MAX_ID,
                description="Undo only this write of the source (its POST /examples answer "
                "names it).",
            ),
        ] = None,
        reason: Reason = None,
    ) -> RevertOut:
        """Undo what one source did (a bad batch): rows it created are deleted (kept for
        audit), labels it changed go back. A row another source changed since keeps that
        label and is named in `kept`."""
        try:
            with self.store.transaction() as tx:
                undone = revert.revert(tx, source, revision, reason)
        except revert.RevisionNotFoundError as exc:
            raise RefusedError(404, str(exc)) from exc
        except revert.NotRevertibleError as exc:
            raise RefusedError(409, str(exc)) from exc
        return RevertOut.model_validate(undone, from_attributes=True)

    # --- jobs -----------------------------------------------------------------
    def retrain(self, body: Annotated[RetrainRequest | None, Body()] = None) -> RetrainOut:
        """Queue a retrain (optionally storing examples first); poll GET /jobs/{job_id}.

        While an identical one (same mode and training settings) is queued, the
        request joins it (`deduplicated`): it would train on the same store.
        """
        body = body or RetrainRequest()
        params = body.job_params()
        out: RetrainOut = self._store(body, params)
        self.runner.wake()  # claim it now, not at the next poll
        return out

    def list_jobs(self) -> JobList:
        with self.store.transaction() as tx:
            return JobList(jobs=[JobOut.of(j) for j in jobs.recent(tx)])

    def get_job(self, job_id: JobId) -> JobOut:
        with self.store.transaction() as tx:
            job = jobs.get(tx, job_id)
        if job is None:
            raise _no_job(job_id)
        return JobOut.of(job)

    def cancel_job(
        self,
        job_id: JobId,
        request: Request,
        body: Annotated[CancelRequest | None, Body()] = None,
    ) -> JobOut:
        """Cancel a queued or running job: its training is stopped, it never promotes.

        A running job's process is killed by the worker that runs it (within a
        heartbeat, whichever worker took this request); a Kubernetes Job is deleted.
        """
        body = body or CancelRequest()
        client = request.client.host if request.client else "unknown"
        by = body.by or f"client {client}"
        try:
            with self.store.transaction() as tx:
                job = jobs.cancel(tx, job_id, by=by, reason=body.reason)
        except JobFinishedError as exc:
            raise RefusedError(409, str(exc)) from exc
        if job is None:
            raise _no_job(job_id)
        if job.started_at is not None:
            self.runner.cancel(job.id)
        return JobOut.of(job)

    # --- versions -------------------------------------------------------------
    def list_models(self) -> ModelsOut:
        """Every version of MODEL_NAME, which one is active, and why each is where it is."""
        name = self.settings.model_name
        with self.store.transaction() as tx:
            active = versions.active_tag(tx, name)
            states = versions.states(tx, name)
        out = []
        for v in registry.list_versions(name):
            state = states.get(v.tag)
            status = "active" if v.tag == active else (state.status if state else "candidate")
            evaluation = v.metrics().get("evaluation", {})
            out.append(
                VersionOut(
                    tag=v.tag,
                    version=v.version,
                    status=status,
                    reason=state.reason if state else "registered outside the service",
                    created_at=v.created,
                    labels=list(v.labels),
                    metrics={k: evaluation.get(k) for k in VersionOut.METRICS},
                    provenance={k: v.metadata.get(k) for k in VersionOut.PROVENANCE},
                    data_revision=state.data_revision if state else None,
                )
            )
        return ModelsOut(model_name=name, active=active, versions=out)

    def activate(self, version: Annotated[str, Path(max_length=200)]) -> Activated:
        """Serve this version (a rollback, or a candidate's manual promotion)."""
        name = self.settings.model_name
        tag = version if ":" in version else f"{name}:{version}"
        try:
            found = registry.get(tag)
        except registry.VersionNotFoundError as exc:
            raise RefusedError(404, f"{exc}; GET /models lists the versions") from exc
        if found.name != name:
            raise RefusedError(
                422, f"{tag} is not a version of {name!r}, the model this service serves"
            )
        with self.store.transaction() as tx:
            state = versions.states(tx, name).get(found.tag)
            if state is not None and state.status == VersionStatus.DELETED:
                raise RefusedError(
                    404, f"{found.tag} was {state.reason}; GET /models lists the versions"
                )
            previous = versions.activate(tx, name, found.tag, "activated through the API")
        return Activated(active=found.tag, previous=previous)
