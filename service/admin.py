"""The admin API: example intake, retrain jobs, versions, activation and rollback.

These endpoints change what the service does, so they sit behind a bearer
token (shared/DESIGN.md #8) and are refused outright while ADMIN_TOKEN is
unset. They are a small Starlette router mounted in front of BentoML as ASGI
middleware: BentoML's own APIs have no path parameters, and the auth check
must run before a (possibly large) body is read.

Every write commits before the answer is sent; a refused request stores nothing.
"""

from __future__ import annotations

import hmac
import json
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, Router
from starlette.types import ASGIApp, Receive, Scope, Send

from service import registry
from service.schemas import RequestGuard, send_json_error
from service.settings import Settings, get_settings
from service.store import ConflictError, NewExample, Store

_settings = get_settings()
M = TypeVar("M", bound=BaseModel)
ADMIN_PREFIXES = ("/examples", "/retrain", "/jobs", "/models")

ExampleText = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=_settings.max_text_chars)
]
Label = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]


class ExampleIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: ExampleText
    label: Label


class Intake(BaseModel):
    model_config = ConfigDict(extra="forbid")
    examples: list[ExampleIn] = Field(min_length=1, max_length=_settings.max_examples_per_request)
    source: Annotated[str, StringConstraints(max_length=200)] | None = None
    allow_new_labels: bool = Field(
        False, description="Accept labels the active model does not know (the head is retrained)."
    )


class RetrainRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    examples: list[ExampleIn] | None = Field(None, max_length=_settings.max_examples_per_request)
    source: Annotated[str, StringConstraints(max_length=200)] | None = None
    allow_new_labels: bool = False
    strategy: Literal["full", "freeze", "lora"] | None = None
    epochs: float | None = Field(None, gt=0, le=20)
    lr: float | None = Field(None, gt=0, lt=1)
    batch_size: int | None = Field(None, ge=1, le=1024)

    def training_overrides(self) -> dict[str, Any]:
        fields = ("strategy", "epochs", "lr", "batch_size")
        return {f: getattr(self, f) for f in fields if getattr(self, f) is not None}


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


async def _parse(request: Request, model: type[M]) -> M | JSONResponse:
    try:
        payload = json.loads(await request.body() or b"{}")
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        return _error(400, f"body is not valid JSON: {exc}")
    try:
        return model.model_validate(payload)
    except ValidationError as exc:
        details = [{"loc": _location(e["loc"]), "msg": e["msg"]} for e in exc.errors()[:50]]
        summary = "; ".join(f"{d['loc']}: {d['msg']}" for d in details[:5])
        return _error(422, f"invalid request: {summary}", details)


