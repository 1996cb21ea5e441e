"""The dynamic batcher under asyncio, against a fake instance pool (no workers, no processes).

Timing-sensitive behaviour (the batching delay, queue timeouts) runs on a fake clock: the test
moves time and pokes the scheduler, so no assertion depends on how fast the machine is.
"""
from __future__ import annotations

import asyncio

import pytest
from support.scheduler_helpers import MS, Harness, config, gated, harnesses, req, settle, until

from tritonpy.core.errors import ErrorCode, ServerError
from tritonpy.core.scheduling import make_scheduler
from support.fake_instances import FakeClock, FakeInstance, FakePool
from tritonpy.core.observability.stats import ModelStats
from tritonpy.core.types import InferResponse
from tritonpy.proto import model_config_pb2 as mc

# --- batching ----------------------------------------------------------------------------------------------
async def test_batches_grow_with_load(harnesses):
    inst = FakeInstance("i0", latency=0.02)
    h = harnesses(config(max_batch_size=8), [inst])
    for i in range(16):
        h.submit(f"r{i}")
    results = await h.results()
    assert all(isinstance(r, InferResponse) for r in results.values())
    assert sorted(inst.executed_ids) == sorted(f"r{i}" for i in range(16))
    sizes = [len(b) for b in inst.batches]
    assert max(sizes) > 1 and max(sizes) <= 8
    assert len(inst.batches) < 16
    # FIFO within the level, across batches.
    assert inst.executed_ids == [f"r{i}" for i in range(16)]
    assert h.stats.execution_count == len(inst.batches)
    assert h.stats.inference_count == 16


async def test_first_request_goes_alone_then_preferred_sizes(harnesses):
    inst = gated()
    h = harnesses(config(max_batch_size=8, preferred_batch_size=[4]), [inst])
    h.submit("r0")
    await until(lambda: inst.running == 1)  # the idle instance took r0 at once
    for i in range(1, 11):
        h.submit(f"r{i}")
    await settle()
    assert h.sched.pending_count == 10
    inst.gate.set()
    await h.results()
    assert [len(b) for b in inst.batches] == [1, 4, 4, 2]
    assert inst.executed_ids == [f"r{i}" for i in range(11)]
    assert h.sched.pending_count == 0


async def test_max_batch_counts_rows_not_requests(harnesses):
    inst = gated()
    h = harnesses(config(max_batch_size=8), [inst])
    h.submit("first")
    await until(lambda: inst.running == 1)
    for i, rows in enumerate([3, 3, 3, 2]):
        h.submit(f"r{i}", rows=rows)
    await settle()
    inst.gate.set()
    await h.results()
    assert inst.batches[1:] == [["r0", "r1"], ["r2", "r3"]]
    assert sorted(h.stats.batches) == [1, 5, 6]  # batch statistics are keyed by rows


async def test_delay_waits_for_the_oldest_request(harnesses):
    clock = FakeClock()
    inst = FakeInstance("i0")
    h = harnesses(config(max_batch_size=8, max_queue_delay_microseconds=100_000), [inst], clock=clock)
    h.submit("r0")
    await settle()
    clock.advance(60 * MS)
    h.submit("r1")
    h.sched.poke()
    await settle()
    assert inst.batches == [] and h.sched.pending_count == 2
    clock.advance(39 * MS)  # r0 has waited 99 ms
    h.sched.poke()
    await settle()
    assert inst.batches == []
    clock.advance(1 * MS)  # 100 ms: the delay of the oldest is over
    h.sched.poke()
    await h.results()
    assert inst.batches == [["r0", "r1"]]


async def test_delay_is_cut_short_by_a_preferred_size(harnesses):
    clock = FakeClock()
    inst = FakeInstance("i0")
    cfg = config(max_batch_size=8, preferred_batch_size=[2], max_queue_delay_microseconds=10_000_000)
    h = harnesses(cfg, [inst], clock=clock)
    h.submit("r0")
    await settle()
    assert inst.batches == []
    h.submit("r1")
    await h.results()
    assert inst.batches == [["r0", "r1"]]


async def test_delay_with_the_real_clock(harnesses):
    """The timer really fires: a lone request goes out after the delay without any poke."""
    inst = FakeInstance("i0")
    h = harnesses(config(max_batch_size=8, max_queue_delay_microseconds=20_000), [inst])
    h.submit("r0")
    h.submit("r1")
    results = await h.results()
    assert all(isinstance(r, InferResponse) for r in results.values())
    assert inst.batches == [["r0", "r1"]]


async def test_different_shapes_are_not_batched_together(harnesses):
    inst = gated()
    h = harnesses(config(max_batch_size=8), [inst])
    h.submit("first")
    await until(lambda: inst.running == 1)
    h.submit("a0", width=4)
    h.submit("a1", width=4)
    h.submit("b0", width=5)
    h.submit("a2", width=4)
    await settle()
    inst.gate.set()
    await h.results()
    assert inst.batches[1:] == [["a0", "a1"], ["b0"], ["a2"]]
    assert inst.gathers == [True, True, True, True]


