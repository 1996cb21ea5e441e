"""The Prometheus endpoint (`/metrics` on --metrics-port), served by aiohttp."""
from __future__ import annotations

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from tritonpy.core.metrics import make_registry


def make_metrics_app(server) -> web.Application:
    registry = make_registry(server, cpu_metrics=server.options.allow_cpu_metrics)

    async def metrics(request: web.Request) -> web.Response:
        body = generate_latest(registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def not_allowed(request: web.Request) -> web.Response:
        return web.json_response({"error": "Method Not Allowed"}, status=405)

    app = web.Application()
    for path in ("/metrics", "/metrics/"):
        app.router.add_get(path, metrics)
        app.router.add_route("*", path, not_allowed)
    return app


async def start_metrics(server, host: str, port: int) -> web.AppRunner:
    runner = web.AppRunner(make_metrics_app(server), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    return runner
