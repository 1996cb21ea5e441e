"""BLS from a Python model: `InferenceRequest.exec()` / `async_exec()`, decoupled iterators too.

The request goes to the core over the worker's I/O channel (backends/worker/channel.py); the core
runs it on the target model like any client request and answers with one or more `BlsResult`s.
A result's outputs are copied out of shared memory at once, so the core can free them, and the
model's response objects own plain numpy arrays. A failed call (unknown model, a timeout, a model
error) is a response whose `has_error()` is True, never an exception, as in Triton.
"""
from __future__ import annotations

import asyncio
import json
import queue
from typing import TYPE_CHECKING, Any, Callable

from tritonpy.backends.worker import channel as worker_channel
from tritonpy.backends.base import BackendError, OutputTensor
from tritonpy.backends.python.pb_tensor import Tensor
from tritonpy.backends.python.pb_types import TritonError, TritonModelException, number_to_wire, wire_to_number
from tritonpy.proto.messages import BlsResult, RequestMsg, wire_params

if TYPE_CHECKING:
    from tritonpy.backends.python.pb_request import InferenceRequest, InferenceResponse

_WAIT_S = 0.5  # how often a blocked exec() checks that the worker is still connected


def _channel() -> worker_channel.WorkerChannel:
    channel = worker_channel.current()
    if channel is None or not channel.alive:
        raise TritonModelException("BLS requests can only be made from a model running in a tritonpy worker")
    return channel


def _start(
    request: "InferenceRequest", decoupled: bool, sink: Callable[[BlsResult], None]
) -> worker_channel.BlsCallHandle:
    if not request.model_name():
        raise TritonModelException("BLS: the InferenceRequest has no model_name to send it to")
    channel = _channel()
    inputs = []
    for tensor in request.inputs():
        try:
            datatype = number_to_wire(tensor.triton_dtype())
        except KeyError:
            raise TritonModelException(f"input '{tensor.name()}' has an unknown data type") from None
        inputs.append(OutputTensor(tensor.name(), datatype, tensor._array))
    msg = RequestMsg(
        request_id=request.request_id(),
        inputs=[],
        requested_outputs=list(request.requested_output_names()),
        # pb_utils keeps parameters as JSON text (Triton's API); on the wire they are typed.
        parameters=wire_params(json.loads(request.parameters())) if request.parameters() else {},
        correlation_id=request.correlation_id(),
        flags=request.flags(),
    )
    version = request.model_version()
    try:
        return channel.bls_start(
            model_name=request.model_name(),
            model_version="" if version is None or int(version) < 0 else str(version),
            request=msg,
            inputs=inputs,
            decoupled=decoupled,
            timeout_us=max(0, request.timeout()),
            sink=sink,
        )
    except BackendError as exc:
        raise TritonModelException(exc.message) from exc


def _to_response(channel: worker_channel.WorkerChannel, result: BlsResult) -> "InferenceResponse":
    from tritonpy.backends.python.pb_request import InferenceResponse

    outputs = channel.read_result(result)
    rmsg = result.response
    params: Any = json.dumps(rmsg.parameters) if rmsg.parameters else None
    if rmsg.error is not None:
        return InferenceResponse(error=TritonError(rmsg.error.message, rmsg.error.code), parameters=params)
    tensors = [Tensor(name, array, wire_to_number(datatype)) for name, datatype, array in outputs]
    return InferenceResponse(tensors, parameters=params)


def _is_empty(result: BlsResult) -> bool:
    r = result.response
    return not r.outputs and r.error is None and not r.parameters


def _wait(q: "queue.SimpleQueue[BlsResult]", channel: worker_channel.WorkerChannel) -> BlsResult:
    while True:
        try:
            return q.get(timeout=_WAIT_S)
        except queue.Empty:
            if not channel.alive:
                raise TritonModelException("the worker lost its connection to the server during a BLS call") from None


def exec_request(request: "InferenceRequest", decoupled: bool) -> Any:
    """`InferenceRequest.exec()`: a response, or an iterator of responses when decoupled."""
    if decoupled:
        inbox = _Inbox()
        return ResponseIterator(_start(request, True, inbox.put), inbox)
    q: queue.SimpleQueue[BlsResult] = queue.SimpleQueue()
    handle = _start(request, False, q.put)
    try:
        return _to_response(handle.channel, _wait(q, handle.channel))
    finally:
        handle.finish()


