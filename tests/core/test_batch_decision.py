"""Table-driven tests of the pure batching decision (queue state x time x free instances)."""
from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tritonpy.core.scheduling.decision import IDLE, BatchParams, Send, Wait, decide

MS = 1_000_000
NOW = 1_000 * MS


@dataclasses.dataclass(frozen=True)
class Item:
    rows: int = 1
    shape_key: str = "A"
    enqueue_ns: int = NOW


def q(*specs) -> list[Item]:
    """q((rows, key, age_ms), ...) -> items in dispatch order; ints mean (1, "A", age_ms)."""
    items = []
    for spec in specs:
        if isinstance(spec, int):
            spec = (1, "A", spec)
        rows, key, age_ms = spec
        items.append(Item(rows, key, NOW - age_ms * MS))
    return items


def P(max_batch_size=8, preferred=(), delay_ms=0) -> BatchParams:
    return BatchParams.make(max_batch_size=max_batch_size, preferred=preferred, max_queue_delay_us=delay_ms * 1000)


CASES = [
    # (id, queue, idle instances, params, expected)
    ("empty queue", q(), 1, P(), IDLE),
    ("empty queue, no instance", q(), 0, P(), IDLE),
    ("no idle instance", q(0, 0, 0), 0, P(), IDLE),
    ("no idle instance, delay long exceeded", q(500, 500), 0, P(delay_ms=1), IDLE),
    ("one request, no delay", q(0), 1, P(), Send(1)),
    ("several idle instances change nothing", q(0, 0, 0), 3, P(), Send(3)),
    ("no delay sends all up to max", q(*[0] * 5), 1, P(), Send(5)),
    ("no delay caps at max_batch_size", q(*[0] * 10), 1, P(), Send(8)),
    ("no delay, largest preferred that fits", q(0, 0, 0), 1, P(preferred=(2, 4)), Send(2)),
    ("no delay, preferred 4 of 5", q(*[0] * 5), 1, P(preferred=(2, 4)), Send(4)),
    ("no delay, nothing preferred: everything", q(0), 1, P(preferred=(2, 4)), Send(1)),
    ("delay not reached: wait for the oldest", q(50, 10, 0), 1, P(delay_ms=100), Wait(NOW + 50 * MS)),
    ("delay reached exactly", q(100, 10), 1, P(delay_ms=100), Send(2)),
    ("delay exceeded", q(150, 10, 0), 1, P(delay_ms=100), Send(3)),
    ("max preferred reached: no wait", q(*[0] * 8), 1, P(delay_ms=100), Send(8)),
    ("more than max: cut at max", q(*[0] * 12), 1, P(delay_ms=100), Send(8)),
    ("preferred found before the delay", q(*[0] * 5), 1, P(preferred=(4,), delay_ms=100), Send(4)),
    ("delay exceeded beats preferred: all scanned", q(150, 0, 0, 0, 0), 1, P(preferred=(4,), delay_ms=100), Send(5)),
    ("below preferred: wait", q(10, 0, 0), 1, P(preferred=(4,), delay_ms=100), Wait(NOW + 90 * MS)),
    ("two preferred sizes, largest wins", q(*[0] * 5), 1, P(preferred=(2, 4), delay_ms=100), Send(4)),
    ("delay exceeded with preferred: up to max", q(*[200] * 10), 1, P(preferred=(2, 4), delay_ms=100), Send(8)),
    ("shape change cuts the batch", q(0, 0, (1, "B", 0)), 1, P(delay_ms=100), Send(2)),
    ("shape change right after the first", q(0, (1, "B", 0), 0), 1, P(delay_ms=100), Send(1)),
    ("shape change, no delay", q(0, 0, (1, "B", 0)), 1, P(), Send(2)),
    ("rows: client batches count as rows", q((3, "A", 0), (3, "A", 0)), 1, P(delay_ms=100), Wait(NOW + 100 * MS)),
    ("rows: next would exceed max", q((3, "A", 0), (3, "A", 0), (3, "A", 0)), 1, P(delay_ms=100), Send(2)),
    ("rows: exact preferred by rows", q((2, "A", 0), (2, "A", 0), (1, "A", 0)), 1, P(preferred=(4,), delay_ms=100), Send(2)),
    ("rows: first larger than max preferred goes alone", q((4, "A", 0), 0), 1, P(preferred=(2,), delay_ms=100), Send(1)),
    ("rows: first request alone exceeds max", q((9, "A", 0), 0), 1, P(delay_ms=100), Send(1)),
    ("rows: overshooting preferred: cut before it", q((2, "A", 0), (2, "A", 0)), 1, P(preferred=(3,), delay_ms=100), Send(1)),
    ("rows: overshoot, delay exceeded: up to max", q((2, "A", 200), (2, "A", 0)), 1, P(preferred=(3,), delay_ms=100), Send(2)),
    # Priorities put a newer request first: the delay is measured on the oldest scanned one.
    ("oldest is not first", q(5, 95), 1, P(delay_ms=100), Wait(NOW + 5 * MS)),
    ("oldest is not first, exceeded", q(5, 100), 1, P(delay_ms=100), Send(2)),
    ("non-batching model: one at a time", q(0, 0, 0), 1, P(max_batch_size=0, delay_ms=100), Send(1)),
    ("max 1: one at a time", q(0, 0), 1, P(max_batch_size=1, delay_ms=100), Send(1)),
    ("non-batching model, no delay", q(0, 0), 2, P(max_batch_size=0), Send(1)),
]


