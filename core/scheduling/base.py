"""What every per-model scheduler shares: the instance-pool contract, queued-request bookkeeping,
executing a batch on an instance, delivering one result per request, statistics, cancellation and
shutdown.

A subclass decides only *which* queued requests go out next (`_admit`, `_withdraw`, `_pump`,
`_take_all`, `pending_count`); the machinery here guarantees the rest:

* A batch returns exactly one result per request; a failing request fails only itself, and an
  instance that fails a whole batch fails only that batch (STYLE.md patterns 5 and 7).
* A request whose caller gave up while it was queued never executes; one that was already
  executing has its response released so shared memory is freed.
* Statistics: execution counts and batch_stats per batch; when a request completes, success
  (with its queue time and its batch's compute phases) or failure (with Triton's reason label).
  Sampled requests also get a trace record (core/observability/tracer.py). Queue time is measured from
  the scheduler's enqueue and the request duration from `request.arrival_ns`, both on `clock`,
  so queue + compute <= duration.
"""
from __future__ import annotations

import abc
import asyncio
import collections
import dataclasses
import enum
import itertools
import logging
import time
from typing import Callable, Generic, Hashable, Protocol, Sequence, TypeVar

from tritonpy.core.tenancy import tenants
from tritonpy.core.observability import tracer as tracing
from tritonpy.core.errors import ErrorCode, ServerError
from tritonpy.core.observability.stats import ModelStats
from tritonpy.core.types import InferRequest, InferResponse
from tritonpy.proto import model_config_pb2 as mc

__all__ = [
    "ExecOutcome",
    "Instance",
    "InstancePool",
    "Pending",
    "PendingState",
    "Scheduler",
    "STOPPING_MESSAGE",
]

log = logging.getLogger("tritonpy.core.scheduling.base")

STOPPING_MESSAGE = "Server is stopping, scheduler for model has stopped accepting new inference requests"

# Triton's `reason` label values for nv_inference_request_failure.
REJECTED = "REJECTED"
CANCELED = "CANCELED"
BACKEND = "BACKEND"
OTHER = "OTHER"

# How long to look again when the pool reported an idle instance that try_acquire() did not hand
# out (it should never happen; this keeps requests from hanging if a pool gets it wrong).
_ACQUIRE_RETRY_NS = 5_000_000


# --- the contract with the instance pool ---------------------------------------------------------
@dataclasses.dataclass(slots=True)
class ExecOutcome:
    """What one execution of a batch produced: one entry per request, in request order, plus the
    compute phases the worker measured for the whole batch."""

    # None only from a faulty instance that left a request unanswered: that request fails (INTERNAL).
    results: Sequence[InferResponse | ServerError | None]
    compute_input_ns: int = 0
    compute_infer_ns: int = 0
    compute_output_ns: int = 0


class Instance(Protocol):
    """One model instance (a worker) as the scheduler sees it."""

    @property
    def name(self) -> str: ...

    async def execute(self, requests: list[InferRequest], *, gather: bool) -> ExecOutcome:
        """Run one batch. Raises ServerError when the whole batch failed (e.g. the worker died).

        Any object with the attributes of `ExecOutcome` will do. If the calling task is cancelled
        (only at shutdown, after the drain timeout), the instance is expected to clean up."""
        ...


# The pool's own instance type: a scheduler hands back (`release`) exactly what `try_acquire` gave it.
InstT = TypeVar("InstT", bound=Instance)


class InstancePool(Protocol[InstT]):
    """The instances of one model version.

    Contract: `try_acquire()` returns an instance whenever `idle_count() > 0`. The scheduler calls
    `release()` exactly once for every instance it acquired, also when `execute` raised; the pool
    decides whether the instance is idle again (a dead one is not, until it has restarted).
    Every listener is called, synchronously on the event loop, each time an instance becomes idle:
    released healthy, or ready after a (re)start. A listener only sets an event, so calling it
    from inside `release()` is fine.
    """

    def idle_count(self) -> int: ...

    def try_acquire(self) -> InstT | None: ...

    def release(self, instance: InstT) -> None: ...

    def add_idle_listener(self, callback: Callable[[], None]) -> None: ...

    def remove_idle_listener(self, callback: Callable[[], None]) -> None: ...


