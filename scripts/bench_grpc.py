#!/usr/bin/env python3
"""Throughput and latency of the gRPC endpoint for a tiny model (a benchmark, not a test).

    python scripts/bench_grpc.py [--url localhost:8001] [--model add_sub] [--concurrency 1,4,16]
                                 [--duration 5] [--modes unary,stream]
    python scripts/bench_grpc.py --self-test      # the frontend with the fake core, in this process

For each mode and concurrency it prints infer/s and p50/p99 latency. "unary" runs N concurrent
ModelInfer calls; "stream" keeps N requests in flight on one ModelStreamInfer stream. Inputs are
built from the model's metadata (variable dimensions become 1). The self-test serves the fake core
from the tests on a background thread of this process, so client and server share one interpreter:
its figures measure the frontend's per-request cost, not what a separate client would see.
"""
from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as aioclient

_NP = {
    "BOOL": np.bool_, "INT8": np.int8, "INT16": np.int16, "INT32": np.int32, "INT64": np.int64,
    "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32, "UINT64": np.uint64,
    "FP16": np.float16, "FP32": np.float32, "FP64": np.float64,
}


def build_inputs(url: str, model: str) -> list[aioclient.InferInput]:
    client = grpcclient.InferenceServerClient(url)
    try:
        meta = client.get_model_metadata(model, as_json=True)
    finally:
        client.close()
    inputs = []
    for tensor in meta["inputs"]:
        shape = [1 if int(d) < 0 else int(d) for d in tensor.get("shape", [])]
        datatype = tensor["datatype"]
        if datatype == "BYTES":
            data = np.full(shape, b"1", dtype=object)
        else:
            data = (np.random.RandomState(0).rand(*shape) * 10).astype(_NP[datatype])
        item = aioclient.InferInput(tensor["name"], shape, datatype)
        item.set_data_from_numpy(data)
        inputs.append(item)
    return inputs


def summarize(latencies: list[float], elapsed: float) -> tuple[float, float, float]:
    lat = np.asarray(latencies) * 1000.0
    return len(latencies) / elapsed, float(np.percentile(lat, 50)), float(np.percentile(lat, 99))


async def run_unary(url: str, model: str, inputs: list, concurrency: int, duration: float) -> list[float]:
    latencies: list[float] = []
    async with aioclient.InferenceServerClient(url) as client:
        await client.infer(model, inputs)  # warm-up (channel, first call)
        stop = time.perf_counter() + duration

        async def worker() -> None:
            while time.perf_counter() < stop:
                t0 = time.perf_counter()
                await client.infer(model, inputs)
                latencies.append(time.perf_counter() - t0)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies


async def run_stream(url: str, model: str, inputs: list, concurrency: int, duration: float) -> list[float]:
    latencies: list[float] = []
    sent: dict[str, float] = {}
    slots = asyncio.Semaphore(concurrency)
    stop = time.perf_counter() + duration

    async def requests():
        n = 0
        while time.perf_counter() < stop:
            await slots.acquire()
            n += 1
            sent[str(n)] = time.perf_counter()
            yield {"model_name": model, "inputs": inputs, "request_id": str(n)}

    async with aioclient.InferenceServerClient(url) as client:
        async for result, error in client.stream_infer(requests()):
            if error is not None:
                raise RuntimeError(f"stream error: {error}")
            resp = result.get_response()
            if not resp.parameters["triton_final_response"].bool_param and resp.outputs:
                continue  # a decoupled model's intermediate response
            latencies.append(time.perf_counter() - sent.pop(resp.id))
            slots.release()
            if not sent and time.perf_counter() >= stop:
                break
    return latencies


async def bench(url: str, model: str, concurrencies: list[int], duration: float, modes: list[str]) -> None:
    inputs = await asyncio.to_thread(build_inputs, url, model)
    print(f"# gRPC {url} model={model} duration={duration}s per point")
    print(f"{'mode':<7} {'conc':>4} {'infer/s':>10} {'p50 ms':>9} {'p99 ms':>9}")
    for mode in modes:
        runner = run_unary if mode == "unary" else run_stream
        for c in concurrencies:
            t0 = time.perf_counter()
            lat = await runner(url, model, inputs, c, duration)
            rate, p50, p99 = summarize(lat, time.perf_counter() - t0)
            print(f"{mode:<7} {c:>4} {rate:>10.1f} {p50:>9.3f} {p99:>9.3f}", flush=True)


def self_test(args: argparse.Namespace) -> None:
    """Serve the tests' fake core with the real frontend on a background loop, then benchmark it."""
    tests = Path(__file__).resolve().parent.parent / "tests"
    sys.path.insert(0, str(tests))
    from support.fakes_grpc import FakeServer, ThreadedGrpc  # test helper, only for --self-test

    srv = ThreadedGrpc(FakeServer()).start()
    try:
        asyncio.run(bench(srv.url, "simple", args.concurrency, args.duration, args.modes))
    finally:
        srv.stop()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", default="localhost:8001")
    p.add_argument("--model", default="add_sub")
    p.add_argument("--concurrency", default="1,4,16", type=lambda s: [int(x) for x in s.split(",")])
    p.add_argument("--duration", default=5.0, type=float, help="seconds per measurement point")
    p.add_argument("--modes", default="unary,stream", type=lambda s: [m for m in s.split(",") if m])
    p.add_argument("--self-test", action="store_true", help="benchmark the frontend with the in-process fake core")
    args = p.parse_args(argv)
    for mode in args.modes:
        if mode not in ("unary", "stream"):
            p.error(f"unknown mode '{mode}'")
    if args.self_test:
        self_test(args)
    else:
        asyncio.run(bench(args.url, args.model, args.concurrency, args.duration, args.modes))
    return 0


if __name__ == "__main__":
    sys.exit(main())
