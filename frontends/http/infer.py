"""POST /v2/models/{m}[/versions/{v}]/infer: decode, run through the core, encode.

Order follows Triton: the model must exist and not be decoupled before the body is even read;
then decompression, the header-length split, decoding, header forwarding. The response is released
in a `finally` right after it is serialised. Cancellation needs nothing here: aiohttp cancels this
task when the client goes away (handler_cancellation), the CancelledError reaches the core's
`infer`, which drops the queued request.
"""
from __future__ import annotations

import asyncio
import logging

from aiohttp import web

from tritonpy.frontends.http import body as bodies
from tritonpy.frontends.http.context import HttpContext
from tritonpy.frontends.http.decode import decode_infer, parse_header_length
from tritonpy.frontends.http.encode import encode_infer
from tritonpy.frontends.http.errors import HttpError, JSON_CONTENT_TYPE
from tritonpy.frontends.http.params import forward_headers

log = logging.getLogger("tritonpy.frontends.http.infer")

HEADER_LENGTH = "Inference-Header-Content-Length"
DECOUPLED_MESSAGE = "HTTP end point doesn't support models with decoupled transaction policy"


async def infer(ctx: HttpContext, request: web.Request, name: str, version: str) -> web.Response:
    server = ctx.server
    # The model and the caller's rights are looked up once, here; `infer` reuses the target.
    target = server.resolve(name, version)
    if target.decoupled:
        raise HttpError(501, DECOUPLED_MESSAGE)
    encoding = bodies.request_encoding(request)
    header_value = request.headers.get(HEADER_LENGTH)
    limit = ctx.max_input_size
    raw = await bodies.read_body(request, limit, json_only=header_value is None, timeout=ctx.body_timeout)
    payload = await bodies.decompress(raw, encoding, limit)
    header_length = parse_header_length(header_value, len(payload))
    if len(payload) >= bodies.THREAD_THRESHOLD:
        # Parsing a big JSON document or walking millions of BYTES prefixes takes long enough to
        # stall health checks and heartbeats for every other client; do it beside the loop.
        decoded = await asyncio.to_thread(decode_infer, name, version, payload, header_length, target.io)
    else:
        decoded = decode_infer(name, version, payload, header_length, target.io)
    forward_headers(decoded.request, ctx.forward_pattern, request.headers)
    out_encoding = bodies.response_encoding(request)

    response = await server.infer(decoded.request, target)
    try:
        body, json_length = encode_infer(response, decoded.binary_outputs, decoded.binary_default)
    finally:
        response.release()

    headers: dict[str, str] = {}
    if json_length is not None:
        headers[HEADER_LENGTH] = str(json_length)
        content_type = "application/octet-stream"
    else:
        content_type = JSON_CONTENT_TYPE
    if out_encoding != "identity":
        body = await bodies.compress(body, out_encoding)
        headers["Content-Encoding"] = out_encoding
    return web.Response(body=body, headers=headers, content_type=content_type)
