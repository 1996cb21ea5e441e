"""The sequence batcher under asyncio, against a fake instance pool (no workers, no processes).

Idle expiry runs on a fake clock: the test moves time and pokes the scheduler.
"""
from __future__ import annotations

import asyncio

import numpy as np
import pytest
from support.scheduler_helpers import MS, settle, until

from tritonpy.core.errors import ErrorCode, ServerError
from tritonpy.core.scheduling import make_scheduler
from support.fake_instances import FakeClock, FakeInstance, FakePool
from tritonpy.core.scheduling.sequence import SequenceBatcher
from tritonpy.core.observability.stats import ModelStats
from tritonpy.core.types import InferRequest, InferResponse, InputTensor
from tritonpy.proto import model_config_pb2 as mc

Kind = mc.ModelSequenceBatching.Control


def seq_config(max_batch_size: int = 2, *, oldest: dict | None = None, idle_us: int = 0, controls=True,
               corrid_type: int = mc.TYPE_UINT64) -> mc.ModelConfig:
    cfg = mc.ModelConfig(
        name="m",
        max_batch_size=max_batch_size,
        input=[mc.ModelInput(name="IN", data_type=mc.TYPE_FP32, dims=[1])],
    )
    sb = cfg.sequence_batching
    sb.max_sequence_idle_microseconds = idle_us
    if controls:
        C = mc.ModelSequenceBatching.Control
        sb.control_input.add(name="START", control=[C(kind=Kind.CONTROL_SEQUENCE_START, int32_false_true=[0, 1])])
        sb.control_input.add(name="END", control=[C(kind=Kind.CONTROL_SEQUENCE_END, fp32_false_true=[0.0, 1.0])])
        sb.control_input.add(name="READY", control=[C(kind=Kind.CONTROL_SEQUENCE_READY, bool_false_true=[False, True])])
        sb.control_input.add(name="CORRID", control=[C(kind=Kind.CONTROL_SEQUENCE_CORRID, data_type=corrid_type)])
    if oldest is not None:
        sb.oldest.CopyFrom(mc.ModelSequenceBatching.StrategyOldest(**oldest))
    else:
        sb.direct.SetInParent()
    return cfg


class Harness:
    def __init__(self, cfg, instances, clock=None, **kw) -> None:
        self.pool = FakePool(instances)
        self.stats = ModelStats("m", "1")
        extra = {"clock": clock} if clock is not None else {}
        self.sched = SequenceBatcher(
            config=cfg, pool=self.pool, stats=self.stats, model_name="m", version="1", **extra, **kw
        )
        self.sched.start()
        self.batched = cfg.max_batch_size > 0
        self.clock = clock

    def request(self, rid: str, corr, *, start=False, end=False, rows=1, timeout_us=0) -> InferRequest:
        shape = [rows, 1] if self.batched else [1]
        r = InferRequest(
            model_name="m", id=rid, inputs=[InputTensor("IN", "FP32", shape, data=np.zeros(shape, np.float32))],
            sequence_id=corr, sequence_start=start, sequence_end=end, timeout_us=timeout_us,
        )
        if self.clock is not None:
            r.arrival_ns = self.clock()
        return r

    def submit(self, rid: str, corr, **kw) -> asyncio.Task:
        rows = kw.get("rows", 1)
        request = self.request(rid, corr, **kw)
        return asyncio.get_running_loop().create_task(self.sched.enqueue(request, rows), name=f"req-{rid}")


@pytest.fixture
async def harness():
    made: list[Harness] = []

    def make(*args, **kwargs) -> Harness:
        h = Harness(*args, **kwargs)
        made.append(h)
        return h

    yield make
    for h in made:
        await h.sched.stop(drain=False, timeout=2)


def controls_of(request: InferRequest) -> dict[str, np.ndarray]:
    return {t.name: t.data for t in request.inputs if t.name in ("START", "END", "READY", "CORRID")}


def test_factory_builds_the_sequence_batcher():
    pool = FakePool([FakeInstance("i0")])
    sched = make_scheduler(seq_config(), pool, ModelStats("m", "1"), "m", "1")
    assert isinstance(sched, SequenceBatcher)
    assert sched.slots_per_instance == 2


def test_iterative_sequences_are_refused_clearly():
    cfg = seq_config()
    cfg.sequence_batching.iterative_sequence = True
    with pytest.raises(ServerError, match="iterative_sequence is not supported"):
        make_scheduler(cfg, FakePool([FakeInstance("i0")]), ModelStats("m", "1"), "m", "1")


