"""One model instance: a backend worker process the core spawns, talks to, supervises and restarts.

The core binds a ZeroMQ ROUTER per instance on an ipc socket in a private runtime directory; the
worker connects two DEALERs, `NAME` for control messages and `NAME#hb` for heartbeats (a separate
socket so heartbeats never queue behind big control traffic). Messages are `proto.messages`; tensor
bytes travel in shared memory: batch inputs in this instance's input arena (the core writes), outputs
in the worker's own segments (the core maps them read-only and hands out numpy views until every
response of the batch is released, then tells the worker `Release(batch_id)`).

Supervision (STYLE.md pattern 7): a dead worker is noticed from its process handle at once, a hung
one from missing heartbeats (then killed). Only the batches in flight on it fail; its shared memory
is reclaimed by name prefix; it restarts with exponential backoff while the instance reports not
ready. Every resource this object owns is released by `stop()`, also after a half-finished start.
"""
from __future__ import annotations

import asyncio
import dataclasses
import functools
import itertools
import logging
import os
import sys
import threading
import time
from typing import Any, Callable, Sequence

import zmq
import zmq.asyncio

from tritonpy.core.instance.bls import BlsSession
from tritonpy.core.instance.streams import StreamTable
from tritonpy.core.errors import ServerError, internal, unavailable
from tritonpy.core.instance.lifecycle import InstanceLifecycle, _WorkerExited
from tritonpy.core.instance.batch_codec import BatchCodec, PackedBatch, ResolveShm, attach_release
from tritonpy.core.instance.spec import InstanceSpec, InstanceState, ResourceNames, float_setting
from tritonpy.core.scheduling.base import ExecOutcome
from tritonpy.core.observability.stats import ModelStats
from tritonpy.core.instance.supervisor import HeartbeatWatchdog, RestartBackoff, WorkerProcess
from tritonpy.core.types import InferRequest, InferResponse
from tritonpy.core.instance.limits import WorkerLaunch, prepare_launch
from tritonpy.proto import messages as m
from tritonpy.shm.arena import DEFAULT_INITIAL, DEFAULT_MAX_TOTAL, Arena, SegmentCache
from tritonpy.shm.tensors import read_tensor

__all__ = ["ExecOutcome", "InstanceSpec", "InstanceState", "ResolveShm", "WorkerInstance"]

log = logging.getLogger("tritonpy.core.instance")


WORKER_MODULE = "tritonpy.backends.worker"
IS_READY_TIMEOUT_S = 5.0
INIT_FAILED_EXIT_GRACE_S = 2.0

_LOG_LEVELS = {"INFO": logging.INFO, "WARNING": logging.WARNING, "ERROR": logging.ERROR, "VERBOSE": logging.DEBUG}


@dataclasses.dataclass(slots=True, eq=False)
class _Batch:
    """A batch sent to the worker and not yet answered."""

    batch_id: int
    generation: int
    future: asyncio.Future
    packed: PackedBatch


