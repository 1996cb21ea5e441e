"""The default scheduler (no dynamic or sequence batching) and the scheduler factory."""
from __future__ import annotations

import pytest
from support.scheduler_helpers import config, gated, harnesses, settle, until

from tritonpy.core.errors import ErrorCode, ServerError
from tritonpy.core.scheduling import make_scheduler
from tritonpy.core.scheduling.default import DefaultScheduler
from tritonpy.core.scheduling.dynamic import DynamicBatcher
from support.fake_instances import FakeInstance, FakePool
from tritonpy.core.observability.stats import ModelStats
from tritonpy.core.types import InferResponse
from tritonpy.proto import model_config_pb2 as mc


async def test_fifo_one_request_per_execution(harnesses):
    inst = gated()
    h = harnesses(config(dynamic=False), [inst])
    assert isinstance(h.sched, DefaultScheduler)
    for i in range(5):
        h.submit(f"r{i}")
    await settle()
    assert h.sched.pending_count == 4  # r0 is executing
    inst.gate.set()
    results = await h.results()
    assert all(isinstance(r, InferResponse) for r in results.values())
    assert inst.batches == [[f"r{i}"] for i in range(5)]
    assert h.stats.execution_count == 5 and h.stats.inference_count == 5


async def test_instances_run_concurrently(harnesses):
    instances = [gated(f"i{n}") for n in range(3)]
    h = harnesses(config(dynamic=False), instances)
    for i in range(4):
        h.submit(f"r{i}")
    await until(lambda: all(x.running == 1 for x in instances))
    assert h.sched.pending_count == 1
    for x in instances:
        x.gate.set()
    await h.results()
    assert sorted(x.name for x in instances if x.batches) == ["i0", "i1", "i2"]


async def test_client_side_batch_is_sent_as_is(harnesses):
    inst = FakeInstance("i0")
    h = harnesses(config(max_batch_size=8, dynamic=False), [inst])
    h.submit("big", rows=4)
    await h.results()
    assert inst.batches == [["big"]]
    assert inst.gathers == [True]
    assert list(h.stats.batches) == [4]
    assert h.stats.inference_count == 4 and h.stats.execution_count == 1


@pytest.mark.parametrize(
    "max_batch_size,dtype,gather",
    [(8, "FP32", True), (8, "BYTES", False), (0, "FP32", False)],
)
async def test_gather_flag(harnesses, max_batch_size, dtype, gather):
    inst = FakeInstance("i0")
    h = harnesses(config(max_batch_size=max_batch_size, dynamic=False), [inst])
    h.submit("r", dtype=dtype)
    await h.results()
    assert inst.gathers == [gather]


async def test_priority_and_timeout_do_not_apply(harnesses):
    inst = gated()
    h = harnesses(config(dynamic=False), [inst])
    h.submit("busy")
    await until(lambda: inst.running == 1)
    h.submit("a", priority=5, timeout_us=1)
    h.submit("b", priority=1)
    await settle()
    inst.gate.set()
    results = await h.results()
    assert all(isinstance(r, InferResponse) for r in results.values())
    assert inst.executed_ids == ["busy", "a", "b"]


# --- make_scheduler ------------------------------------------------------------------------------------
def _make(cfg: mc.ModelConfig):
    return make_scheduler(cfg, FakePool([FakeInstance("i0")]), ModelStats("m", "1"), "m", "1")


def test_factory_picks_by_config():
    assert type(_make(config(dynamic=False))) is DefaultScheduler
    assert type(_make(config())) is DynamicBatcher
    batcher = _make(config(max_batch_size=16, preferred_batch_size=[4, 8], max_queue_delay_microseconds=300))
    assert batcher.params.preferred == (4, 8)
    assert batcher.params.max_batch_rows == 16
    assert batcher.params.max_queue_delay_ns == 300_000


@pytest.mark.parametrize("field", ["ensemble_scheduling"])  # sequence_batching: tests/test_sequence_batcher.py
def test_factory_refuses_other_schedulers(field):
    cfg = config(dynamic=False)
    getattr(cfg, field).SetInParent()
    with pytest.raises(ServerError) as info:
        _make(cfg)
    assert info.value.code == ErrorCode.UNSUPPORTED


def test_construction_needs_no_event_loop():
    """Schedulers are built while loading a model; only start() needs the running loop."""
    sched = _make(config())
    assert sched.pending_count == 0
