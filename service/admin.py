"""The admin API: examples (intake, paging, correction, deletion), retrain jobs, versions.

These endpoints change what the service does, so they sit behind a bearer
token (`service.guards.AdminRoutes`). They form a small Starlette router in
front of BentoML: BentoML's own APIs have no path parameters. Every write
commits before the answer is sent; a refused request stores nothing; an
unexpected error answers a JSON 500 with a request id that the log repeats.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, Router

from core import registry
from core.text import EVAL_FRACTION, in_eval_split
from service.admin_schemas import (
    Activated,
    Deleted,
    ExampleIn,
    ExampleOut,
    ExamplePage,
    Intake,
    IntakeOut,
    JobList,
    JobOut,
    ModelsOut,
    Relabel,
    RetrainOut,
    RetrainRequest,
    VersionOut,
)
from service.settings import Settings
from store import Store, examples, jobs, versions
from store.examples import StoredExample

log = logging.getLogger(__name__)
M = TypeVar("M", bound=BaseModel)
MAX_PAGE = 1000


class RefusedError(Exception):
    """A request we answer with a 4xx: the message says what to change."""

    def __init__(
        self, status: int, message: str, details: list[dict[str, Any]] | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.details = status, message, details


def _error(status: int, message: str, details: list[dict[str, Any]] | None = None) -> JSONResponse:
    body: dict[str, Any] = {"error": message}
    if details:
        body["details"] = details
    return JSONResponse(body, status_code=status)


def _location(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _validate(model: type[M], payload: Any) -> M:
    try:
        return model.model_validate(payload)
    except ValidationError as exc:
        details = [{"loc": _location(e["loc"]), "msg": e["msg"]} for e in exc.errors()[:50]]
        summary = "; ".join(f"{d['loc']}: {d['msg']}" for d in details[:5])
        raise RefusedError(422, f"invalid request: {summary}", details) from exc


async def _body(request: Request, model: type[M]) -> M:
    try:
        payload = json.loads(await request.body() or b"{}")
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RefusedError(400, f"body is not valid JSON: {exc}") from exc
    return _validate(model, payload)


def _json(model: BaseModel, status: int = 200) -> JSONResponse:
    return JSONResponse(model.model_dump(mode="json"), status_code=status)


def _example_out(example: StoredExample) -> ExampleOut:
    return ExampleOut(
        **example.model_dump(), in_eval_split=in_eval_split(example.text, EVAL_FRACTION)
    )


def _int_param(request: Request, name: str, value: str) -> int:
    try:
        return int(value)
    except ValueError as exc:
        raise RefusedError(422, f"{name} must be an integer, got {value!r}") from exc


def handler(work: Callable[[Request], Any]) -> Callable[[Request], Any]:
    """Run a route: 4xx for RefusedError, a logged JSON 500 with a request id for the rest."""

    async def route(request: Request) -> Response:
        try:
            response: Response = await work(request)
            return response
        except RefusedError as exc:
            return _error(exc.status, exc.message, exc.details)
        except Exception:
            request_id = uuid.uuid4().hex[:12]
            log.exception(
                "request_id=%s %s %s failed", request_id, request.method, request.url.path
            )
            return _error(
                500, f"internal error (request_id {request_id}); the server log has the details"
            )

    return route


class AdminApi:
    """Request handlers; database work runs in a thread, not on the event loop."""

    def __init__(self, store: Store, settings: Settings) -> None:
        self.store = store
        self.settings = settings
        self.router = Router(
            routes=[
                Route("/examples", handler(self.add_examples), methods=["POST"]),
                Route("/examples", handler(self.list_examples), methods=["GET"]),
                Route("/examples", handler(self.delete_source), methods=["DELETE"]),
                Route("/examples/{id}", handler(self.get_example), methods=["GET"]),
                Route("/examples/{id}", handler(self.relabel), methods=["PATCH"]),
                Route("/examples/{id}", handler(self.delete_example), methods=["DELETE"]),
                Route("/retrain", handler(self.retrain), methods=["POST"]),
                Route("/jobs", handler(self.list_jobs), methods=["GET"]),
                Route("/jobs/{job_id}", handler(self.get_job), methods=["GET"]),
                Route("/models", handler(self.list_models), methods=["GET"]),
                Route("/models/{version:path}/activate", handler(self.activate), methods=["POST"]),
            ]
        )

    # --- label policy ---------------------------------------------------------
    def _unknown_labels(self, labels: list[tuple[str, str]]) -> list[dict[str, Any]]:
        """(location, label) pairs whose label the active model does not know."""
        with self.store.transaction() as tx:
            active = versions.active_tag(tx, self.settings.model_name)
        if active is None:
            return []
        known = set(registry.get(active).labels)
        return [
            {
                "loc": loc,
                "msg": f"label {label!r} is not one of {', '.join(sorted(known))}; "
                "fix it, or send allow_new_labels: true to add a label",
            }
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
                raise RefusedError(422, f"{len(problems)} example(s) have unknown labels", problems)
        new = [examples.NewExample(e.text, e.label) for e in rows]
        try:
            with self.store.transaction() as tx:
                result = (
                    examples.add(tx, new, body.source, relabel=body.on_conflict == "relabel")
                    if new
                    else None
                )
                job = jobs.create(tx, self.settings.model_name, job_params) if job_params else None
        except examples.ConflictError as exc:
            details = [{"loc": loc, "msg": msg} for loc, msg in exc.problems]
            raise RefusedError(
                409, "examples conflict with stored ones; nothing was stored", details
            ) from exc
        intake = IntakeOut(**vars(result)) if result else None
        return intake if job is None else RetrainOut(job_id=job.id, intake=intake)

    # --- examples -------------------------------------------------------------
    async def add_examples(self, request: Request) -> Response:
        body = await _body(request, Intake)
        return _json(await run_in_threadpool(self._store, body, None))

    async def list_examples(self, request: Request) -> Response:
        q = request.query_params
        unknown = set(q) - {"label", "source", "since", "cursor", "limit"}
        if unknown:
            raise RefusedError(
                422,
                f"unknown query parameter(s) {', '.join(sorted(unknown))}; "
                "use label, source, since, cursor, limit",
            )
        limit = _int_param(request, "limit", q.get("limit", "100"))
        if not 1 <= limit <= MAX_PAGE:
            raise RefusedError(422, f"limit must be between 1 and {MAX_PAGE}")
        after = _int_param(request, "cursor", q.get("cursor", "0"))
        since = None
        if "since" in q:
            try:
                since = datetime.fromisoformat(q["since"])
            except ValueError as exc:
                raise RefusedError(
                    422, f"since must be an ISO 8601 time, e.g. 2026-11-23T12:00:00Z: {exc}"
                ) from exc

        def read() -> ExamplePage:
            with self.store.transaction() as tx:
                rows = examples.page(
                    tx,
                    label=q.get("label"),
                    source=q.get("source"),
                    since=since,
                    after_id=after,
                    limit=limit,
                )
            more = len(rows) == limit
            return ExamplePage(
                items=[_example_out(r) for r in rows],
                next_cursor=str(rows[-1].id) if more else None,
            )

        return _json(await run_in_threadpool(read))

    def _example_id(self, request: Request) -> int:
        return _int_param(request, "example id", request.path_params["id"])

    def _not_found(self, example_id: int) -> RefusedError:
        return RefusedError(404, f"no example {example_id}; GET /examples lists them")

    async def get_example(self, request: Request) -> Response:
        example_id = self._example_id(request)

        def read() -> ExampleOut:
            with self.store.transaction() as tx:
                found = examples.get(tx, example_id)
            if found is None:
                raise self._not_found(example_id)
            return _example_out(found)

        return _json(await run_in_threadpool(read))

    async def relabel(self, request: Request) -> Response:
        example_id = self._example_id(request)
        body = await _body(request, Relabel)

        def write() -> ExampleOut:
            if not body.allow_new_labels:
                problems = self._unknown_labels([("label", body.label)])
                if problems:
                    raise RefusedError(422, problems[0]["msg"], problems)
            with self.store.transaction() as tx:
                changed = examples.relabel(tx, example_id, body.label, "api")
            if changed is None:
                raise self._not_found(example_id)
            return _example_out(changed)

        return _json(await run_in_threadpool(write))

    async def delete_example(self, request: Request) -> Response:
        example_id = self._example_id(request)
        reason = request.query_params.get("reason")

        def write() -> Deleted:
            with self.store.transaction() as tx:
                gone = examples.delete_where(tx, example_id=example_id, reason=reason)
            if not gone:
                raise self._not_found(example_id)
            return Deleted(deleted=gone)

        return _json(await run_in_threadpool(write))

    async def delete_source(self, request: Request) -> Response:
        source = request.query_params.get("source")
        if not source:
            raise RefusedError(
                422,
                "DELETE /examples needs ?source=NAME (a whole batch); "
                "delete one example with DELETE /examples/{id}",
            )
        reason = request.query_params.get("reason")

        def write() -> Deleted:
            with self.store.transaction() as tx:
                return Deleted(deleted=examples.delete_where(tx, source=source, reason=reason))

        return _json(await run_in_threadpool(write))

    # --- jobs -----------------------------------------------------------------
    async def retrain(self, request: Request) -> Response:
        body = await _body(request, RetrainRequest)
        params = {"mode": body.mode, "training": body.training_overrides()}
        return _json(await run_in_threadpool(self._store, body, params), status=202)

    async def list_jobs(self, request: Request) -> Response:
        def read() -> JobList:
            with self.store.transaction() as tx:
                return JobList(jobs=[JobOut.of(j) for j in jobs.recent(tx)])

        return _json(await run_in_threadpool(read))

    async def get_job(self, request: Request) -> Response:
        job_id = request.path_params["job_id"]

        def read() -> JobOut:
            with self.store.transaction() as tx:
                job = jobs.get(tx, job_id)
            if job is None:
                raise RefusedError(404, f"no job {job_id!r}; GET /jobs lists them")
            return JobOut.of(job)

        return _json(await run_in_threadpool(read))

    # --- versions -------------------------------------------------------------
    def _models(self) -> ModelsOut:
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
                    metrics={
                        k: evaluation.get(k)
                        for k in ("macro_f1", "macro_recall", "accuracy", "samples")
                    },
                    provenance={
                        k: v.metadata.get(k)
                        for k in (
                            "parent",
                            "base_model",
                            "precision",
                            "data_fingerprint",
                            "examples",
                            "libraries",
                            "config",
                            "mode",
                        )
                    },
                    data_revision=state.data_revision if state else None,
                )
            )
        return ModelsOut(model_name=name, active=active, versions=out)

    async def list_models(self, request: Request) -> Response:
        return _json(await run_in_threadpool(self._models))

    def _activate(self, version: str) -> Activated:
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
            previous = versions.activate(tx, name, found.tag, "activated through the API")
        return Activated(active=found.tag, previous=previous)

    async def activate(self, request: Request) -> Response:
        version = request.path_params["version"]
        return _json(await run_in_threadpool(self._activate, version))
