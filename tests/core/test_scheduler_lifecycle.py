"""Cancellation, failure isolation, shutdown and statistics, for both schedulers."""
from __future__ import annotations

import asyncio

import pytest
from support.scheduler_helpers import config, gated, harnesses, req, settle, until

from tritonpy.core.errors import ErrorCode, ServerError
from tritonpy.core.scheduling.base import STOPPING_MESSAGE, ExecOutcome
from support.fake_instances import FakeInstance
from tritonpy.core.types import InferResponse

BOTH = pytest.mark.parametrize("dynamic", [False, True], ids=["default", "dynamic"])


# --- cancellation ---------------------------------------------------------------------------------------
@BOTH
async def test_cancel_removes_a_queued_request(harnesses, dynamic):
    inst = gated()
    h = harnesses(config(dynamic=dynamic), [inst])
    h.submit("busy")
    await until(lambda: inst.running == 1)
    h.submit("gone")
    h.submit("stays")
    await settle()
    assert h.sched.pending_count == 2
    h.tasks["gone"].cancel()
    await settle()
    assert h.sched.pending_count == 1
    assert h.stats.failures_by_reason == {"CANCELED": 1}
    inst.gate.set()
    results = await h.results()
    assert isinstance(results["gone"], asyncio.CancelledError)
    assert isinstance(results["stays"], InferResponse)
    assert "gone" not in inst.executed_ids
    assert h.stats.success.count == 2 and h.stats.fail.count == 1


@BOTH
async def test_cancel_while_executing_releases_the_response(harnesses, dynamic):
    inst = gated()
    h = harnesses(config(dynamic=dynamic), [inst])
    h.submit("r0")
    await until(lambda: inst.running == 1)
    h.tasks["r0"].cancel()
    await settle()
    assert inst.released == []  # still executing
    inst.gate.set()
    await until(lambda: inst.released == ["r0"])
    assert h.stats.failures_by_reason == {"CANCELED": 1}
    assert h.stats.execution_count == 1  # it did run
    assert h.pool.idle_count() == 1


async def test_cancel_during_a_batch_drops_only_that_request(harnesses):
    inst = gated()
    h = harnesses(config(max_batch_size=8), [inst])
    h.submit("busy")
    await until(lambda: inst.running == 1)
    for rid in ("a", "b", "c"):
        h.submit(rid)
    await settle()
    first_gate, inst.gate = inst.gate, asyncio.Event()  # the next batch blocks on a new gate
    first_gate.set()
    await until(lambda: len(inst.batches) == 2 and inst.running == 1)
    h.tasks["b"].cancel()
    await settle()
    inst.gate.set()
    results = await h.results()
    assert inst.batches[1] == ["a", "b", "c"]
    assert isinstance(results["a"], InferResponse) and isinstance(results["c"], InferResponse)
    assert "b" in inst.released


# --- failures ---------------------------------------------------------------------------------------------
async def test_one_failing_request_fails_only_itself(harnesses):
    inst = gated()
    inst.fail_ids = {"bad"}
    h = harnesses(config(max_batch_size=8), [inst])
    h.submit("busy")
    await until(lambda: inst.running == 1)
    for rid in ("a", "bad", "b", "c"):
        h.submit(rid)
    await settle()
    inst.gate.set()
    results = await h.results()
    assert inst.batches[1] == ["a", "bad", "b", "c"]
    assert isinstance(results["bad"], ServerError) and results["bad"].code == ErrorCode.INTERNAL
    assert all(isinstance(results[r], InferResponse) for r in ("busy", "a", "b", "c"))
    assert h.stats.failures_by_reason == {"BACKEND": 1}
    assert h.stats.success.count == 4


