"""The HTTP/REST endpoint (KServe v2 + Triton extensions) on aiohttp.

One catch-all route feeds a small dispatcher that mirrors Triton's `HTTPAPIServer::Handle`: match
the path against Triton's patterns, check `--http-restricted-api` (403, before anything else),
then the method (405), then run the handler. Doing the routing ourselves keeps Triton's order of
checks and gives JSON bodies for 404/405 without a middleware per request.

Entry points: `make_http_app(server, options)` and `start_http(server, host, port, options=...)`
(returns the started `web.AppRunner`; stop it with `await runner.cleanup()`). `server` is the core
facade (`core.facade.ServerFacade`), `options` the endpoint's `frontends.options.HttpOptions`.
"""
from __future__ import annotations

import logging
import re
from typing import Any, Awaitable, Callable
from urllib.parse import unquote

from aiohttp import web

from tritonpy.core.errors import ServerError
from tritonpy.core.facade import ServerFacade
from tritonpy.frontends.http import auth, generate, handlers, infer
from tritonpy.frontends.http import restricted as cat
from tritonpy.frontends.http.context import CONTEXT, HttpContext
from tritonpy.frontends.http.errors import METHOD_NOT_ALLOWED, NOT_FOUND, HttpError, error_response, response_for
from tritonpy.frontends.http.params import compile_forward_pattern
from tritonpy.frontends.http.protocol_log import protocol_logger
from tritonpy.frontends.http.restricted import Restrictions
from tritonpy.frontends.options import DEFAULT_MAX_INPUT_SIZE, HttpOptions

log = logging.getLogger("tritonpy.frontends.http.app")

# aiohttp's own limit (only hit by code that calls request.read()) sits just above ours.
CLIENT_MAX_SIZE_SLACK = 1 << 16
INT64_MAX = (1 << 63) - 1
NO_IDLE_LIMIT = 365 * 86400.0

_MODEL_RE = re.compile(
    r"/v2/models/([^/]+)(?:/versions/([0-9]+))?(?:/(infer|generate|generate_stream|ready|config|stats|trace/setting))?"
)
_REPOSITORY_RE = re.compile(r"/v2/repository(?:/([^/]+))?/(?:(index)|models/([^/]+)/(load|unload))")
_SYSTEM_SHM_RE = re.compile(r"/v2/systemsharedmemory(?:/region/([^/]+))?/(status|register|unregister)")
_CUDA_SHM_RE = re.compile(r"/v2/cudasharedmemory(?:/region/([^/]+))?/(status|register|unregister)")

Handler = Callable[..., Awaitable[web.StreamResponse]]
Route = tuple[str, tuple[str, ...], Handler, tuple[Any, ...]]

GET = ("GET",)
POST = ("POST",)
GET_POST = ("GET", "POST")

_MODEL_ROUTES: dict[str, tuple[str, tuple[str, ...], Handler]] = {
    "": (cat.METADATA, GET, handlers.model_metadata),
    "ready": (cat.HEALTH, GET, handlers.model_ready),
    "infer": (cat.INFERENCE, POST, infer.infer),
    "generate": (cat.INFERENCE, POST, generate.generate),
    "generate_stream": (cat.INFERENCE, POST, generate.generate_stream),
    "config": (cat.MODEL_CONFIG, GET, handlers.model_config),
    "stats": (cat.STATISTICS, GET, handlers.model_stats),
}

_FIXED_ROUTES: dict[str, Route] = {
    "/v2": (cat.METADATA, GET, handlers.server_metadata, ()),
    "/v2/health/live": (cat.HEALTH, GET, handlers.server_live, ()),
    "/v2/health/ready": (cat.HEALTH, GET, handlers.server_ready, ()),
    "/v2/models/stats": (cat.STATISTICS, GET, handlers.model_stats, ()),
    "/v2/logging": (cat.LOGGING, GET_POST, handlers.logging_settings, ()),
    "/v2/trace/setting": (cat.TRACE, GET_POST, handlers.trace_settings, ()),
}


def _version(text: str | None) -> str:
    if not text:
        return ""
    if int(text) > INT64_MAX:
        raise HttpError(400, f"failed to get model version from specified version string '{text}'")
    return text


def route(path: str) -> Route | None:
    """(category, methods, handler, args) for a raw (still percent-encoded) path, None if unknown.

    Raises HttpError(400) for a version number past int64, as Triton does.
    """
    fixed = _FIXED_ROUTES.get(path)
    if fixed is not None:
        return fixed
    m = _MODEL_RE.fullmatch(path)
    if m is not None:
        name, version, kind = unquote(m.group(1)), m.group(2), m.group(3) or ""
        if kind == "trace/setting":
            # Trace settings are per model only; a version in the path is not part of the API.
            if version is None:
                return (cat.TRACE, GET_POST, handlers.trace_settings, (name,))
        else:
            category, methods, handler = _MODEL_ROUTES[kind]
            return (category, methods, handler, (name, _version(version)))
    m = _SYSTEM_SHM_RE.fullmatch(path)
    if m is not None:
        action = m.group(2)
        return (cat.SHARED_MEMORY, GET if action == "status" else POST, handlers.system_shm,
                (unquote(m.group(1) or ""), action))
    m = _CUDA_SHM_RE.fullmatch(path)
    if m is not None:
        action = m.group(2)
        return (cat.SHARED_MEMORY, GET if action == "status" else POST, handlers.cuda_shm,
                (unquote(m.group(1) or ""), action))
    m = _REPOSITORY_RE.fullmatch(path)
    if m is not None:
        if m.group(2) == "index":
            # Triton ignores a repository name on the index route.
            return (cat.MODEL_REPOSITORY, POST, handlers.repository_index, ())
        return (cat.MODEL_REPOSITORY, POST, handlers.repository_control,
                (unquote(m.group(1) or ""), unquote(m.group(3)), m.group(4)))
    return None