async def test_sequences_stay_on_one_instance_in_order(harness):
    a, b = FakeInstance("a", latency=0.002), FakeInstance("b", latency=0.002)
    h = harness(seq_config(max_batch_size=2), [a, b])
    tasks = []
    for step in range(4):
        for corr in (1, 2, 3, 4):
            tasks.append(h.submit(f"s{corr}-{step}", corr, start=step == 0, end=step == 3))
        await settle(2)
    results = await asyncio.gather(*tasks)
    assert all(isinstance(r, InferResponse) for r in results)
    for corr in (1, 2, 3, 4):
        ids = [f"s{corr}-{step}" for step in range(4)]
        homes = [inst.name for inst in (a, b) if any(i in inst.executed_ids for i in ids)]
        assert len(homes) == 1, f"sequence {corr} ran on {homes}"
        inst = a if homes == ["a"] else b
        assert [i for i in inst.executed_ids if i.startswith(f"s{corr}-")] == ids
    for inst in (a, b):
        for batch in inst.batches:
            corrs = [rid.split("-")[0] for rid in batch]
            assert len(corrs) == len(set(corrs)) and len(batch) <= 2  # one request per slot
    assert {inst.name for inst in (a, b) if inst.batches} == {"a", "b"}  # both instances were used
    assert h.sched.table.active == 0  # every sequence ended and freed its slot


async def test_control_inputs_batched_model(harness):
    inst = FakeInstance("i0")
    h = harness(seq_config(max_batch_size=4), [inst])
    await h.submit("first", 42, start=True)
    await h.submit("middle", 42)
    await h.submit("last", 42, end=True)
    first, middle, last = (controls_of(r) for r in inst.requests)
    for ctl in (first, middle, last):
        assert {k: v.shape for k, v in ctl.items()} == {k: (1, 1) for k in ("START", "END", "READY", "CORRID")}
        assert ctl["READY"].dtype == np.bool_ and ctl["READY"][0, 0]
        assert ctl["CORRID"].dtype == np.uint64 and int(ctl["CORRID"][0, 0]) == 42
    assert [int(c["START"][0, 0]) for c in (first, middle, last)] == [1, 0, 0]
    assert first["START"].dtype == np.int32
    assert [float(c["END"][0, 0]) for c in (first, middle, last)] == [0.0, 0.0, 1.0]
    assert first["END"].dtype == np.float32


async def test_control_inputs_without_batching_have_shape_1(harness):
    inst = FakeInstance("i0")
    h = harness(seq_config(max_batch_size=0, corrid_type=mc.TYPE_INT32), [inst])
    await h.submit("only", (1 << 32) + 7, start=True, end=True)
    ctl = controls_of(inst.requests[0])
    assert {v.shape for v in ctl.values()} == {(1,)}
    assert ctl["CORRID"].dtype == np.int32 and int(ctl["CORRID"][0]) == 7  # 32-bit types truncate
    assert int(ctl["START"][0]) == 1 and float(ctl["END"][0]) == 1.0


async def test_string_ids(harness):
    inst = FakeInstance("i0")
    h = harness(seq_config(corrid_type=mc.TYPE_STRING), [inst])
    await h.submit("a", "user-7", start=True)
    await h.submit("b", "user-7", end=True)
    ctl = controls_of(inst.requests[1])
    assert ctl["CORRID"].dtype == object and ctl["CORRID"].reshape(-1)[0] == b"user-7"

    numeric = harness(seq_config(), [FakeInstance("i1")])
    with pytest.raises(ServerError) as err:
        await numeric.submit("c", "user-8", start=True)
    assert err.value.code == ErrorCode.INVALID_ARG and "use an integer sequence id" in err.value.message


async def test_requests_without_a_sequence_id_or_with_a_batch_are_refused(harness):
    h = harness(seq_config(), [FakeInstance("i0")])
    with pytest.raises(ServerError) as err:
        await h.submit("x", 0, start=True)
    assert err.value.code == ErrorCode.INVALID_ARG
    assert err.value.message == "inference request to model 'm' must specify a non-zero or non-empty correlation ID"
    with pytest.raises(ServerError, match="non-empty correlation ID"):
        await h.submit("y", "", start=True)
    with pytest.raises(ServerError, match="must specify batch-size 1 due to requirements of sequence batcher"):
        await h.submit("z", 3, start=True, rows=2)
    with pytest.raises(ServerError, match="must specify the START flag on the first request of the sequence"):
        await h.submit("w", 3)
    assert h.stats.failures_by_reason == {"REJECTED": 4}


