"""Every endpoint except inference: health, metadata, config, statistics, repository, shared memory,
logging and trace. Each one parses its small JSON body, calls one facade method, and renders the
result; the dispatcher in app.py has already checked restrictions and the method.
"""
from __future__ import annotations

import asyncio
import base64
import binascii
from typing import Any

from aiohttp import web

from tritonpy.frontends.http.body import THREAD_THRESHOLD, read_body
from tritonpy.frontends.http.context import HttpContext, empty_response, json_response
from tritonpy.frontends.http.decode import parse_json
from tritonpy.frontends.http.errors import HttpError, bad_request
from tritonpy.frontends.http.overrides import load_parameters
from tritonpy.frontends.http.params import as_bool, as_object, as_str, as_uint

CUDA_IPC_HANDLE_SIZE = 64  # sizeof(cudaIpcMemHandle_t)


async def _json_body(ctx: HttpContext, request: web.Request, *, optional: bool) -> dict | None:
    """The request's JSON object; None for an empty body when that is allowed."""
    raw = await read_body(request, ctx.max_input_size, timeout=ctx.body_timeout)
    if not raw:
        if optional:
            return None
        raise bad_request("failed to parse the request JSON buffer: The document is empty.")
    # A big document (a 10 M-number array) would stall every other connection while it parses.
    doc = await asyncio.to_thread(parse_json, raw) if len(raw) >= THREAD_THRESHOLD else parse_json(raw)
    if type(doc) is not dict:
        raise bad_request("failed to parse the request JSON buffer: expected a JSON object")
    return doc


# --- health & metadata ---------------------------------------------------------------------------
async def server_live(ctx: HttpContext, request: web.Request) -> web.Response:
    return empty_response(200 if ctx.server.is_live() else 400)


async def server_ready(ctx: HttpContext, request: web.Request) -> web.Response:
    return empty_response(200 if ctx.server.is_ready() else 400)


async def server_metadata(ctx: HttpContext, request: web.Request) -> web.Response:
    return json_response(ctx.server.metadata())


async def model_ready(ctx: HttpContext, request: web.Request, name: str, version: str) -> web.Response:
    if not await ctx.server.model_ready(name, version):
        raise bad_request("Model version not ready")
    return empty_response()


async def model_metadata(ctx: HttpContext, request: web.Request, name: str, version: str) -> web.Response:
    return json_response(ctx.server.model_metadata(name, version))


async def model_config(ctx: HttpContext, request: web.Request, name: str, version: str) -> web.Response:
    return json_response(ctx.server.model_config_json(name, version))


async def model_stats(ctx: HttpContext, request: web.Request, name: str = "", version: str = "") -> web.Response:
    return json_response({"model_stats": ctx.server.model_statistics(name, version)})


# --- model repository ----------------------------------------------------------------------------
async def repository_index(ctx: HttpContext, request: web.Request) -> web.Response:
    doc = await _json_body(ctx, request, optional=True)
    ready = False
    if doc is not None and "ready" in doc:
        ready = as_bool(doc["ready"], "ready")
    return json_response(ctx.server.repository_index(ready))


async def repository_control(
    ctx: HttpContext, request: web.Request, repository: str, name: str, action: str
) -> web.Response:
    if repository:
        raise HttpError(501, "'repository_name' specification is not supported")
    doc = await _json_body(ctx, request, optional=True)
    if action == "load":
        await ctx.server.load_model(name, load_parameters(doc))
        return empty_response()
    unload_dependents = False
    if doc is not None and "parameters" in doc:
        params = as_object(doc["parameters"], "parameters")
        if "unload_dependents" in params:
            unload_dependents = as_bool(params["unload_dependents"], "unload_dependents")
    await ctx.server.unload_model(name, unload_dependents)
    return empty_response()


# --- shared memory -------------------------------------------------------------------------------
def _required(doc: dict, key: str) -> Any:
    if key not in doc:
        raise bad_request(f"Shared memory register request has no '{key}' field")
    return doc[key]


async def system_shm(ctx: HttpContext, request: web.Request, region: str, action: str) -> web.Response:
    server = ctx.server
    if action == "status":
        return json_response(server.system_shm_status(region))
    if action == "unregister":
        server.unregister_system_shm(region)
        return empty_response()
    if not region:
        raise bad_request("'region name' is necessary to register system shared memory region")
    doc = await _json_body(ctx, request, optional=False)
    assert doc is not None
    key = as_str(_required(doc, "key"), "key")
    offset = as_uint(doc.get("offset", 0), "offset")
    byte_size = as_uint(_required(doc, "byte_size"), "byte_size")
    server.register_system_shm(region, key, offset, byte_size)
    return empty_response()


async def cuda_shm(ctx: HttpContext, request: web.Request, region: str, action: str) -> web.Response:
    server = ctx.server
    if action == "status":
        return json_response(server.cuda_shm_status(region))
    if action == "unregister":
        server.unregister_cuda_shm(region)
        return empty_response()
    if not region:
        raise bad_request("'region name' is necessary to register cuda shared memory region")
    doc = await _json_body(ctx, request, optional=False)
    assert doc is not None
    handle = _required(doc, "raw_handle")
    if type(handle) is not dict or type(handle.get("b64")) is not str:
        raise bad_request("Unable to parse 'raw_handle': expected {\"b64\": \"<base64>\"}")
    byte_size = as_uint(doc.get("byte_size"), "byte_size")
    device_id = as_uint(doc.get("device_id"), "device_id")
    try:
        raw = base64.b64decode(handle["b64"], validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != CUDA_IPC_HANDLE_SIZE:
        raise bad_request("'raw_handle' must be a valid base64 encoded cudaIpcMemHandle_t")
    server.register_cuda_shm(region, raw, device_id, byte_size)
    return empty_response()


# --- logging & trace -----------------------------------------------------------------------------
async def logging_settings(ctx: HttpContext, request: web.Request) -> web.Response:
    if request.method == "GET":
        return json_response(ctx.server.log_settings())
    doc = await _json_body(ctx, request, optional=False)
    assert doc is not None
    return json_response(ctx.server.update_log_settings(doc))


async def trace_settings(ctx: HttpContext, request: web.Request, model: str = "") -> web.Response:
    if request.method == "GET":
        return json_response(ctx.server.trace_settings(model))
    doc = await _json_body(ctx, request, optional=False)
    assert doc is not None
    return json_response(ctx.server.update_trace_settings(model, doc))