class WorkerInstance(InstanceLifecycle):
    """A supervised backend worker for one model instance. See the module docstring."""

    def __init__(
        self,
        spec: InstanceSpec,
        *,
        stats: ModelStats | None = None,
        resolve_shm: ResolveShm | None = None,
        on_ready_change: Callable[["WorkerInstance", bool], None] | None = None,
        worker_argv: Sequence[str] | None = None,
        input_arena_max_bytes: int | None = None,
        zmq_context: zmq.asyncio.Context | None = None,
        backoff: RestartBackoff | None = None,
    ) -> None:
        self.spec = spec
        self.name = spec.instance_name
        self.stats = stats
        self.restarts = 0
        self.last_exit: int | None = None
        self._listeners: list[Callable[[WorkerInstance, bool], None]] = []
        if on_ready_change is not None:
            self._listeners.append(on_ready_change)
        self._worker_argv = list(worker_argv) if worker_argv is not None else [sys.executable, "-m", WORKER_MODULE]
        self._ctx = zmq_context
        self._backoff = backoff or RestartBackoff()
        self._state = InstanceState.NEW
        self._label = f"{spec.model_name}/{spec.instance_name}"

        bc = spec.backend_config
        self.startup_timeout_s = float_setting(bc, "stub-timeout-seconds", spec.startup_timeout_s)
        self.heartbeat_timeout_s = float_setting(bc, "heartbeat-timeout-seconds", spec.heartbeat_timeout_s)
        self._arena_initial = int(float_setting(bc, "shm-default-byte-size", DEFAULT_INITIAL))
        self._arena_max = input_arena_max_bytes or DEFAULT_MAX_TOTAL

        self._names = names = ResourceNames(spec)
        self.short_id = names.short_id
        self.shm_prefix = names.shm_prefix
        self.input_prefix = names.input_prefix
        self.output_prefix = names.output_prefix
        self.socket_path = names.socket_path
        self.endpoint = names.endpoint
        self._ident = spec.instance_name.encode()
        self._hb_ident = (spec.instance_name + "#hb").encode()
        # The worker's I/O socket: decoupled responses, cancellation and BLS (core/instance/streams.py, core/instance/bls.py).
        self._io_ident = (spec.instance_name + "#io").encode()

        self._config_json = spec.config_json
        self._autocomplete = spec.autocomplete
        self._codec = BatchCodec(
            where=self._where(),
            model_name=spec.model_name,
            model_version=spec.model_version,
            config_json=spec.config_json,
            resolve_shm=resolve_shm,
        )

        # Opened by start(); all released by stop().
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = 0
        self._sock: zmq.asyncio.Socket | None = None
        self._sync_sock: zmq.Socket | None = None
        self._async_sends = 0
        self._reader: asyncio.Task | None = None
        self._proc: WorkerProcess | None = None
        self._arena: Arena | None = None
        self._cache = SegmentCache(writable=False)
        self._watchdog = HeartbeatWatchdog(
            label=self._label, timeout_s=self.heartbeat_timeout_s, on_silence=self._on_silence
        )
        self._generation = 0
        self._dead_pids: set[int] = set()
        self._kill_reason = ""
        self._hello: asyncio.Future | None = None
        self._init_done: asyncio.Future | None = None
        self._finalize_done: asyncio.Future | None = None
        self._ready_tokens: dict[int, asyncio.Future] = {}
        self._ready_check: asyncio.Task | None = None
        self._token_ids = itertools.count(1)
        self._batch_ids = itertools.count(1)
        self._inflight: dict[int, _Batch] = {}
        self._drained = asyncio.Event()
        self._drained.set()
        self._restart_task: asyncio.Task | None = None
        self._launch = WorkerLaunch()  # limits and interpreter, decided in start()
        self._stop_task: asyncio.Task | None = None
        self._streams = StreamTable(
            model_name=spec.model_name,
            model_version=str(spec.model_version),
            read=lambda ref: read_tensor(self._cache, ref),
            send_release=lambda gen, rid: self._send_io(gen, m.Release(rid)),
            send_cancel=lambda gen, batch_id, index: self._send_io(gen, m.CancelRequest(batch_id, index)),
            stats=lambda: self.stats,
        )
        self._bls = BlsSession(
            label=self._label,
            runtime_dir=spec.runtime_dir,
            read=lambda ref: read_tensor(self._cache, ref),
            arena=lambda: self._arena,
            send=lambda msg: self._send_io(self._generation, msg),
        )

    # --- public state ----------------------------------------------------------------------
    @property
    def state(self) -> InstanceState:
        return self._state

    @property
    def ready(self) -> bool:
        return self._state is InstanceState.READY

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None and self._proc.alive else None

    @property
    def config_json(self) -> str:
        """The configuration the worker runs with (completed by the backend when it autocompleted)."""
        return self._config_json

    def use_config(self, config_json: str) -> None:
        """Start with this (already completed) configuration instead; only before `start()`."""
        if self._state is not InstanceState.NEW:
            raise RuntimeError("use_config() after start()")
        self._config_json = config_json
        self._autocomplete = False
        self._codec.set_config(config_json)

    def add_ready_listener(self, callback: Callable[["WorkerInstance", bool], None]) -> None:
        self._listeners.append(callback)

    def __repr__(self) -> str:
        return f"<WorkerInstance {self._label} {self._state.value} pid={self.pid}>"

    # --- start -----------------------------------------------------------------------------
    async def start(self) -> str:
        """Spawn the worker and initialize the model; returns the completed config JSON ('' if none).

        Raises ServerError(UNAVAILABLE) with the reason when the worker cannot start; everything
        opened so far is released again before the error propagates.
        """
        if self._state is not InstanceState.NEW:
            raise unavailable(f"{self._where()}: instance cannot be started twice")
        self._state = InstanceState.STARTING
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        try:
            self._open_socket()
            self._launch = await self._prepare_launch()
            completed = await self._spawn_and_init()
            if self._state is not InstanceState.STARTING:
                raise unavailable(f"{self._where()}: stopped while starting")
        except BaseException:
            if self._stop_task is None:
                self._state = InstanceState.STOPPING
                await self._release_everything()
                self._state = InstanceState.STOPPED
            raise
        self._set_ready()
        return completed

    def _open_socket(self) -> None:
        os.makedirs(self.spec.runtime_dir, exist_ok=True)
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
            raise unavailable(f"{self._where()}: cannot listen on {self.endpoint}: {exc}") from exc
        self._arena = Arena(self.input_prefix, initial_size=self._arena_initial, max_total=self._arena_max)
        self._reader = asyncio.create_task(self._read_loop(), name=f"tritonpy-instance-reader-{self._label}")

    def _worker_args(self) -> list[str]:
        return [
            *self._worker_argv,
            "--endpoint", self.endpoint,
            "--instance-name", self.spec.instance_name,
            "--parent-pid", str(os.getpid()),
        ]

    async def _prepare_launch(self) -> WorkerLaunch:
        """Worker limits and the model's own Python environment (built once, cached), from its config."""
        try:
            return await prepare_launch(self.spec.model_dir, self._config_json, self.spec.backend_config)
        except Exception as exc:  # ValueError, EnvironmentBuildError: the model's load failure reason
            raise unavailable(f"{self._where()}: {exc}") from exc

    async def _spawn_and_init(self) -> str:
        """One spawn + handshake. Raises ServerError(UNAVAILABLE); the caller cleans up the worker."""
        loop = asyncio.get_running_loop()
        self._generation += 1
        gen = self._generation
        self._kill_reason = ""
        self._hello = loop.create_future()
        self._init_done = None
        proc = WorkerProcess(
            self._launch.argv(self._worker_args(), WORKER_MODULE), label=self._label,
            on_exit=functools.partial(self._on_exit, gen), env=self._launch.env(),
        )
        self._proc = proc
        try:
            await proc.spawn()
        except OSError as exc:
            raise unavailable(f"{self._where()}: cannot start the backend worker: {exc}") from exc
        log.info("[%s] worker started (pid %d)", self._label, proc.pid)
        try:
            return await self._handshake(proc)
        except _WorkerExited as exc:
            # It died: its last words on stderr usually say why (an ImportError, an OOM message).
            await proc.close()
            tail = "; ".join(line.strip() for line in list(proc.stderr_tail)[-3:] if line.strip())
            if not tail:
                raise
            raise unavailable(f"{exc.message}; stderr: {tail}") from exc

    async def _handshake(self, proc: WorkerProcess) -> str:
        """Hello -> Init -> InitDone on a freshly spawned worker; returns the completed config."""
        loop = asyncio.get_running_loop()
        assert self._hello is not None
        try:
            hello = await asyncio.wait_for(asyncio.shield(self._hello), self.startup_timeout_s)
        except asyncio.TimeoutError:
            raise unavailable(
                f"{self._where()}: the backend worker did not connect within {self.startup_timeout_s:g} s "
                "(stub-timeout-seconds)"
            ) from None
        log.debug("[%s] hello from pid %d", self._label, hello.pid)
        # Initialization may legitimately take long (model loading), so until InitDone a silence only
        # counts as a hang after the start-up timeout; afterwards the heartbeat timeout applies.
        self._watchdog.start(max(self.startup_timeout_s, self.heartbeat_timeout_s))
        self._init_done = loop.create_future()
        await self._send(
            m.Init(
                model_name=self.spec.model_name,
                model_version=self.spec.model_version,
                model_repository=self.spec.model_dir,
                instance_name=self.spec.instance_name,
                instance_kind=self.spec.kind,
                device_id=self.spec.device_id,
                backend=self.spec.backend,
                config_json=self._config_json,
                autocomplete=self._autocomplete,
                output_prefix=self.output_prefix,
                backend_config=dict(self.spec.backend_config),
                log_verbose=self.spec.log_verbose,
                heartbeat_interval_s=self.spec.heartbeat_interval_s,
            )
        )
        done: m.InitDone = await asyncio.shield(self._init_done)
        if not done.ok:
            # The worker exits by itself after a failed initialize; make sure of it.
            if not await proc.wait(INIT_FAILED_EXIT_GRACE_S):
                await proc.kill()
            raise unavailable(f"{self._where()}: failed to initialize: {done.error}")
        self._watchdog.start(self.heartbeat_timeout_s)
        if self._autocomplete and done.config_json:
            self._config_json = done.config_json
            self._codec.set_config(done.config_json)
        self._autocomplete = False
        return done.config_json

    def _set_ready(self) -> None:
        self._state = InstanceState.READY
        self._backoff.started(time.monotonic())
        self._notify(True)

    def _notify(self, ready: bool) -> None:
        for cb in list(self._listeners):
            try:
                cb(self, ready)
            except Exception:
                log.exception("[%s] readiness listener failed", self._label)

    # --- messages from the worker ------------------------------------------------------------
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
                log.error("[%s] receive failed: %s", self._label, exc)
                await asyncio.sleep(0.05)
                continue
            try:
                self._dispatch(frames)
            except Exception:
                log.exception("[%s] handling a worker message failed", self._label)

    def _dispatch(self, frames: list[bytes]) -> None:
        ident = frames[0]
        self._watchdog.beat()
        if ident == self._hb_ident:
            return
        if ident != self._ident and ident != self._io_ident:
            log.warning("[%s] message from unknown peer %r ignored", self._label, ident)
            return
        try:
            msg = m.decode(frames[1:])
        except m.MessageError as exc:
            log.error("[%s] malformed message from the worker: %s", self._label, exc)
            return
        if isinstance(msg, m.ExecuteDone):
            self._on_execute_done(msg)
        elif isinstance(msg, m.LogRecord):
            log.log(_LOG_LEVELS.get(msg.level, logging.INFO), "[%s] %s", self._label, msg.message)
        elif isinstance(msg, m.IsReadyDone):
            fut = self._ready_tokens.pop(msg.token, None)
            if fut is not None and not fut.done():
                fut.set_result(msg.ready)
        elif isinstance(msg, m.Hello):
            if msg.pid in self._dead_pids:
                return  # left over from a worker that is gone
            if self._hello is not None and not self._hello.done():
                self._hello.set_result(msg)
        elif isinstance(msg, m.InitDone):
            if self._init_done is not None and not self._init_done.done():
                self._init_done.set_result(msg)
        elif isinstance(msg, m.FinalizeDone):
            if self._finalize_done is not None and not self._finalize_done.done():
                self._finalize_done.set_result(None)
        elif isinstance(msg, m.Heartbeat):
            pass
        elif isinstance(msg, m.ResponseSend):
            self._streams.on_response(msg, self._generation)
        elif isinstance(msg, (m.BlsCall, m.BlsCancel, m.BlsRelease)):
            self._bls.handle(msg)
        else:
            log.warning("[%s] unexpected %s from the worker", self._label, type(msg).__name__)

    def _on_execute_done(self, msg: m.ExecuteDone) -> None:
        batch = self._inflight.pop(msg.batch_id, None)
        if batch is None:
            # Abandoned (or failed with an earlier worker): nobody reads it, let the worker free it.
            self._send_release(self._generation, msg.batch_id)
            return
        self._free_blocks(batch.packed.blocks)
        if not self._inflight:
            self._drained.set()
        if batch.future.done():  # the caller gave up: nobody reads the outputs
            self._send_release(batch.generation, batch.batch_id)
        else:
            batch.future.set_result(msg)

    def _try_send_now(self, frames: list) -> bool:
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

    async def _send(self, msg: Any) -> None:
        if self._sock is None:
            raise unavailable(f"{self._where()}: instance is stopped")
        frames = [self._ident, *m.encode(msg)]
        if self._try_send_now(frames):
            return
        self._async_sends += 1
        try:
            await self._sock.send_multipart(frames)
        finally:
            self._async_sends -= 1

    def _send_io(self, generation: int, msg: Any) -> None:
        """Fire-and-forget to the worker's I/O socket, from any thread; only to that generation."""
        if threading.get_ident() != self._loop_thread:
            loop = self._loop
            if loop is not None and not loop.is_closed():
                try:
                    loop.call_soon_threadsafe(self._send_io, generation, msg)
                except RuntimeError:
                    pass  # the loop closed meanwhile: the worker is gone too
            return
        if generation != self._generation or self._proc is None or not self._proc.alive:
            return
        if self._sock is None or self._sock.closed:
            return
        try:
            fut = self._sock.send_multipart([self._io_ident, *m.encode(msg)])
        except zmq.ZMQError as exc:
            log.debug("[%s] could not send %s: %s", self._label, type(msg).__name__, exc)
            return
        fut.add_done_callback(_ignore_send_error)

    def _send_nowait(self, msg: Any) -> None:
        """Fire-and-forget send from synchronous code (releases)."""
        if self._sock is None or self._sock.closed:
            return
        frames = [self._ident, *m.encode(msg)]
        try:
            if self._try_send_now(frames):
                return
            fut = self._sock.send_multipart(frames)
        except zmq.ZMQError as exc:
            log.debug("[%s] could not send %s: %s", self._label, type(msg).__name__, exc)
            return
        fut.add_done_callback(_ignore_send_error)

    # --- execute ---------------------------------------------------------------------------
    async def execute(self, requests: list[InferRequest], *, gather: bool) -> ExecOutcome:
        """Run one batch on the worker: one result (InferResponse or ServerError) per request.

        Raises ServerError when the whole batch failed: the instance is not ready, the worker died
        while executing it, or the backend failed the batch as a whole (requests refused before
        sending keep their own error instead). Responses hold views of the worker's shared memory
        until `release()` (the frontend calls it after serializing; a forgotten one is released
        when garbage collected).
        """
        if self._state is not InstanceState.READY or self._arena is None:
            raise unavailable(f"{self._where()} is not ready")
        results: list[InferResponse | ServerError | None] = [None] * len(requests)
        packed = self._codec.pack(self._arena, requests, gather, results)
        if not packed.msgs:
            return ExecOutcome(results=results)
        loop = asyncio.get_running_loop()
        batch = _Batch(
            batch_id=next(self._batch_ids),
            generation=self._generation,
            future=loop.create_future(),
            packed=packed,
        )
        self._inflight[batch.batch_id] = batch
        self._drained.clear()
        for k, index in enumerate(packed.included):
            if requests[index].stream is not None:  # decoupled: responses come as ResponseSend
                self._streams.register(batch.batch_id, k, requests[index], self._generation)
        try:
            await self._send(m.Execute(batch_id=batch.batch_id, requests=packed.msgs, gathered=packed.gathered))
        except zmq.ZMQError as exc:
            self._abandon(batch)
            raise internal(f"{self._where()}: cannot reach the backend worker: {exc}") from exc
        except asyncio.CancelledError:
            self._abandon(batch)  # not sent; if it was after all, its ExecuteDone is released on arrival
            raise
        # Cancellation of this await cancels the future; the reader then releases the outputs.
        done = await batch.future
        if isinstance(done, ServerError):
            return _batch_failed(done, packed, results)
        if done.error is not None or len(done.responses) != len(packed.included):
            self._send_release(batch.generation, batch.batch_id)
            if done.error is not None:
                return _batch_failed(ServerError.from_info(done.error), packed, results)
            return _batch_failed(
                internal(
                    f"{self._where()}: backend returned {len(done.responses)} responses "
                    f"for {len(packed.included)} requests"
                ),
                packed,
                results,
            )
        responses = self._codec.unpack(self._cache, requests, packed, done, results)
        holds = any(
            ref.inline is None and ref.segment.startswith(self.shm_prefix)
            for response in done.responses
            for ref in response.outputs
        )
        # With every output inline or in client memory the worker reserved nothing for this batch,
        # so there is nothing to release.
        if holds and responses:
            attach_release(
                responses, functools.partial(self._release_from_any_thread, batch.generation, batch.batch_id)
            )
        elif holds:
            self._send_release(batch.generation, batch.batch_id)
        return ExecOutcome(
            results=results,
            compute_input_ns=done.compute_input_ns,
            compute_infer_ns=done.compute_infer_ns,
            compute_output_ns=done.compute_output_ns,
        )

    def end_sequences(self, correlation_ids: list) -> None:
        """Tell the worker these sequences ended without END (idle timeout, cancellation), so it
        drops their implicit state. Same socket as Execute, so it arrives in order with batches;
        a worker that is not running has no state to drop."""
        if self._state is not InstanceState.READY or not correlation_ids:
            return
        if self._proc is None or not self._proc.alive:
            return
        self._send_nowait(m.EndSequences(list(correlation_ids)))

    def _abandon(self, batch: _Batch) -> None:
        if self._inflight.pop(batch.batch_id, None) is not None:
            self._free_blocks(batch.packed.blocks)
            if not self._inflight:
                self._drained.set()

    def _free_blocks(self, blocks: list[tuple[str, int]]) -> None:
        if self._arena is not None:
            for seg, off in blocks:
                self._arena.free(seg, off)
        blocks.clear()

    def _release_from_any_thread(self, generation: int, batch_id: int) -> None:
        if threading.get_ident() == self._loop_thread:
            self._send_release(generation, batch_id)
            return
        loop = self._loop
        if loop is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(self._send_release, generation, batch_id)
            except RuntimeError:
                pass  # the loop closed meanwhile: nothing is left to release

    def _send_release(self, generation: int, batch_id: int) -> None:
        if generation != self._generation or self._state not in (InstanceState.READY, InstanceState.STOPPING):
            return  # that worker is gone, and its memory with it
        if self._proc is None or not self._proc.alive:
            return
        self._send_nowait(m.Release(batch_id))

    # --- readiness -------------------------------------------------------------------------
    async def is_ready(self) -> bool:
        """Alive and the model says it is ready (one question in flight; 5 s without answer = no)."""
        if self._state is not InstanceState.READY or self._proc is None or not self._proc.alive:
            return False
        if self._ready_check is None or self._ready_check.done():
            self._ready_check = asyncio.create_task(self._ask_ready(), name=f"tritonpy-is-ready-{self._label}")
        return await asyncio.shield(self._ready_check)

    async def _ask_ready(self) -> bool:
        token = next(self._token_ids)
        fut = asyncio.get_running_loop().create_future()
        self._ready_tokens[token] = fut
        try:
            await self._send(m.IsReady(token))
            return bool(await asyncio.wait_for(fut, IS_READY_TIMEOUT_S))
        except (asyncio.TimeoutError, zmq.ZMQError, ServerError):
            return False
        finally:
            self._ready_tokens.pop(token, None)

    # --- helpers ---------------------------------------------------------------------------
    def _where(self) -> str:
        return f"model '{self.spec.model_name}' instance '{self.spec.instance_name}'"



def _batch_failed(error: ServerError, packed: PackedBatch, results: list) -> ExecOutcome:
    """Everything sent failed together: raise when that is the whole batch; otherwise requests
    that were refused before sending keep their own error and the others get this one."""
    if len(packed.included) == len(results):
        raise error
    for index in packed.included:
        results[index] = ServerError(error.code, error.message)
    return ExecOutcome(results=results)


def _ignore_send_error(fut: asyncio.Future) -> None:
    if not fut.cancelled():
        fut.exception()
