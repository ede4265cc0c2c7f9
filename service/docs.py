"""One OpenAPI document for the whole HTTP surface, served at /docs.json.

BentoML documents its own routes (the health and metrics endpoints) and
FastAPI documents ours (admin, Hugging Face, Open Inference Protocol);
BentoML's spec model cannot carry parameters or security schemes, so instead
of mounting our app into BentoML's document we merge the two here. /predict,
answered by an ASGI layer of ours (`service.predict_route`), is documented from
the same pydantic models that route validates with and answers in.
The document is built once per process (`OpenApiDocument`): it never changes
while the process runs, and building it took 78-195 ms of the event loop, on a
route anyone who reaches the port may call.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel
from starlette.types import ASGIApp, Message, Scope

from service.errors import JSON_MEDIA_TYPE as JSON
from service.errors import ErrorBody
from service.predict_route import PredictRequest
from service.schemas import PREDICT_ROUTE, Prediction

log = logging.getLogger(__name__)
DOCS_ROUTE = "/docs.json"
WHY = {
    400: "The request breaks the protocol's rules; the message says which.",
    401: "Missing or wrong admin token: send 'Authorization: Bearer $ADMIN_TOKEN'.",
    403: "Admin endpoints are disabled: ADMIN_TOKEN is not set.",
    404: "No such resource; the message says where to list them.",
    409: "Conflicts with stored examples or the active model's labels; nothing was stored.",
    413: "The body is over the byte cap (MAX_BODY_BYTES / MAX_ADMIN_BODY_BYTES).",
    415: "The body is not declared as JSON.",
    422: "The request is well-formed but invalid; `details` names each problem.",
    500: "An internal error; the message carries the request id the server log repeats.",
    503: "No model version is loaded yet, or the service is overloaded: retry later.",
    504: "Scoring took longer than REQUEST_TIMEOUT_S: retry later.",
    507: "The database's disk is full: nothing was stored; free space, then retry.",
}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """FastAPI `responses=` entries: each status answers an `ErrorBody`."""
    return {status: {"model": ErrorBody, "description": WHY[status]} for status in statuses}


def _schema_ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json_response(description: str, schema: str) -> dict[str, Any]:
    return {"description": description, "content": {JSON: {"schema": _schema_ref(schema)}}}


def _predict_errors() -> dict[str, Any]:
    why = {**WHY, 400: "The body does not match the schema; `details` names each problem."}
    return {
        str(status): _json_response(why[status], "ErrorBody")
        for status in (400, 413, 415, 500, 503, 504)
    }


def _predict_operation() -> dict[str, Any]:
    """POST /predict as the route answers it: `PredictRequest` in, a list of `Prediction`."""
    answers = {"type": "array", "items": _schema_ref(Prediction.__name__)}
    ok = {"description": "One answer per text, in order.", "content": {JSON: {"schema": answers}}}
    return {
        "tags": ["Service APIs"],
        "summary": "Classify texts",
        "description": "Classify each text; one answer per text, in input order.",
        "operationId": "predict",
        "requestBody": {
            "required": True,
            "content": {JSON: {"schema": _schema_ref(PredictRequest.__name__)}},
        },
        "responses": {"200": ok, **_predict_errors()},
    }


def _schemas(*models: type[BaseModel]) -> dict[str, Any]:
    """Each model's JSON schema, and those it refers to, by name, for `components`."""
    found: dict[str, Any] = {}
    for model in models:
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        found.update(schema.pop("$defs", {}))
        found[model.__name__] = schema
    return found


def merged_openapi(bentoml_spec: dict[str, Any], api: FastAPI) -> dict[str, Any]:
    """BentoML's document for its routes, plus every route of `api`, in one OpenAPI 3.1."""
    ours = get_openapi(
        title=bentoml_spec.get("info", {}).get("title", "selftune"),
        version=api.version,
        description=api.description,
        routes=api.routes,
    )
    paths = dict(bentoml_spec.get("paths", {}))
    paths[PREDICT_ROUTE] = {"post": _predict_operation()}
    for path, item in ours["paths"].items():
        paths[path] = {**paths.get(path, {}), **item}
    paths["/"]["get"] = {
        "tags": ["Service APIs"],
        "summary": "BentoML's index page: a form to try every route",
        "responses": {"200": {"description": "HTML", "content": {"text/html": {}}}},
    }
    components = ours.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    schemas.update(bentoml_spec.get("components", {}).get("schemas", {}))
    schemas.update(_schemas(ErrorBody, PredictRequest, Prediction))
    return {**ours, "paths": paths, "tags": bentoml_spec.get("tags", []) + ours.get("tags", [])}


class OpenApiDocument:
    """The merged document's bytes, built at the first request and kept for the process."""

    def __init__(self) -> None:
        self._body: bytes | None = None

    async def body(self, bentoml_app: ASGIApp, scope: Scope, api: FastAPI) -> bytes:
        """`scope` lends BentoML's request for its own document the connection's details."""
        if self._body is None:
            bentoml_spec = json.loads(await _get(bentoml_app, scope, DOCS_ROUTE))
            self._body = json.dumps(merged_openapi(bentoml_spec, api)).encode()
            log.info("%s built (%d bytes), kept for this process", DOCS_ROUTE, len(self._body))
        return self._body


async def _get(app: ASGIApp, scope: Scope, path: str) -> bytes:
    """The body `app` answers to a GET of `path`, in-process; `scope` lends the connection."""
    request: Scope = {
        **{k: scope.get(k) for k in ("asgi", "http_version", "scheme", "server", "client")},
        "type": "http",
        "root_path": "",
        "method": "GET",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "headers": [],
    }
    chunks: list[bytes] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        if message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))

    await app(request, receive, send)
    return b"".join(chunks)