@BOTH
async def test_dead_instance_fails_its_batch_only(harnesses, dynamic):
    doomed, healthy = gated("doomed"), gated("healthy")
    doomed.die = True
    h = harnesses(config(max_batch_size=8, dynamic=dynamic), [doomed, healthy])
    h.submit("r0")  # -> doomed
    await until(lambda: doomed.running == 1)
    h.submit("r1")  # -> healthy
    await until(lambda: healthy.running == 1)
    h.submit("r2")
    h.submit("r3")
    await settle()
    doomed.gate.set()
    await until(lambda: h.tasks["r0"].done())
    err = h.tasks["r0"].exception()
    assert isinstance(err, ServerError) and "died" in err.message
    assert h.pool.idle_count() == 0  # the dead instance did not come back
    assert not h.tasks["r2"].done() and h.sched.pending_count == 2  # queued requests stay
    healthy.gate.set()
    results = await h.results()
    assert all(isinstance(results[r], InferResponse) for r in ("r1", "r2", "r3"))
    assert "r2" in healthy.executed_ids and "r3" in healthy.executed_ids
    assert h.stats.failures_by_reason == {"BACKEND": 1}


async def test_requests_wait_for_a_restarted_instance(harnesses):
    inst = FakeInstance("i0")
    inst.die = True
    h = harnesses(config(max_batch_size=8), [inst])
    h.submit("r0")
    await until(lambda: h.tasks["r0"].done())
    h.submit("r1")
    await settle()
    assert h.sched.pending_count == 1 and not h.tasks["r1"].done()
    h.pool.revive(inst)
    results = await h.results()
    assert isinstance(results["r1"], InferResponse)


class WrongCount(FakeInstance):
    async def execute(self, requests, *, gather):
        outcome = await super().execute(requests, gather=gather)
        return ExecOutcome(outcome.results[:-1])


class Explodes(FakeInstance):
    async def execute(self, requests, *, gather):
        raise RuntimeError("boom")


async def test_wrong_number_of_results_fails_the_batch(harnesses):
    inst = WrongCount("i0")
    inst.gate = asyncio.Event()
    h = harnesses(config(max_batch_size=8), [inst])
    h.submit("busy")
    await until(lambda: inst.running == 1)
    h.submit("a")
    h.submit("b")
    await settle()
    inst.gate.set()
    results = await h.results()
    for rid in ("busy", "a", "b"):
        assert isinstance(results[rid], ServerError) and results[rid].code == ErrorCode.INTERNAL
    assert "a" in inst.released  # the responses that did come back were freed
    assert h.pool.idle_count() == 1


async def test_unexpected_exception_is_internal_and_releases_the_instance(harnesses):
    inst = Explodes("i0")
    h = harnesses(config(max_batch_size=8), [inst])
    h.submit("r0")
    results = await h.results()
    assert isinstance(results["r0"], ServerError) and results["r0"].code == ErrorCode.INTERNAL
    assert h.pool.idle_count() == 1 and h.pool.releases == 1


async def test_batch_cancelled_before_it_ran_still_answers_and_releases(harnesses):
    """A batch task cancelled before its first step never runs its own cleanup; the scheduler's
    done-callback must still answer the request and give the instance back."""
    inst = FakeInstance("i0")
    h = harnesses(config(max_batch_size=8), [inst])
    loop = asyncio.get_running_loop()
    real_acquire = h.pool.try_acquire

    def acquire_then_cancel():
        instance = real_acquire()
        # Runs before the batch task's first step (it is created right after this returns).
        loop.call_soon(lambda: [t.cancel() for t in list(h.sched._batches)])
        return instance

    h.pool.try_acquire = acquire_then_cancel
    h.submit("r0")
    results = await h.results()
    assert isinstance(results["r0"], ServerError) and results["r0"].code == ErrorCode.UNAVAILABLE
    assert inst.batches == []  # execute never ran
    assert h.pool.releases == 1 and h.pool.idle_count() == 1


# --- shutdown ---------------------------------------------------------------------------------------------
@BOTH
async def test_stop_with_drain_finishes_queued_and_executing(harnesses, dynamic):
    inst = gated()
    h = harnesses(config(dynamic=dynamic), [inst])
    for rid in ("r0", "r1", "r2"):
        h.submit(rid)
    await until(lambda: inst.running == 1)
    stopper = asyncio.get_running_loop().create_task(h.sched.stop(drain=True, timeout=10))
    await settle()
    with pytest.raises(ServerError) as info:
        await h.sched.enqueue(req("late"), 1)
    assert info.value.code == ErrorCode.UNAVAILABLE and info.value.message == STOPPING_MESSAGE
    assert not stopper.done()
    inst.gate.set()
    await asyncio.wait_for(stopper, 10)
    results = await h.results()
    assert all(isinstance(results[r], InferResponse) for r in ("r0", "r1", "r2"))
    assert h.pool.listener_count == 0
    assert h.sched.executing_batches == 0