# --- one queued request ---------------------------------------------------------------------------
class PendingState(enum.Enum):
    QUEUED = "queued"
    EXECUTING = "executing"
    DONE = "done"


@dataclasses.dataclass(eq=False, slots=True)
class Pending:
    """A request between enqueue() and its answer. Identity-compared (queues remove by identity)."""

    request: InferRequest
    rows: int
    shape_key: Hashable
    enqueue_ns: int
    future: asyncio.Future[InferResponse]
    state: PendingState = PendingState.QUEUED
    # Filled in when it completes.
    result: InferResponse | ServerError | None = None
    fail_reason: str = OTHER
    # Queue bookkeeping (see queue.Queued).
    level: int = 0
    deadline_ns: int = 0
    delayed: bool = False
    in_queue: bool = False
    # Timings for statistics and traces: when it left the queue, the compute phases its batch
    # reported (input, infer, output ns) and when that batch finished; the trace, when sampled.
    dispatch_ns: int = 0
    compute_ns: tuple[int, int, int] = (0, 0, 0)
    compute_end_ns: int = 0
    trace: tracing.TraceContext | None = None
    # The caller's tenant when a tenants file is in use: the fair queue's lane.
    tenant: tenants.Tenant | None = None


def shape_key(request: InferRequest, *, batched: bool, ragged: frozenset[str]) -> Hashable:
    """Requests with equal keys may share a batch: same inputs, datatypes and non-batch shapes.

    A ragged input (`allow_ragged_batch`) only has to be present in both; its shape may differ.
    Including the names makes requests that leave out different optional inputs unequal, as in
    Triton's `RequiredEqualInputs`.
    """
    parts: list[tuple[str, str, tuple[int, ...] | None]] = []
    for t in request.inputs:
        if t.name in ragged:
            parts.append((t.name, t.datatype, None))
        else:
            parts.append((t.name, t.datatype, tuple(t.shape[1:] if batched else t.shape)))
    parts.sort(key=lambda p: p[0])
    return tuple(parts)


def can_gather(requests: Sequence[InferRequest], *, batched: bool) -> bool:
    """True when the inputs of `requests` can be concatenated along the batch dimension: the model
    batches, no input is BYTES, and every request has the same non-batch shapes (ragged inputs
    included). Shared-memory inputs count by their declared shape like any other."""
    if not batched or not requests:
        return False
    first = None
    for request in requests:
        shapes = []
        for t in request.inputs:
            if t.datatype == "BYTES":
                return False
            shapes.append((t.name, t.datatype, tuple(t.shape[1:])))
        shapes.sort(key=lambda p: p[0])
        if first is None:
            first = shapes
        elif shapes != first:
            return False
    return True


@dataclasses.dataclass(slots=True)
class _BatchRun(Generic[InstT]):
    entries: list[Pending]
    instance: InstT
    released: bool = False


def _copy_error(err: ServerError) -> ServerError:
    """A fresh exception per waiter: one object raised in several tasks would share a traceback."""
    return ServerError(err.code, err.message)


