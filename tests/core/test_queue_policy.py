"""Unit tests of the priority queue and its per-level queue policies (no asyncio)."""
from __future__ import annotations

import dataclasses

import pytest

from tritonpy.core.errors import ErrorCode, ServerError
from tritonpy.core.scheduling.queue import PriorityQueue, QueuePolicy, TimeoutAction
from tritonpy.proto import model_config_pb2 as mc

US = 1_000
T0 = 1_000_000_000


@dataclasses.dataclass(eq=False)
class It:
    name: str
    level: int = 0
    deadline_ns: int = 0
    delayed: bool = False
    in_queue: bool = False

    def __repr__(self) -> str:
        return self.name


def names(queue: PriorityQueue) -> list[str]:
    return [i.name for i in queue]


def push(queue: PriorityQueue, name: str, *, priority: int = 0, timeout_us: int = 0, now: int = T0) -> It:
    item = It(name)
    queue.push(item, priority=priority, timeout_us=timeout_us, now_ns=now)
    return item


# --- QueuePolicy -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "default_us,override,requested,expected",
    [
        (0, False, 0, 0),
        (0, False, 500, 0),
        (0, True, 500, 0),  # Triton: a request cannot add a timeout to a level that has none
        (1000, False, 500, 1000),
        (1000, True, 500, 500),
        (1000, True, 2000, 1000),  # only lowering is allowed
        (1000, True, 0, 1000),  # 0 = not set
        (1000, True, 1000, 1000),
    ],
)
def test_timeout_override(default_us, override, requested, expected):
    policy = QueuePolicy(default_timeout_us=default_us, allow_timeout_override=override)
    assert policy.timeout_us(requested) == expected


def test_policy_from_proto():
    msg = mc.ModelQueuePolicy(
        timeout_action=mc.ModelQueuePolicy.DELAY,
        default_timeout_microseconds=1234,
        allow_timeout_override=True,
        max_queue_size=7,
    )
    assert QueuePolicy.from_proto(msg) == QueuePolicy(TimeoutAction.DELAY, 1234, True, 7)
    assert QueuePolicy.from_proto(mc.ModelQueuePolicy()) == QueuePolicy()


# --- levels ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "levels,default,priority,expected",
    [
        (0, 0, 0, 0),
        (0, 0, 3, 0),
        (3, 2, 0, 2),
        (3, 2, 1, 1),
        (3, 2, 3, 3),
        (3, 2, 4, 2),  # out of range -> default level (Triton's SetPriority), not an error
        (3, 2, 10**12, 2),
    ],
)
def test_level_of(levels, default, priority, expected):
    assert PriorityQueue(priority_levels=levels, default_level=default).level_of(priority) == expected


def test_levels_drain_strictly_fifo_within_a_level():
    queue = PriorityQueue(priority_levels=3, default_level=2)
    for name, prio in [("a2", 2), ("b3", 3), ("c1", 1), ("d0", 0), ("e1", 1), ("f9", 9)]:
        push(queue, name, priority=prio)
    assert names(queue) == ["c1", "e1", "a2", "d0", "f9", "b3"]
    assert len(queue) == 6
    assert [i.name for i in queue.pop(3)] == ["c1", "e1", "a2"]
    assert names(queue) == ["d0", "f9", "b3"]
    assert [i.name for i in queue.take_all()] == ["d0", "f9", "b3"]
    assert len(queue) == 0 and list(queue) == []


def test_pop_more_than_queued():
    queue = PriorityQueue()
    a, b = push(queue, "a"), push(queue, "b")
    assert queue.pop(5) == [a, b]
    assert not a.in_queue and not b.in_queue and len(queue) == 0


# --- max_queue_size --------------------------------------------------------------------------------------
def test_queue_full_is_per_level():
    queue = PriorityQueue(
        priority_levels=2,
        default_level=2,
        default_policy=QueuePolicy(max_queue_size=5),
        level_policies={1: QueuePolicy(max_queue_size=2)},
    )
    push(queue, "a", priority=1)
    push(queue, "b", priority=1)
    with pytest.raises(ServerError) as info:
        push(queue, "c", priority=1)
    assert info.value.code == ErrorCode.UNAVAILABLE
    assert info.value.message == "Exceeds maximum queue size"
    assert info.value.http_status == 503
    push(queue, "d", priority=2)  # level 2 has room
    assert names(queue) == ["a", "b", "d"]
    queue.pop(1)
    push(queue, "e", priority=1)  # room again
    assert names(queue) == ["b", "e", "d"]


def test_unbounded_by_default():
    queue = PriorityQueue()
    for i in range(1000):
        push(queue, str(i))
    assert len(queue) == 1000


def test_delayed_requests_count_toward_queue_size():
    queue = PriorityQueue(default_policy=QueuePolicy(TimeoutAction.DELAY, 10, False, 2))
    push(queue, "a")
    push(queue, "b")
    queue.expire(T0 + 20 * US)
    with pytest.raises(ServerError):
        push(queue, "c")


