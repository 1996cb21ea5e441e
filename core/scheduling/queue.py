"""The dynamic batcher's queue: one lane per priority level, each with its own queue policy.

Semantics follow Triton's `PriorityQueue` (core `scheduler_utils.cc`) and `ModelQueuePolicy`:

* Levels are drained strictly: 1 is the highest; with `priority_levels` 0 everything is level 0.
  A request priority of 0, or one above `priority_levels`, means the default level (Triton's
  `InferenceRequest::SetPriority` does this silently rather than rejecting the request).
* `max_queue_size` bounds each level (delayed requests included); a full level rejects at once
  with UNAVAILABLE "Exceeds maximum queue size".
* The timeout is `default_timeout_microseconds`; with `allow_timeout_override` a request's
  non-zero `timeout_us` replaces it only when it is lower. 0 means no timeout, and, as in
  Triton, a request cannot add a timeout to a level whose default is 0.
* An expired request is either rejected (REJECT) or moved behind every unexpired request of its
  level (DELAY), where it no longer times out.
* Beyond Triton, tenants (docs/multitenancy.md): within a level, unexpired requests of several
  tenants are ordered by deficit round robin by tenant weight (`core/scheduling/fairness.py`), FIFO
  within a tenant; delayed requests stay in arrival order. With one tenant or none a level is a plain
  deque, exactly as before. Iteration and `pop` follow the same order, which is what lets the pure
  `decision.decide` scan candidates and the batcher pop exactly the requests it decided on.

This module knows nothing of asyncio; time comes in as `now_ns`.
"""
from __future__ import annotations

import bisect
import collections
import dataclasses
import enum
import heapq
import itertools
from typing import TYPE_CHECKING, Generic, Iterator, Mapping, Protocol, TypeVar

from tritonpy.core.errors import ErrorCode, ServerError
from tritonpy.core.scheduling.fairness import FairQueue
from tritonpy.proto import model_config_pb2 as mc

if TYPE_CHECKING:
    from tritonpy.core.tenancy.tenants import Tenant

__all__ = ["TimeoutAction", "QueuePolicy", "Queued", "PriorityQueue", "QUEUE_FULL_MESSAGE", "TIMEOUT_MESSAGE"]

QUEUE_FULL_MESSAGE = "Exceeds maximum queue size"
TIMEOUT_MESSAGE = "Request timeout expired"


class TimeoutAction(enum.IntEnum):
    REJECT = 0
    DELAY = 1


@dataclasses.dataclass(frozen=True, slots=True)
class QueuePolicy:
    timeout_action: TimeoutAction = TimeoutAction.REJECT
    default_timeout_us: int = 0
    allow_timeout_override: bool = False
    max_queue_size: int = 0

    @classmethod
    def from_proto(cls, msg: mc.ModelQueuePolicy) -> "QueuePolicy":
        """From a `model_config_pb2.ModelQueuePolicy`."""
        return cls(
            timeout_action=TimeoutAction(int(msg.timeout_action)),
            default_timeout_us=int(msg.default_timeout_microseconds),
            allow_timeout_override=bool(msg.allow_timeout_override),
            max_queue_size=int(msg.max_queue_size),
        )

    def timeout_us(self, requested_us: int) -> int:
        """The timeout a request gets (0 = none)."""
        timeout = self.default_timeout_us
        if self.allow_timeout_override and 0 < requested_us < timeout:
            timeout = requested_us
        return timeout


class Queued(Protocol):
    """The bookkeeping fields the queue keeps on each item (see `base.Pending`)."""

    level: int
    deadline_ns: int  # 0 = never times out
    delayed: bool
    in_queue: bool


Q = TypeVar("Q", bound=Queued)
_deque = collections.deque


def _name(tenant: Tenant | None) -> str | None:
    return tenant.name if tenant is not None else None


class _Lane(Generic[Q]):
    """One priority level. `active` is a plain deque while a single tenant (or none) has requests
    queued here; when a second tenant queues, it becomes a `FairQueue` (deficit round robin by
    tenant weight) until it empties again. Both iterate in dispatch order and pop that order."""

    __slots__ = ("policy", "active", "delayed", "tenant")

    def __init__(self, policy: QueuePolicy) -> None:
        self.policy = policy
        self.active: collections.deque[Q] | FairQueue[Q] = collections.deque()
        self.delayed: collections.deque[Q] = collections.deque()
        self.tenant: Tenant | None = None  # the one tenant (or None) of a plain-deque `active`

    def __len__(self) -> int:
        return len(self.active) + len(self.delayed)

    def add(self, item: Q) -> None:
        active = self.active
        tenant = getattr(item, "tenant", None)
        if type(active) is not _deque:  # already fair: the FairQueue finds the tenant's lane
            active.append(item)
        elif not active or _name(tenant) == _name(self.tenant):  # empty, or the same tenant (reloaded)
            self.tenant = tenant
            active.append(item)
        else:  # a second tenant: from now on the level is served by DRR across tenants
            fair: FairQueue[Q] = FairQueue()
            for queued in active:
                fair.append(queued)
            fair.append(item)
            self.active = fair

    def settle(self) -> None:
        """Back to the plain deque once the fair lanes have drained (no DRR state survives)."""
        if not self.active and type(self.active) is not _deque:
            self.active = _deque()


