"""The worker's second line to the core: decoupled responses, cancellation and BLS calls.

The main worker socket is served by the main thread, which is busy inside the model's `execute`
exactly when a decoupled model streams responses or a model waits for a BLS call. So these go
over a DEALER of their own (routing id `<instance>#io`) owned by one I/O thread:

* any thread sends through `send()`: the frames go to an inproc PUSH guarded by a lock (ZeroMQ
  sockets are not thread-safe; one pipe also keeps one thread's messages in order) and the I/O
  thread forwards them to the core;
* the I/O thread receives `CancelRequest` (remembered for `is_cancelled()`), `Release` of a
  streamed response's blocks, and `BlsResult`s, which it hands to the waiting call's sink.

Output and BLS-input blocks live in the worker's `OutputWriter`, shared with the main thread
under `writer_lock`. Release ids of this channel are negative so they never meet the core's
(positive) batch ids in the writer's bookkeeping.
"""
from __future__ import annotations

import itertools
import logging
import threading
from typing import Callable

import msgspec
import numpy as np
import zmq

from tritonpy.backends.base import BackendError, BackendResponse, OutputTensor
from tritonpy.backends.worker.tensor_io import OutputWriter
from tritonpy.proto.messages import (
    BlsCall,
    BlsCancel,
    BlsRelease,
    BlsResult,
    CancelRequest,
    ErrorCode,
    MessageError,
    Release,
    RequestMsg,
    ResponseMsg,
    ResponseSend,
    TensorRef,
    decode,
    encode,
)
from tritonpy.shm.arena import SegmentCache
from tritonpy.shm.segment import ShmError
from tritonpy.shm.tensors import read_tensor, write_tensor

log = logging.getLogger("tritonpy.backends.worker.channel")

POLL_MS = 100
_current: "WorkerChannel | None" = None


def current() -> "WorkerChannel | None":
    """The channel of this worker process (None outside a worker, e.g. in unit tests)."""
    return _current