async def test_idle_sequences_expire_and_the_worker_is_told(harness):
    clock = FakeClock()
    a, b = FakeInstance("a"), FakeInstance("b")
    h = harness(seq_config(idle_us=100_000), [a, b], clock=clock)
    await h.submit("s1", 11, start=True)
    await h.submit("s2", 22, start=True)
    clock.advance(99 * MS)
    h.sched.poke()
    await settle()
    assert a.ended_sequences == [] and b.ended_sequences == []
    await h.submit("s2b", 22)  # keeps 22 alive
    clock.advance(1 * MS)
    h.sched.poke()
    await until(lambda: a.ended_sequences + b.ended_sequences == [11])
    holder = a if a.ended_sequences else b
    assert "s1" in holder.executed_ids  # the instance that held the sequence is the one told
    with pytest.raises(ServerError, match="sequence 11 to model 'm' must specify the START flag"):
        await h.submit("late", 11)
    await h.submit("s2c", 22, end=True)  # 22 was not idle long enough
    assert h.sched.table.active == 0


async def test_backlog_waits_for_a_free_slot(harness):
    inst = FakeInstance("i0")
    h = harness(seq_config(max_batch_size=0), [inst])  # one slot in all
    s1 = h.submit("a0", 1, start=True)
    await s1
    waiting = h.submit("b0", 2, start=True)
    await settle()
    assert not waiting.done() and h.sched.table.backlogged == 1
    await h.submit("a1", 1, end=True)
    await waiting
    assert inst.executed_ids == ["a0", "a1", "b0"]


async def test_backlogged_requests_honour_their_timeout(harness):
    clock = FakeClock()
    h = harness(seq_config(max_batch_size=0), [FakeInstance("i0")], clock=clock)
    await h.submit("a0", 1, start=True)
    waiting = h.submit("b0", 2, start=True, timeout_us=50_000)
    await settle()
    clock.advance(50 * MS)
    h.sched.poke()
    with pytest.raises(ServerError) as err:
        await waiting
    assert err.value.code == ErrorCode.UNAVAILABLE
    assert err.value.message == "timeout of the corresponding sequence has been expired"


async def test_oldest_batches_requests_of_different_sequences(harness):
    inst = FakeInstance("i0")
    inst.gate = asyncio.Event()
    h = harness(seq_config(max_batch_size=4, oldest={"max_candidate_sequences": 4, "preferred_batch_size": [4]}), [inst])
    blocker = h.submit("x0", 9, start=True)
    await until(lambda: inst.running == 1)
    tasks = [h.submit(f"c{corr}", corr, start=True) for corr in (1, 2, 3)]
    tasks.append(h.submit("x1", 9))  # 9 is executing: its next request waits for it
    await settle()
    inst.gate.set()
    await asyncio.gather(blocker, *tasks)
    # x1 could not join x0 (one request of a sequence at a time); once x0 finished, the next batch
    # takes the oldest request of every candidate sequence.
    assert inst.batches == [["x0"], ["c1", "c2", "c3", "x1"]]


async def test_cancelling_a_queued_request_cancels_its_sequence(harness):
    inst = FakeInstance("i0")
    inst.gate = asyncio.Event()
    h = harness(seq_config(max_batch_size=0), [inst])
    running = h.submit("r0", 5, start=True)
    await until(lambda: inst.running == 1)
    doomed = h.submit("r1", 5)
    follower = h.submit("r2", 5)
    await settle()
    doomed.cancel()
    with pytest.raises(ServerError) as err:
        await follower
    assert err.value.code == ErrorCode.CANCELLED
    inst.gate.set()
    assert isinstance(await running, InferResponse)
    assert inst.ended_sequences == [5]
    with pytest.raises(ServerError, match="must specify the START flag"):
        await h.submit("r3", 5)
    assert inst.executed_ids == ["r0"]


async def test_stop_drains_queued_sequences(harness):
    inst = FakeInstance("i0", latency=0.001)
    h = harness(seq_config(), [inst])
    tasks = [h.submit(f"r{i}", 1, start=i == 0) for i in range(5)]
    await settle(2)
    await h.sched.stop(drain=True, timeout=5)
    results = await asyncio.gather(*tasks)
    assert all(isinstance(r, InferResponse) for r in results)
    assert inst.executed_ids == [f"r{i}" for i in range(5)]