# --- the scheduler ---------------------------------------------------------------------------------
class Scheduler(abc.ABC, Generic[InstT]):
    """Queues the requests of one model version and feeds them to its instance pool."""

    # long: admission, the dispatch loop, execution and delivery share one queue and one set of
    # counters; split apart, each piece would take all of them as arguments.

    def __init__(
        self,
        *,
        config: mc.ModelConfig,
        pool: InstancePool[InstT],
        stats: ModelStats,
        model_name: str,
        version: str,
        preserve_ordering: bool = False,
        clock: Callable[[], int] = time.monotonic_ns,
    ) -> None:
        self._config = config
        self._pool = pool
        self._stats = stats
        self._model_name = model_name
        self._version = version
        self._clock = clock
        self._batched = int(config.max_batch_size) > 0
        self._ragged = frozenset(i.name for i in config.input if i.allow_ragged_batch)
        self._label = f"{model_name}:{version}"
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._listening = False
        self._timer: asyncio.TimerHandle | None = None
        self._batches: set[asyncio.Task[None]] = set()
        self._batch_ids = itertools.count(1)
        self._accepting = True
        self._stopping = False
        # Dispatched requests in dispatch order, when responses must leave in that order.
        self._ordered: collections.deque[Pending] | None = collections.deque() if preserve_ordering else None
        stats.configure(config)

    # --- what a subclass provides ---------------------------------------------------------------
    @abc.abstractmethod
    def _admit(self, entry: Pending, now_ns: int) -> None:
        """Queue `entry`; raise ServerError to refuse it (e.g. the queue is full)."""

    @abc.abstractmethod
    def _withdraw(self, entry: Pending) -> bool:
        """Remove a queued `entry` (its caller gave up); False if it was not queued."""

    @abc.abstractmethod
    def _take_all(self) -> list[Pending]:
        """Remove and return every queued entry."""

    @abc.abstractmethod
    def _pump(self, now_ns: int) -> int | None:
        """Dispatch what should go out now (via `_dispatch`); return when to look again, in
        clock ns, or None to wait for the next enqueue or idle instance."""

    @property
    @abc.abstractmethod
    def pending_count(self) -> int:
        """Requests queued and not yet executing (the nv_inference_pending_request_count gauge)."""

    # --- public API ---------------------------------------------------------------------------------
    @property
    def model_name(self) -> str:
        return self._model_name

    @property
    def version(self) -> str:
        return self._version

    @property
    def executing_batches(self) -> int:
        return len(self._batches)

    def start(self) -> None:
        """Start the scheduling task (idempotent). Needs a running event loop."""
        if self._task is not None:
            return
        self._pool.add_idle_listener(self._poke)
        self._listening = True
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"tritonpy-scheduler[{self._label}]")

    def poke(self) -> None:
        """Make the scheduling task look at the queue again now (e.g. after a fake clock moved)."""
        self._wake.set()

    async def enqueue(self, request: InferRequest, batch_size: int) -> InferResponse:
        """Queue `request` (`batch_size` rows) and wait for its response.

        Raises ServerError for a refused or failed request. Cancelling the caller withdraws a
        queued request; an executing one runs to the end and its response is released.
        """
        now = self._clock()
        if not self._accepting:
            self._stats.record_failure(now - request.arrival_ns, OTHER)
            raise ServerError(ErrorCode.UNAVAILABLE, STOPPING_MESSAGE)
        entry = Pending(
            request=request,
            rows=max(1, int(batch_size)) if self._batched else 1,
            shape_key=shape_key(request, batched=self._batched, ragged=self._ragged),
            enqueue_ns=now,
            future=asyncio.get_running_loop().create_future(),
            tenant=tenants.CURRENT.get(),
        )
        try:
            self._admit(entry, now)
        except ServerError:
            self._stats.record_failure(now - request.arrival_ns, REJECTED)
            raise
        if tracing.ACTIVE is not None:  # the only cost of tracing while it is off
            entry.trace = tracing.ACTIVE.sample(self._model_name, self._version)
        self._wake.set()
        try:
            return await entry.future
        except asyncio.CancelledError:
            self._caller_gone(entry)
            raise

    async def stop(self, *, drain: bool, timeout: float) -> None:
        """Stop accepting requests and shut the scheduler down.

        drain=True: queued and executing requests finish (queued ones go out without waiting for
        the batching delay). drain=False: queued requests fail with UNAVAILABLE at once; executing
        ones still finish. Whatever is left after `timeout` seconds fails with UNAVAILABLE (an
        executing batch is cancelled).
        """
        self._accepting = False
        self._stopping = True
        if not drain:
            self._fail_queued()
        self._wake.set()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(0.0, timeout)
        if self._task is not None:
            await asyncio.wait({self._task}, timeout=max(0.0, deadline - loop.time()))
        if self._batches:
            await asyncio.wait(set(self._batches), timeout=max(0.0, deadline - loop.time()))
        # Past the timeout (or never started): fail what is left.
        self._fail_queued()
        leftovers = [t for t in (self._task, *self._batches) if t is not None and not t.done()]
        for task in leftovers:
            task.cancel()
        if leftovers:
            await asyncio.gather(*leftovers, return_exceptions=True)
        if self._listening:
            self._listening = False
            self._pool.remove_idle_listener(self._poke)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    # --- the scheduling task ----------------------------------------------------------------------
    def _poke(self) -> None:
        self._wake.set()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            self._wake.clear()
            try:
                wake_at = self._pump(self._clock())
            except Exception:  # a bug here must not leave requests hanging forever
                log.exception("[%s] scheduling failed; failing queued requests", self._label)
                self._fail_queued(ServerError(ErrorCode.INTERNAL, "scheduler error, see the server log"))
                wake_at = None
            if self._stopping and self.pending_count == 0:
                return
            if wake_at is not None:
                delay_s = max(0, wake_at - self._clock()) / 1e9
                self._timer = loop.call_later(delay_s, self._wake.set)
            try:
                await self._wake.wait()
            finally:
                if self._timer is not None:
                    self._timer.cancel()
                    self._timer = None

    def _acquire_retry_at(self, now_ns: int) -> int:
        log.debug("[%s] pool reported an idle instance but handed none out; looking again soon", self._label)
        return now_ns + _ACQUIRE_RETRY_NS

    def _dispatch(self, entries: list[Pending], instance: InstT) -> None:
        """Send `entries` (already out of the queue) to `instance` as one batch."""
        now = self._clock()
        for entry in entries:
            entry.state = PendingState.EXECUTING
            entry.dispatch_ns = now  # queue time is recorded when it succeeds (as Triton does)
            if self._ordered is not None:
                self._ordered.append(entry)
        run = _BatchRun(entries, instance)
        name = f"tritonpy-batch[{self._label}#{next(self._batch_ids)}]"
        task = asyncio.get_running_loop().create_task(self._execute(run), name=name)
        self._batches.add(task)
        task.add_done_callback(lambda t: self._batch_done(t, run))

    def _release(self, run: _BatchRun[InstT]) -> None:
        if not run.released:
            run.released = True
            self._pool.release(run.instance)

    def _batch_done(self, task: asyncio.Task[None], run: _BatchRun[InstT]) -> None:
        """Safety net: a batch task cancelled before it ever ran (or broken by a bug) still gives
        its instance back and answers its requests."""
        self._batches.discard(task)
        self._release(run)
        leftover = [e for e in run.entries if e.state is PendingState.EXECUTING]
        if leftover:
            if not task.cancelled() and task.exception() is not None:
                log.error("[%s] batch task failed", self._label, exc_info=task.exception())
            self._finish_all(leftover, ServerError(ErrorCode.UNAVAILABLE, STOPPING_MESSAGE), OTHER)

    async def _execute(self, run: _BatchRun[InstT]) -> None:
        entries, instance = run.entries, run.instance
        requests = [e.request for e in entries]
        rows = sum(e.rows for e in entries)
        gather = can_gather(requests, batched=self._batched)
        try:
            outcome = await instance.execute(requests, gather=gather)
        except ServerError as err:
            log.info("[%s] batch of %d failed on %s: %s", self._label, len(entries), instance.name, err.message)
            self._finish_all(entries, err, BACKEND)
            return
        except asyncio.CancelledError:
            self._finish_all(entries, ServerError(ErrorCode.UNAVAILABLE, STOPPING_MESSAGE), OTHER)
            raise
        except Exception as exc:
            log.exception("[%s] instance %s raised while executing", self._label, instance.name)
            self._finish_all(entries, ServerError(ErrorCode.INTERNAL, f"instance {instance.name} failed: {exc}"), OTHER)
            return
        finally:
            self._release(run)

        results = list(outcome.results)
        if len(results) != len(entries):
            for r in results:
                if isinstance(r, InferResponse):
                    r.release()
            msg = f"instance {instance.name} returned {len(results)} responses for {len(entries)} requests"
            log.error("[%s] %s", self._label, msg)
            self._finish_all(entries, ServerError(ErrorCode.INTERNAL, msg), OTHER)
            return
        phases = (int(outcome.compute_input_ns), int(outcome.compute_infer_ns), int(outcome.compute_output_ns))
        self._stats.record_batch(rows, *phases)
        end = self._clock()
        for entry, result in zip(entries, results):
            entry.compute_ns = phases
            entry.compute_end_ns = end
            self._finish(entry, result, BACKEND)

    # --- completion -------------------------------------------------------------------------------
    def _finish_all(self, entries: list[Pending], err: ServerError, reason: str) -> None:
        for entry in entries:
            self._finish(entry, _copy_error(err), reason)

    def _finish(self, entry: Pending, result: InferResponse | ServerError | None, fail_reason: str) -> None:
        """Record the outcome of `entry`; hand it to its caller now or, when ordering is preserved
        and it was dispatched, once every request dispatched before it has been handed over."""
        ordered = entry.state is PendingState.EXECUTING and self._ordered is not None
        entry.result = result
        entry.fail_reason = fail_reason
        entry.state = PendingState.DONE
        if not ordered:
            self._deliver(entry)
            return
        queue = self._ordered
        while queue and queue[0].state is PendingState.DONE:
            self._deliver(queue.popleft())

    def _deliver(self, entry: Pending) -> None:
        result, fut = entry.result, entry.future
        now = self._clock()
        duration = now - entry.request.arrival_ns
        if entry.trace is not None:
            tracing.finish(entry, now)
        if fut.done():  # the caller was cancelled: nobody will read this
            if isinstance(result, InferResponse):
                result.release()
            self._stats.record_failure(duration, CANCELED)
            return
        if isinstance(result, ServerError):
            self._stats.record_failure(duration, entry.fail_reason)
            fut.set_exception(result)
        elif isinstance(result, InferResponse):
            self._stats.record_request(duration, entry.dispatch_ns - entry.enqueue_ns, *entry.compute_ns)
            fut.set_result(result)
        else:
            self._stats.record_failure(duration, OTHER)
            fut.set_exception(ServerError(ErrorCode.INTERNAL, f"unexpected result type {type(result).__name__}"))

    def _reject(self, entry: Pending, err: ServerError, reason: str) -> None:
        """Fail a request that never left the queue."""
        self._finish(entry, _copy_error(err), reason)

    def _fail_queued(self, err: ServerError | None = None) -> None:
        err = err or ServerError(ErrorCode.UNAVAILABLE, STOPPING_MESSAGE)
        for entry in self._take_all():
            self._reject(entry, err, OTHER)

    def _caller_gone(self, entry: Pending) -> None:
        """The task awaiting `entry` was cancelled."""
        if entry.state is PendingState.QUEUED:
            if self._withdraw(entry):
                entry.state = PendingState.DONE
                self._stats.record_failure(self._clock() - entry.request.arrival_ns, CANCELED)
                self._wake.set()
            return
        # Executing: `_deliver` sees the cancelled future and releases the response.
        # Done: the result was set just before the cancellation landed; nobody will read it.
        fut = entry.future
        if entry.state is PendingState.DONE and fut.done() and not fut.cancelled():
            if fut.exception() is None:
                response = fut.result()
                if isinstance(response, InferResponse):
                    response.release()