class PriorityQueue(Generic[Q]):
    """Requests waiting for a batch, iterated in dispatch order."""

    def __init__(
        self,
        *,
        priority_levels: int = 0,
        default_level: int = 0,
        default_policy: QueuePolicy = QueuePolicy(),
        level_policies: Mapping[int, QueuePolicy] | None = None,
    ) -> None:
        self._max_level = int(priority_levels)
        self._default_level = int(default_level) if priority_levels else 0
        self._default_policy = default_policy
        self._level_policies = dict(level_policies or {}) if priority_levels else {}
        self._lanes: dict[int, _Lane[Q]] = {}
        self._levels: list[int] = []  # sorted keys of _lanes
        self._size = 0
        # (deadline_ns, tie-break, item); entries whose item has left or been delayed are skipped.
        self._deadlines: list[tuple[int, int, Q]] = []
        self._tie = itertools.count()

    @classmethod
    def from_config(cls, dynamic_batching: mc.ModelDynamicBatching) -> "PriorityQueue[Q]":
        """From a `model_config_pb2.ModelDynamicBatching`."""
        db = dynamic_batching
        return cls(
            priority_levels=int(db.priority_levels),
            default_level=int(db.default_priority_level),
            default_policy=QueuePolicy.from_proto(db.default_queue_policy),
            level_policies={int(k): QueuePolicy.from_proto(v) for k, v in db.priority_queue_policy.items()},
        )

    # --- admission --------------------------------------------------------------------------
    def level_of(self, priority: int) -> int:
        if priority <= 0 or priority > self._max_level:
            return self._default_level
        return int(priority)

    def policy_of(self, level: int) -> QueuePolicy:
        return self._level_policies.get(level, self._default_policy)

    def push(self, item: Q, *, priority: int, timeout_us: int, now_ns: int) -> None:
        """Queue `item`; raises ServerError(UNAVAILABLE) when its level is full."""
        level = self.level_of(priority)
        lane = self._lane(level)
        policy = lane.policy
        if policy.max_queue_size and len(lane) >= policy.max_queue_size:
            raise ServerError(ErrorCode.UNAVAILABLE, QUEUE_FULL_MESSAGE)
        timeout = policy.timeout_us(int(timeout_us))
        item.level = level
        item.deadline_ns = now_ns + timeout * 1000 if timeout else 0
        item.delayed = False
        item.in_queue = True
        active = lane.active
        if type(active) is _deque and getattr(item, "tenant", None) is lane.tenant:
            active.append(item)  # one tenant (or none) at this level: the plain path
        else:
            lane.add(item)
        self._size += 1
        if item.deadline_ns:
            heapq.heappush(self._deadlines, (item.deadline_ns, next(self._tie), item))

    def _lane(self, level: int) -> _Lane[Q]:
        lane = self._lanes.get(level)
        if lane is None:
            lane = self._lanes[level] = _Lane(self.policy_of(level))
            bisect.insort(self._levels, level)
        return lane

    # --- removal ----------------------------------------------------------------------------
    def remove(self, item: Q) -> bool:
        """Take `item` out wherever it is (a cancelled request); False if it is not queued."""
        if not item.in_queue:
            return False
        lane = self._lanes[item.level]
        if item.delayed:
            lane.delayed.remove(item)
        else:
            lane.active.remove(item)
            lane.settle()
        item.in_queue = False
        self._size -= 1
        return True

    def pop(self, count: int) -> list[Q]:
        """Remove and return the first `count` items in dispatch order."""
        out: list[Q] = []
        for level in self._levels:
            lane = self._lanes[level]
            for dq in (lane.active, lane.delayed):
                while dq and len(out) < count:
                    item = dq.popleft()
                    item.in_queue = False
                    out.append(item)
            if type(lane.active) is not _deque:
                lane.settle()
            if len(out) >= count:
                break
        self._size -= len(out)
        return out

    def take_all(self) -> list[Q]:
        """Remove and return everything, in dispatch order."""
        return self.pop(self._size)

    # --- time -------------------------------------------------------------------------------
    def expire(self, now_ns: int) -> list[Q]:
        """Apply the timeout policies at `now_ns`; returns the rejected items (already removed)."""
        rejected: list[Q] = []
        heap = self._deadlines
        while heap and heap[0][0] <= now_ns:
            deadline, _, item = heapq.heappop(heap)
            if not item.in_queue or item.delayed or item.deadline_ns != deadline:
                continue
            lane = self._lanes[item.level]
            if lane.policy.timeout_action == TimeoutAction.DELAY:
                lane.active.remove(item)
                lane.settle()
                lane.delayed.append(item)
                item.delayed = True
            else:
                self.remove(item)
                rejected.append(item)
        return rejected

    def next_deadline(self) -> int | None:
        """When the earliest queued request times out (None if none can)."""
        heap = self._deadlines
        while heap:
            deadline, _, item = heap[0]
            if item.in_queue and not item.delayed and item.deadline_ns == deadline:
                return deadline
            heapq.heappop(heap)
        return None

    # --- views ------------------------------------------------------------------------------
    def __len__(self) -> int:
        return self._size

    def __iter__(self) -> Iterator[Q]:
        """Dispatch order: level by level, unexpired requests first, then delayed ones."""
        for level in self._levels:
            lane = self._lanes[level]
            yield from lane.active
            yield from lane.delayed

