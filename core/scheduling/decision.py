"""The dynamic batcher's decision: a pure function of (queue, now, free instances, parameters).

Kept free of asyncio and of the queue's bookkeeping so that every case can be tested from a table
(STYLE.md pattern 4). The asyncio task in `dynamic.py` only waits on events and timers and calls
`decide` whenever something changed.

The rules follow Triton's `DynamicBatchScheduler::GetDynamicBatch` (core `dynamic_batch_scheduler.cc`):

* Nothing is cut unless an instance is idle, so batches grow while every instance is busy.
* Requests are scanned in dispatch order (priority level, then arrival; DELAY-ed requests last in
  their level). The scan stops at the first request that would push the batch past
  `max_batch_rows`, or whose non-batch shapes differ from the first request's (`shape_key`).
* While scanning, the largest prefix whose row count is a preferred size is remembered; so is the
  prefix just before the rows would first exceed the largest preferred size.
* If such a prefix exists and the oldest scanned request has not waited `max_queue_delay_ns`, send it.
* Otherwise send everything scanned when the scan was cut short, when it reached the largest
  preferred size, when there is no delay configured, or when the delay is exceeded.
* Otherwise wait until the oldest scanned request has waited `max_queue_delay_ns`.
"""
from __future__ import annotations

import dataclasses
from typing import Hashable, Iterable, Protocol, Union

__all__ = ["BatchParams", "QueueItem", "Send", "Wait", "Idle", "IDLE", "Decision", "decide"]


class QueueItem(Protocol):
    """What the decision needs to know about one queued request."""

    @property
    def rows(self) -> int: ...  # batch rows this request adds (its client-side batch size, >= 1)

    @property
    def shape_key(self) -> Hashable: ...  # equal keys may share a batch

    @property
    def enqueue_ns(self) -> int: ...


@dataclasses.dataclass(frozen=True, slots=True)
class BatchParams:
    """The batching knobs of one model, already normalised (see `make`)."""

    max_batch_rows: int
    # Ascending, unique, each in [1, max_batch_rows]; never empty (Triton fills in max_batch_size).
    preferred: tuple[int, ...]
    max_queue_delay_ns: int = 0

    @classmethod
    def make(cls, *, max_batch_size: int, preferred: Iterable[int] = (), max_queue_delay_us: int = 0) -> "BatchParams":
        """Normalise config values the way Triton does.

        A model without batching (max_batch_size 0) still goes through the dynamic batcher, one
        request per execution. With no preferred sizes, max_batch_size is the preferred size
        (Triton's `NormalizeModelConfig`). Sizes above the maximum are config errors that model
        validation reports; here they are dropped so a batch never exceeds the maximum.
        """
        max_rows = max(1, int(max_batch_size))
        sizes = sorted({int(s) for s in preferred if 0 < int(s) <= max_rows})
        if not sizes:
            sizes = [max_rows]
        delay_ns = max(0, int(max_queue_delay_us)) * 1000
        return cls(max_batch_rows=max_rows, preferred=tuple(sizes), max_queue_delay_ns=delay_ns)

    def with_delay_ns(self, delay_ns: int) -> "BatchParams":
        return dataclasses.replace(self, max_queue_delay_ns=delay_ns)


@dataclasses.dataclass(frozen=True, slots=True)
class Send:
    """Cut a batch of the first `count` requests in dispatch order, now."""

    count: int


@dataclasses.dataclass(frozen=True, slots=True)
class Wait:
    """Nothing to send yet; decide again at `until_ns` (or earlier, when something changes)."""

    until_ns: int


@dataclasses.dataclass(frozen=True, slots=True)
class Idle:
    """Nothing to send and no deadline: the queue is empty or no instance is free."""


IDLE = Idle()

Decision = Union[Send, Wait, Idle]


def decide(queue: Iterable[QueueItem], now_ns: int, idle_instances: int, params: BatchParams) -> Decision:
    """What the batcher should do now. `queue` is iterated lazily and at most one batch deep."""
    if idle_instances <= 0:
        return IDLE
    preferred = params.preferred
    max_preferred = preferred[-1]
    max_rows = params.max_batch_rows

    count = 0  # requests scanned into the pending batch
    rows = 0
    best = 0  # requests in the best cut found so far (0 = none)
    key: Hashable = None
    oldest = 0
    cut_short = False
    for item in queue:
        item_rows = item.rows
        if count == 0:
            key = item.shape_key
            oldest = item.enqueue_ns
        else:
            if rows + item_rows > max_preferred and best == 0:
                # The batch would outgrow every preferred size: what we have is the best cut.
                best = count
            if rows + item_rows > max_rows or item.shape_key != key:
                cut_short = True
                break
            if item.enqueue_ns < oldest:
                oldest = item.enqueue_ns
        count += 1
        rows += item_rows
        if rows in preferred:
            best = count

    if count == 0:
        return IDLE
    delay = params.max_queue_delay_ns
    delay_exceeded = delay > 0 and now_ns - oldest >= delay
    if best and not delay_exceeded:
        return Send(best)
    if cut_short or rows >= max_preferred or delay == 0 or delay_exceeded:
        return Send(count)
    return Wait(oldest + delay)
