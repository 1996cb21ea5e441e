"""WorkerPool: handing out idle instances fairly, never a dead one; start/resize/stop.

Pool logic runs against fake instances with knobs (STYLE.md pattern 10); one integration test runs
two real workers, crashes one and checks the other keeps serving.
"""
from __future__ import annotations

import asyncio
import time
from typing import Callable

import numpy as np
import pytest

from support.instance_support import expected, make_spec, request
from tritonpy.core.errors import ErrorCode, ServerError, unavailable
from tritonpy.core.instance.worker_instance import InstanceSpec, WorkerInstance
from tritonpy.core.instance.pool import WorkerPool
from tritonpy.core.instance.supervisor import RestartBackoff


class FakeInstance:
    """The part of WorkerInstance the pool uses, with knobs: fail start, die, come back."""

    def __init__(self, spec: InstanceSpec, log: list[str]) -> None:
        self.spec = spec
        self.name = spec.instance_name
        self.restarts = 0
        self.ready = False
        self.config = spec.config_json
        self.fail_start: str = ""
        self.model_ready = True
        self._listeners: list[Callable] = []
        self._log = log

    def add_ready_listener(self, cb: Callable) -> None:
        self._listeners.append(cb)

    def use_config(self, config_json: str) -> None:
        self.config = config_json

    def _set(self, ready: bool) -> None:
        self.ready = ready
        for cb in self._listeners:
            cb(self, ready)

    async def start(self) -> str:
        self._log.append(f"start {self.name} {self.config}")
        await asyncio.sleep(0.01)
        if self.fail_start:
            raise unavailable(self.fail_start)
        self._set(True)
        return '{"completed": true}' if self.spec.autocomplete else ""

    async def stop(self, timeout: float = 10.0) -> None:
        self._log.append(f"stop {self.name}")
        if self.ready:
            self._set(False)

    async def is_ready(self) -> bool:
        return self.ready and self.model_ready

    def die(self) -> None:
        self._set(False)

    def revive(self) -> None:
        self.restarts += 1
        self._set(True)


def _specs(tmp_path, n: int, autocomplete: bool = False) -> list[InstanceSpec]:
    return [
        InstanceSpec(
            model_name="m", model_version=1, model_dir=str(tmp_path), instance_name=f"m_{i}", backend="python",
            config_json="{}", autocomplete=autocomplete and i == 0, runtime_dir=str(tmp_path),
        )
        for i in range(n)
    ]


def _fake_pool(tmp_path, n: int, autocomplete: bool = False) -> tuple[WorkerPool, list[str]]:
    log: list[str] = []
    pool = WorkerPool(_specs(tmp_path, n, autocomplete), factory=lambda spec: FakeInstance(spec, log))
    return pool, log


async def test_try_acquire_release_and_idle_listeners(tmp_path):
    pool, _ = _fake_pool(tmp_path, 2)
    pokes: list[int] = []
    pool.add_idle_listener(lambda: pokes.append(1))
    assert pool.idle_count() == 0 and pool.try_acquire() is None and not pool.any_ready
    assert await pool.start_all() == ""
    assert pool.ready_count == 2 and pool.idle_count() == 2 and len(pokes) == 2 and pool.idle_event.is_set()
    a = pool.try_acquire()
    b = pool.try_acquire()
    assert {a.name, b.name} == {"m_0", "m_1"} and pool.try_acquire() is None
    assert not pool.idle_event.is_set()
    pool.release(a)
    assert pool.idle_count() == 1 and len(pokes) == 3 and pool.idle_event.is_set()
    await asyncio.wait_for(pool.wait_idle(), 1)
    await pool.stop_all()


async def test_acquire_is_first_come_first_served(tmp_path):
    pool, _ = _fake_pool(tmp_path, 1)
    await pool.start_all()
    held = await pool.acquire()
    order: list[int] = []

    async def waiter(k: int) -> None:
        inst = await pool.acquire()
        order.append(k)
        await asyncio.sleep(0)
        pool.release(inst)

    tasks = [asyncio.create_task(waiter(k)) for k in range(5)]
    await asyncio.sleep(0.01)
    tasks[2].cancel()  # a waiter that gives up does not block the others
    pool.release(held)
    await asyncio.gather(*tasks, return_exceptions=True)
    assert order == [0, 1, 3, 4]
    assert pool.idle_count() == 1
    await pool.stop_all()