async def test_ragged_inputs_batch_together_without_gather(harnesses):
    inst = gated()
    h = harnesses(config(max_batch_size=8, ragged=True), [inst])
    h.submit("first")
    await until(lambda: inst.running == 1)
    h.submit("a", width=4)
    h.submit("b", width=7)
    await settle()
    inst.gate.set()
    await h.results()
    assert inst.batches[1:] == [["a", "b"]]
    assert inst.gathers[1:] == [False]


async def test_bytes_inputs_are_not_gathered(harnesses):
    inst = FakeInstance("i0")
    h = harnesses(config(max_batch_size=8), [inst])
    h.submit("s", dtype="BYTES")
    await h.results()
    assert inst.gathers == [False]


async def test_multiple_instances_run_concurrently(harnesses):
    instances = [gated(f"i{n}") for n in range(3)]
    h = harnesses(config(max_batch_size=8), instances)
    for i in range(3):
        h.submit(f"r{i}")
        await until(lambda i=i: sum(x.running for x in instances) == i + 1)
    assert all(x.running == 1 for x in instances)
    for x in instances:
        x.gate.set()
    await h.results()


async def test_non_batching_model_sends_one_at_a_time(harnesses):
    inst = gated()
    h = harnesses(config(max_batch_size=0), [inst])
    for i in range(4):
        h.submit(f"r{i}")
    await settle()
    inst.gate.set()
    await h.results()
    assert inst.batches == [["r0"], ["r1"], ["r2"], ["r3"]]
    assert inst.gathers == [False] * 4


# --- ordering and priorities -----------------------------------------------------------------------------
async def _two_instances_out_of_order(harnesses, preserve: bool) -> Harness:
    slow, fast = gated("slow"), FakeInstance("fast")
    h = harnesses(config(max_batch_size=1, preserve_ordering=preserve), [slow, fast])
    h.submit("r0")  # -> slow, blocked
    await until(lambda: slow.running == 1)
    h.submit("r1")  # -> fast, finishes at once
    await until(lambda: fast.batches == [["r1"]])
    await settle()
    slow.gate.set()
    await h.results()
    return h


async def test_without_preserve_ordering_fast_responses_overtake(harnesses):
    h = await _two_instances_out_of_order(harnesses, preserve=False)
    assert h.done_order == ["r1", "r0"]


async def test_preserve_ordering_returns_responses_in_order(harnesses):
    h = await _two_instances_out_of_order(harnesses, preserve=True)
    assert h.done_order == ["r0", "r1"]


async def test_preserve_ordering_with_failures_and_cancellation(harnesses):
    slow, fast = gated("slow"), FakeInstance("fast")
    fast.fail_ids = {"r1"}
    h = harnesses(config(max_batch_size=1, preserve_ordering=True), [slow, fast])
    h.submit("r0")
    await until(lambda: slow.running == 1)
    h.submit("r1")
    h.submit("r2")
    await until(lambda: fast.executed_ids == ["r1", "r2"])
    await settle()
    assert h.done_order == []  # both wait behind r0
    h.tasks["r0"].cancel()
    await settle()
    assert h.done_order == ["r0"]  # the cancelled caller is gone, the others still wait
    slow.gate.set()
    results = await h.results()
    assert h.done_order == ["r0", "r1", "r2"]
    assert isinstance(results["r1"], ServerError) and isinstance(results["r2"], InferResponse)
    assert slow.released == ["r0"]


async def test_priority_levels_drain_strictly(harnesses):
    inst = gated()
    h = harnesses(config(max_batch_size=1, priority_levels=3, default_priority_level=2), [inst])
    h.submit("busy")
    await until(lambda: inst.running == 1)
    h.submit("low", priority=3)
    h.submit("mid_default", priority=0)
    h.submit("high", priority=1)
    h.submit("out_of_range", priority=99)  # Triton maps it to the default level
    h.submit("high2", priority=1)
    await settle()
    inst.gate.set()
    results = await h.results()
    assert all(isinstance(r, InferResponse) for r in results.values())
    assert inst.executed_ids == ["busy", "high", "high2", "mid_default", "out_of_range", "low"]


async def test_priorities_mix_in_one_batch_in_priority_order(harnesses):
    inst = gated()
    h = harnesses(config(max_batch_size=8, priority_levels=2, default_priority_level=2), [inst])
    h.submit("busy")
    await until(lambda: inst.running == 1)
    h.submit("low")
    h.submit("high", priority=1)
    await settle()
    inst.gate.set()
    await h.results()
    assert inst.batches == [["busy"], ["high", "low"]]


