"""Fair queueing by tenant inside the dynamic batcher: queue order (pure), batches (fake pool), real load.

Within each priority level, requests of several tenants are ordered by deficit round robin by tenant
weight; the batching rules (levels first, preferred sizes, delay on the oldest request, equal
shapes) run unchanged on that order. One tenant (or none) keeps the level a plain deque.

The measurement mirrors tests/test_fairness.py on a model with `dynamic_batching`: one instance,
batches of at most 2 taking 50 ms, so a flood at 10x the quiet tenant's rate (50/s) outruns the
model (40/s) and its lane grows. Without fairness a quiet request waits behind the whole flood
(~100 requests, 2.5 s); with it, behind at most the batch under way.
"""
from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import random
from types import SimpleNamespace

import aiohttp
import numpy as np
import pytest
from test_fairness import KEYS, SLEEP_S, one, p99, quiet_run, start_flood
from support.scheduler_helpers import Harness, config, gated, harnesses, settle, until

from support.model_builders import FP32_IO, python_model
from support.servers import serve
from tritonpy.core.tenancy import tenants
from tritonpy.core.scheduling.fairness import FairQueue
from tritonpy.core.scheduling.decision import BatchParams, Send, decide
from tritonpy.core.scheduling.queue import PriorityQueue, QueuePolicy, TimeoutAction
from tritonpy.core.tenancy.tenants import Tenant

NOW = 1_000_000_000


def item(tenant: Tenant | None, n: int, *, shape: str = "s", rows: int = 1) -> SimpleNamespace:
    return SimpleNamespace(tenant=tenant, n=n, shape_key=shape, rows=rows, enqueue_ns=NOW + n,
                           level=0, deadline_ns=0, delayed=False, in_queue=False)


def names(items) -> list[tuple[str | None, int]]:
    return [(x.tenant.name if x.tenant else None, x.n) for x in items]


def push(queue: PriorityQueue, x, *, priority: int = 0, timeout_us: int = 0) -> None:
    queue.push(x, priority=priority, timeout_us=timeout_us, now_ns=NOW)


# --- the queue's order ----------------------------------------------------------------------------
def test_fair_iteration_is_exactly_the_popleft_order():
    """The batcher pops what `decide` scanned: iteration must replay `popleft` step for step."""
    rng = random.Random(14)
    who = [Tenant(name=f"t{i}", weight=w) for i, w in enumerate((1.0, 0.5, 2.5, 0.3))]
    for _ in range(200):
        queue = FairQueue()
        for n in range(rng.randint(0, 30)):
            queue.append(item(rng.choice(who), n))
        for _ in range(rng.randint(0, 5)):  # some rounds already under way
            if queue:
                queue.popleft()
        expected = list(queue)
        drained = []
        while queue:
            drained.append(queue.popleft())
        assert drained == expected


def test_one_tenant_or_none_keeps_the_plain_deque():
    for who in (None, Tenant(name="solo")):
        queue = PriorityQueue()
        xs = [item(who, i) for i in range(6)]
        for x in xs:
            push(queue, x)
        assert type(queue._lanes[0].active) is collections.deque
        assert list(queue) == xs
        assert queue.pop(4) == xs[:4] and list(queue) == xs[4:]


def test_a_second_tenant_interleaves_and_pop_follows_the_iteration():
    flood, quiet = Tenant(name="flood"), Tenant(name="quiet")
    queue = PriorityQueue()
    for i in range(10):
        push(queue, item(flood, i))
    push(queue, item(quiet, 100))
    push(queue, item(quiet, 101))
    assert isinstance(queue._lanes[0].active, FairQueue)
    order = names(queue)
    assert order[:4] == [("flood", 0), ("quiet", 100), ("flood", 1), ("quiet", 101)]
    assert [n for who, n in order if who == "flood"] == list(range(10))  # FIFO within a tenant
    # Iterating twice changes nothing, and pop takes exactly the prefix the iteration showed.
    assert names(queue) == order
    assert names(queue.pop(3)) == order[:3]
    assert names(queue) == order[3:]
    assert names(queue.take_all()) == order[3:]
    assert type(queue._lanes[0].active) is collections.deque  # drained: back to the plain path


def test_weights_share_each_batch_in_proportion():
    heavy, light = Tenant(name="heavy", weight=3.0), Tenant(name="light", weight=1.0)
    queue = PriorityQueue()
    for i in range(40):
        push(queue, item(light, i))
        push(queue, item(heavy, 100 + i))
    for _ in range(5):
        batch = [x.tenant.name for x in queue.pop(8)]
        assert batch.count("heavy") == 6 and batch.count("light") == 2, batch


def test_priority_levels_come_before_fairness():
    a, b = Tenant(name="a"), Tenant(name="b")
    queue = PriorityQueue(priority_levels=2, default_level=2)
    for i in range(3):
        push(queue, item(a, i), priority=2)
    push(queue, item(b, 10), priority=2)
    push(queue, item(a, 20), priority=1)
    push(queue, item(b, 21), priority=1)
    assert names(queue) == [("a", 20), ("b", 21), ("a", 0), ("b", 10), ("a", 1), ("a", 2)]


def test_delayed_requests_stay_behind_and_removal_keeps_the_rotation():
    a, b = Tenant(name="a"), Tenant(name="b")
    policy = QueuePolicy(timeout_action=TimeoutAction.DELAY, default_timeout_us=1)
    queue = PriorityQueue(default_policy=policy)
    xs = [item(a, 0), item(a, 1), item(b, 2)]
    for x in xs:
        push(queue, x)
    late = [item(b, 3), item(a, 4)]
    for x in late:
        queue.push(x, priority=0, timeout_us=0, now_ns=NOW + 10_000)
    assert queue.expire(NOW + 5_000) == []  # xs[...] delayed, late ones not yet expired
    assert names(queue) == [("a", 4), ("b", 3), ("a", 0), ("a", 1), ("b", 2)]
    assert queue.remove(late[0]) and names(queue) == [("a", 4), ("a", 0), ("a", 1), ("b", 2)]
    assert len(queue) == 4


