"""Senders: one in-flight request at a time each, over raw HTTP/1.1, aiohttp, gRPC or a gRPC stream.

A sender owns one connection (HTTP keep-alive socket, or gRPC stream); concurrency N means N
senders driven by N tasks in one event loop. Bodies are pre-serialised, responses are checked for
success but not decoded, so the client's cost per request stays near the cost of the socket I/O.

Why a raw HTTP client: aiohttp's client costs three to four times the CPU per request of a
hand-written asyncio.Protocol that writes pre-built request bytes and reads a Content-Length body
(about 230 vs 65 µs on the 2-core test machine; see docs/benchmarks-tool.md, which the tool itself
measures with its client-CPU column); `--http-client aiohttp` keeps the library path as a cross-check.
"""
from __future__ import annotations

import asyncio
import itertools
from typing import Any, Awaitable, Callable, Protocol

import aiohttp
import grpc

from .control import GRPC_OPTIONS


class RequestFailed(Exception):
    """The server answered with an error (the message is the server's)."""


class Sender:
    async def infer(self) -> None: ...
    async def close(self) -> None: ...


# ---------------------------------------------------------------- raw HTTP/1.1

class _HttpProtocol(asyncio.Protocol):
    """Minimal HTTP/1.1 response reader: status line, Content-Length or chunked body, keep-alive."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.waiter: asyncio.Future[tuple[int, bytes]] | None = None
        self.lost: Exception | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = exc or ConnectionResetError("server closed the connection")
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(self.lost)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if self.waiter is None or self.waiter.done():
            return
        parsed = self._parse()
        if parsed is not None:
            self.waiter.set_result(parsed)

    def _parse(self) -> tuple[int, bytes] | None:
        buf = self.buf
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            return None
        head = bytes(buf[:end]).lower()
        status = int(head[9:12])
        start = end + 4
        at = head.find(b"\ncontent-length:")
        if at >= 0:
            stop = head.find(b"\r", at + 16)
            length = int(head[at + 16: stop if stop >= 0 else len(head)])
            if len(buf) < start + length:
                return None
            body = bytes(buf[start: start + length])
            del buf[: start + length]
            return status, body
        if b"\ntransfer-encoding: chunked" in head:
            pos = start
            parts: list[bytes] = []
            while True:
                line_end = buf.find(b"\r\n", pos)
                if line_end < 0:
                    return None
                size = int(bytes(buf[pos:line_end]).split(b";")[0], 16)
                if len(buf) < line_end + 2 + size + 2:
                    return None
                if size == 0:
                    del buf[: line_end + 4]
                    return status, b"".join(parts)
                parts.append(bytes(buf[line_end + 2: line_end + 2 + size]))
                pos = line_end + 2 + size + 2
        del buf[:start]
        return status, b""

    async def request(self, data: bytes) -> tuple[int, bytes]:
        if self.lost is not None or self.transport is None:
            raise self.lost or ConnectionResetError("not connected")
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(data)
        return await self.waiter


class RawHttpSender(Sender):
    def __init__(self, host: str, port: int, requests: list[bytes]) -> None:
        self._host, self._port = host, port
        self._requests = itertools.cycle(requests)
        self._proto: _HttpProtocol | None = None

    async def _connect(self) -> _HttpProtocol:
        loop = asyncio.get_running_loop()
        _, proto = await loop.create_connection(_HttpProtocol, self._host, self._port)
        self._proto = proto
        return proto

    async def infer(self) -> None:
        proto = self._proto if self._proto is not None and self._proto.lost is None else await self._connect()
        status, body = await proto.request(next(self._requests))
        if status != 200:
            raise RequestFailed(f"HTTP {status}: {body[:300].decode('utf-8', 'replace')}")

    async def close(self) -> None:
        if self._proto is not None and self._proto.transport is not None:
            self._proto.transport.close()


# ---------------------------------------------------------------- aiohttp

class AiohttpSender(Sender):
    def __init__(self, session: aiohttp.ClientSession, url: str,
                 bodies: list[tuple[bytes, int | None]]) -> None:
        self._session, self._url = session, url
        items = []
        for body, header_len in bodies:
            headers = {"Content-Type": "application/json"} if header_len is None else {
                "Content-Type": "application/octet-stream", "Inference-Header-Content-Length": str(header_len)}
            items.append((body, headers))
        self._items = itertools.cycle(items)

    async def infer(self) -> None:
        body, headers = next(self._items)
        async with self._session.post(self._url, data=body, headers=headers) as resp:
            data = await resp.read()
            if resp.status != 200:
                raise RequestFailed(f"HTTP {resp.status}: {data[:300].decode('utf-8', 'replace')}")

    async def close(self) -> None:
        return None


# ---------------------------------------------------------------- gRPC

def _rpc_error(exc: grpc.aio.AioRpcError) -> RequestFailed:
    return RequestFailed(f"{exc.code().name}: {exc.details()}")


class StreamCall(Protocol):
    """The part of grpc.aio's stream-stream call used here, with byte messages (grpc has no type hints)."""

    async def write(self, request: bytes) -> None: ...

    async def read(self) -> Any: ...  # the response bytes, or the grpc.aio.EOF sentinel

    def cancel(self) -> bool: ...


class GrpcSender(Sender):
    """Unary ModelInfer with pre-serialised request bytes (no per-call protobuf work)."""

    def __init__(self, call: Callable[[bytes], Awaitable[bytes]], bodies: list[bytes]) -> None:
        self._call, self._bodies = call, itertools.cycle(bodies)

    async def infer(self) -> None:
        try:
            await self._call(next(self._bodies))
        except grpc.aio.AioRpcError as exc:
            raise _rpc_error(exc) from None

    async def close(self) -> None:
        return None


class GrpcStreamSender(Sender):
    """One ModelStreamInfer stream; one request written, its one response read."""

    def __init__(self, stream_factory: Callable[[], StreamCall], bodies: list[bytes]) -> None:
        self._factory, self._bodies = stream_factory, itertools.cycle(bodies)
        self._call: StreamCall | None = None

    async def infer(self) -> None:
        if self._call is None:
            self._call = self._factory()
        try:
            await self._call.write(next(self._bodies))
            resp = await self._call.read()
        except grpc.aio.AioRpcError as exc:
            self._call = None
            raise _rpc_error(exc) from None
        if resp is grpc.aio.EOF:
            self._call = None
            raise RequestFailed("the server closed the stream")
        # ModelStreamInferResponse: field 1 (error_message, tag 0x0a) is only serialised when set.
        if resp[:1] == b"\x0a":
            from tritonpy.proto import grpc_service_pb2 as pb

            raise RequestFailed(pb.ModelStreamInferResponse.FromString(resp).error_message)

    async def close(self) -> None:
        if self._call is not None:
            self._call.cancel()
            self._call = None


class GrpcChannel:
    """One channel (HTTP/2 multiplexes every sender), byte-level method handles."""

    def __init__(self, url: str) -> None:
        self.channel = grpc.aio.insecure_channel(url, options=GRPC_OPTIONS)
        self.unary = self.channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
        self.stream = self.channel.stream_stream("/inference.GRPCInferenceService/ModelStreamInfer")

    async def close(self) -> None:
        await self.channel.close()
