"""`tritonclient.grpc.aio`, `async_infer` callbacks and client cancellation against the gRPC frontend."""
from __future__ import annotations

import asyncio
import queue
import time

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as aioclient
from tritonclient.utils import InferenceServerException

from support.fake_facade import FakeFacade
from support.frontend_servers import ThreadedGrpc

TIMEOUT = 10


@pytest.fixture
def env():
    fake = FakeFacade(real_shm=False)
    srv = ThreadedGrpc(fake).start()
    yield fake, srv
    srv.stop()


def _inputs(mod, value: int) -> list:
    out = []
    for name in ("INPUT0", "INPUT1"):
        i = mod.InferInput(name, [1, 16], "INT32")
        i.set_data_from_numpy(np.full((1, 16), value, dtype=np.int32))
        out.append(i)
    return out


def _slow_input(mod) -> list:
    i = mod.InferInput("INPUT0", [1], "INT32")
    i.set_data_from_numpy(np.array([7], dtype=np.int32))
    return [i]


def _wait_for(predicate, timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached")
        time.sleep(0.01)


async def test_aio_client_unary_and_metadata(env):
    _, srv = env
    async with aioclient.InferenceServerClient(srv.url) as client:
        assert await client.is_server_live() and await client.is_model_ready("simple")
        results = await asyncio.gather(*(client.infer("simple", _inputs(aioclient, k)) for k in range(8)))
        assert [int(r.as_numpy("OUTPUT0")[0, 0]) for r in results] == [2 * k for k in range(8)]
        meta = await client.get_model_metadata("simple", as_json=True)
        assert meta["name"] == "simple"


async def test_aio_stream_infer_with_decoupled_model(env):
    _, srv = env

    async def requests():
        for k in range(2):
            i = aioclient.InferInput("IN", [1], "INT32")
            i.set_data_from_numpy(np.array([100 * k], dtype=np.int32))
            # (the aio client has no enable_empty_final_response option)
            yield {"model_name": "repeat_int32", "inputs": [i], "request_id": f"q{k}"}

    async with aioclient.InferenceServerClient(srv.url) as client:
        got: dict[str, list] = {"q0": [], "q1": []}
        async for result, error in client.stream_infer(requests()):
            assert error is None
            resp = result.get_response()
            final = resp.parameters["triton_final_response"].bool_param
            assert not final
            got[resp.id].append(int(result.as_numpy("OUT")[0]))
    assert got == {"q0": [0, 1, 2], "q1": [100, 101, 102]}


def test_async_infer_callbacks(env):
    _, srv = env
    client = grpcclient.InferenceServerClient(srv.url)
    done: queue.Queue = queue.Queue()
    for k in range(4):
        client.async_infer("simple", _inputs(grpcclient, k), callback=lambda result, error: done.put((result, error)),
                           request_id=str(k))
    got = sorted((done.get(timeout=TIMEOUT) for _ in range(4)), key=lambda p: p[0].get_response().id)
    assert [int(r.as_numpy("OUTPUT1")[0, 0]) for r, e in got] == [0, 0, 0, 0]
    assert all(e is None for _, e in got)
    client.close()


def test_cancelling_async_infer_removes_the_request(env):
    fake, srv = env
    client = grpcclient.InferenceServerClient(srv.url)
    done: queue.Queue = queue.Queue()
    future = client.async_infer("slow", _slow_input(grpcclient), callback=lambda result, error: done.put(error))
    _wait_for(lambda: fake.started == 1)
    future.cancel()
    error = done.get(timeout=TIMEOUT)
    assert isinstance(error, InferenceServerException) and "CANCELLED" in str(error.status())
    _wait_for(lambda: fake.cancelled == 1)
    client.close()


async def test_aio_client_timeout_cancels_the_core_request(env):
    fake, srv = env
    async with aioclient.InferenceServerClient(srv.url) as client:
        with pytest.raises(InferenceServerException) as info:
            await client.infer("slow", _slow_input(aioclient), client_timeout=0.3)
        assert info.value.status() == "StatusCode.DEADLINE_EXCEEDED"
    await asyncio.to_thread(_wait_for, lambda: fake.cancelled == 1)


async def test_released_slow_request_completes(env):
    fake, srv = env
    async with aioclient.InferenceServerClient(srv.url) as client:
        task = asyncio.create_task(client.infer("slow", _slow_input(aioclient)))
        await asyncio.to_thread(_wait_for, lambda: fake.started == 1)
        srv.call(lambda: fake.gate.set())
        result = await asyncio.wait_for(task, TIMEOUT)
        assert result.as_numpy("OUTPUT0").tolist() == [7]
