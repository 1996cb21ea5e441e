"""Decoupled models in the core: 0..N responses per request, delivered as the worker sends them.

A decoupled request still goes through the model's scheduler like any other: its batch executes
on an instance, and the scheduler's answer (an empty placeholder response) only says that
`execute` returned, so the instance may take the next batch. The responses themselves come
separately: the worker sends `ResponseSend` messages on its I/O socket, the instance's
`StreamTable` turns them into `InferResponse`s and puts them on the request's `ResponseStream`,
which `run_decoupled` (behind `InferenceServer.infer_stream`) hands to the frontend. The request
stays open until the FINAL flag, however long after `execute` returned that is.

When the frontend stops reading before FINAL (client closed the stream), the worker is told
(`CancelRequest`, so `is_cancelled()` turns true in the model), later responses are released
unread, and a request still queued is withdrawn. A dead worker fails every open stream.
"""
from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import time
from typing import Any, AsyncGenerator, Awaitable, Callable

import numpy as np

from tritonpy.core.errors import ServerError, internal
from tritonpy.core.instance.batch_codec import attach_release
from tritonpy.core.observability.stats import ModelStats
from tritonpy.core.types import InferRequest, InferResponse, ResponseTensor
from tritonpy.proto.messages import ResponseSend, TensorRef

log = logging.getLogger("tritonpy.core.instance.streams")

_Item = tuple[Any, bool]  # (InferResponse | None | ServerError, final)


class ResponseStream:
    """The core's sink for one decoupled request (`InferRequest.stream`)."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[_Item] = asyncio.Queue()
        self.final = False
        self._cancel: Callable[[], None] | None = None
        self._drop: Callable[[], None] | None = None
        self._ask: Callable[[], None] | None = None
        self._asked = False

    def bind(self, cancel: Callable[[], None], drop: Callable[[], None], ask: Callable[[], None] | None = None) -> None:
        """The instance executing the request: how to cancel it there, forget it, and (`ask`) tell
        the model that cancellation was requested while still taking its responses."""
        self._cancel, self._drop, self._ask = cancel, drop, ask
        if self._asked and ask is not None:
            ask()

    def ask_to_cancel(self) -> None:
        """Triton's BLS `iterator.cancel()`: the model's `is_cancelled()` turns true, but the
        request stays open until the model's final response (a model may ignore cancellation)."""
        self._asked = True
        if self._ask is not None:
            self._ask()

    def push(self, response: InferResponse | None, final: bool) -> None:
        self.queue.put_nowait((response, final))

    def fail(self, error: ServerError) -> None:
        self.queue.put_nowait((error, True))

    def push_error(self, error: ServerError) -> None:
        """An error response that is not the last one: delivered, and the request stays open."""
        self.queue.put_nowait((error, False))

    def cancel(self) -> None:
        cancel, self._cancel = self._cancel, None
        if cancel is not None:
            cancel()

    def close(self) -> None:
        """Forget the request in its instance and release whatever nobody will read."""
        drop, self._drop = self._drop, None
        self._cancel = None
        if drop is not None:
            drop()
        while not self.queue.empty():
            item, _ = self.queue.get_nowait()
            if isinstance(item, InferResponse):
                item.release()


async def run_decoupled(
    infer: Awaitable[InferResponse], stream: ResponseStream, label: str
) -> AsyncGenerator[tuple[InferResponse | ServerError | None, bool], None]:
    """Run `infer` (the request through its scheduler) and yield the responses its stream gets.

    A non-final error response of the model comes as a `ServerError` item (the request goes on);
    a final one, or a failure of the request, is raised."""
    task = asyncio.ensure_future(infer)
    task.set_name(f"tritonpy-decoupled[{label}]")
    task.add_done_callback(functools.partial(_execution_done, stream))
    try:
        while True:
            item, final = await stream.queue.get()
            if isinstance(item, ServerError) and final:
                raise ServerError(item.code, item.message)
            if final:
                stream.final = True
            yield item, final
            if final:
                return
    finally:
        if not stream.final:
            stream.cancel()
            if not task.done():
                task.cancel()
        stream.close()


def _execution_done(stream: ResponseStream, task: asyncio.Future[Any]) -> None:
    if task.cancelled():
        return
    exc = task.exception()
    if exc is None:
        task.result().release()  # the placeholder: execute() returned
        return
    if stream.final:
        return
    if isinstance(exc, ServerError):
        stream.fail(exc)
    else:
        log.error("decoupled request failed: %r", exc)
        stream.fail(internal(f"decoupled request failed: {exc}"))


