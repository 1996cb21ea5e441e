"""The core's end of one worker's sockets: the ZeroMQ ROUTER, the send paths, the read loop and the
table that routes each message kind to its handler.

The worker connects three DEALERs to this ROUTER, told apart by routing id: `NAME` for control
messages (Execute/ExecuteDone, Init, IsReady, Finalize, Release), `NAME#hb` for heartbeats (a
socket of their own so they never queue behind big control traffic) and `NAME#io` for decoupled
responses, cancellation and BLS (served by a worker thread, so they flow while `execute()` runs).

Every frame from the worker counts as a sign of life (`on_traffic`) before anything else is looked
at. The connection knows nothing of batches or processes: the instance, its supervisor, its stream
table and its BLS session each register handlers for their message kinds with `handle()`.
"""
from __future__ import annotations

import asyncio
import logging
import os
import threading
from typing import Any, Callable, cast

import msgspec
import zmq
import zmq.asyncio

from tritonpy.core.errors import unavailable
from tritonpy.core.instance import malformed
from tritonpy.proto import messages as m

__all__ = ["WorkerConnection"]

log = logging.getLogger("tritonpy.core.instance")

_LOG_LEVELS = {"INFO": logging.INFO, "WARNING": logging.WARNING, "ERROR": logging.ERROR, "VERBOSE": logging.DEBUG}

Handler = Callable[[Any], None]


def _no_traffic_hook() -> None:
    pass


