"""One model instance: a backend worker process the core spawns, talks to, supervises and restarts.

Three composed parts:
  * `WorkerConnection` (connection.py): the ZeroMQ ROUTER on an ipc socket in a private runtime
    directory, the send paths, the read loop and the table routing each message kind to a handler;
  * `InstanceSupervisor` (lifecycle.py): the worker process, spawn and handshake, heartbeat
    watchdog, restart with backoff, stop; it owns the `InstanceState`;
  * `WorkerInstance` (here): what runs on a ready worker: execute, the in-flight table, releases,
    readiness, and the instance's shared memory.
Messages are `proto.messages`; tensor bytes travel in shared memory: batch inputs in this instance's
input arena (the core writes), outputs in the worker's own segments (the core maps them read-only
and hands out numpy views until every response of the batch is released, then tells the worker
`Release(batch_id)`).
"""
from __future__ import annotations

import asyncio
import dataclasses
import functools
import itertools
import logging
from typing import Callable, Sequence

import msgspec
import zmq
import zmq.asyncio

from tritonpy.core.errors import ServerError, internal, unavailable
from tritonpy.core.instance.batch_codec import BatchCodec, PackedBatch, ResolveShm, attach_release
from tritonpy.core.instance.bls import BlsRouter, BlsSession
from tritonpy.core.instance.connection import WorkerConnection
from tritonpy.core.instance.lifecycle import WORKER_MODULE, InstanceSupervisor
from tritonpy.core.instance.memory import InstanceMemory
from tritonpy.core.instance.spec import InstanceSpec, InstanceState, ResourceNames, float_setting, init_message
from tritonpy.core.instance.streams import StreamTable
from tritonpy.core.instance.supervisor import RestartBackoff
from tritonpy.core.observability.custom_metrics import CustomMetrics
from tritonpy.core.observability.stats import ModelStats
from tritonpy.core.scheduling.base import ExecOutcome
from tritonpy.core.types import InferRequest, InferResponse
from tritonpy.proto import messages as m
from tritonpy.shm.arena import DEFAULT_INITIAL, DEFAULT_MAX_TOTAL
from tritonpy.shm.tensors import read_tensor

__all__ = ["ExecOutcome", "InstanceSpec", "InstanceState", "ResolveShm", "WORKER_MODULE", "WorkerInstance"]

log = logging.getLogger("tritonpy.core.instance")

# One slot per request of a batch: its response, its error, or None while unanswered.
_Results = list[InferResponse | ServerError | None]

IS_READY_TIMEOUT_S = 5.0
# A worker of a generation that is gone took its memory with it: only these release.
_RELEASE_STATES = (InstanceState.READY, InstanceState.STOPPING)


@dataclasses.dataclass(slots=True, eq=False)
class _Batch:
    """A batch sent to the worker and not yet answered."""

    batch_id: int
    generation: int
    future: asyncio.Future[m.ExecuteDone | ServerError]  # a ServerError when the worker died
    packed: PackedBatch