async def test_dead_instances_are_never_handed_out(tmp_path):
    pool, _ = _fake_pool(tmp_path, 2)
    await pool.start_all()
    a, b = pool.instances
    a.die()  # idle when it died
    assert pool.idle_count() == 1 and pool.ready_count == 1 and pool.any_ready
    assert pool.try_acquire() is b
    b.die()  # busy when it died
    pool.release(b)
    assert pool.idle_count() == 0 and pool.try_acquire() is None and not pool.any_ready
    assert not await pool.is_ready()
    waiting = asyncio.create_task(pool.acquire())
    await asyncio.sleep(0.01)
    assert not waiting.done()
    b.revive()
    assert await asyncio.wait_for(waiting, 1) is b
    a.revive()
    assert pool.idle_count() == 1 and pool.restarts == 2
    assert await pool.is_ready()
    await pool.stop_all()


async def test_is_ready_needs_one_instance_whose_model_says_ready(tmp_path):
    pool, _ = _fake_pool(tmp_path, 2)
    await pool.start_all()
    pool.instances[0].model_ready = False
    assert await pool.is_ready()
    pool.instances[1].model_ready = False
    assert not await pool.is_ready()
    await pool.stop_all()


async def test_autocomplete_starts_first_then_the_rest_with_the_completed_config(tmp_path):
    pool, log = _fake_pool(tmp_path, 3, autocomplete=True)
    completed = await pool.start_all()
    assert completed == '{"completed": true}'
    assert log[0] == "start m_0 {}"
    assert sorted(log[1:]) == ['start m_1 {"completed": true}', 'start m_2 {"completed": true}']
    await pool.resize(4)
    assert log[-1] == 'start m_3 {"completed": true}'
    await pool.stop_all()


async def test_a_failed_start_stops_every_instance_and_raises(tmp_path):
    log: list[str] = []

    def factory(spec: InstanceSpec) -> FakeInstance:
        inst = FakeInstance(spec, log)
        if spec.instance_name == "m_1":
            inst.fail_start = "no GPU"
        return inst

    pool = WorkerPool(_specs(tmp_path, 3), factory=factory)
    with pytest.raises(ServerError) as info:
        await pool.start_all()
    assert info.value.message == "no GPU"
    assert sorted(x for x in log if x.startswith("stop")) == ["stop m_0", "stop m_1", "stop m_2"]
    assert not pool.any_ready


async def test_resize_grows_and_shrinks_in_place(tmp_path):
    pool, log = _fake_pool(tmp_path, 2)
    await pool.start_all()
    await pool.resize(4, config_json='{"v": 2}')
    assert [i.name for i in pool.instances] == ["m_0", "m_1", "m_2", "m_3"]
    assert pool.instances[3].config == '{"v": 2}' and pool.idle_count() == 4
    busy = pool.try_acquire()
    await pool.resize(1)
    assert pool.instances == [busy]  # idle ones go first
    assert pool.idle_count() == 0
    pool.release(busy)
    assert pool.idle_count() == 1
    with pytest.raises(ValueError):
        await pool.resize(0)
    await pool.stop_all()
    with pytest.raises(ServerError) as info:
        await pool.acquire()
    assert info.value.code == ErrorCode.UNAVAILABLE


async def test_stop_all_fails_waiters(tmp_path):
    pool, _ = _fake_pool(tmp_path, 1)
    await pool.start_all()
    pool.try_acquire()
    waiting = asyncio.create_task(pool.acquire())
    await asyncio.sleep(0.01)
    await pool.stop_all()
    with pytest.raises(ServerError):
        await waiting


async def test_one_worker_dies_the_other_keeps_serving(tmp_path, leak_check):
    specs = [make_spec(tmp_path, instance="m_0"), make_spec(tmp_path, instance="m_1")]
    pool = WorkerPool(
        specs, factory=lambda spec: WorkerInstance(spec, backoff=RestartBackoff(initial=1.5, maximum=3.0))
    )
    try:
        await pool.start_all()
        doomed = await pool.acquire()
        healthy = await pool.acquire()
        slow = asyncio.create_task(healthy.execute([request(-6.0)], gather=False))
        await asyncio.sleep(0.1)
        with pytest.raises(ServerError) as info:
            await doomed.execute([request(-1.0)], gather=False)
        assert "backend worker died (exit code 3)" in info.value.message
        assert f"instance '{doomed.name}'" in info.value.message
        pool.release(doomed)
        assert pool.idle_count() == 0  # the dead one is not idle
        outcome = await slow
        np.testing.assert_array_equal(outcome.results[0].outputs[0].data, expected(request(-6.0)))
        outcome.results[0].release()
        pool.release(healthy)
        assert pool.try_acquire() is healthy  # only the healthy one is handed out meanwhile
        ok = await healthy.execute([request(2.0)], gather=False)
        ok.results[0].release()
        pool.release(healthy)
        deadline = time.monotonic() + 20
        while pool.ready_count < 2:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)
        assert pool.idle_count() == 2 and pool.restarts == 1
        assert await pool.is_ready()
    finally:
        await pool.stop_all(timeout=5)