# --- queue policies --------------------------------------------------------------------------------------
async def test_timeout_rejects_queued_request(harnesses):
    clock = FakeClock()
    inst = gated()
    cfg = config(max_batch_size=8, default_queue_policy=mc.ModelQueuePolicy(default_timeout_microseconds=1000))
    h = harnesses(cfg, [inst], clock=clock)
    h.submit("busy")
    await until(lambda: inst.running == 1)
    h.submit("late")
    await settle()
    clock.advance(2 * MS)
    h.sched.poke()
    await until(lambda: h.tasks["late"].done())
    err = h.tasks["late"].exception()
    assert isinstance(err, ServerError)
    assert err.code == ErrorCode.UNAVAILABLE and err.message == "Request timeout expired"
    assert h.stats.failures_by_reason == {"REJECTED": 1}
    assert h.sched.pending_count == 0
    inst.gate.set()
    await h.results()
    assert inst.executed_ids == ["busy"]


async def test_timeout_override_only_lowers(harnesses):
    clock = FakeClock()
    inst = gated()
    policy = mc.ModelQueuePolicy(default_timeout_microseconds=10_000, allow_timeout_override=True)
    h = harnesses(config(max_batch_size=8, default_queue_policy=policy), [inst], clock=clock)
    h.submit("busy")
    await until(lambda: inst.running == 1)
    h.submit("short", timeout_us=1_000)
    h.submit("long", timeout_us=50_000)  # cannot raise the default
    h.submit("default")
    await settle()
    clock.advance(2 * MS)
    h.sched.poke()
    await until(lambda: h.tasks["short"].done())
    assert not h.tasks["long"].done() and not h.tasks["default"].done()
    clock.advance(9 * MS)
    h.sched.poke()
    await until(lambda: h.tasks["long"].done() and h.tasks["default"].done())
    for rid in ("short", "long", "default"):
        assert h.tasks[rid].exception().message == "Request timeout expired"
    inst.gate.set()
    await h.results()


async def test_timeout_delay_moves_request_to_the_back(harnesses):
    clock = FakeClock()
    inst = gated()
    policy = mc.ModelQueuePolicy(
        timeout_action=mc.ModelQueuePolicy.DELAY, default_timeout_microseconds=10_000, allow_timeout_override=True
    )
    h = harnesses(config(max_batch_size=1, default_queue_policy=policy), [inst], clock=clock)
    h.submit("busy")
    await until(lambda: inst.running == 1)
    h.submit("expires", timeout_us=1_000)
    h.submit("a")
    h.submit("b")
    await settle()
    clock.advance(2 * MS)
    h.sched.poke()
    await settle()
    assert not h.tasks["expires"].done()  # DELAY keeps it
    inst.gate.set()
    results = await h.results()
    assert all(isinstance(r, InferResponse) for r in results.values())
    assert inst.executed_ids == ["busy", "a", "b", "expires"]


async def test_queue_full_rejects_immediately(harnesses):
    inst = gated()
    h = harnesses(config(max_batch_size=8, default_queue_policy=mc.ModelQueuePolicy(max_queue_size=2)), [inst])
    h.submit("busy")
    await until(lambda: inst.running == 1)
    h.submit("q1")
    h.submit("q2")
    await settle()
    with pytest.raises(ServerError) as info:
        await h.sched.enqueue(req("q3"), 1)
    assert info.value.code == ErrorCode.UNAVAILABLE
    assert info.value.message == "Exceeds maximum queue size"
    assert h.stats.failures_by_reason == {"REJECTED": 1}
    inst.gate.set()
    results = await h.results()
    assert all(isinstance(r, InferResponse) for r in results.values())


async def test_queue_full_per_priority_level(harnesses):
    inst = gated()
    cfg = config(
        max_batch_size=8,
        priority_levels=2,
        default_priority_level=2,
        priority_queue_policy={1: mc.ModelQueuePolicy(max_queue_size=1)},
    )
    h = harnesses(cfg, [inst])
    h.submit("busy")
    await until(lambda: inst.running == 1)
    h.submit("h1", priority=1)
    await settle()
    with pytest.raises(ServerError):
        await h.sched.enqueue(req("h2", priority=1), 1)
    h.submit("low1")
    h.submit("low2")
    inst.gate.set()
    await h.results()


# --- the factory -----------------------------------------------------------------------------------------
def test_make_scheduler_rejects_bad_priority_config():
    pool = FakePool([FakeInstance("i0")])
    cfg = config(priority_levels=2, default_priority_level=0)
    with pytest.raises(ServerError) as info:
        make_scheduler(cfg, pool, ModelStats("m", "1"), "m", "1")
    assert info.value.code == ErrorCode.INVALID_ARG
    cfg = config(priority_levels=2, default_priority_level=1, priority_queue_policy={3: mc.ModelQueuePolicy()})
    with pytest.raises(ServerError):
        make_scheduler(cfg, pool, ModelStats("m", "1"), "m", "1")
