"""The Open Inference Protocol (KServe V2) REST API over the served model.

The model takes one BYTES input named `text` of shape [N] and gives three
outputs: `label` (BYTES [N]), `score` (FP32 [N], the probability of `label`)
and `scores` (FP32 [N, C], every label's probability, columns in the order
the metadata's `labels` parameter lists). `{name}` is MODEL_NAME; the served
version is `model_version` in every answer, and the `/versions/{version}/`
paths answer for that version only. Errors are `{"error": ...}`, as
the protocol asks.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from service.docs import error_responses
from service.errors import RefusedError
from service.predict_route import Scoring
from service.protocols.v2_binary import binary_response, tensor_bytes
from service.schemas import NOT_A_BOOL, Prediction, Texts
from service.settings import get_settings

INPUT = "text"
OUTPUTS = {"label": "BYTES", "score": "FP32", "scores": "FP32"}
PROTOCOL_VERSION = "2"
Parameters = dict[str, Any]
_TEXTS = TypeAdapter(Texts)
_END = object()


class TensorMetadata(BaseModel):
    name: str
    datatype: str
    shape: list[int] = Field(description="-1 stands for a dimension of any size.")
    parameters: Parameters | None = None


class ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]


class ModelMetadata(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]


class Live(BaseModel):
    live: bool


class Ready(BaseModel):
    ready: bool


class ModelReady(BaseModel):
    name: str
    ready: bool


class RequestInput(BaseModel):
    name: str
    shape: list[Annotated[int, NOT_A_BOOL]]
    datatype: str
    parameters: Parameters | None = None
    data: list[Any] = Field(description="The texts, flat or nested by shape.")


class RequestOutput(BaseModel):
    name: str
    parameters: Parameters | None = None


class InferenceRequest(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["great"]}]}
            ]
        },
    )
    id: str | None = None
    parameters: Parameters | None = None
    inputs: list[RequestInput] = Field(min_length=1)
    outputs: list[RequestOutput] | None = None


class ResponseOutput(BaseModel):
    name: str
    shape: list[Annotated[int, NOT_A_BOOL]]
    datatype: str
    parameters: Parameters | None = None
    data: list[Any] | None = Field(None, description="Absent when sent as binary data.")


class InferenceResponse(BaseModel):
    model_name: str
    model_version: str
    id: str | None = None
    outputs: list[ResponseOutput]


def _flat(data: list[Any], limit: int) -> list[Any]:
    """`data` flattened, stopping once it holds more than `limit` elements: a small shape
    over a body of a million tiny elements costs no more than the shape allows."""
    flat: list[Any] = []
    stack = [iter(data)]
    while stack and len(flat) <= limit:
        item = next(stack[-1], _END)
        if item is _END:
            stack.pop()
        elif isinstance(item, list):
            stack.append(iter(item))
        else:
            flat.append(item)
    return flat


def _texts(body: InferenceRequest) -> list[str]:
    """The request's texts, checked against the model's one input and /predict's limits.

    The shape is checked before `data` is read, so an oversized request is refused
    without walking it.
    """
    if len(body.inputs) != 1 or body.inputs[0].name != INPUT:
        names = ", ".join(repr(i.name) for i in body.inputs)
        raise RefusedError(400, f"this model takes one input named {INPUT!r}; got {names}")
    tensor = body.inputs[0]
    if tensor.datatype != "BYTES":
        raise RefusedError(400, f"input {INPUT!r} is BYTES (text); got {tensor.datatype}")
    shape, limit = tensor.shape, get_settings().max_texts_per_request
    if len(shape) not in (1, 2) or shape[1:] not in ([], [1]) or not 0 <= shape[0] <= limit:
        raise RefusedError(
            400,
            f"input {INPUT!r}: shape {shape} must be [N] (or [N, 1]) with N at most "
            f"{limit} (MAX_TEXTS_PER_REQUEST)",
        )
    texts = _flat(tensor.data, shape[0])
    if len(texts) != shape[0]:
        raise RefusedError(
            400,
            f"input {INPUT!r}: shape {shape} says {shape[0]} element(s); data holds "
            f"{'more' if len(texts) > shape[0] else len(texts)}",
        )
    if not all(isinstance(t, str) for t in texts):
        raise RefusedError(400, f"input {INPUT!r}: every element must be a string")
    try:
        return _TEXTS.validate_python(texts)
    except ValidationError as exc:
        problems = "; ".join(
            f"element {e['loc'][0]}: {e['msg']}" if e["loc"] else e["msg"] for e in exc.errors()[:5]
        )
        raise RefusedError(400, f"input {INPUT!r}: {problems}") from exc


def _binary_outputs(body: InferenceRequest) -> set[str]:
    """Outputs sent as binary: each one's `binary_data`, else the request's `binary_data_output`."""
    default = bool((body.parameters or {}).get("binary_data_output", False))
    if not body.outputs:
        return set(OUTPUTS) if default else set()
    return {o.name for o in body.outputs if (o.parameters or {}).get("binary_data", default)}


def _outputs(predictions: list[Prediction], names: list[str]) -> list[ResponseOutput]:
    n = len(predictions)
    labels = list(predictions[0].scores)
    columns = {
        "label": ([p.label for p in predictions], [n]),
        "score": ([p.score for p in predictions], [n]),
        "scores": ([p.scores[k] for p in predictions for k in labels], [n, len(labels)]),
    }
    return [
        ResponseOutput(
            name=name, datatype=OUTPUTS[name], shape=columns[name][1], data=columns[name][0]
        )
        for name in names
    ]


def build_router(plane: Scoring) -> APIRouter:
    """The V2 routes; `plane` is the worker's scoring path, which knows the model it serves."""
    settings = get_settings()
    router = APIRouter(prefix="/v2", tags=["open-inference-protocol"])
    errors = error_responses(404, 500)

    def check_name(name: str) -> None:
        if name != settings.model_name:
            raise RefusedError(
                404,
                f"model {name!r} is not served here; this server serves {settings.model_name!r}",
            )

    @router.get("", responses=errors)
    def server_metadata() -> ServerMetadata:
        return ServerMetadata(
            name="selftune", version=PROTOCOL_VERSION, extensions=["binary_tensor_data"]
        )

    @router.get("/health/live")
    def live() -> Live:
        return Live(live=True)

    @router.get(
        "/health/ready", responses={503: {"model": Ready, "description": "No model loaded yet."}}
    )
    def ready() -> Any:
        loaded = plane.model() is not None
        return JSONResponse(Ready(ready=loaded).model_dump(), status_code=200 if loaded else 503)

    @router.get(
        "/models/{name}",
        responses=error_responses(404, 503, 500),
        response_model_exclude_none=True,  # the protocol's optional fields are absent, not null
    )
    def model_metadata(name: str) -> ModelMetadata:
        check_name(name)
        loaded = plane.require_model()
        labels = list(loaded.version.labels)
        return ModelMetadata(
            name=name,
            versions=[loaded.version.version],
            platform="onnxruntime_onnx",
            inputs=[TensorMetadata(name=INPUT, datatype="BYTES", shape=[-1])],
            outputs=[
                TensorMetadata(name="label", datatype="BYTES", shape=[-1]),
                TensorMetadata(name="score", datatype="FP32", shape=[-1]),
                TensorMetadata(
                    name="scores",
                    datatype="FP32",
                    shape=[-1, len(labels)],
                    parameters={"labels": labels},
                ),
            ],
        )

    @router.get("/models/{name}/ready", responses=errors)
    def model_ready(name: str) -> ModelReady:
        check_name(name)
        return ModelReady(name=name, ready=plane.model() is not None)

    @router.post(
        "/models/{name}/infer",
        response_model_exclude_none=True,
        responses={
            200: {"content": {"application/octet-stream": {}}, "description": "Binary outputs"},
            **error_responses(400, 404, 413, 415, 422, 500, 503),
        },
    )
    async def infer(name: str, request: Request, body: InferenceRequest) -> InferenceResponse:
        check_name(name)
        texts = _texts(body)
        names = [o.name for o in body.outputs] if body.outputs else list(OUTPUTS)
        unknown = [n for n in names if n not in OUTPUTS]
        if unknown:
            raise RefusedError(
                400, f"unknown output(s) {unknown}; this model gives {list(OUTPUTS)}"
            )
        predictions = await plane.classify(texts)
        response = InferenceResponse(
            model_name=name,
            model_version=predictions[0].model_version,
            id=body.id,
            outputs=_outputs(predictions, names),
        )
        binary = _binary_outputs(body)
        if not binary:
            return response
        header = response.model_dump(exclude_none=True)
        raw = {
            o.name: tensor_bytes(o.datatype, o.data or [])
            for o in response.outputs
            if o.name in binary
        }
        result: Any = binary_response(header, raw)
        return result

    # tritonclient's `model_version=` asks by version: only the served one answers.
    def check_version(name: str, version: str) -> None:
        check_name(name)
        served = plane.require_model().version.version
        if version != served:
            raise RefusedError(
                404,
                f"version {version!r} of {name!r} is not served; {served!r} is (GET /v2/models)",
            )

    @router.get(
        "/models/{name}/versions/{version}",
        responses=error_responses(404, 503, 500),
        response_model_exclude_none=True,
    )
    def version_metadata(name: str, version: str) -> ModelMetadata:
        check_version(name, version)
        return model_metadata(name)

    @router.get("/models/{name}/versions/{version}/ready", responses=error_responses(404, 503, 500))
    def version_ready(name: str, version: str) -> ModelReady:
        check_version(name, version)
        return model_ready(name)

    @router.post(
        "/models/{name}/versions/{version}/infer",
        response_model_exclude_none=True,
        responses={
            200: {"content": {"application/octet-stream": {}}, "description": "Binary outputs"},
            **error_responses(400, 404, 413, 415, 422, 500, 503),
        },
    )
    async def version_infer(
        name: str, version: str, request: Request, body: InferenceRequest
    ) -> InferenceResponse:
        check_version(name, version)
        return await infer(name, request, body)

    return router
