"""A fake instance pool with knobs, implementing the real `InstancePool`/`Instance` contract.

For unit tests of the schedulers and of anything built on them (STYLE.md pattern 10): latency,
blocking on a gate, failing chosen requests, dying (whole-batch failure, the instance stays out of
the pool until revived). Every execution is recorded, and every response's release() is counted
so tests can check that shared memory would have been freed.
"""
from __future__ import annotations

import asyncio
import collections
import time
from typing import Callable

from tritonpy.core.errors import ErrorCode, ServerError
from tritonpy.core.scheduling.base import ExecOutcome
from tritonpy.core.types import InferRequest, InferResponse

__all__ = ["FakeInstance", "FakePool", "FakeClock"]


class FakeClock:
    """A monotonic nanosecond clock that moves only when told to."""

    def __init__(self, start_ns: int = 1_000_000_000) -> None:
        self.now_ns = start_ns

    def __call__(self) -> int:
        return self.now_ns

    def advance(self, ns: int) -> None:
        self.now_ns += int(ns)


class FakeInstance:
    """One instance. Knobs: `latency` (seconds), `gate` (an Event each execution waits for),
    `fail_ids` (request ids answered with an error), `die` (next executions raise and the
    instance leaves the pool)."""

    def __init__(self, name: str, *, latency: float = 0.0) -> None:
        self.name = name
        self.latency = latency
        self.gate: asyncio.Event | None = None
        self.fail_ids: set[str] = set()
        self.die = False
        self.dead = False
        self.batches: list[list[str]] = []  # request ids per execution
        self.gathers: list[bool] = []
        self.released: list[str] = []  # ids of responses whose release() ran
        self.running = 0
        self.max_running = 0
        self.ended_sequences: list = []  # correlation ids passed to end_sequences()
        self.requests: list[InferRequest] = []  # every request executed, as the instance got it

    async def execute(self, requests: list[InferRequest], *, gather: bool) -> ExecOutcome:
        self.batches.append([r.id for r in requests])
        self.requests.extend(requests)
        self.gathers.append(gather)
        self.running += 1
        self.max_running = max(self.max_running, self.running)
        start = time.monotonic_ns()
        try:
            if self.gate is not None:
                await self.gate.wait()
            if self.latency:
                await asyncio.sleep(self.latency)
            if self.die:
                self.dead = True
                raise ServerError(ErrorCode.INTERNAL, f"instance {self.name} died")
        finally:
            self.running -= 1
        elapsed = time.monotonic_ns() - start
        results: list = []
        for r in requests:
            if r.id in self.fail_ids:
                results.append(ServerError(ErrorCode.INTERNAL, f"model failed on request {r.id}"))
            else:
                results.append(
                    InferResponse(
                        model_name=r.model_name,
                        model_version=r.model_version or "1",
                        id=r.id,
                        _release=self._release_callback(r.id),
                    )
                )
        # Split the measured wall time so that compute never exceeds it.
        return ExecOutcome(
            results, compute_input_ns=elapsed // 4, compute_infer_ns=elapsed // 2, compute_output_ns=elapsed // 4
        )

    def end_sequences(self, corr_ids: list) -> None:
        """The sequence batcher says these sequences ended without END (their state may go)."""
        self.ended_sequences.extend(corr_ids)

    def _release_callback(self, request_id: str) -> Callable[[], None]:
        return lambda: self.released.append(request_id)

    @property
    def executed_ids(self) -> list[str]:
        return [i for batch in self.batches for i in batch]


class FakePool:
    """Idle instances in a FIFO; a released dead instance stays out until `revive()`."""

    def __init__(self, instances: list[FakeInstance]) -> None:
        self.instances = list(instances)
        self._idle: collections.deque[FakeInstance] = collections.deque(instances)
        self._listeners: list[Callable[[], None]] = []
        self.acquired = 0
        self.releases = 0

    def idle_count(self) -> int:
        return len(self._idle)

    def try_acquire(self) -> FakeInstance | None:
        if not self._idle:
            return None
        self.acquired += 1
        return self._idle.popleft()

    def try_acquire_instance(self, instance: FakeInstance) -> bool:
        """Take this particular idle instance (sequence batching pins sequences to instances)."""
        if instance not in self._idle:
            return False
        self.acquired += 1
        self._idle.remove(instance)
        return True

    def release(self, instance: FakeInstance) -> None:
        self.releases += 1
        if not instance.dead:
            self._idle.append(instance)
            self._notify()

    def revive(self, instance: FakeInstance) -> None:
        """The instance restarted: healthy and idle again."""
        instance.dead = False
        instance.die = False
        if instance not in self._idle:
            self._idle.append(instance)
        self._notify()

    def add(self, instance: FakeInstance) -> None:
        self.instances.append(instance)
        self._idle.append(instance)
        self._notify()

    def add_idle_listener(self, callback: Callable[[], None]) -> None:
        self._listeners.append(callback)

    def remove_idle_listener(self, callback: Callable[[], None]) -> None:
        if callback in self._listeners:
            self._listeners.remove(callback)

    def _notify(self) -> None:
        for callback in list(self._listeners):
            callback()

    @property
    def listener_count(self) -> int:
        return len(self._listeners)