@dataclasses.dataclass(slots=True, eq=False)
class _Open:
    request: InferRequest
    generation: int
    last_ns: int  # when execution started, then when the previous response came
    sent: int = 0  # responses so far (the next one's index in response_stats)


class StreamTable:
    """The open decoupled requests of one instance, by (batch id, index in the batch).

    Also keeps Triton's per-response-index statistics (response_stats): the time since the
    previous response (or since the batch was sent) counts as that response's compute_infer.
    """

    def __init__(
        self,
        *,
        model_name: str,
        model_version: str,
        read: Callable[[TensorRef], np.ndarray],
        send_release: Callable[[int, int], None],
        send_cancel: Callable[[int, int, int], None],
        stats: Callable[[], ModelStats | None] = lambda: None,
    ) -> None:
        self._model_name = model_name
        self._model_version = model_version
        self._read = read
        self._send_release = send_release  # (generation, release id)
        self._send_cancel = send_cancel  # (generation, batch id, index)
        self._stats = stats
        self._open: dict[tuple[int, int], _Open] = {}

    def __len__(self) -> int:
        return len(self._open)

    def register(self, batch_id: int, index: int, request: InferRequest, generation: int) -> None:
        key = (batch_id, index)
        self._open[key] = _Open(request, generation, time.monotonic_ns())
        request.stream.bind(
            functools.partial(self._cancel, key), functools.partial(self._drop, key), functools.partial(self._ask, key)
        )

    def _ask(self, key: tuple[int, int]) -> None:
        entry = self._open.get(key)
        if entry is not None:
            self._send_cancel(entry.generation, key[0], key[1])

    def _cancel(self, key: tuple[int, int], record: bool = True) -> None:
        entry = self._open.pop(key, None)
        if entry is not None:
            if record:
                self._record(entry, "cancel")
            self._send_cancel(entry.generation, key[0], key[1])

    def _record(self, entry: _Open, outcome: str) -> None:
        stats = self._stats()
        if stats is None:
            return
        now = time.monotonic_ns()
        stats.record_response(entry.sent, now - entry.last_ns, 0, outcome)
        entry.last_ns = now
        entry.sent += 1

    def _drop(self, key: tuple[int, int]) -> None:
        self._open.pop(key, None)

    def on_response(self, msg: ResponseSend, generation: int) -> None:
        key = (msg.batch_id, msg.index)
        entry = self._open.get(key)
        if entry is None:  # cancelled or failed meanwhile: nobody reads it
            if msg.release_id:
                self._send_release(generation, msg.release_id)
            return
        request, gen = entry.request, entry.generation
        if msg.final:
            del self._open[key]
        stream: ResponseStream = request.stream
        rmsg = msg.response
        self._record(entry, "empty_response" if rmsg is None else "fail" if rmsg.error is not None else "success")
        if rmsg is None:
            stream.push(None, msg.final)
            return
        if rmsg.error is not None:
            if msg.release_id:
                self._send_release(gen, msg.release_id)
            if msg.final:
                stream.fail(ServerError.from_info(rmsg.error))
            else:  # as in Triton: the client gets the error and the request goes on
                stream.push_error(ServerError.from_info(rmsg.error))
            return
        try:
            outputs = [ResponseTensor(r.name, r.datatype, list(r.shape), data=self._read(r)) for r in rmsg.outputs]
        except (OSError, ValueError, KeyError) as exc:
            if msg.release_id:
                self._send_release(gen, msg.release_id)
            stream.fail(internal(f"model '{self._model_name}': cannot read a response: {exc}"))
            self._cancel(key, record=False)
            return
        response = InferResponse(
            model_name=self._model_name,
            model_version=self._model_version,
            id=request.id,
            outputs=outputs,
            parameters=rmsg.parameters,
        )
        if msg.release_id:
            attach_release([response], functools.partial(self._send_release, gen, msg.release_id))
        stream.push(response, msg.final)

    def fail_all(self, error: ServerError) -> None:
        """The worker is gone: every open request ends with `error`."""
        entries = list(self._open.values())
        self._open.clear()
        for entry in entries:
            entry.request.stream.fail(ServerError(error.code, error.message))


__all__ = ["ResponseStream", "StreamTable", "run_decoupled"]
