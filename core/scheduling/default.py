"""Triton's default scheduler: no batching across requests.

Used when a model configures neither dynamic nor sequence batching. Requests go out in arrival
order (per tenant: several tenants are served fairly, see core/scheduling/fairness.py), each on its
own, to whichever instance is free, so several instances run concurrently.
A request that carries a client-side batch (batch_size > 1) is sent as it is. There are no
priorities, queue policies or timeouts here (those belong to `dynamic_batching`).
"""
from __future__ import annotations

import logging
import time
from typing import Callable

from tritonpy.core.observability.stats import ModelStats
from tritonpy.core.scheduling.base import InstancePool, InstT, Pending, Scheduler
from tritonpy.core.scheduling.fairness import FairQueue
from tritonpy.proto import model_config_pb2 as mc

__all__ = ["DefaultScheduler"]

log = logging.getLogger("tritonpy.core.scheduling.default")


class DefaultScheduler(Scheduler[InstT]):
    """FIFO; one request per execution."""

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
        super().__init__(config=config, pool=pool, stats=stats, model_name=model_name, version=version, clock=clock)
        # Arrival order per tenant, tenants served by deficit round robin (one tenant: plain FIFO).
        self._fifo: FairQueue[Pending] = FairQueue()

    @property
    def pending_count(self) -> int:
        return len(self._fifo)

    def _admit(self, entry: Pending, now_ns: int) -> None:
        entry.in_queue = True
        self._fifo.append(entry)

    def _withdraw(self, entry: Pending) -> bool:
        if not entry.in_queue:
            return False
        self._fifo.remove(entry)
        entry.in_queue = False
        return True

    def _take_all(self) -> list[Pending]:
        entries = list(self._fifo)
        self._fifo.clear()
        for entry in entries:
            entry.in_queue = False
        return entries

    def _pump(self, now_ns: int) -> int | None:
        fifo = self._fifo
        while fifo:
            instance = self._pool.try_acquire()
            if instance is None:
                return self._acquire_retry_at(now_ns) if self._pool.idle_count() > 0 else None
            entry = fifo.popleft()
            entry.in_queue = False
            self._dispatch([entry], instance)
        return None
