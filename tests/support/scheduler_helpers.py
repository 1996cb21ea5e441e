"""Shared scaffolding for the scheduler tests (no tests here): model configs, requests, and a
harness that runs a scheduler against a fake instance pool."""
from __future__ import annotations

import asyncio

import pytest

from tritonpy.core.scheduling.default import DefaultScheduler
from tritonpy.core.scheduling.dynamic import DynamicBatcher
from support.fake_instances import FakeInstance, FakePool
from tritonpy.core.observability.stats import ModelStats
from tritonpy.core.types import InferRequest, InputTensor
from tritonpy.proto import model_config_pb2 as mc

MS = 1_000_000


def config(max_batch_size: int = 8, ragged: bool = False, dynamic: bool = True, **batching) -> mc.ModelConfig:
    """A one-input FP32 model; `dynamic=False` gives the default scheduler."""
    cfg = mc.ModelConfig(
        name="m",
        max_batch_size=max_batch_size,
        input=[mc.ModelInput(name="IN", data_type=mc.TYPE_FP32, dims=[-1], allow_ragged_batch=ragged)],
    )
    if dynamic:
        cfg.dynamic_batching.CopyFrom(mc.ModelDynamicBatching(**batching))
    return cfg


def req(
    rid: str, *, rows: int = 1, width: int = 4, dtype: str = "FP32", arrival_ns: int | None = None, **kw
) -> InferRequest:
    r = InferRequest(model_name="m", id=rid, inputs=[InputTensor("IN", dtype, [rows, width])], **kw)
    if arrival_ns is not None:
        r.arrival_ns = arrival_ns
    return r


async def settle(rounds: int = 20) -> None:
    """Let every ready task run a few steps."""
    for _ in range(rounds):
        await asyncio.sleep(0)


async def until(predicate, timeout: float = 10.0) -> None:
    """Wait for a condition with a generous bound (failure means 'never', not 'slow')."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not predicate():
        if loop.time() > end:
            raise AssertionError("condition never became true")
        await asyncio.sleep(0.001)


class Harness:
    def __init__(self, cfg: mc.ModelConfig, instances: list[FakeInstance], clock=None) -> None:
        self.clock = clock
        self.pool = FakePool(instances)
        self.stats = ModelStats("m", "1")
        kwargs = {"clock": clock} if clock is not None else {}
        cls = DynamicBatcher if cfg.HasField("dynamic_batching") else DefaultScheduler
        self.sched = cls(config=cfg, pool=self.pool, stats=self.stats, model_name="m", version="1", **kwargs)
        self.sched.start()
        self.tasks: dict[str, asyncio.Task] = {}
        self.done_order: list[str] = []

    def submit(self, rid: str, **kw) -> asyncio.Task:
        if self.clock is not None:
            kw.setdefault("arrival_ns", self.clock())
        request = req(rid, **kw)
        task = asyncio.get_running_loop().create_task(self.sched.enqueue(request, request.inputs[0].shape[0]))
        task.add_done_callback(lambda _t: self.done_order.append(rid))
        self.tasks[rid] = task
        return task

    async def results(self) -> dict[str, object]:
        await asyncio.wait(list(self.tasks.values()), timeout=10)
        out: dict[str, object] = {}
        for rid, task in self.tasks.items():
            assert task.done(), f"{rid} never completed"
            if task.cancelled():
                out[rid] = asyncio.CancelledError()
            else:
                out[rid] = task.exception() if task.exception() is not None else task.result()
        return out

    async def close(self) -> None:
        await self.sched.stop(drain=False, timeout=2)


@pytest.fixture
async def harnesses():
    made: list[Harness] = []

    def make(*args, **kwargs) -> Harness:
        h = Harness(*args, **kwargs)
        made.append(h)
        return h

    yield make
    for h in made:
        await h.close()


def gated(name: str = "i0") -> FakeInstance:
    inst = FakeInstance(name)
    inst.gate = asyncio.Event()
    return inst