class WorkerInstance:
    """A supervised backend worker for one model instance. See the module docstring."""

    # long: a third of it wires up its parts (connection, supervisor, memory, streams, BLS) and the
    # small state properties the pool and schedulers read; execute and its hand-over are the rest.

    def __init__(
        self,
        spec: InstanceSpec,
        *,
        stats: ModelStats | None = None,
        resolve_shm: ResolveShm | None = None,
        bls_router: BlsRouter | None = None,
        custom_metrics: CustomMetrics | None = None,
        on_ready_change: Callable[["WorkerInstance", bool], None] | None = None,
        worker_argv: Sequence[str] | None = None,
        input_arena_max_bytes: int | None = None,
        zmq_context: zmq.asyncio.Context | None = None,
        backoff: RestartBackoff | None = None,
    ) -> None:
        self.spec = spec
        self.name = spec.instance_name
        self.stats = stats
        self._listeners: list[Callable[[WorkerInstance, bool], None]] = []
        if on_ready_change is not None:
            self._listeners.append(on_ready_change)
        self._label = label = f"{spec.model_name}/{spec.instance_name}"
        self._where = where = f"model '{spec.model_name}' instance '{spec.instance_name}'"
        self._names = names = ResourceNames(spec)
        self.shm_prefix = names.shm_prefix  # every segment of this instance (tests sweep by it)
        self.socket_path = names.socket_path
        self._config_json = spec.config_json
        self._autocomplete = spec.autocomplete
        self._codec = BatchCodec(
            where=where, model_name=spec.model_name, model_version=spec.model_version,
            config_json=spec.config_json, resolve_shm=resolve_shm,
        )
        self._memory = memory = InstanceMemory(
            shm_prefix=names.shm_prefix, input_prefix=names.input_prefix,
            max_total=input_arena_max_bytes or DEFAULT_MAX_TOTAL,
            initial_size=int(float_setting(spec.backend_config, "shm-default-byte-size", DEFAULT_INITIAL)),
        )
        self._inflight: dict[int, _Batch] = {}
        self._drained = asyncio.Event()
        self._drained.set()
        self._batch_ids = itertools.count(1)
        self._conn = conn = WorkerConnection(
            label=label, where=where, instance_name=spec.instance_name, endpoint=names.endpoint,
            socket_path=names.socket_path, zmq_context=zmq_context,
        )
        self._readiness = _ReadinessProbe(conn)
        self._sup = InstanceSupervisor(
            owner=self, connection=conn, memory=memory, spec=spec, names=names, label=label, where=where, stats=stats,
            worker_argv=worker_argv, backoff=backoff,
            startup_timeout_s=float_setting(spec.backend_config, "stub-timeout-seconds", spec.startup_timeout_s),
            heartbeat_timeout_s=float_setting(
                spec.backend_config, "heartbeat-timeout-seconds", spec.heartbeat_timeout_s
            ),
        )
        self._streams, self._bls = self._make_io(bls_router)
        conn.handle(m.ExecuteDone, self._on_execute_done)
        if custom_metrics is not None:  # what a Python model reports (pb_utils.MetricFamily), for /metrics
            conn.handle(m.MetricOp, functools.partial(custom_metrics.apply, spec.model_name))

    def _make_io(self, bls_router: BlsRouter | None) -> tuple[StreamTable, BlsSession]:
        """Decoupled streams and BLS calls, both on the worker's I/O socket (streams.py, bls.py)."""
        spec = self.spec
        streams = StreamTable(
            model_name=spec.model_name,
            model_version=str(spec.model_version),
            read=lambda ref: read_tensor(self._memory.cache, ref),
            send_release=lambda gen, rid: self._send_io(gen, m.Release(rid)),
            send_cancel=lambda gen, batch_id, index: self._send_io(gen, m.CancelRequest(batch_id, index)),
            stats=lambda: self.stats,
        )
        bls = BlsSession(
            label=self._label,
            router=bls_router,
            model=spec.model_name,
            read=lambda ref: read_tensor(self._memory.cache, ref),
            arena=lambda: self._memory.arena,
            send=lambda msg: self._send_io(self._sup.generation, msg),
        )
        self._conn.handle(m.ResponseSend, lambda msg: streams.on_response(msg, self._sup.generation))
        for kind in (m.BlsCall, m.BlsCancel, m.BlsRelease):
            self._conn.handle(kind, bls.handle)
        return streams, bls

    # --- public state ----------------------------------------------------------------------
    @property
    def state(self) -> InstanceState:
        return self._sup.state

    @property
    def ready(self) -> bool:
        return self._sup.state is InstanceState.READY

    @property
    def pid(self) -> int | None:
        return self._sup.pid

    @property
    def restarts(self) -> int:
        return self._sup.restarts

    @property
    def last_exit(self) -> int | None:
        return self._sup.last_exit

    @property
    def config_json(self) -> str:
        """The configuration the worker runs with (completed by the backend when it autocompleted)."""
        return self._config_json

    def use_config(self, config_json: str) -> None:
        """Start with this (already completed) configuration instead; only before `start()`."""
        if self._sup.state is not InstanceState.NEW:
            raise RuntimeError("use_config() after start()")
        self._config_json = config_json
        self._autocomplete = False
        self._codec.set_config(config_json)

    def add_ready_listener(self, callback: Callable[["WorkerInstance", bool], None]) -> None:
        self._listeners.append(callback)

    def __repr__(self) -> str:
        return f"<WorkerInstance {self._label} {self._sup.state.value} pid={self.pid}>"

    # --- lifecycle (the supervisor's) ----------------------------------------------------------
    async def start(self) -> str:
        """Spawn the worker and initialize the model; returns the completed config JSON ('' if none).
        Raises ServerError(UNAVAILABLE) with the reason; nothing stays open then."""
        return await self._sup.start()

    async def stop(self, timeout: float = 10.0) -> None:
        """Drain, finalize, stop the worker and release everything. Idempotent; never restarts."""
        await self._sup.stop(timeout)

    # --- SupervisedInstance: what the supervisor asks of the instance ---------------------------
    def init_message(self) -> m.Init:
        return init_message(
            self.spec, config_json=self._config_json, autocomplete=self._autocomplete,
            output_prefix=self._names.output_prefix,
        )

    def adopt_init(self, done: m.InitDone) -> None:
        if self._autocomplete and done.config_json:
            self._config_json = done.config_json
            self._codec.set_config(done.config_json)
        self._autocomplete = False

    def fail_work(self, error: ServerError) -> None:
        self._streams.fail_all(error)
        self._bls.abort()
        batches = list(self._inflight.values())
        self._inflight.clear()
        self._drained.set()
        for batch in batches:
            self._memory.free_blocks(batch.packed.blocks)
            if not batch.future.done():
                batch.future.set_result(ServerError(error.code, error.message))
        self._readiness.fail_all()

    def notify(self, ready: bool) -> None:
        for cb in list(self._listeners):
            try:
                cb(self, ready)
            except Exception:
                log.exception("[%s] readiness listener failed", self._label)

    async def drain(self, timeout: float) -> None:
        if not self._inflight:
            return
        try:
            await asyncio.wait_for(self._drained.wait(), timeout)
        except asyncio.TimeoutError:
            log.warning("[%s] %d batch(es) still running at stop", self._label, len(self._inflight))

    # --- execute ---------------------------------------------------------------------------
    async def execute(self, requests: list[InferRequest], *, gather: bool) -> ExecOutcome:
        """Run one batch on the worker: one result (InferResponse or ServerError) per request.

        Raises ServerError when the whole batch failed: the instance is not ready, the worker died
        while executing it, or the backend failed the batch as a whole (requests refused before
        sending keep their own error instead). Responses hold views of the worker's shared memory
        until `release()` (the frontend calls it after serializing; a forgotten one is released
        when garbage collected).
        """
        sup = self._sup
        arena = self._memory.arena
        if sup.state is not InstanceState.READY or arena is None:
            raise unavailable(f"{self._where} is not ready")
        results: list[InferResponse | ServerError | None] = [None] * len(requests)
        packed = self._codec.pack(arena, requests, gather, results)
        if not packed.msgs:
            return ExecOutcome(results=results)
        batch = _Batch(
            batch_id=next(self._batch_ids),
            generation=sup.generation,
            future=asyncio.get_running_loop().create_future(),
            packed=packed,
        )
        self._inflight[batch.batch_id] = batch
        self._drained.clear()
        for k, index in enumerate(packed.included):
            if requests[index].stream is not None:  # decoupled: responses come as ResponseSend
                self._streams.register(batch.batch_id, k, requests[index], batch.generation)
        try:
            await self._conn.send(m.Execute(batch_id=batch.batch_id, requests=packed.msgs, gathered=packed.gathered))
        except zmq.ZMQError as exc:
            self._abandon(batch)
            raise internal(f"{self._where}: cannot reach the backend worker: {exc}") from exc
        except asyncio.CancelledError:
            self._abandon(batch)  # not sent; if it was after all, its ExecuteDone is released on arrival
            raise
        # Cancellation of this await cancels the future; the reader then releases the outputs.
        done = await batch.future
        if isinstance(done, ServerError):
            return _batch_failed(done, packed, results)
        if done.error is not None or len(done.responses) != len(packed.included):
            return self._backend_failed(batch, done, results)
        responses = self._codec.unpack(self._memory.cache, requests, packed, done, results)
        self._hand_over(batch, done, responses)
        return ExecOutcome(
            results=results,
            compute_input_ns=done.compute_input_ns,
            compute_infer_ns=done.compute_infer_ns,
            compute_output_ns=done.compute_output_ns,
        )

    def _backend_failed(self, batch: _Batch, done: m.ExecuteDone, results: _Results) -> ExecOutcome:
        """The backend failed the batch as a whole, or answered the wrong number of requests."""
        self._send_release(batch.generation, batch.batch_id)
        packed = batch.packed
        if done.error is not None:
            return _batch_failed(ServerError.from_info(done.error), packed, results)
        return _batch_failed(
            internal(f"{self._where}: backend returned {len(done.responses)} responses "
                     f"for {len(packed.included)} requests"),
            packed,
            results,
        )

    def _hand_over(self, batch: _Batch, done: m.ExecuteDone, responses: list[InferResponse]) -> None:
        """Tie the release of the worker's output memory to the last response of the batch."""
        prefix = self.shm_prefix
        holds = any(
            ref.inline is None and ref.segment.startswith(prefix)
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

    def _on_execute_done(self, msg: m.ExecuteDone) -> None:
        batch = self._inflight.pop(msg.batch_id, None)
        if batch is None:
            # Abandoned (or failed with an earlier worker): nobody reads it, let the worker free it.
            self._send_release(self._sup.generation, msg.batch_id)
            return
        self._memory.free_blocks(batch.packed.blocks)
        if not self._inflight:
            self._drained.set()
        if batch.future.done():  # the caller gave up: nobody reads the outputs
            self._send_release(batch.generation, batch.batch_id)
        else:
            batch.future.set_result(msg)

    def end_sequences(self, correlation_ids: list[int | str]) -> None:
        """Tell the worker these sequences ended without END (idle timeout, cancellation), so it
        drops their implicit state. Same socket as Execute, so it arrives in order with batches;
        a worker that is not running has no state to drop."""
        if self._sup.state is not InstanceState.READY or not correlation_ids:
            return
        if not self._sup.worker_alive:
            return
        self._conn.send_nowait(m.EndSequences(list(correlation_ids)))

    def _abandon(self, batch: _Batch) -> None:
        if self._inflight.pop(batch.batch_id, None) is not None:
            self._memory.free_blocks(batch.packed.blocks)
            if not self._inflight:
                self._drained.set()

    # --- releases and I/O sends, from any thread ------------------------------------------------
    def _release_from_any_thread(self, generation: int, batch_id: int) -> None:
        if self._conn.on_loop_thread():
            self._send_release(generation, batch_id)
        else:
            self._conn.call_soon_threadsafe(self._send_release, generation, batch_id)

    def _send_release(self, generation: int, batch_id: int) -> None:
        sup = self._sup
        if generation != sup.generation or sup.state not in _RELEASE_STATES or not sup.worker_alive:
            return  # that worker is gone, and its memory with it
        self._conn.send_nowait(m.Release(batch_id))

    def _send_io(self, generation: int, msg: msgspec.Struct) -> None:
        """Fire-and-forget to the worker's I/O socket, from any thread; only to that generation."""
        if not self._conn.on_loop_thread():
            self._conn.call_soon_threadsafe(self._send_io, generation, msg)
            return
        if generation != self._sup.generation or not self._sup.worker_alive:
            return
        self._conn.send_io(msg)

    # --- readiness -------------------------------------------------------------------------
    async def is_ready(self) -> bool:
        """Alive and the model says it is ready (one question in flight; 5 s without answer = no)."""
        if self._sup.state is not InstanceState.READY or not self._sup.worker_alive:
            return False
        return await self._readiness.ask()


def _batch_failed(error: ServerError, packed: PackedBatch, results: _Results) -> ExecOutcome:
    """Everything sent failed together: raise when that is the whole batch; otherwise requests
    that were refused before sending keep their own error and the others get this one."""
    if len(packed.included) == len(results):
        raise error
    for index in packed.included:
        results[index] = ServerError(error.code, error.message)
    return ExecOutcome(results=results)


class _ReadinessProbe:
    """The IsReady RPC: asks the model whether it is ready; one question in flight at a time, and
    concurrent callers share its answer."""

    __slots__ = ("_conn", "_tokens", "_token_ids", "_check")

    def __init__(self, conn: WorkerConnection) -> None:
        self._conn = conn
        self._tokens: dict[int, asyncio.Future[bool]] = {}
        self._token_ids = itertools.count(1)
        self._check: asyncio.Task[bool] | None = None
        conn.handle(m.IsReadyDone, self._on_done)

    async def ask(self) -> bool:
        if self._check is None or self._check.done():
            self._check = asyncio.create_task(self._ask(), name=f"tritonpy-is-ready-{self._conn.label}")
        return await asyncio.shield(self._check)

    async def _ask(self) -> bool:
        token = next(self._token_ids)
        fut = asyncio.get_running_loop().create_future()
        self._tokens[token] = fut
        try:
            await self._conn.send(m.IsReady(token))
            return bool(await asyncio.wait_for(fut, IS_READY_TIMEOUT_S))
        except (asyncio.TimeoutError, zmq.ZMQError, ServerError):
            return False
        finally:
            self._tokens.pop(token, None)

    def _on_done(self, msg: m.IsReadyDone) -> None:
        fut = self._tokens.pop(msg.token, None)
        if fut is not None and not fut.done():
            fut.set_result(msg.ready)

    def fail_all(self) -> None:
        """The worker is gone: every open question is answered 'not ready'."""
        for fut in self._tokens.values():
            if not fut.done():
                fut.set_result(False)
        self._tokens.clear()