# --- timeouts ---------------------------------------------------------------------------------------------
def test_reject_expired_requests():
    queue = PriorityQueue(default_policy=QueuePolicy(default_timeout_us=100, allow_timeout_override=True))
    a = push(queue, "a")  # deadline T0+100us
    b = push(queue, "b", timeout_us=50)  # T0+50us
    c = push(queue, "c", now=T0 + 30 * US)  # T0+130us
    assert queue.next_deadline() == T0 + 50 * US
    assert queue.expire(T0 + 49 * US) == []
    assert queue.expire(T0 + 50 * US) == [b]
    assert not b.in_queue
    assert queue.next_deadline() == T0 + 100 * US
    assert queue.expire(T0 + 120 * US) == [a]
    assert names(queue) == ["c"]
    assert queue.expire(T0 + 10_000 * US) == [c]
    assert queue.next_deadline() is None and len(queue) == 0


def test_no_timeout_never_expires():
    queue = PriorityQueue()
    push(queue, "a", timeout_us=5)
    assert queue.next_deadline() is None
    assert queue.expire(T0 + 10**15) == []
    assert names(queue) == ["a"]


def test_delay_moves_behind_unexpired_requests_of_its_level_only():
    queue = PriorityQueue(
        priority_levels=2,
        default_level=1,
        default_policy=QueuePolicy(timeout_action=TimeoutAction.DELAY, default_timeout_us=100),
    )
    push(queue, "x1", priority=1)
    push(queue, "y1", priority=1, now=T0 + 500 * US)
    push(queue, "z2", priority=2)
    assert names(queue) == ["x1", "y1", "z2"]
    assert queue.expire(T0 + 150 * US) == []  # DELAY never rejects
    # x1 and z2 timed out: each goes behind the unexpired requests of its own level.
    assert names(queue) == ["y1", "x1", "z2"]
    assert len(queue) == 3
    # A delayed request no longer times out.
    assert queue.next_deadline() == T0 + 600 * US
    queue.expire(T0 + 700 * US)
    assert names(queue) == ["x1", "y1", "z2"]  # y1 joined the delayed lane after x1
    assert queue.next_deadline() is None
    push(queue, "w1", priority=1, now=T0 + 700 * US)
    assert names(queue) == ["w1", "x1", "y1", "z2"]


def test_per_level_timeout_action():
    queue = PriorityQueue(
        priority_levels=2,
        default_level=2,
        default_policy=QueuePolicy(TimeoutAction.REJECT, 100),
        level_policies={1: QueuePolicy(TimeoutAction.DELAY, 100)},
    )
    a = push(queue, "a1", priority=1)
    b = push(queue, "b2", priority=2)
    assert queue.expire(T0 + 200 * US) == [b]
    assert a.delayed and names(queue) == ["a1"]


# --- removal ----------------------------------------------------------------------------------------------
def test_remove_active_and_delayed():
    queue = PriorityQueue(default_policy=QueuePolicy(TimeoutAction.DELAY, 100))
    a = push(queue, "a")
    b = push(queue, "b", now=T0 + 1000 * US)
    queue.expire(T0 + 200 * US)
    assert a.delayed
    assert queue.remove(a) is True
    assert queue.remove(a) is False
    assert queue.remove(b) is True
    assert len(queue) == 0 and list(queue) == []
    assert queue.next_deadline() is None  # b's heap entry is skipped
    assert queue.expire(T0 + 10**12) == []


def test_removed_request_does_not_expire():
    queue = PriorityQueue(default_policy=QueuePolicy(default_timeout_us=100))
    a = push(queue, "a")
    queue.remove(a)
    assert queue.expire(T0 + 1000 * US) == []


# --- from the model config ----------------------------------------------------------------------------------
def test_from_config():
    db = mc.ModelDynamicBatching(
        priority_levels=3,
        default_priority_level=3,
        default_queue_policy=mc.ModelQueuePolicy(max_queue_size=1),
        priority_queue_policy={1: mc.ModelQueuePolicy(default_timeout_microseconds=100)},
    )
    queue = PriorityQueue.from_config(db)
    assert queue.policy_of(1) == QueuePolicy(default_timeout_us=100)
    assert queue.policy_of(2) == QueuePolicy(max_queue_size=1)
    push(queue, "a")  # default level 3
    with pytest.raises(ServerError):
        push(queue, "b", priority=7)  # -> level 3 as well, full
    push(queue, "c", priority=2)
    t = push(queue, "t", priority=1)
    assert t.deadline_ns == T0 + 100 * US
    assert names(queue) == ["t", "c", "a"]


def test_from_config_without_levels_ignores_priorities():
    queue = PriorityQueue.from_config(mc.ModelDynamicBatching())
    push(queue, "a", priority=5)
    push(queue, "b", priority=1)
    assert names(queue) == ["a", "b"]