async def dispatch(request: web.Request) -> web.StreamResponse:
    ctx = request.app[CONTEXT]
    try:
        found = route(request.rel_url.raw_path)
        if found is None:
            raise HttpError(404, NOT_FOUND)
        category, methods, handler, args = found
        if ctx.restrictions:
            ctx.restrictions.check(category, request.headers)
        # Tenancy (401 here; 403/404 in the core) next to the restricted-API check.
        with auth.tenant_scope(ctx.server, category, request.headers):
            if request.method not in methods:
                raise HttpError(405, METHOD_NOT_ALLOWED)
            return await handler(ctx, request, *args)
    except (HttpError, ServerError) as exc:
        return response_for(exc)
    except web.RequestPayloadError as exc:
        # A body that breaks HTTP framing mid-way (bad chunk, early end): the client's fault.
        return error_response(400, f"failed to read the request body: {exc}")
    except web.HTTPException as exc:
        # Only reachable through aiohttp's own checks; Triton answers 400 where aiohttp says 413.
        status = 400 if exc.status == 413 else exc.status
        return error_response(status, exc.reason or exc.text or "error")
    except ConnectionError as exc:
        # The client went away; there is nobody to answer.
        log.debug("connection lost while serving %s: %s", request.path, exc)
        raise
    except Exception as exc:  # a bug: report it as Triton would (INTERNAL) and keep serving
        log.exception("unhandled error serving %s %s", request.method, request.path)
        return error_response(500, f"internal error: {exc}")


def make_http_app(server: ServerFacade, options: HttpOptions | None = None) -> web.Application:
    """The aiohttp application serving `server` (the core facade, or a test's fake of it)."""
    if options is None:
        options = HttpOptions()
    max_input = options.max_input_size or DEFAULT_MAX_INPUT_SIZE
    ctx = HttpContext(
        server=server,
        max_input_size=max_input,
        restrictions=Restrictions(options.restricted_api),
        forward_pattern=compile_forward_pattern(options.header_forward_pattern),
        body_timeout=options.body_timeout or None,
    )
    handler_args: dict[str, Any] = {
        # We decompress ourselves: unknown encodings must be a 400 and the size limit must hold
        # after decompression.
        "auto_decompress": False,
        # A client that disconnects cancels its handler, which drops its queued request in the core.
        "handler_cancellation": True,
        # aiohttp arms this timer when a connection opens and after each response; it closes a
        # connection still waiting for a complete request head when it fires, so it bounds both
        # idle keep-alive sockets and slowloris header trickles. Our 0 means "never"; aiohttp's 0
        # would close every keep-alive connection at once, so it becomes a year.
        "keepalive_timeout": options.idle_timeout or NO_IDLE_LIMIT,
        # Malformed requests are answered 400 by aiohttp; do not let a flood of them flood the log.
        "logger": protocol_logger(),
    }
    if not options.access_log:
        handler_args["access_log"] = None
    app = web.Application(client_max_size=max_input + CLIENT_MAX_SIZE_SLACK, handler_args=handler_args)
    app[CONTEXT] = ctx
    # `[\s\S]` rather than `.`: a percent-encoded newline in a model name must still reach our
    # dispatcher (JSON 404/400), not aiohttp's plain-text 404.
    app.router.add_route("*", r"/{tail:[\s\S]*}", dispatch)
    return app


def _host(host: str) -> str:
    """Accept Triton's `ipv6:[::1]` spelling as well as a bare address."""
    if host.startswith("ipv6:"):
        host = host[5:]
    return host.strip("[]") or "0.0.0.0"


async def start_http(
    server: ServerFacade, host: str, port: int, *, options: HttpOptions | None = None, reuse_port: bool | None = None
) -> web.AppRunner:
    """Serve `server` on host:port; returns the runner (`await runner.cleanup()` stops it)."""
    if options is None:
        options = HttpOptions()
    app = make_http_app(server, options)
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    try:
        if reuse_port is None:
            reuse_port = options.reuse_port
        site = web.TCPSite(runner, _host(host), port, backlog=1024, reuse_port=reuse_port or None)
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    log.info("HTTP endpoint listening on %s", ", ".join(str(a) for a in runner.addresses))
    return runner
