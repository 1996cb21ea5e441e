"""One `ModelStreamInfer` call: requests read in order, served concurrently, answered on one stream.

As in Triton's stream handler, responses of one-to-one (non-decoupled) models are written in the order
their requests arrived, while decoupled models write each response as soon as it exists. A failed
request normally becomes a response with `error_message` and the stream stays open; with client
metadata `triton_grpc_error: true` the first failure instead ends the stream with a real gRPC status.
Every response carries the `triton_final_response` parameter.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from typing import TYPE_CHECKING, AsyncIterator, Iterable

from tritonpy.core.errors import ServerError, internal
from tritonpy.core.facade import ModelTarget
from tritonpy.core.types import InferResponse
from tritonpy.frontends.grpc.codec import decode_request, empty_stream_response, encode_response, stream_error
from tritonpy.frontends.grpc.status import grpc_status
from tritonpy.proto import grpc_service_pb2 as pb

if TYPE_CHECKING:  # service.py imports this module
    from tritonpy.frontends.grpc.service import Context, InferenceServicer

log = logging.getLogger("tritonpy.frontends.grpc.stream")

GRPC_ERROR_HEADER = "triton_grpc_error"


def _grpc_error_mode(metadata: Iterable[tuple[str, str | bytes]] | None) -> bool:
    for item in metadata or ():
        if item[0] == GRPC_ERROR_HEADER and str(item[1]).lower() == "true":
            return True
    return False


def _final_message(response: InferResponse, final: bool) -> pb.ModelStreamInferResponse:
    msg = pb.ModelStreamInferResponse()
    encode_response(response, msg.infer_response)
    msg.infer_response.parameters["triton_final_response"].bool_param = final
    return msg


def _as_server_error(exc: Exception) -> ServerError:
    if isinstance(exc, ServerError):
        return exc
    log.exception("stream request failed", exc_info=exc)
    return internal(f"stream request failed: {exc}")


class StreamSession:
    """State of one bidirectional stream; `run()` returns when the stream is over."""

    def __init__(self, servicer: InferenceServicer, context: Context) -> None:
        self._server = servicer.server
        self._context = context
        metadata = context.invocation_metadata()
        self._grpc_errors = _grpc_error_mode(metadata)
        self._forwarded = servicer.forwarder.params(metadata) if servicer.forwarder else None
        # Completion slots of one-to-one requests, in arrival order.
        self._slots: deque[asyncio.Future[pb.ModelStreamInferResponse]] = deque()
        self._tasks: set[asyncio.Task] = set()
        self._write_lock = asyncio.Lock()
        self._reading = True
        self._fatal: ServerError | None = None
        self._done = asyncio.Event()
        self._count = 0

    async def run(self, request_iterator: AsyncIterator[pb.ModelInferRequest]) -> None:
        reader = asyncio.create_task(self._read(request_iterator), name="tritonpy.grpc.stream.reader")
        try:
            await self._done.wait()
        finally:
            # Normal end: nothing is left. Cancelled call or fatal error: stop the work in flight, which
            # removes still-queued requests from the core.
            pending = [t for t in (reader, *self._tasks) if not t.done()]
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)
        if self._fatal is not None:
            await self._context.abort(grpc_status(self._fatal.code), self._fatal.message)

    # --- reading ---------------------------------------------------------------------------------
    async def _read(self, request_iterator: AsyncIterator[pb.ModelInferRequest]) -> None:
        loop = asyncio.get_running_loop()
        try:
            async for request in request_iterator:
                if self._fatal is not None:
                    break
                self._count += 1
                target = self._resolve(request)
                if target is not None and target.decoupled:
                    coro = self._serve_decoupled(request, target)
                else:
                    slot = loop.create_future()
                    self._slots.append(slot)
                    coro = self._serve_one(request, slot, target)
                task = asyncio.create_task(coro, name=f"tritonpy.grpc.stream.request-{self._count}")
                self._tasks.add(task)
                task.add_done_callback(self._task_done)
        except Exception as exc:  # noqa: BLE001 - the transport failed under us; nothing left to answer
            log.debug("stream read ended: %r", exc)
            self._done.set()
            return
        finally:
            self._reading = False
        self._maybe_done()

    def _resolve(self, request: pb.ModelInferRequest) -> ModelTarget | None:
        """The request's model, looked up once for routing and serving; None when that fails."""
        try:
            return self._server.resolve(request.model_name, request.model_version)
        except ServerError:
            return None  # unknown model and the like: reported, in order, by the request's own task
        except Exception:
            log.exception("resolving the model failed")
            return None

    def _task_done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            exc = task.exception()
            log.error("stream request task failed: %r", exc)
            self._fail(internal(f"stream processing failed: {exc}"))
        self._maybe_done()

    def _maybe_done(self) -> None:
        if not self._reading and not self._tasks:
            self._done.set()

    def _fail(self, err: ServerError) -> None:
        if self._fatal is None:
            self._fatal = err
        self._done.set()

    # --- serving ---------------------------------------------------------------------------------
    async def _serve_one(
        self, request: pb.ModelInferRequest, slot: asyncio.Future[pb.ModelStreamInferResponse],
        target: ModelTarget | None,
    ) -> None:
        """A one-to-one model: exactly one response, written in arrival order."""
        try:
            infer_request, _ = decode_request(request, self._forwarded)
            response = await self._server.infer(infer_request, target)
            try:
                msg = _final_message(response, True)
            finally:
                response.release()
        except Exception as exc:  # noqa: BLE001 - any failure becomes this request's error response
            err = _as_server_error(exc)
            if self._grpc_errors:
                slot.cancel()
                self._fail(err)
                return
            msg = stream_error(err, request.id, request.model_name, request.model_version)
        slot.set_result(msg)
        await self._flush()

    async def _serve_decoupled(self, request: pb.ModelInferRequest, target: ModelTarget) -> None:
        """A decoupled model: 0..N responses as they come, then possibly an empty final one."""
        try:
            infer_request, empty_final = decode_request(request, self._forwarded)
            stream = self._server.infer_stream(infer_request, target)
            async with contextlib.aclosing(stream):
                async for response, final in stream:
                    if isinstance(response, ServerError):  # a non-final error: the request goes on
                        if self._grpc_errors:
                            raise response
                        await self._write(stream_error(response, request.id, request.model_name,
                                                       request.model_version))
                        continue
                    if response is None:
                        if final and empty_final:
                            await self._write(
                                empty_stream_response(request.id, request.model_name, request.model_version, True)
                            )
                        continue
                    try:
                        msg = _final_message(response, final)
                    finally:
                        response.release()
                    await self._write(msg)
        except Exception as exc:  # noqa: BLE001 - any failure becomes this request's error response
            err = _as_server_error(exc)
            if self._grpc_errors:
                self._fail(err)
                return
            await self._write(stream_error(err, request.id, request.model_name, request.model_version))

    # --- writing ---------------------------------------------------------------------------------
    async def _write(self, msg: pb.ModelStreamInferResponse) -> None:
        async with self._write_lock:
            await self._context.write(msg)

    async def _flush(self) -> None:
        """Write every finished one-to-one response at the head of the arrival order."""
        async with self._write_lock:
            slots = self._slots
            while slots and slots[0].done():
                slot = slots.popleft()
                if slot.cancelled():
                    continue
                await self._context.write(slot.result())
