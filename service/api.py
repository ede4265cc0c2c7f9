"""Our FastAPI app: the admin API and the two inference protocols, with one error shape.

FastAPI validates requests against the pydantic models, runs plain handlers
in a thread pool and documents every route; the handlers below make each
refusal an `ErrorBody`: a `RefusedError` keeps its status, a request that
does not match its model is a 422 naming each problem (400 when the body is
not JSON at all), and Starlette's own 404/405 say what to do. `ApiRoutes`
(`service.guards`) puts this app before BentoML's router.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import OperationalError
from starlette.exceptions import HTTPException
from starlette.routing import Match
from starlette.types import Scope

from runner.queue import JobRunner
from service import observed
from service.admin import AdminApi
from service.errors import (
    ErrorBody,
    RefusedError,
    internal_error_message,
    invalid_request,
    log_failure,
    new_request_id,
)
from service.monitoring import Monitor
from service.predict_route import Scoring
from service.protocols import hf, v2
from service.protocols.label_studio import LabelStudioApi
from service.settings import Settings
from store import Store
from store.db import disk_full

log = logging.getLogger(__name__)
# Methods BentoML serves on a path we share ("/": its index page), for our 405's Allow.
ALSO_ALLOWED = "selftune.also_allowed"
METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")


def _answer(status: int, body: ErrorBody) -> JSONResponse:
    return JSONResponse(body.model_dump(exclude_none=True), status_code=status)


async def _refused(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RefusedError)
    return _answer(exc.status, exc.body())


async def _invalid(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors: list[dict[str, Any]] = list(exc.errors())
    if any(e.get("type") == "json_invalid" for e in errors):
        return _answer(400, ErrorBody(error="body is not valid JSON"))
    return _answer(422, invalid_request(errors))


def allowed_methods(api: FastAPI, scope: Scope) -> list[str]:
    """Every method some route of `api` takes on this request's path."""
    return [
        method
        for method in METHODS
        if any(r.matches({**scope, "method": method})[0] == Match.FULL for r in api.router.routes)
    ]


async def _http(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    path = request.url.path
    if exc.status_code == 405:
        allowed = allowed_methods(request.app, request.scope) + request.scope.get(ALSO_ALLOWED, [])
        message = f"{request.method} is not allowed on {path}; use {', '.join(sorted(allowed))}"
        response = _answer(405, ErrorBody(error=message))
        response.headers["Allow"] = ", ".join(sorted(allowed))
        return response
    if exc.status_code == 404:
        return _answer(404, ErrorBody(error=f"no route {path}; /docs.json lists every route"))
    return _answer(exc.status_code, ErrorBody(error=str(exc.detail)))


DISK_FULL = (
    "the database's disk is full, so nothing of this request was stored (what was stored "
    "before is intact, and predictions go on); free space on the volume of STATE_DIR, or of "
    "the PostgreSQL server for DATABASE_URL (lower RETAIN_VERSIONS or RETAIN_VERSION_DAYS "
    "where the model store shares it), then send the request again"
)


async def _database(request: Request, exc: Exception) -> JSONResponse:
    """A full disk is a 507 that says what to do; any other database error is a 500."""
    if not disk_full(exc):
        return await _failed(request, exc)
    log.warning("%s %s refused: the database's disk is full (%s)", request.method,
                request.url.path, exc.__cause__ or exc)  # fmt: skip
    return _answer(507, ErrorBody(error=DISK_FULL))


async def _failed(request: Request, exc: Exception) -> JSONResponse:
    """Anything unexpected: one logged traceback, and a JSON 500 naming its request id."""
    request_id = new_request_id()
    log_failure(request_id, request.scope)
    return _answer(500, ErrorBody(error=internal_error_message(request_id)))


def build_api(
    store: Store, settings: Settings, scoring: Scoring, runner: JobRunner, monitor: Monitor
) -> FastAPI:
    """The app `ApiRoutes` serves: the protocols over `scoring` (/predict's batches), and the
    admin routes over `store`, waking and stopping jobs through this worker's `runner`."""
    api = FastAPI(
        title="selftune",
        description="A text classifier that fine-tunes itself: predict, the Hugging Face and "
        "Open Inference Protocol shapes, and the admin API (examples, retraining, versions).",
        openapi_url=None,
        docs_url=None,
        redoc_url=None,
        exception_handlers={
            RefusedError: _refused,
            RequestValidationError: _invalid,
            HTTPException: _http,
            OperationalError: _database,
            Exception: _failed,
        },
    )
    api.include_router(hf.build_router(scoring))
    api.include_router(v2.build_router(scoring))
    api.include_router(AdminApi(store, settings, runner).router)
    api.include_router(observed.build_router(monitor, store, settings))
    api.include_router(LabelStudioApi(scoring, store, settings, runner).router)
    return api