class WorkerChannel:
    """Owns the I/O thread and its sockets; see the module docstring."""

    def __init__(self, context: zmq.Context, endpoint: str, instance_name: str) -> None:
        self._context = context
        self._endpoint = endpoint
        self._identity = (instance_name + "#io").encode()
        self._inproc = f"inproc://tritonpy-io-{id(self)}"
        self._send_lock = threading.Lock()
        self._push: zmq.Socket | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._stop = threading.Event()
        self._state_lock = threading.Lock()
        self._cancelled: set[tuple[int, int]] = set()
        self._bls_sinks: dict[int, Callable[[BlsResult], None]] = {}
        self._release_ids = itertools.count(-1, -1)
        self._bls_ids = itertools.count(1)
        self._bls_cache = SegmentCache(writable=False)
        self.writer: OutputWriter | None = None
        self.writer_lock = threading.Lock()

    # --- life ------------------------------------------------------------------------------
    def start(self) -> None:
        global _current
        self._thread = threading.Thread(target=self._run, name="tritonpy-worker-io", daemon=True)
        self._thread.start()
        if not self._ready.wait(5.0):
            raise RuntimeError("the worker I/O thread did not start")
        push = self._context.socket(zmq.PUSH)
        push.setsockopt(zmq.LINGER, 0)
        push.connect(self._inproc)
        self._push = push
        _current = self

    def stop(self) -> None:
        global _current
        if _current is self:
            _current = None
        self._stop.set()
        if self._thread is not None:
            self._thread.join(2.0)
        with self._send_lock:
            if self._push is not None:
                self._push.close(linger=0)
                self._push = None
        self._bls_cache.close()

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def send(self, msg: msgspec.Struct) -> None:
        """From any thread: queue `msg` for the core."""
        frames = encode(msg)
        with self._send_lock:
            if self._push is None:
                raise BackendError("the worker is shutting down", ErrorCode.UNAVAILABLE)
            self._push.send_multipart(frames)

    def next_release_id(self) -> int:
        return next(self._release_ids)

    # --- the I/O thread --------------------------------------------------------------------
    def _run(self) -> None:
        pull = self._context.socket(zmq.PULL)
        pull.setsockopt(zmq.LINGER, 0)
        pull.bind(self._inproc)
        dealer = self._context.socket(zmq.DEALER)
        dealer.setsockopt(zmq.ROUTING_ID, self._identity)
        dealer.setsockopt(zmq.LINGER, 1000)
        try:
            # The core's ROUTER learns this routing id from the connection handshake itself.
            dealer.connect(self._endpoint)
            self._ready.set()
            poller = zmq.Poller()
            poller.register(pull, zmq.POLLIN)
            poller.register(dealer, zmq.POLLIN)
            while not self._stop.is_set():
                events = dict(poller.poll(POLL_MS))
                if pull in events:
                    self._forward(pull, dealer)
                if dealer in events:
                    self._receive(dealer)
            self._forward(pull, dealer)  # what was queued before stop still goes out
        except zmq.ZMQError as exc:
            if exc.errno != zmq.ETERM:
                log.error("worker I/O thread failed: %s", exc)
        finally:
            self._ready.set()
            pull.close(linger=0)
            dealer.close()

    @staticmethod
    def _forward(pull: zmq.Socket, dealer: zmq.Socket) -> None:
        while True:
            try:
                frames = pull.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            dealer.send_multipart(frames)

    def _receive(self, dealer: zmq.Socket) -> None:
        while True:
            try:
                frames = dealer.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                msg = decode(frames)
            except MessageError as exc:
                log.error("ignoring undecodable message on the I/O socket: %s", exc)
                continue
            try:
                self._handle(msg, dealer)
            except Exception:
                log.exception("handling %s failed", type(msg).__name__)

    def _handle(self, msg: msgspec.Struct, dealer: zmq.Socket) -> None:
        if isinstance(msg, CancelRequest):
            with self._state_lock:
                self._cancelled.add((msg.batch_id, msg.index))
        elif isinstance(msg, Release):
            self.release_blocks(msg.batch_id)
        elif isinstance(msg, BlsResult):
            with self._state_lock:
                sink = self._bls_sinks.get(msg.bls_id)
            if sink is not None:
                sink(msg)
            elif msg.release_token:
                dealer.send_multipart(encode(BlsRelease(msg.release_token)))
        else:
            log.warning("ignoring unexpected %s on the I/O socket", type(msg).__name__)

    # --- shared helpers --------------------------------------------------------------------
    def release_blocks(self, release_id: int) -> None:
        with self.writer_lock:
            if self.writer is not None:
                self.writer.release(release_id)

    def is_cancelled(self, batch_id: int, index: int) -> bool:
        with self._state_lock:
            return (batch_id, index) in self._cancelled

    def forget_cancel(self, batch_id: int, index: int) -> None:
        with self._state_lock:
            self._cancelled.discard((batch_id, index))

    def write_response(self, msg: RequestMsg, response: BackendResponse) -> tuple[ResponseMsg, int]:
        """Place one response's outputs; returns it and its release id (0 when nothing to free)."""
        with self.writer_lock:
            if self.writer is None:
                raise BackendError("responses can only be sent once the model is initialized")
            rid = self.next_release_id()
            rmsg = self.writer.write_batch(rid, [msg], [response])[0]
            if not self.writer.holds(rid):
                self.writer.release(rid)
                rid = 0
        return rmsg, rid

    # --- BLS -------------------------------------------------------------------------------
    def bls_start(
        self,
        *,
        model_name: str,
        model_version: str,
        request: RequestMsg,
        inputs: list[OutputTensor],
        decoupled: bool,
        timeout_us: int,
        sink: Callable[[BlsResult], None],
    ) -> "BlsCallHandle":
        """Send a BLS call; every `BlsResult` of it goes to `sink` (on the I/O thread)."""
        refs: list[TensorRef] = []
        rid = 0
        with self.writer_lock:
            if self.writer is None:
                raise BackendError("BLS requests can only be made from execute()")
            for tensor in inputs:
                if rid == 0:
                    rid = self.next_release_id()
                ref, block = write_tensor(self.writer.arena, tensor.name, tensor.datatype, tensor.array)
                if block is not None:
                    self.writer.remember(rid, block)
                refs.append(ref)
            if rid and not self.writer.holds(rid):
                self.writer.release(rid)
                rid = 0
        request.inputs = refs
        bls_id = next(self._bls_ids)
        with self._state_lock:
            self._bls_sinks[bls_id] = sink
        try:
            self.send(
                BlsCall(
                    bls_id=bls_id, model_name=model_name, model_version=model_version, request=request,
                    decoupled=decoupled, timeout_us=timeout_us, release_id=rid,
                )
            )
        except BaseException:
            self._bls_done(bls_id, rid)
            raise
        return BlsCallHandle(self, bls_id, rid)

    def _bls_done(self, bls_id: int, release_id: int) -> None:
        with self._state_lock:
            self._bls_sinks.pop(bls_id, None)
        if release_id:
            self.release_blocks(release_id)

    def read_result(self, result: BlsResult) -> list[tuple[str, str, np.ndarray]]:
        """Copies of a result's outputs (name, datatype, array); frees their blocks in the core."""
        outputs: list[tuple[str, str, np.ndarray]] = []
        try:
            for ref in result.response.outputs:
                try:
                    array = read_tensor(self._bls_cache, ref)
                except ShmError:
                    if ref.inline is not None:
                        raise
                    self._bls_cache.forget(ref.segment)  # the arena re-created a segment of that name
                    array = read_tensor(self._bls_cache, ref)
                outputs.append((ref.name, ref.datatype, np.array(array, copy=True)))
        finally:
            if result.release_token:
                self.send(BlsRelease(result.release_token))
        return outputs


