"""BLS in the core: a Python model asks, over its worker's I/O socket, to run a request elsewhere.

The worker sends `BlsCall` (inputs in its own shared memory, which it keeps until the final
answer); the core runs it through the server's normal `infer` (or `infer_stream` for decoupled
calls) on whichever loaded model it names, and answers with `BlsResult`s whose outputs it copies
into the calling instance's input arena. The worker copies them out at once and says
`BlsRelease(token)`, and the blocks are freed. Failures (unknown model, timeout, cancellation,
model errors) are answered as error responses, never as a broken worker.

The server hands itself down as a `BlsRouter` (InferenceServer -> ModelManager -> ModelVersion ->
WorkerPool -> WorkerInstance -> BlsSession, beside `resolve_shm`); an instance built without one
answers every BLS call with UNAVAILABLE.
"""
from __future__ import annotations

import asyncio
import functools
import contextlib
import contextvars
import itertools
import logging
from typing import AsyncGenerator, AsyncIterator, Callable, Protocol, cast

import msgspec
import numpy as np

from tritonpy.core.errors import ErrorCode, ServerError, internal, unavailable
from tritonpy.core.tenancy import tenants
from tritonpy.core.tenancy.tenants import Tenant
from tritonpy.core.types import InferRequest, InferResponse, InputTensor, RequestedOutput
from tritonpy.proto.messages import (
    BlsCall, BlsCancel, BlsRelease, BlsResult, ErrorInfo, ResponseMsg, TensorRef, wire_params,
)
from tritonpy.shm.arena import Arena
from tritonpy.shm.segment import ShmError
from tritonpy.shm.tensors import write_tensor

log = logging.getLogger("tritonpy.core.instance.bls")

# The tenancy codes are not Triton's, and a Python model's TritonError knows only Triton's: the
# model sees them as the nearest Triton code (the message still says what happened).
_MODEL_CODES = {
    ErrorCode.RESOURCE_EXHAUSTED: ErrorCode.UNAVAILABLE,
    ErrorCode.PERMISSION_DENIED: ErrorCode.UNAVAILABLE,
    ErrorCode.UNAUTHENTICATED: ErrorCode.UNAVAILABLE,
}
_RESERVED = {"sequence_id", "sequence_start", "sequence_end", "priority", "timeout"}


class BlsRouter(Protocol):
    """What BLS needs from the server: its normal inference entry points, and who a model acts as
    when it calls others (core/tenancy/ownership.py: its owning tenant; None = the server)."""

    def owner(self, model: str) -> Tenant | None: ...

    async def infer(self, request: InferRequest) -> InferResponse: ...

    def infer_stream(self, request: InferRequest) -> AsyncIterator[tuple[InferResponse | ServerError | None, bool]]: ...


class _Call:
    __slots__ = ("msg", "final_sent", "request")

    def __init__(self, msg: BlsCall) -> None:
        self.msg = msg
        self.final_sent = False
        self.request: InferRequest | None = None