async def test_drain_does_not_sit_out_the_batching_delay(harnesses):
    inst = gated()
    h = harnesses(config(max_batch_size=8, max_queue_delay_microseconds=60_000_000), [inst])
    h.submit("busy", rows=8)  # a full batch goes at once
    await until(lambda: inst.running == 1)
    h.submit("a")
    await settle()
    inst.gate.set()
    await until(lambda: h.tasks["busy"].done())
    assert not h.tasks["a"].done()  # waiting out its 60 s delay
    await h.sched.stop(drain=True, timeout=10)
    results = await h.results()
    assert isinstance(results["a"], InferResponse)


@BOTH
async def test_stop_without_drain_fails_queued_but_finishes_executing(harnesses, dynamic):
    inst = gated()
    h = harnesses(config(dynamic=dynamic), [inst])
    h.submit("running")
    await until(lambda: inst.running == 1)
    h.submit("queued")
    await settle()
    stopper = asyncio.get_running_loop().create_task(h.sched.stop(drain=False, timeout=10))
    await until(lambda: h.tasks["queued"].done())
    err = h.tasks["queued"].exception()
    assert isinstance(err, ServerError) and err.code == ErrorCode.UNAVAILABLE
    assert h.sched.pending_count == 0
    inst.gate.set()
    await asyncio.wait_for(stopper, 10)
    results = await h.results()
    assert isinstance(results["running"], InferResponse)
    assert "queued" not in inst.executed_ids


async def test_stop_timeout_fails_everything_left(harnesses):
    inst = gated()  # never opens
    h = harnesses(config(max_batch_size=1), [inst])
    h.submit("running")
    await until(lambda: inst.running == 1)
    h.submit("queued")
    await settle()
    await h.sched.stop(drain=True, timeout=0.05)
    results = await h.results()
    for rid in ("running", "queued"):
        assert isinstance(results[rid], ServerError) and results[rid].code == ErrorCode.UNAVAILABLE
    assert h.pool.releases == h.pool.acquired == 1
    assert h.sched.executing_batches == 0


async def test_requests_queued_before_start_run_after_start(harnesses):
    h = harnesses(config(max_batch_size=8), [FakeInstance("i0")])
    await h.sched.stop(drain=False, timeout=1)  # the harness started it; build a fresh one
    from tritonpy.core.scheduling.dynamic import DynamicBatcher

    sched = DynamicBatcher(config=config(max_batch_size=8), pool=h.pool, stats=h.stats, model_name="m", version="1")
    task = asyncio.get_running_loop().create_task(sched.enqueue(req("early"), 1))
    await settle()
    assert sched.pending_count == 1
    sched.start()
    response = await asyncio.wait_for(task, 10)
    assert response.id == "early"
    await sched.stop(drain=True, timeout=1)


# --- statistics ---------------------------------------------------------------------------------------------
@BOTH
async def test_statistics_add_up(harnesses, dynamic):
    instances = [FakeInstance("i0", latency=0.005), FakeInstance("i1", latency=0.005)]
    h = harnesses(config(max_batch_size=4, dynamic=dynamic), instances)
    for i in range(20):
        h.submit(f"r{i}")
    results = await h.results()
    assert all(isinstance(r, InferResponse) for r in results.values())
    s = h.stats
    batches = sum(len(x.batches) for x in instances)
    assert s.success.count == 20 and s.fail.count == 0
    assert s.queue.count == 20
    assert s.inference_count == 20 and s.execution_count == batches
    assert s.compute_infer.count == 20
    assert sum(b.compute_infer.count for b in s.batches.values()) == batches
    # Per request, queue + compute <= request duration, so the sums obey it too.
    compute = s.compute_input.ns + s.compute_infer.ns + s.compute_output.ns
    assert s.queue.ns + compute <= s.success.ns