@pytest.mark.parametrize("queue,idle,params,expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_decide_table(queue, idle, params, expected):
    assert decide(queue, NOW, idle, params) == expected


def test_decide_reads_at_most_one_batch():
    """The queue is iterated lazily: a long queue costs one batch's worth of work."""
    seen = 0

    def items():
        nonlocal seen
        for _ in range(10_000):
            seen += 1
            yield Item(1, "A", NOW)

    assert decide(items(), NOW, 1, P(max_batch_size=4)) == Send(4)
    assert seen == 5


def test_decide_waits_only_for_the_idle_instance_not_the_queue():
    """With a delay and no idle instance the batcher idles; as soon as one is idle it sends."""
    queue = q(*[200] * 3)
    params = P(delay_ms=100)
    assert decide(queue, NOW, 0, params) == IDLE
    assert decide(queue, NOW, 1, params) == Send(3)


@pytest.mark.parametrize(
    "max_batch_size,preferred,expected",
    [
        (8, (), (8,)),
        (8, (4, 2, 4), (2, 4)),
        (4, (2, 16), (2,)),
        (4, (16,), (4,)),
        (0, (), (1,)),
        (0, (4,), (1,)),
    ],
)
def test_params_normalisation(max_batch_size, preferred, expected):
    params = BatchParams.make(max_batch_size=max_batch_size, preferred=preferred, max_queue_delay_us=5)
    assert params.preferred == expected
    assert params.max_batch_rows == max(1, max_batch_size)
    assert params.max_queue_delay_ns == 5000


# --- invariants over arbitrary queues -------------------------------------------------------------
item_st = st.builds(
    Item,
    rows=st.integers(1, 5),
    shape_key=st.sampled_from("AB"),
    enqueue_ns=st.integers(NOW - 300 * MS, NOW),
)


@settings(max_examples=400, deadline=None)
@given(
    queue=st.lists(item_st, max_size=20),
    idle=st.integers(0, 2),
    max_batch_size=st.integers(0, 10),
    preferred=st.lists(st.integers(1, 12), max_size=3),
    delay_ms=st.sampled_from([0, 1, 50, 100, 1000]),
)
def test_decide_invariants(queue, idle, max_batch_size, preferred, delay_ms):
    params = P(max_batch_size=max_batch_size, preferred=tuple(preferred), delay_ms=delay_ms)
    decision = decide(queue, NOW, idle, params)
    if idle == 0 or not queue:
        assert decision == IDLE
        return
    assert decision != IDLE  # a non-empty queue with a free instance is never ignored
    if isinstance(decision, Send):
        batch = queue[: decision.count]
        assert 1 <= decision.count <= len(queue)
        assert len({i.shape_key for i in batch}) == 1
        # Over the maximum only when a single request is bigger than the maximum on its own.
        assert sum(i.rows for i in batch) <= params.max_batch_rows or decision.count == 1
    else:
        assert isinstance(decision, Wait)
        oldest = min(i.enqueue_ns for i in queue)
        # Waiting happens only with a delay, before it expires, for the oldest request, with the
        # whole queue one shape-uniform batch below the largest preferred size.
        assert params.max_queue_delay_ns > 0
        assert decision.until_ns == oldest + params.max_queue_delay_ns > NOW
        assert len({i.shape_key for i in queue}) == 1
        assert sum(i.rows for i in queue) < params.preferred[-1]
        assert sum(i.rows for i in queue) not in params.preferred