class BlsSession:
    """The BLS calls of one instance's worker (one generation of it)."""

    def __init__(
        self,
        *,
        label: str,
        router: BlsRouter | None,
        model: str = "",
        read: Callable[[TensorRef], np.ndarray],
        arena: Callable[[], Arena | None],
        send: Callable[[msgspec.Struct], None],
    ) -> None:
        self._label = label
        self._router = router
        self._model = model  # the calling model: its owner is the caller of every BLS call
        self._read = read
        self._arena = arena
        self._send = send
        self._tasks: dict[int, asyncio.Task[None]] = {}
        self._calls: dict[int, _Call] = {}
        self._blocks: dict[int, list[tuple[str, int]]] = {}
        self._tokens = itertools.count(1)
        self._aborting = False

    @property
    def active(self) -> int:
        return len(self._tasks)

    def handle(self, msg: msgspec.Struct) -> None:
        if isinstance(msg, BlsCall):
            # A fresh context: the call must not inherit whatever request context (a tenant, a
            # trace) happened to be current when this instance's reader task was started; it runs
            # as the calling model's owner instead (_serve).
            call = _Call(msg)
            task = asyncio.get_running_loop().create_task(
                self._serve(call),
                name=f"tritonpy-bls[{self._label}#{msg.bls_id}->{msg.model_name}]",
                context=contextvars.Context(),
            )
            self._tasks[msg.bls_id] = task
            self._calls[msg.bls_id] = call
            task.add_done_callback(functools.partial(self._forget, msg.bls_id))
        elif isinstance(msg, BlsCancel):
            # As in Triton: the called model is asked to cancel (its is_cancelled() turns true)
            # and the call goes on until the model's final response.
            asked = self._calls.get(msg.bls_id)
            stream = getattr(asked.request, "stream", None) if asked is not None else None
            if stream is not None:
                stream.ask_to_cancel()
        elif isinstance(msg, BlsRelease):
            self._free(self._blocks.pop(msg.release_token, []))

    def _forget(self, bls_id: int, _task: asyncio.Task[None] | None = None) -> None:
        self._tasks.pop(bls_id, None)
        self._calls.pop(bls_id, None)

    def abort(self) -> None:
        """The worker is gone: stop its calls without answering; its arena goes with it."""
        self._aborting = True
        for task in list(self._tasks.values()):
            task.cancel()
        self._tasks.clear()
        self._calls.clear()
        self._blocks.clear()
        self._aborting = False

    # --- one call ----------------------------------------------------------------------------
    async def _serve(self, call: _Call) -> None:
        msg = call.msg
        error: ServerError | None = None
        try:
            router = self._router
            if router is None:
                raise unavailable("BLS: the server is not available")
            # This task has its own context (see handle): the owner is the caller for this call only,
            # so its visibility, rights, quotas and fair-queue lane apply.
            tenants.CURRENT.set(router.owner(self._model))
            request = call.request = self._request(msg)
            if msg.timeout_us > 0:
                await asyncio.wait_for(self._run(router, request, call), msg.timeout_us / 1e6)
            else:
                await self._run(router, request, call)
        except asyncio.TimeoutError:
            error = unavailable("Request timeout expired")
        except ServerError as exc:
            error = exc
        except asyncio.CancelledError:
            if self._aborting:
                raise
            error = ServerError(ErrorCode.CANCELLED, "BLS request was cancelled")
        except Exception as exc:
            log.exception("[%s] BLS call to '%s' failed", self._label, msg.model_name)
            error = internal(f"BLS call to '{msg.model_name}' failed: {type(exc).__name__}: {exc}")
        if not call.final_sent:
            if error is None:
                error = internal(f"BLS call to '{msg.model_name}' ended without a final response")
            call.final_sent = True
            code = _MODEL_CODES.get(error.code, error.code)
            self._send(BlsResult(msg.bls_id, ResponseMsg(error=ErrorInfo(int(code), error.message)), True))

    def _request(self, msg: BlsCall) -> InferRequest:
        rmsg = msg.request
        inputs = [
            InputTensor(ref.name, ref.datatype, list(ref.shape), data=self._read(ref)) for ref in rmsg.inputs
        ]
        return InferRequest(
            model_name=msg.model_name,
            model_version=msg.model_version,
            id=rmsg.request_id,
            inputs=inputs,
            outputs=[RequestedOutput(name) for name in rmsg.requested_outputs] or None,
            parameters={k: v for k, v in rmsg.parameters.items() if k not in _RESERVED},
            sequence_id=rmsg.correlation_id,
            sequence_start=bool(rmsg.flags & 1),
            sequence_end=bool(rmsg.flags & 2),
        )

    async def _run(self, router: BlsRouter, request: InferRequest, call: _Call) -> None:
        if call.msg.decoupled:
            # The server's infer_stream is an async generator: close it when the call ends early.
            stream_gen = cast("AsyncGenerator[tuple[InferResponse | None, bool], None]", router.infer_stream(request))
            async with contextlib.aclosing(stream_gen) as stream:
                async for response, final in stream:
                    self._answer(call, response, final)
                    if final:
                        return
            return
        self._answer(call, await router.infer(request), True)

    def _answer(self, call: _Call, response: InferResponse | ServerError | None, final: bool) -> None:
        """Copy a response into the caller's arena and send it (the response is released)."""
        blocks: list[tuple[str, int]] = []
        if isinstance(response, ServerError):  # a non-final error of a decoupled model
            if final:
                call.final_sent = True
            self._send(BlsResult(call.msg.bls_id, ResponseMsg(error=ErrorInfo(int(response.code), response.message)),
                                 final))
            return
        try:
            if response is None:
                rmsg = ResponseMsg()
            else:
                arena = self._arena()
                refs = []
                for out in response.outputs:
                    if out.data is None:
                        continue
                    ref, block = write_tensor(arena, out.name, out.datatype, np.asarray(out.data))
                    if block is not None:
                        blocks.append(block)
                    refs.append(ref)
                rmsg = ResponseMsg(outputs=refs, parameters=wire_params(response.parameters))
        except (ShmError, ValueError, TypeError) as exc:
            self._free(blocks)
            blocks = []
            rmsg = ResponseMsg(error=ErrorInfo(int(ErrorCode.INTERNAL), f"cannot return the BLS response: {exc}"))
        finally:
            if response is not None:
                response.release()
        token = 0
        if blocks:
            token = next(self._tokens)
            self._blocks[token] = blocks
        if final:
            call.final_sent = True
        self._send(BlsResult(call.msg.bls_id, rmsg, final, token))

    def _free(self, blocks: list[tuple[str, int]]) -> None:
        arena = self._arena()
        if arena is None:
            return
        for seg, off in blocks:
            try:
                arena.free(seg, off)
            except (KeyError, ValueError, ShmError):
                pass


__all__ = ["BlsRouter", "BlsSession"]
