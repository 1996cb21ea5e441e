"""The load itself: closed-loop workers (concurrency mode) or an open-loop scheduler (request-rate
mode), all in one asyncio event loop, recording one latency per completed request.

Latencies go into a plain list that the measurement swaps out at a window boundary, so the windows
are back to back and a request belongs to the window in which it completed (perf_analyzer's rule).
"""
from __future__ import annotations

import asyncio
import logging
import random
import time
from typing import Awaitable, Callable

from .transports import RequestFailed, Sender

log = logging.getLogger("tritonpy.bench.load")

SenderFactory = Callable[[int], Awaitable[Sender]]


class Recorder:
    """Completed-request latencies (ns) and errors of the current window."""

    __slots__ = ("latencies", "errors", "first_error", "target", "reached", "delayed")

    def __init__(self) -> None:
        self.latencies: list[int] = []
        self.errors = 0
        self.first_error: str | None = None
        self.target = 0  # count windows: set `reached` once this many requests completed
        self.reached = asyncio.Event()
        self.delayed = 0  # request-rate mode: sends that left more than 1 ms after their schedule

    def error(self, message: str) -> None:
        self.errors += 1
        if self.first_error is None:
            self.first_error = message


class LoadGenerator:
    """Keeps `level` requests in flight (concurrency) or sends `level` requests/s (rate)."""

    def __init__(self, mode: str, make_sender: SenderFactory, *, max_outstanding: int,
                 distribution: str = "constant") -> None:
        self.mode = mode
        self._make_sender = make_sender
        self._max_outstanding = max_outstanding
        self._distribution = distribution
        self.recorder = Recorder()
        self._senders: list[Sender] = []
        self._idle: list[Sender] = []
        self._workers: list[asyncio.Task[None]] = []
        self._active: list[bool] = []
        self._scheduler: asyncio.Task[None] | None = None
        self._inflight: set[asyncio.Task[None]] = set()
        self._slot_free = asyncio.Event()

    def swap(self, target: int = 0) -> Recorder:
        """Start a new window now; return the finished one."""
        old, self.recorder = self.recorder, Recorder()
        self.recorder.target = target
        return old

    async def _sender(self) -> Sender:
        sender = await self._make_sender(len(self._senders))
        self._senders.append(sender)
        return sender

    async def _once(self, sender: Sender) -> None:
        start = time.perf_counter_ns()
        try:
            await sender.infer()
        except RequestFailed as exc:
            self.recorder.error(str(exc))
            return
        except (OSError, asyncio.IncompleteReadError) as exc:
            self.recorder.error(f"connection error: {exc!r}")
            await asyncio.sleep(0.01)
            return
        rec = self.recorder
        rec.latencies.append(time.perf_counter_ns() - start)
        if rec.target and len(rec.latencies) >= rec.target:
            rec.reached.set()

    # ---- concurrency mode

    async def _worker(self, slot: int, sender: Sender) -> None:
        active = self._active
        once = self._once
        while active[slot]:
            await once(sender)

    async def set_level(self, level: float) -> None:
        if self.mode == "concurrency":
            await self._set_concurrency(int(level))
        else:
            await self._set_rate(level)

    async def _set_concurrency(self, n: int) -> None:
        while len(self._workers) < n:
            slot = len(self._workers)
            sender = await self._sender()
            self._active.append(True)
            self._workers.append(asyncio.create_task(self._worker(slot, sender), name=f"bench-worker-{slot}"))
        while len(self._workers) > n:
            self._active[len(self._workers) - 1] = False
            await self._workers[-1]  # it reads its flag until it exits: pop only afterwards
            self._workers.pop()
            self._active.pop()

    # ---- request-rate mode

    async def _set_rate(self, rate: float) -> None:
        if self._scheduler is not None:
            self._scheduler.cancel()
            await asyncio.gather(self._scheduler, return_exceptions=True)
        self._scheduler = asyncio.create_task(self._schedule(rate), name="bench-rate-scheduler")

    async def _rate_one(self, sender: Sender) -> None:
        try:
            await self._once(sender)
        finally:
            self._idle.append(sender)
            self._slot_free.set()

    async def _schedule(self, rate: float) -> None:
        """Send on schedule; catch up in bursts when a sleep overshoots (sleeps are ~1 ms coarse)."""
        rng = random.Random(0)
        interval = 1.0 / rate
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while True:
            now = loop.time()
            while next_at <= now:
                if not self._idle:
                    if len(self._senders) < self._max_outstanding:
                        self._idle.append(await self._sender())
                    else:
                        self._slot_free.clear()
                        await self._slot_free.wait()
                        continue
                if loop.time() - next_at > 0.001:
                    self.recorder.delayed += 1
                task = loop.create_task(self._rate_one(self._idle.pop()))
                self._inflight.add(task)
                task.add_done_callback(self._inflight.discard)
                next_at += rng.expovariate(rate) if self._distribution == "poisson" else interval
                now = loop.time()
            await asyncio.sleep(max(0.0, next_at - loop.time()))

    async def stop(self) -> None:
        """Stop sending, let in-flight requests finish, close every connection."""
        if self._scheduler is not None:
            self._scheduler.cancel()
            await asyncio.gather(self._scheduler, return_exceptions=True)
            self._scheduler = None
        for i in range(len(self._active)):
            self._active[i] = False
        await asyncio.gather(*self._workers, *list(self._inflight), return_exceptions=True)
        self._workers.clear()
        self._active.clear()
        for sender in self._senders:
            try:
                await sender.close()
            except Exception as exc:  # noqa: BLE001 - closing is best effort; the run's figures are already taken
                log.debug("closing a sender failed: %r", exc)
        self._senders.clear()
        self._idle.clear()
