"""The Open Inference Protocol's binary tensor data extension, both ways.

`tritonclient.http` sends tensors as raw bytes after the JSON header by
default: the header's length is in `Inference-Header-Content-Length`, and each
binary input says how many bytes it takes in `parameters.binary_data_size`
(BYTES elements are a 4-byte little-endian length, then the bytes).
`BinaryRequests` turns such a request into the plain JSON form before the
route reads it (and labels tritonclient's untyped JSON bodies as JSON), so
the route and its documented schema know one shape;
`binary_response` writes requested outputs the same way back. The decode
runs in the event loop, so it is bounded: it stops past MAX_TEXTS_PER_REQUEST
elements (a 1 MiB body of empty elements took ~450 ms to decode in full).
"""

from __future__ import annotations

import json
import struct
from typing import Any

import numpy as np
from starlette.datastructures import Headers
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import send_json_error
from service.settings import get_settings

HEADER_LENGTH = "inference-header-content-length"
JSON_HEADER = (b"content-type", b"application/json")
_LENGTH = struct.Struct("<I")


class BinaryDataError(ValueError):
    """A binary request that cannot be decoded; the message says what is wrong."""


def decode_bytes(raw: bytes, limit: int) -> list[str]:
    """BYTES elements, each a 4-byte little-endian length and that many UTF-8 bytes;
    more than `limit` of them is a BinaryDataError."""
    texts: list[str] = []
    offset = 0
    while offset < len(raw):
        if len(texts) == limit:
            raise BinaryDataError(
                f"more than {limit} BYTES elements; send at most {limit} texts per request "
                "(MAX_TEXTS_PER_REQUEST)"
            )
        if offset + _LENGTH.size > len(raw):
            raise BinaryDataError("a BYTES element's 4-byte length is cut off")
        (size,) = _LENGTH.unpack_from(raw, offset)
        offset += _LENGTH.size
        if offset + size > len(raw):
            raise BinaryDataError(f"a BYTES element says {size} bytes, fewer follow")
        try:
            texts.append(raw[offset : offset + size].decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise BinaryDataError(f"a BYTES element is not UTF-8 text: {exc}") from exc
        offset += size
    return texts


def encode_bytes(texts: list[str]) -> bytes:
    parts = []
    for text in texts:
        data = text.encode("utf-8")
        parts += [_LENGTH.pack(len(data)), data]
    return b"".join(parts)


def as_json_request(body: bytes, header_length: str, limit: int) -> bytes:
    """The JSON request a binary one stands for: binary inputs inlined as `data`, each of
    at most `limit` elements."""
    if not header_length.isdigit() or int(header_length) > len(body):
        raise BinaryDataError(
            f"{HEADER_LENGTH} must be the JSON header's length in bytes, at most the body's "
            f"{len(body)}; got {header_length!r}"
        )
    split = int(header_length)
    try:
        request = json.loads(body[:split])
    except ValueError as exc:
        raise BinaryDataError(f"the JSON header is not valid JSON: {exc}") from exc
    inputs = request.get("inputs") if isinstance(request, dict) else None
    offset = split
    for item in inputs if isinstance(inputs, list) else []:
        params = item.get("parameters") if isinstance(item, dict) else None
        size = params.pop("binary_data_size", None) if isinstance(params, dict) else None
        if size is None:
            continue
        if not isinstance(size, int) or size < 0 or offset + size > len(body):
            raise BinaryDataError(
                f"input {item.get('name')!r}: binary_data_size {size!r} is not "
                "the size of the bytes that follow"
            )
        if item.get("datatype") != "BYTES":
            raise BinaryDataError(
                f"input {item.get('name')!r}: binary data is read for BYTES inputs only"
            )
        item["data"] = decode_bytes(body[offset : offset + size], limit)
        offset += size
    if offset != len(body):
        raise BinaryDataError(f"{len(body) - offset} bytes follow the binary inputs unclaimed")
    return json.dumps(request).encode()


class BinaryRequests:
    """Rewrite binary-extension requests to plain JSON; others pass untouched (400 if broken)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.limit = get_settings().max_texts_per_request

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = Headers(scope=scope)
        header_length = headers.get(HEADER_LENGTH)
        if header_length is None:
            if "content-type" not in headers:  # tritonclient's JSON: FastAPI reads it only as JSON
                scope = {**scope, "headers": [*scope["headers"], JSON_HEADER]}
            await self.app(scope, receive, send)
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body", False):
                break
        try:
            rewritten = as_json_request(body, header_length, self.limit)
        except BinaryDataError as exc:
            await send_json_error(send, 400, f"binary tensor data: {exc}")
            return
        kept = [JSON_HEADER, (b"content-length", str(len(rewritten)).encode())]
        kept += [
            (k, v)
            for k, v in scope["headers"]
            if k not in (b"content-type", b"content-length", HEADER_LENGTH.encode())
        ]
        delivered = False

        async def replay() -> Message:
            nonlocal delivered
            if delivered:
                return await receive()
            delivered = True
            return {"type": "http.request", "body": rewritten, "more_body": False}

        await self.app({**scope, "headers": kept}, replay, send)


def tensor_bytes(datatype: str, data: list[Any]) -> bytes:
    if datatype == "BYTES":
        return encode_bytes([str(x) for x in data])
    return np.asarray(data, dtype="<f4").tobytes()


def binary_response(header: dict[str, Any], binary: dict[str, bytes]) -> Response:
    """The response with the outputs named in `binary` as raw bytes after the JSON header."""
    tail = []
    for output in header["outputs"]:
        raw = binary.get(output["name"])
        if raw is not None:
            output.pop("data", None)
            output["parameters"] = {
                **(output.get("parameters") or {}),
                "binary_data_size": len(raw),
            }
            tail.append(raw)
    head = json.dumps(header).encode()
    return Response(
        head + b"".join(tail),
        media_type="application/octet-stream",
        headers={"Inference-Header-Content-Length": str(len(head))},
    )
