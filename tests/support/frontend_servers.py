"""Serve a facade (usually tests/support/fake_facade.FakeFacade) through the real HTTP or gRPC
endpoint, on 127.0.0.1, from a private event loop in a daemon thread, so that the blocking
`tritonclient` clients can run in the test's own thread."""
from __future__ import annotations

import asyncio
import dataclasses
import http.client
import threading
from typing import Any, Callable, Coroutine, TypeVar

import grpc
from aiohttp import web

from support.leaks import free_port
from tritonpy.core.facade import ServerFacade
from tritonpy.frontends.options import GrpcOptions, HttpOptions

T = TypeVar("T")


class _LoopThread:
    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)

    def _start_loop(self) -> None:
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def call(self, fn: Callable[[], T]) -> T:
        """Run a plain function on the server loop (for asyncio objects the fake owns)."""

        async def go() -> T:
            return fn()

        return self.run(go())

    def _stop_loop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


class HttpServerThread(_LoopThread):
    """`start_http(server, "127.0.0.1", 0, options=options)`; use as a context manager."""

    def __init__(self, server: ServerFacade, options: HttpOptions | None = None) -> None:
        super().__init__("http-test-server")
        self.server = server
        self.options = options or HttpOptions()
        self.runner: web.AppRunner | None = None
        self.port = 0

    def __enter__(self) -> HttpServerThread:
        from tritonpy.frontends.http.app import start_http

        self._start_loop()
        self.runner = self.run(start_http(self.server, "127.0.0.1", 0, options=self.options), timeout=10)
        self.port = self.runner.addresses[0][1]
        return self

    def __exit__(self, *exc: object) -> None:
        if self.runner is not None:
            self.run(self.runner.cleanup(), timeout=10)
        self._stop_loop()

    @property
    def url(self) -> str:
        return f"127.0.0.1:{self.port}"


def http_request(port: int, method: str, path: str, body: bytes | str | None = None,
                 headers: dict[str, str] | None = None, timeout: float = 10.0) -> tuple[int, dict[str, str], bytes]:
    """One plain HTTP/1.1 request with http.client: (status, headers, body)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, {k: v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


class ThreadedGrpc(_LoopThread):
    """`start_grpc(server, options)` on a free port of `address`; `start()` then `stop()`."""

    def __init__(self, server: ServerFacade, options: GrpcOptions | None = None, *,
                 address: str = "127.0.0.1") -> None:
        super().__init__("tritonpy-test-grpc")
        self.server = server
        self.options = dataclasses.replace(options or GrpcOptions(), address=address, port=free_port())
        self._endpoint: grpc.aio.Server | None = None

    @property
    def url(self) -> str:
        host = self.options.address
        host = f"[{host}]" if ":" in host else host
        return f"{host}:{self.options.port}"

    def start(self) -> ThreadedGrpc:
        from tritonpy.frontends.grpc.server import start_grpc

        self._start_loop()
        self._endpoint = self.run(start_grpc(self.server, self.options))
        return self

    def stop(self) -> None:
        if self._endpoint is not None:
            self.run(self._endpoint.stop(0))
            self._endpoint = None
        self._stop_loop()
