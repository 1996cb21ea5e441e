"""Triton's dynamic batcher for one model version.

Requests wait in a `PriorityQueue` (priority levels, per-level queue policies); whenever an
instance is idle the pure `decide` function says whether to cut a batch now or how long to wait.
This task only waits: on a new request, an instance turning idle, the batching delay of the
oldest request, or the next queue timeout.

When several tenants share the model, the queue iterates each priority level in deficit round
robin order by tenant (core/scheduling/fairness.py), so `decide` scans, and `pop` takes, a fair batch; the
batching rules themselves (preferred sizes, delay, equal shapes) are unchanged.
"""
from __future__ import annotations

import logging
import time
from typing import Callable

from tritonpy.core.errors import ErrorCode, ServerError, invalid
from tritonpy.core.observability.stats import ModelStats
from tritonpy.core.scheduling.base import REJECTED, InstancePool, InstT, Pending, Scheduler
from tritonpy.core.scheduling.decision import BatchParams, Send, Wait, decide
from tritonpy.core.scheduling.queue import TIMEOUT_MESSAGE, PriorityQueue
from tritonpy.proto import model_config_pb2 as mc

__all__ = ["DynamicBatcher", "batch_params"]

log = logging.getLogger("tritonpy.core.scheduling.dynamic")


def batch_params(config: mc.ModelConfig) -> BatchParams:
    """The batching knobs of a `model_config_pb2.ModelConfig` with `dynamic_batching`."""
    db = config.dynamic_batching
    return BatchParams.make(
        max_batch_size=int(config.max_batch_size),
        preferred=db.preferred_batch_size,
        max_queue_delay_us=int(db.max_queue_delay_microseconds),
    )


def _check_priorities(config: mc.ModelConfig, model_name: str) -> None:
    """Reject the priority settings Triton's config validation rejects."""
    db = config.dynamic_batching
    levels = int(db.priority_levels)
    if levels == 0:
        return
    if not 1 <= int(db.default_priority_level) <= levels:
        raise invalid(f"default priority level must be in range [1, {levels}] for {model_name}")
    for level in db.priority_queue_policy:
        if not 1 <= int(level) <= levels:
            raise invalid(f"priority queue policy must have priority level in range [1, {levels}] for {model_name}")


class DynamicBatcher(Scheduler[InstT]):
    """Gathers independent requests into batches (`dynamic_batching { ... }`)."""

    def __init__(
        self,
        *,
        config: mc.ModelConfig,
        pool: InstancePool[InstT],
        stats: ModelStats,
        model_name: str,
        version: str,
        clock: Callable[[], int] = time.monotonic_ns,
    ) -> None:
        _check_priorities(config, model_name)
        db = config.dynamic_batching
        super().__init__(
            config=config, pool=pool, stats=stats, model_name=model_name, version=version, clock=clock,
            preserve_ordering=bool(db.preserve_ordering),
        )
        self._params = batch_params(config)
        self._queue: PriorityQueue[Pending] = PriorityQueue.from_config(db)
        self._timeout_error = ServerError(ErrorCode.UNAVAILABLE, TIMEOUT_MESSAGE)

    @property
    def params(self) -> BatchParams:
        return self._params

    @property
    def pending_count(self) -> int:
        return len(self._queue)

    def _admit(self, entry: Pending, now_ns: int) -> None:
        request = entry.request
        self._queue.push(entry, priority=int(request.priority), timeout_us=int(request.timeout_us), now_ns=now_ns)

    def _withdraw(self, entry: Pending) -> bool:
        return self._queue.remove(entry)

    def _take_all(self) -> list[Pending]:
        return self._queue.take_all()

    def _pump(self, now_ns: int) -> int | None:
        queue = self._queue
        for entry in queue.expire(now_ns):
            self._reject(entry, self._timeout_error, REJECTED)
        # When stopping, a drain should not sit out the batching delay.
        params = self._params.with_delay_ns(0) if self._stopping else self._params
        wake_at: int | None = None
        while True:
            decision = decide(queue, now_ns, self._pool.idle_count(), params)
            if isinstance(decision, Send):
                instance = self._pool.try_acquire()
                if instance is None:
                    wake_at = self._acquire_retry_at(now_ns)
                    break
                self._dispatch(queue.pop(decision.count), instance)
                continue
            if isinstance(decision, Wait):
                wake_at = decision.until_ns
            break
        deadline = queue.next_deadline()
        if deadline is not None and (wake_at is None or deadline < wake_at):
            wake_at = deadline
        return wake_at