class AdminApi:
    """Request handlers; each one does its database work in a thread, not on the event loop."""

    def __init__(self, store: Store, settings: Settings) -> None:
        self.store = store
        self.settings = settings
        self.router = Router(
            routes=[
                Route("/examples", self.add_examples, methods=["POST"]),
                Route("/retrain", self.retrain, methods=["POST"]),
                Route("/jobs", self.list_jobs, methods=["GET"]),
                Route("/jobs/{job_id}", self.get_job, methods=["GET"]),
                Route("/models", self.list_models, methods=["GET"]),
                Route("/models/{version}/activate", self.activate, methods=["POST"]),
            ]
        )

    # --- label policy ---------------------------------------------------------
    def _label_problems(self, examples: list[ExampleIn], allow_new: bool) -> list[dict[str, Any]]:
        """Rows whose label the active model does not know, unless new labels are allowed."""
        if allow_new:
            return []
        active = self.store.active_tag(self.settings.model_name)
        if active is None:
            return []
        known = set(registry.get(active).labels)
        return [
            {
                "loc": f"examples[{i}].label",
                "msg": f"label {ex.label!r} is not one of {', '.join(sorted(known))}; "
                "fix it, or send allow_new_labels: true to add a label",
            }
            for i, ex in enumerate(examples)
            if ex.label not in known
        ]

    def _store_examples(
        self, intake: Intake | RetrainRequest, params: dict[str, Any] | None
    ) -> dict[str, Any]:
        examples = intake.examples or []
        problems = self._label_problems(examples, intake.allow_new_labels)
        if problems:
            raise RefusedError(422, f"{len(problems)} example(s) have unknown labels", problems)
        new = [NewExample(e.text, e.label) for e in examples]
        try:
            with self.store.session() as session:
                result = self.store.add_examples(new, intake.source, session) if new else None
                job = (
                    self.store.create_job(self.settings.model_name, params, session)
                    if params is not None
                    else None
                )
        except ConflictError as exc:
            details = [
                {"loc": p.split(":", 1)[0], "msg": p.split(": ", 1)[1]} for p in exc.problems
            ]
            raise RefusedError(
                422, "examples conflict with stored ones; nothing was stored", details
            ) from exc
        answer: dict[str, Any] = {}
        if result is not None:
            answer |= {
                "accepted": result.accepted,
                "duplicates": result.duplicates,
                "total": result.total,
            }
        if job is not None:
            answer["job_id"] = job.id
        return answer

    async def add_examples(self, request: Request) -> Response:
        intake = await _parse(request, Intake)
        if isinstance(intake, JSONResponse):
            return intake
        return await self._run(lambda: JSONResponse(self._store_examples(intake, None)))

    async def retrain(self, request: Request) -> Response:
        body = await _parse(request, RetrainRequest)
        if isinstance(body, JSONResponse):
            return body
        params = {"training": body.training_overrides()}
        return await self._run(
            lambda: JSONResponse(self._store_examples(body, params), status_code=202)
        )

    async def list_jobs(self, request: Request) -> Response:
        jobs = await run_in_threadpool(self.store.list_jobs)
        return JSONResponse({"jobs": [j.public() for j in jobs]})

    async def get_job(self, request: Request) -> Response:
        job_id = request.path_params["job_id"]
        job = await run_in_threadpool(self.store.get_job, job_id)
        if job is None:
            return _error(404, f"no job {job_id!r}; GET /jobs lists them")
        return JSONResponse(job.public())

    def _models(self) -> dict[str, Any]:
        name = self.settings.model_name
        active = self.store.active_tag(name)
        statuses = self.store.version_statuses(name)
        versions = []
        for v in registry.list_versions(name):
            status, reason = statuses.get(v.tag, ("candidate", "registered outside the service"))
            if v.tag == active:
                status = "active"
            evaluation = v.metrics().get("evaluation", {})
            versions.append(
                {
                    "tag": v.tag,
                    "version": v.version,
                    "status": status,
                    "reason": reason,
                    "created_at": v.created.isoformat(),
                    "labels": list(v.labels),
                    "metrics": {
                        k: evaluation.get(k)
                        for k in ("macro_f1", "macro_recall", "accuracy", "samples")
                    },
                    "provenance": {
                        k: v.metadata.get(k)
                        for k in (
                            "parent",
                            "base_model",
                            "precision",
                            "data_fingerprint",
                            "examples",
                            "libraries",
                        )
                    }
                    | {"config": v.metadata.get("config")},
                }
            )
        return {"model_name": name, "active": active, "versions": versions}

    async def list_models(self, request: Request) -> Response:
        return JSONResponse(await run_in_threadpool(self._models))

    def _activate(self, version: str) -> dict[str, Any]:
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
        previous = self.store.activate(name, found.tag, "activated through the API")
        return {"active": found.tag, "previous": previous}

    async def activate(self, request: Request) -> Response:
        version = request.path_params["version"]
        return await self._run(lambda: JSONResponse(self._activate(version)))

    async def _run(self, work: Any) -> Response:
        try:
            response: Response = await run_in_threadpool(work)
        except RefusedError as exc:
            return _error(exc.status, exc.message, exc.details)
        return response


class RefusedError(Exception):
    def __init__(
        self, status: int, message: str, details: list[dict[str, Any]] | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.details = status, message, details


class AdminRoutes:
    """ASGI middleware: admin paths go to the AdminApi (after auth and body limits), others on.

    Added outermost, so an unauthenticated request is refused before its body is read.
    """

    def __init__(self, app: ASGIApp, api_factory: Any) -> None:
        self.app = app
        self.settings = get_settings()
        self.api_factory = api_factory
        self._api: ASGIApp | None = None

    def _admin_app(self) -> ASGIApp:
        if self._api is None:
            api: AdminApi = self.api_factory()
            self._api = RequestGuard(
                api.router, self.settings.max_admin_body_bytes, "MAX_ADMIN_BODY_BYTES"
            )
        return self._api

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or not path.startswith(ADMIN_PREFIXES):
            await self.app(scope, receive, send)
            return
        token = self.settings.admin_token
        if token is None:
            await send_json_error(
                send,
                403,
                "admin endpoints are disabled: set the ADMIN_TOKEN environment variable "
                "(at least 16 characters) and restart the service",
            )
            return
        header = dict(scope.get("headers", [])).get(b"authorization", b"").decode("latin-1")
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            given.strip().encode(), token.get_secret_value().encode()
        ):
            await send_json_error(
                send, 401, "missing or wrong admin token: send 'Authorization: Bearer $ADMIN_TOKEN'"
            )
            return
        await self._admin_app()(scope, receive, send)