async def async_exec_request(request: "InferenceRequest", decoupled: bool) -> Any:
    """`await InferenceRequest.async_exec()`: several may run at once on the model's event loop."""
    loop = asyncio.get_running_loop()
    if decoupled:
        # Results land in a thread-safe queue (so a plain `for` can block on it without the loop)
        # and wake an `async for` through the loop.
        wake = asyncio.Event()

        def notify() -> None:
            try:
                loop.call_soon_threadsafe(wake.set)
            except RuntimeError:  # the loop closed: the iterator's cleanup drains the queue
                pass

        inbox = _Inbox(notify)
        return AsyncResponseIterator(_start(request, True, inbox.put), inbox, wake)
    aq: asyncio.Queue[BlsResult] = asyncio.Queue()

    def sink(result: BlsResult) -> None:
        try:
            loop.call_soon_threadsafe(aq.put_nowait, result)
        except RuntimeError:  # the loop closed: nobody waits any more; free the result's blocks
            handle.channel.read_result(result)

    handle = _start(request, False, sink)
    try:
        return _to_response(handle.channel, await aq.get())
    finally:
        handle.finish()


class _Inbox:
    """Where a decoupled call's results wait (filled by the I/O thread); counts the responses that
    are more than the bare final flag, for `len()`."""

    def __init__(self, notify: Callable[[], None] | None = None) -> None:
        self.queue: queue.SimpleQueue[BlsResult] = queue.SimpleQueue()
        self.arrived = 0
        self._notify = notify

    def put(self, result: BlsResult) -> None:
        if not (result.final and _is_empty(result)):
            self.arrived += 1
        self.queue.put(result)
        if self._notify is not None:
            self._notify()


class ResponseIterator:
    """Responses of a decoupled BLS call; the empty final response is not yielded (as in Triton).

    `cancel()` asks the called model to stop (its `is_cancelled()` turns true); as in Triton the
    iterator still delivers whatever the model sends until its final response, so a model that
    ignores cancellation completes normally. `len()` is the number of responses that have
    arrived and not been taken yet.
    """

    def __init__(self, handle: worker_channel.BlsCallHandle, inbox: _Inbox) -> None:
        self._handle = handle
        self._inbox = inbox
        self._queue = inbox.queue
        self._taken = 0
        self._done = False

    def _accept(self, result: BlsResult) -> "InferenceResponse | None":
        """The response to yield for `result`, or None once the call is over."""
        if result.final:
            self._done = True
            self._handle.finish()
            if _is_empty(result):
                self._handle.channel.read_result(result)
                return None
        self._taken += 1
        return _to_response(self._handle.channel, result)

    def cancel(self) -> None:
        """Ask the called model to cancel; iterate on to get what it still sends."""
        self._handle.cancel()

    def __len__(self) -> int:
        return self._inbox.arrived - self._taken

    def __iter__(self) -> "ResponseIterator":
        return self

    def __next__(self) -> "InferenceResponse":
        while not self._done:
            response = self._accept(_wait(self._queue, self._handle.channel))
            if response is not None:
                return response
        raise StopIteration

    def __del__(self) -> None:
        if not self._done:
            self._done = True
            self._handle.abandon()
            while True:
                try:
                    self._handle.channel.read_result(self._queue.get_nowait())
                except Exception:  # noqa: BLE001 - best effort at collection time (queue.Empty ends it)
                    break


class AsyncResponseIterator(ResponseIterator):
    """The iterator of a decoupled `async_exec`: `async for`, and also a plain `for` (as Triton's)."""

    def __init__(self, handle: worker_channel.BlsCallHandle, inbox: _Inbox, wake: asyncio.Event) -> None:
        super().__init__(handle, inbox)
        self._wake = wake

    def __aiter__(self) -> "AsyncResponseIterator":
        return self

    async def __anext__(self) -> "InferenceResponse":
        while not self._done:
            try:
                result = self._queue.get_nowait()
            except queue.Empty:
                self._wake.clear()
                if self._queue.empty():  # a result put after this check sets the event again
                    await self._wake.wait()
                continue
            response = self._accept(result)
            if response is not None:
                return response
        raise StopAsyncIteration