def test_decide_keeps_tritons_rules_on_the_fair_order():
    flood, quiet = Tenant(name="flood"), Tenant(name="quiet")
    queue = PriorityQueue()
    for i in range(6):
        push(queue, item(flood, i))
    push(queue, item(quiet, 50))
    params = BatchParams.make(max_batch_size=8, preferred=[4], max_queue_delay_us=1000)
    # The preferred size is cut from the fair order: the quiet request rides in the first batch.
    assert decide(queue, NOW, 1, params) == Send(4)
    assert names(queue.pop(4)) == [("flood", 0), ("quiet", 50), ("flood", 1), ("flood", 2)]
    # Equal shapes only: a quiet request of another shape ends the scan where it stands.
    push(queue, item(quiet, 60, shape="other"))
    assert names(queue)[:2] == [("flood", 3), ("quiet", 60)]
    assert decide(queue, NOW, 1, params) == Send(1)


# --- the batcher, on a fake pool ------------------------------------------------------------------
def submit_as(h: Harness, who: Tenant, rid: str) -> None:
    token = tenants.CURRENT.set(who)
    try:
        h.submit(rid)  # the task copies the context: the request carries `who`
    finally:
        tenants.CURRENT.reset(token)


async def test_batcher_serves_tenants_by_weight(harnesses):
    inst = gated()
    h = harnesses(config(max_batch_size=4), [inst])
    heavy, light = Tenant(name="heavy", weight=3.0), Tenant(name="light", weight=1.0)
    submit_as(h, heavy, "h-first")
    await until(lambda: inst.running == 1)  # the idle instance took the first request alone
    for i in range(12):
        submit_as(h, heavy, f"h{i}")
    for i in range(4):
        submit_as(h, light, f"l{i}")
    await settle()
    assert h.sched.pending_count == 16
    inst.gate.set()
    await h.results()
    batches = inst.batches[1:]
    assert [len(b) for b in batches] == [4, 4, 4, 4]
    for batch in batches:  # 3 : 1 in every batch, FIFO within each tenant
        assert sum(rid.startswith("l") for rid in batch) == 1, batches
    assert [r for b in batches for r in b if r.startswith("l")] == ["l0", "l1", "l2", "l3"]
    assert [r for b in batches for r in b if r.startswith("h")] == [f"h{i}" for i in range(12)]


async def test_batcher_with_one_tenant_is_fifo(harnesses):
    inst = gated()
    h = harnesses(config(max_batch_size=4), [inst])
    solo = Tenant(name="solo")
    submit_as(h, solo, "first")
    await until(lambda: inst.running == 1)
    for i in range(8):
        submit_as(h, solo, f"r{i}")
    await settle()
    inst.gate.set()
    await h.results()
    assert inst.executed_ids == ["first"] + [f"r{i}" for i in range(8)]
    assert [len(b) for b in inst.batches] == [1, 4, 4]


# --- measured with real load ----------------------------------------------------------------------
BATCHED = FP32_IO + """
max_batch_size: 2
dynamic_batching { max_queue_delay_microseconds: 1000 }
"""
BODY = json.dumps({"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [1, 1], "data": [1.0]}]})


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("fairdyn")
    repo = root / "repo"
    # One execution takes SLEEP_S whatever the batch size: the model serves at most 2 / SLEEP_S per second.
    python_model(repo, "batched", f"time.sleep({SLEEP_S} / len(requests))\nout = x", config=BATCHED)
    path = root / "tenants.json"
    path.write_text(json.dumps({"tenants": {
        name: {"keys": [key], "models": ["batched"], "rights": ["inference"]} for name, key in KEYS.items()
    }}))
    with serve(repo, "--tenants-config", str(path)) as proc:
        yield proc


@contextlib.contextmanager
def batched_body():
    """The shared helpers post test_fairness.BODY; a batching model needs a batch dimension."""
    import test_fairness

    saved = test_fairness.BODY
    test_fairness.BODY = BODY
    try:
        yield
    finally:
        test_fairness.BODY = saved


async def test_quiet_tenant_p99_under_a_flood_with_dynamic_batching(server, leak_check):
    url = f"http://{server.http_url}/v2/models/batched/infer"
    with batched_body():
        async with aiohttp.ClientSession() as session:  # warm up
            for _ in range(3):
                await one(session, url, KEYS["quiet"])
        alone = await quiet_run(url)
        flood = await start_flood(url)
        try:
            await asyncio.sleep(1.5)  # let the flood build a queue first
            contended = await quiet_run(url)
        finally:
            flood.kill()
            await flood.wait()
    ratio = p99(contended) / p99(alone)
    print(f"\nfairness (dynamic batching): quiet p99 alone {p99(alone) * 1e3:.1f} ms, under a 10x flood "
          f"{p99(contended) * 1e3:.1f} ms, ratio {ratio:.2f} (median {np.median(alone) * 1e3:.1f} -> "
          f"{np.median(contended) * 1e3:.1f} ms)")
    # Unfair, a quiet request would wait ~2.5 s behind the flood (a ratio of 40 or more); the bound is
    # loose so a busy shared box does not make the test flaky.
    assert ratio < 8.0
    assert np.median(contended) / np.median(alone) < 4.0
