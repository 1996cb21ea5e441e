"""Start the server and its endpoints, print Triton's start-up lines, and shut down cleanly on a signal."""
from __future__ import annotations

import asyncio
import logging
import signal
import sys
import functools
from typing import Awaitable, Callable

from tritonpy.core.facade import JsonObject
from tritonpy.core.options import ServerOptions
from tritonpy.core.server import InferenceServer
from tritonpy.frontends.options import GrpcOptions, HttpOptions, MetricsOptions

# How to stop one started endpoint (gRPC server or aiohttp runner).
Stopper = Callable[[], Awaitable[object]]

log = logging.getLogger("tritonpy.frontends.runner")


def model_table(rows: list[JsonObject]) -> str:
    """Triton's start-up table of models: name, version, status (READY or UNAVAILABLE: reason)."""
    body = []
    for row in rows:
        status = row.get("state") or "UNAVAILABLE: not loaded"
        if row.get("reason") and status != "READY":
            status = f"{status}: {row['reason']}"
        body.append((row["name"], row.get("version", "") or "-", status))
    headers = ("Model", "Version", "Status")
    widths = [max(len(h), *(len(r[i]) for r in body)) if body else len(h) for i, h in enumerate(headers)]
    line = "+" + "+".join("-" * (w + 2) for w in widths) + "+"

    def fmt(cells: tuple[str, ...]) -> str:
        return "|" + "|".join(f" {c:<{w}} " for c, w in zip(cells, widths)) + "|"

    return "\n".join([line, fmt(headers), line, *(fmt(r) for r in body), line])


def _addr(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def run_server(options: ServerOptions, *, ready_event: asyncio.Event | None = None) -> int:
    server = InferenceServer(options)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    if server.tenants is not None:  # SIGHUP re-reads the tenants file (the handler only sets an event)
        loop.add_signal_handler(signal.SIGHUP, server.tenants.request_reload)
    endpoints: list[tuple[str, Stopper]] = []
    exit_code = 0
    try:
        failures = await server.start()
        print(model_table(server.repository_index()), file=sys.stderr, flush=True)
        if failures and options.exit_on_error:
            for name, reason in failures:
                log.error("failed to load '%s': %s", name, reason)
            log.error("exiting: a model failed to load and --exit-on-error is true")
            return 1
        if options.allow_grpc:
            from tritonpy.frontends.grpc.server import start_grpc

            grpc_endpoint = await start_grpc(server, GrpcOptions.from_server(options))
            endpoints.append(("grpc", functools.partial(grpc_endpoint.stop, grace=1.0)))
            log.info("Started GRPCInferenceService at %s", _addr(options.grpc_address, options.grpc_port))
        if options.allow_http:
            from tritonpy.frontends.http.app import start_http

            http_options = HttpOptions.from_server(options)
            http_runner = await start_http(server, options.http_address, options.http_port, options=http_options)
            endpoints.append(("http", http_runner.cleanup))
            log.info("Started HTTPService at %s", _addr(options.http_address, options.http_port))
        if options.allow_metrics:
            from tritonpy.frontends.metrics import start_metrics

            host = options.metrics_address or options.http_address
            metrics_options = MetricsOptions.from_server(options)
            metrics_runner = await start_metrics(server, host, options.metrics_port, metrics_options)
            endpoints.append(("metrics", metrics_runner.cleanup))
            log.info("Started Metrics Service at %s", _addr(host, options.metrics_port))
        if ready_event is not None:
            ready_event.set()
        await stop.wait()
        log.info("received a stop signal: draining (up to %ss)", options.exit_timeout_secs)
    except OSError as exc:
        log.error("failed to start: %s", exc)
        exit_code = 1
    finally:
        server.begin_shutdown()
        await server.stop()
        for kind, stop_endpoint in reversed(endpoints):
            try:
                await stop_endpoint()
            except Exception:
                log.exception("stopping the %s endpoint failed", kind)
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            loop.remove_signal_handler(sig)
    return exit_code
