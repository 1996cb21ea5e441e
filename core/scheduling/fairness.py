"""Deficit round robin by tenant: the queue of a model shared by several tenants.

`FairQueue` is a drop-in for a `collections.deque` (append, popleft, remove, clear, len, and
iteration in dispatch order). The default scheduler keeps one; the dynamic batcher's priority queue
(core/scheduling/queue.py) switches a priority level to one when a second tenant queues there. Each
tenant gets its own FIFO lane; `popleft` serves the lanes in deficit round robin (Shreedhar &
Varghese): a lane earns `weight` credits per round and a request costs one credit. A tenant flooding
the model therefore only lengthens its own lane: a quiet tenant's request waits for at most the work
already executing plus one round.

Why DRR rather than plain round robin: weights need not be integers, and a lane that sat empty
does not bank credit (its deficit resets), so a tenant cannot save up a burst by idling.

Requests without a tenant (a server without a tenants file, or internal calls) all share one lane,
and with one lane `popleft` takes the shortcut of a plain deque: the single-tenant path costs one
extra length check.
"""
from __future__ import annotations

import collections
from typing import Generic, Iterator, TypeVar

__all__ = ["FairQueue", "tenant_key"]

T = TypeVar("T")


def tenant_key(entry: object) -> tuple[str | None, float]:
    """(lane key, weight) of a queued entry: its `tenant` attribute (a core.tenancy.tenants.Tenant or None)."""
    tenant = getattr(entry, "tenant", None)
    if tenant is None:
        return None, 1.0
    return tenant.name, float(tenant.weight)


class FairQueue(Generic[T]):
    """Per-tenant FIFO lanes served by deficit round robin."""

    __slots__ = ("_lanes", "_weights", "_deficit", "_active", "_credited", "_size")

    def __init__(self) -> None:
        self._lanes: dict[str | None, collections.deque[T]] = {}
        self._weights: dict[str | None, float] = {}
        self._deficit: dict[str | None, float] = {}
        self._active: collections.deque[str | None] = collections.deque()  # round-robin order
        self._credited = False  # whether the head lane has had its quantum this visit
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def __bool__(self) -> bool:
        return self._size > 0

    def __iter__(self) -> Iterator[T]:
        """Dispatch order: exactly what successive `popleft` calls would return, without popping.

        The dynamic batcher scans this order to decide a batch and then pops the same prefix, so
        the simulation below must mirror `popleft` step for step. Lazy: a scan one batch deep
        costs one batch of steps, not the whole queue.
        """
        if len(self._active) <= 1:
            for key in self._active:
                yield from self._lanes[key]
            return
        active = collections.deque(self._active)
        deficit = {key: self._deficit[key] for key in active}
        left = {key: len(self._lanes[key]) for key in active}
        lanes = {key: iter(self._lanes[key]) for key in active}
        weights = self._weights
        credited = self._credited
        while active:
            key = active[0]
            if not credited:
                deficit[key] += weights[key]
                credited = True
            if deficit[key] >= 1.0:
                deficit[key] -= 1.0
                yield next(lanes[key])
                left[key] -= 1
                if not left[key]:
                    active.popleft()
                    credited = False
                continue
            active.rotate(-1)
            credited = False

    def lanes(self) -> dict[str | None, int]:
        """Queued requests per tenant (for statistics and tests)."""
        return {key: len(lane) for key, lane in self._lanes.items()}

    def append(self, entry: T) -> None:
        key, weight = tenant_key(entry)
        lane = self._lanes.get(key)
        if lane is None:
            lane = self._lanes[key] = collections.deque()
            self._deficit[key] = 0.0
            self._active.append(key)
        self._weights[key] = weight  # a reload may have changed it
        lane.append(entry)
        self._size += 1

    def _take(self, key: str | None) -> T:
        """The oldest entry of one tenant's lane; the lane leaves the rotation when it empties."""
        lane = self._lanes[key]
        entry = lane.popleft()
        self._size -= 1
        if not lane:
            self._drop(key)
        return entry

    def popleft(self) -> T:
        if not self._size:
            raise IndexError("pop from an empty FairQueue")
        if len(self._active) == 1:  # one tenant (or none): plain FIFO
            return self._take(self._active[0])
        active = self._active
        while True:
            key = active[0]
            if not self._credited:
                self._deficit[key] += self._weights[key]
                self._credited = True
            if self._deficit[key] >= 1.0:
                self._deficit[key] -= 1.0
                return self._take(key)
            active.rotate(-1)
            self._credited = False

    def remove(self, entry: T) -> None:
        key, _ = tenant_key(entry)
        lane = self._lanes.get(key)
        if lane is None:
            raise ValueError("entry is not queued")
        lane.remove(entry)
        self._size -= 1
        if not lane:
            self._drop(key)

    def clear(self) -> None:
        self._lanes.clear()
        self._weights.clear()
        self._deficit.clear()
        self._active.clear()
        self._credited = False
        self._size = 0

    def _drop(self, key: str | None) -> None:
        """An emptied lane leaves the round and forfeits its credit."""
        if self._active and self._active[0] == key:
            self._active.popleft()
            self._credited = False
        else:
            self._active.remove(key)
        del self._lanes[key]
        del self._deficit[key]
        self._weights.pop(key, None)
