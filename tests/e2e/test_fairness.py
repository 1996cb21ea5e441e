"""Fair queueing by tenant: deficit round robin logic (pure), then a measurement with real load.

The measurement: a model that sleeps a fixed 50 ms on two instances; a quiet tenant sends a request
every 200 ms, alone and then while a second tenant (another process) floods the model at 10x that
rate (more than the model can serve, so its lane grows without bound). Without fair queueing the quiet tenant would
wait behind the whole flood; with it, a quiet request waits for at most the execution under way
plus its own. The issue's target is p99 within 2x of the quiet tenant's p99 alone (measured: 1.8
on an otherwise idle 2-core box); as the box is shared, the test asserts looser bounds that still
fail by a wide margin without fair queueing, and prints the ratio it measured (`pytest -s`).
"""
from __future__ import annotations

import asyncio
import json
import sys
import time
from types import SimpleNamespace

import aiohttp
import numpy as np
import pytest

from support.model_builders import FP32_IO, python_model
from support.servers import serve
from tritonpy.core.scheduling.fairness import FairQueue
from tritonpy.core.tenancy.tenants import Tenant


def item(tenant: Tenant | None, n: int) -> SimpleNamespace:
    return SimpleNamespace(tenant=tenant, n=n)


def drain(queue: FairQueue) -> list:
    out = []
    while queue:
        out.append(queue.popleft())
    return out


def test_single_lane_is_plain_fifo():
    queue = FairQueue()
    items = [item(None, i) for i in range(5)]
    for it in items:
        queue.append(it)
    queue.remove(items[2])
    assert len(queue) == 4 and list(queue) == [items[0], items[1], items[3], items[4]]
    assert drain(queue) == [items[0], items[1], items[3], items[4]]
    with pytest.raises(IndexError):
        queue.popleft()


def test_equal_weights_alternate_and_a_flood_only_delays_itself():
    flood, quiet = Tenant(name="flood"), Tenant(name="quiet")
    queue = FairQueue()
    for i in range(10):
        queue.append(item(flood, i))
    queue.append(item(quiet, 0))
    queue.append(item(quiet, 1))
    order = [(x.tenant.name, x.n) for x in drain(queue)]
    # The quiet tenant's requests go out within the first rounds, not after the ten queued before them.
    assert order[:4] == [("flood", 0), ("quiet", 0), ("flood", 1), ("quiet", 1)]
    assert [n for name, n in order if name == "flood"] == list(range(10))  # FIFO within a tenant


def test_weights_share_service_in_proportion():
    heavy, light = Tenant(name="heavy", weight=3.0), Tenant(name="light", weight=0.5)
    queue = FairQueue()
    for i in range(60):
        queue.append(item(heavy, i))
        queue.append(item(light, i))
    first = [x.tenant.name for x in [queue.popleft() for _ in range(35)]]
    assert first.count("heavy") == 30 and first.count("light") == 5  # 3 : 0.5


def test_remove_and_clear_keep_the_rotation_consistent():
    a, b = Tenant(name="a"), Tenant(name="b")
    queue = FairQueue()
    xs = [item(a, 0), item(b, 0), item(a, 1)]
    for x in xs:
        queue.append(x)
    queue.remove(xs[1])  # b's lane empties and leaves the round
    assert queue.lanes() == {"a": 2}
    assert drain(queue) == [xs[0], xs[2]]
    queue.append(item(b, 9))
    queue.clear()
    assert len(queue) == 0 and queue.lanes() == {}


# --- measured with real load --------------------------------------------------------------------
SLEEP_S = 0.05
QUIET_PERIOD_S = 0.2
SAMPLES = 60
KEYS = {"quiet": "fair-quiet-key-1", "flood": "fair-flood-key-1"}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("fair")
    repo = root / "repo"
    python_model(repo, "slow", f"time.sleep({SLEEP_S})\nout = x", config=FP32_IO + "instance_group [ { count: 2 } ]\n")
    path = root / "tenants.json"
    path.write_text(json.dumps({"tenants": {
        name: {"keys": [key], "models": ["slow"], "rights": ["inference"]} for name, key in KEYS.items()
    }}))
    with serve(repo, "--tenants-config", str(path)) as proc:
        yield proc


BODY = json.dumps({"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [1], "data": [1.0]}]})


async def one(session: aiohttp.ClientSession, url: str, key: str) -> float:
    t0 = time.perf_counter()
    async with session.post(url, data=BODY, headers={"Authorization": f"Bearer {key}",
                                                      "Content-Type": "application/json"}) as r:
        await r.read()
        assert r.status == 200, await r.text()
    return time.perf_counter() - t0


async def quiet_run(url: str) -> list[float]:
    latencies = []
    async with aiohttp.ClientSession() as session:
        start = time.perf_counter()
        for i in range(SAMPLES):
            latencies.append(await one(session, url, KEYS["quiet"]))
            await asyncio.sleep(max(0.0, start + (i + 1) * QUIET_PERIOD_S - time.perf_counter()))
    return latencies


# The flood runs in its own process, so its client work does not slow the quiet client's measurement.
FLOOD_SCRIPT = """
import asyncio, sys, time
import aiohttp

async def main(url, key, period, body):
    headers = {"Authorization": "Bearer " + key, "Content-Type": "application/json"}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=100)) as session:
        tasks = set()

        async def one():
            try:
                async with session.post(url, data=body, headers=headers) as r:
                    await r.read()
            except Exception:
                pass

        next_at = time.perf_counter()
        while True:
            if len(tasks) < 100:
                task = asyncio.create_task(one())
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            next_at += period
            await asyncio.sleep(max(0.0, next_at - time.perf_counter()))

asyncio.run(main(sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4]))
"""


async def start_flood(url: str) -> asyncio.subprocess.Process:
    """10x the quiet rate, open loop (capped at 100 outstanding so the client stays bounded)."""
    return await asyncio.create_subprocess_exec(
        sys.executable, "-c", FLOOD_SCRIPT, url, KEYS["flood"], str(QUIET_PERIOD_S / 10), BODY,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )


def p99(values: list[float]) -> float:
    return float(np.percentile(values, 99))


async def test_quiet_tenant_p99_under_a_flood(server, leak_check):
    url = f"http://{server.http_url}/v2/models/slow/infer"
    async with aiohttp.ClientSession() as session:  # warm up
        for _ in range(3):
            await one(session, url, KEYS["quiet"])
    alone = await quiet_run(url)
    flood = await start_flood(url)
    try:
        await asyncio.sleep(1.5)  # let the flood build a queue first
        contended = await quiet_run(url)
    finally:
        flood.kill()  # its connections close: the server withdraws its queued requests
        await flood.wait()
    ratio = p99(contended) / p99(alone)
    print(f"\nfairness: quiet p99 alone {p99(alone) * 1e3:.1f} ms, under a 10x flood "
          f"{p99(contended) * 1e3:.1f} ms, ratio {ratio:.2f} (median {np.median(alone) * 1e3:.1f} -> "
          f"{np.median(contended) * 1e3:.1f} ms)")
    # Without fair queueing a quiet request waits behind ~100 queued flood requests: about 2.5 s, a
    # ratio of 40 or more (the same test with one shared tenant does not finish in 120 s). The bounds
    # here sit far from that and well above what a quiet machine measures (p99 ratio ~1.8), so a
    # box busy with other work does not make the test flaky.
    assert ratio < 8.0
    assert np.median(contended) / np.median(alone) < 4.0