class BlsCallHandle:
    """One BLS call in flight: `finish()` once its final result arrived (or it was abandoned)."""

    def __init__(self, channel: WorkerChannel, bls_id: int, release_id: int) -> None:
        self.channel = channel
        self.bls_id = bls_id
        self._release_id = release_id
        self._finished = False

    def cancel(self) -> None:
        if not self._finished:
            self.channel.send(BlsCancel(self.bls_id))

    def abandon(self) -> None:
        """Nobody reads this call any more: cancel it, free whatever still arrives, then finish."""
        if self._finished:
            return
        channel = self.channel

        def drain(result: BlsResult) -> None:
            channel.read_result(result)
            if result.final:
                self.finish()

        with channel._state_lock:
            channel._bls_sinks[self.bls_id] = drain
        try:
            self.cancel()
        except BackendError:
            self.finish()

    def finish(self) -> None:
        if not self._finished:
            self._finished = True
            self.channel._bls_done(self.bls_id, self._release_id)


class RequestStream:
    """The worker end of one decoupled request: `send` ships a response now, from any thread."""

    def __init__(self, channel: WorkerChannel, batch_id: int, index: int, msg: RequestMsg) -> None:
        self._channel = channel
        self._batch_id = batch_id
        self._index = index
        self._msg = msg
        self._lock = threading.Lock()
        self.closed = False

    def send(self, response: BackendResponse | None, final: bool) -> None:
        """Raises BackendError after the final response."""
        with self._lock:
            if self.closed:
                raise BackendError("Unable to send response. Response sender has been closed.")
            rmsg, rid = (None, 0) if response is None else self._channel.write_response(self._msg, response)
            try:
                self._channel.send(
                    ResponseSend(batch_id=self._batch_id, index=self._index, response=rmsg, final=final, release_id=rid)
                )
            except BaseException:
                if rid:
                    self._channel.release_blocks(rid)
                raise
            if final:
                self.closed = True
                self._channel.forget_cancel(self._batch_id, self._index)

    @property
    def cancelled(self) -> bool:
        return self._channel.is_cancelled(self._batch_id, self._index)


__all__ = ["BlsCallHandle", "RequestStream", "WorkerChannel", "current"]
