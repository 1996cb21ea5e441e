"""The generate extension: POST .../generate (one JSON reply) and .../generate_stream (SSE).

A request is flat JSON. Top-level keys that name a model input become tensors (the shape is the
input's shape with the values spread over it: fixed dimensions first, then the innermost variable
dimension takes the rest, as Triton does); `parameters` (an object) and every other key become
request parameters. Replies are flat too: id, model_name, model_version, response parameters and
one key per output (a single element is unwrapped to a scalar).

Both routes run through `server.infer_stream`, so decoupled models work. For the stream, the
status line is sent with the first response; a failure before that is an ordinary JSON error, a
failure after it arrives as a `data: {"error": ...}` event inside the 200 reply.
"""
from __future__ import annotations

import contextlib
import logging
from aiohttp import web

from tritonpy.core.errors import ServerError
from tritonpy.core.facade import ModelTarget
from tritonpy.core.model.version import ModelIO
from tritonpy.core.types import InferRequest, InferResponse, InputTensor
from tritonpy.frontends.http import body as bodies
from tritonpy.frontends.http.context import HttpContext
from tritonpy.frontends.http.decode import parse_json, tensor_from_json
from tritonpy.frontends.http.encode import dumps, generate_document
from tritonpy.frontends.http.errors import HttpError, bad_request, error_body
from tritonpy.frontends.http.params import as_str, forward_headers, scalar_parameter

log = logging.getLogger("tritonpy.frontends.http.generate")

SSE_CONTENT_TYPE = "text/event-stream; charset=utf-8"
ONE_RESPONSE = (
    "generate expects model to produce exactly 1 response, use generate stream for model that "
    "generates various number of responses"
)


def spread_shape(name: str, model_shape: list[int], count: int) -> list[int]:
    """Fit `count` values into an input's shape (-1 dims): fixed dims divide, innermost -1 takes the rest."""
    shape = [int(d) for d in model_shape]
    remaining = count
    for dim in reversed(shape):
        if dim == -1:
            continue
        if dim == 0 or remaining % dim:
            if dim == 0 and count == 0:
                continue
            raise bad_request(f"The schema can not convert input '{name}' to tensor with proper shape")
        remaining //= dim
    for i in range(len(shape) - 1, -1, -1):
        if shape[i] == -1:
            shape[i] = remaining
            remaining = 1
    if remaining != 1 and count != 0:
        raise bad_request(f"The schema can not convert input '{name}' to tensor with proper shape")
    return shape


def build_request(name: str, version: str, doc: dict, io: ModelIO) -> InferRequest:
    inputs = io.inputs
    request = InferRequest(model_name=name, model_version=version)
    for key, value in doc.items():
        if key in inputs:
            datatype, model_shape = inputs[key]
            values = value if type(value) is list else [value]
            if any(type(v) is list for v in values):
                raise bad_request(f"Unable to parse 'data': input '{key}' must be a scalar or a flat list")
            shape = spread_shape(key, model_shape, len(values))
            request.inputs.append(
                InputTensor(name=key, datatype=datatype, shape=shape,
                            data=tensor_from_json(key, datatype, shape, values))
            )
        elif key == "parameters":
            if type(value) is not dict:
                raise bad_request("Expected JSON object for keyword: 'parameters'")
            for pkey, pvalue in value.items():
                request.parameters[pkey] = scalar_parameter(pkey, pvalue)
        elif key == "id":
            request.id = as_str(value, "id")
        else:
            request.parameters[key] = scalar_parameter(key, value)
    return request


async def _prepare(
    ctx: HttpContext, request: web.Request, name: str, version: str
) -> tuple[InferRequest, ModelTarget]:
    # The model and the caller's rights are looked up once, here; `infer_stream` reuses the target.
    target = ctx.server.resolve(name, version)
    if request.headers.get("Content-Encoding", "").strip().lower() not in ("", "identity"):
        raise bad_request("Unsupported content-encoding, only 'identity' is supported.")
    raw = await bodies.read_body(request, ctx.max_input_size, timeout=ctx.body_timeout)
    doc = parse_json(raw)
    if type(doc) is not dict:
        raise bad_request("failed to parse the request JSON buffer: expected a JSON object")
    infer_request = build_request(name, version, doc, target.io)
    forward_headers(infer_request, ctx.forward_pattern, request.headers)
    return infer_request, target


def _render(response: InferResponse) -> bytes:
    try:
        return dumps(generate_document(response))
    finally:
        response.release()


async def generate(ctx: HttpContext, request: web.Request, name: str, version: str) -> web.Response:
    infer_request, target = await _prepare(ctx, request, name, version)
    documents: list[bytes] = []
    async with contextlib.aclosing(ctx.server.infer_stream(infer_request, target)) as stream:
        async for response, _final in stream:
            if isinstance(response, ServerError):  # one answer only: an error is the answer
                raise response
            if response is not None:
                documents.append(_render(response))
    if len(documents) != 1:
        raise bad_request(ONE_RESPONSE)
    return web.Response(body=documents[0], content_type="application/json")


def _event(payload: bytes) -> bytes:
    return b"data: " + payload + b"\n\n"


async def generate_stream(ctx: HttpContext, request: web.Request, name: str, version: str) -> web.StreamResponse:
    infer_request, target = await _prepare(ctx, request, name, version)
    reply: web.StreamResponse | None = None

    async def start() -> web.StreamResponse:
        stream_reply = web.StreamResponse(status=200, headers={"Content-Type": SSE_CONTENT_TYPE})
        await stream_reply.prepare(request)
        return stream_reply

    try:
        async with contextlib.aclosing(ctx.server.infer_stream(infer_request, target)) as stream:
            async for response, _final in stream:
                if response is None:
                    continue
                if isinstance(response, ServerError):  # a non-final error: an event, and on
                    event = _event(error_body(response.message))
                else:
                    try:
                        event = _event(_render(response))
                    except HttpError as exc:
                        event = _event(error_body(exc.message))
                if reply is None:
                    reply = await start()
                await reply.write(event)
    except (ServerError, HttpError) as exc:
        if reply is None:
            raise
        await reply.write(_event(error_body(exc.message)))
    except (ConnectionResetError, ConnectionError):
        # The client went away mid-stream; the stream is closed above, nothing more to send.
        log.debug("generate_stream client disconnected")
        if reply is not None:
            return reply
        raise
    if reply is None:
        reply = await start()
    await reply.write_eof()
    return reply