class WorkerConnection:
    """One instance's ROUTER socket and its reader task (see the module docstring).

    Nothing is opened by the constructor; `open()` binds and starts the reader, `close()` undoes
    it (safe on a connection that never opened, and twice)."""

    __slots__ = (
        "label", "where", "endpoint", "socket_path", "on_traffic",
        "_ctx", "_ident", "_hb_ident", "_io_ident", "_handlers",
        "_loop", "_loop_thread", "_sock", "_sync_sock", "_async_sends", "_reader",
    )

    def __init__(
        self,
        *,
        label: str,
        where: str,
        instance_name: str,
        endpoint: str,
        socket_path: str,
        zmq_context: zmq.asyncio.Context | None = None,
    ) -> None:
        self.label = label
        self.where = where  # "model 'm' instance 'i'", the start of every error message
        self.endpoint = endpoint
        self.socket_path = socket_path
        # Every frame from the worker calls this first (the supervisor's heartbeat watchdog).
        self.on_traffic: Callable[[], None] = _no_traffic_hook
        self._ctx = zmq_context
        self._ident = instance_name.encode()
        self._hb_ident = (instance_name + "#hb").encode()
        self._io_ident = (instance_name + "#io").encode()
        self._handlers: dict[type, Handler] = {
            m.LogRecord: self._on_log,
            m.Heartbeat: _ignore,
        }
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = 0
        self._sock: zmq.asyncio.Socket | None = None
        self._sync_sock: zmq.Socket[bytes] | None = None
        self._async_sends = 0
        self._reader: asyncio.Task[None] | None = None

    def handle(self, kind: type, handler: Handler) -> None:
        """Messages of type `kind` from the worker go to `handler(msg)`, on the loop."""
        self._handlers[kind] = handler

    @property
    def closed(self) -> bool:
        return self._sock is None or self._sock.closed

    # --- open / close ----------------------------------------------------------------------
    def open(self) -> None:
        """Bind the ROUTER and start reading; raises ServerError(UNAVAILABLE) when it cannot listen."""
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        os.makedirs(os.path.dirname(self.socket_path) or ".", exist_ok=True)
        ctx = self._ctx or zmq.asyncio.Context.instance()
        sock = ctx.socket(zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        # A restarted worker reuses the routing id; hand the id over instead of ignoring the newcomer.
        sock.setsockopt(zmq.ROUTER_HANDOVER, 1)
        self._sock = sock
        # the same socket, driven synchronously, for sends that need no waiting (see _try_send_now)
        self._sync_sock = zmq.Socket.shadow(sock.underlying)
        try:
            sock.bind(self.endpoint)
        except zmq.ZMQError as exc:
            raise unavailable(f"{self.where}: cannot listen on {self.endpoint}: {exc}") from exc
        self._reader = asyncio.create_task(self._read_loop(), name=f"tritonpy-instance-reader-{self.label}")

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            # Waits for the cancelled reader; its own end (cancelled or failed) is not an error here.
            await asyncio.gather(self._reader, return_exceptions=True)
            self._reader = None
        self._sync_sock = None  # a shadow: closing the asyncio socket closes it
        if self._sock is not None:
            self._sock.close(linger=0)
            self._sock = None
        try:
            os.unlink(self.socket_path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("[%s] cannot remove %s: %s", self.label, self.socket_path, exc)

    # --- threads ---------------------------------------------------------------------------
    def on_loop_thread(self) -> bool:
        return threading.get_ident() == self._loop_thread

    def call_soon_threadsafe(self, callback: Callable[..., None], *args: Any) -> None:
        """Run `callback(*args)` on the loop from another thread; dropped once the loop closed
        (then the worker is gone too, and with it whatever the callback would have told it)."""
        loop = self._loop
        if loop is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(callback, *args)
            except RuntimeError:
                pass  # the loop closed meanwhile

    # --- sending ---------------------------------------------------------------------------
    def _try_send_now(self, frames: list[bytes]) -> bool:
        """Send without the asyncio wrapper when that cannot reorder messages: no asynchronous send
        is pending and the socket takes the frames at once. Saves a future and a loop round per
        message on the hot path (a ROUTER never blocks; it refuses with EAGAIN instead)."""
        if self._async_sends or self._sync_sock is None:
            return False
        try:
            self._sync_sock.send_multipart(frames, flags=zmq.NOBLOCK)
        except zmq.Again:
            return False
        return True

    async def send(self, msg: msgspec.Struct) -> None:
        """A control message, in order with the others; raises ServerError when closed and
        zmq.ZMQError when the socket refuses it."""
        if self._sock is None:
            raise unavailable(f"{self.where}: instance is stopped")
        frames = [self._ident, *m.encode(msg)]
        if self._try_send_now(frames):
            return
        self._async_sends += 1
        try:
            await self._sock.send_multipart(frames)
        finally:
            self._async_sends -= 1

    def send_nowait(self, msg: msgspec.Struct) -> None:
        """Fire-and-forget control message from synchronous code on the loop (releases)."""
        if self._sock is None or self._sock.closed:
            return
        frames = [self._ident, *m.encode(msg)]
        try:
            if self._try_send_now(frames):
                return
            fut = cast("asyncio.Future[Any]", self._sock.send_multipart(frames))
        except zmq.ZMQError as exc:
            log.debug("[%s] could not send %s: %s", self.label, type(msg).__name__, exc)
            return
        fut.add_done_callback(_ignore_send_error)

    def send_io(self, msg: msgspec.Struct) -> None:
        """Fire-and-forget to the worker's I/O socket, on the loop."""
        if self._sock is None or self._sock.closed:
            return
        try:
            fut = cast("asyncio.Future[Any]", self._sock.send_multipart([self._io_ident, *m.encode(msg)]))
        except zmq.ZMQError as exc:
            log.debug("[%s] could not send %s: %s", self.label, type(msg).__name__, exc)
            return
        fut.add_done_callback(_ignore_send_error)

    # --- receiving -------------------------------------------------------------------------
    async def _read_loop(self) -> None:
        sock = self._sock
        assert sock is not None
        while True:
            try:
                frames = await sock.recv_multipart()
            except asyncio.CancelledError:
                raise
            except zmq.ZMQError as exc:
                if exc.errno in (zmq.ETERM, zmq.ENOTSOCK):
                    return
                log.error("[%s] receive failed: %s", self.label, exc)
                await asyncio.sleep(0.05)
                continue
            try:
                self.dispatch(frames)
            except Exception:
                log.exception("[%s] handling a worker message failed", self.label)

    def dispatch(self, frames: list[bytes]) -> None:
        """One multipart message [routing id, kind, payload] to its handler."""
        ident = frames[0]
        self.on_traffic()
        if ident == self._hb_ident:
            return
        if ident != self._ident and ident != self._io_ident:
            log.warning("[%s] message from unknown peer %r ignored", self.label, ident)
            return
        try:
            msg = m.decode(frames[1:])
        except m.MessageError as exc:
            log.error("[%s] malformed message from the worker: %s", self.label, exc)
            # Fail the call it belonged to rather than leave its client waiting (malformed.py).
            stand_in = malformed.stand_in(frames[1:], str(exc))
            if isinstance(stand_in, m.BlsResult):
                self.send_io(stand_in)  # answers the model's own BLS call
                return
            if stand_in is None:
                return
            msg = stand_in
        handler = self._handlers.get(type(msg))
        if handler is None:
            log.warning("[%s] unexpected %s from the worker", self.label, type(msg).__name__)
            return
        handler(msg)

    def _on_log(self, msg: m.LogRecord) -> None:
        log.log(_LOG_LEVELS.get(msg.level, logging.INFO), "[%s] %s", self.label, msg.message)


def _ignore(msg: Any) -> None:
    pass


def _ignore_send_error(fut: asyncio.Future[Any]) -> None:
    if not fut.cancelled():
        fut.exception()
