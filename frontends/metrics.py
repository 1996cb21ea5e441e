"""The Prometheus endpoint (`/metrics` on --metrics-port), served by aiohttp."""
from __future__ import annotations

from aiohttp import web

from tritonpy.core.facade import ServerFacade
from tritonpy.core.observability.metrics import MetricsConfig, exposition
from tritonpy.frontends.http import auth
from tritonpy.frontends.http.errors import HttpError, response_for
from tritonpy.frontends.options import MetricsOptions

# Prometheus text format 0.0.4, as Triton serves it.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def make_metrics_app(server: ServerFacade, options: MetricsOptions | None = None) -> web.Application:
    """Raises ValueError when `--metrics-config` holds an unknown key or a bad value."""
    if options is None:
        options = MetricsOptions()
    config = MetricsConfig.from_options(dict(options.config))
    registry = server.metrics_registry(config, cpu_metrics=options.cpu_metrics, gpu_metrics=options.gpu_metrics)

    async def metrics(request: web.Request) -> web.Response:
        try:
            # With a tenants file a scrape needs a key and shows only that tenant's models.
            with auth.tenant_scope(server, "metrics", request.headers):
                body = exposition(registry)
        except HttpError as exc:
            return response_for(exc)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})

    async def not_allowed(request: web.Request) -> web.Response:
        return web.json_response({"error": "Method Not Allowed"}, status=405)

    app = web.Application()
    for path in ("/metrics", "/metrics/"):
        app.router.add_get(path, metrics)
        app.router.add_route("*", path, not_allowed)
    return app


async def start_metrics(
    server: ServerFacade, host: str, port: int, options: MetricsOptions | None = None
) -> web.AppRunner:
    runner = web.AppRunner(make_metrics_app(server, options), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    return runner
