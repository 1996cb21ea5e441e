"""HTTP endpoint benchmark: requests/s and p50/p99 latency for a small model, JSON vs binary tensors,
at several concurrencies. Not a test: numbers depend on the machine.

    python scripts/bench_http.py [--url localhost:8000] [--model add_sub] [--duration 3]
                                 [--concurrency 1 4 16] [--processes 1]
    python scripts/bench_http.py --self-test     # serve tests/support/fakes_http.py's FakeServer in-process
    python scripts/bench_http.py --codec         # orjson vs json for a 1M-element FP32 tensor

The load comes from separate client processes (aiohttp, keep-alive connections, one request in
flight per connection), so the client's own work does not share a GIL with the server when the
server runs in-process. Request bodies are built once from the model's metadata (variable
dimensions become 1) and re-sent unchanged.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
WARMUP_S = 0.5

NUMPY = {"BOOL": np.bool_, "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32, "UINT64": np.uint64,
         "INT8": np.int8, "INT16": np.int16, "INT32": np.int32, "INT64": np.int64, "FP16": np.float16,
         "FP32": np.float32, "FP64": np.float64}


def build_bodies(url: str, model: str) -> dict[str, tuple[bytes, dict[str, str]]]:
    """{"json": (body, headers), "binary": (body, headers)} for the model's inputs."""
    with urllib.request.urlopen(f"http://{url}/v2/models/{model}", timeout=10) as resp:
        meta = json.loads(resp.read())
    rng = np.random.default_rng(0)
    json_inputs, bin_inputs, blobs = [], [], []
    for spec in meta["inputs"]:
        shape = [1 if d < 0 else d for d in spec["shape"]]
        datatype = spec["datatype"]
        if datatype == "BYTES":
            values = [str(i) for i in range(int(np.prod(shape)))]
            raw = b"".join(len(v).to_bytes(4, "little") + v.encode() for v in values)
            data: list = values
        else:
            arr = (rng.random(shape) * 10).astype(NUMPY[datatype])
            raw = arr.tobytes()
            data = arr.reshape(-1).tolist()
        json_inputs.append({"name": spec["name"], "datatype": datatype, "shape": shape, "data": data})
        bin_inputs.append({"name": spec["name"], "datatype": datatype, "shape": shape,
                           "parameters": {"binary_data_size": len(raw)}})
        blobs.append(raw)
    outputs_json = [{"name": o["name"], "parameters": {"binary_data": False}} for o in meta["outputs"]]
    outputs_bin = [{"name": o["name"], "parameters": {"binary_data": True}} for o in meta["outputs"]]
    json_body = json.dumps({"inputs": json_inputs, "outputs": outputs_json}).encode()
    header = json.dumps({"inputs": bin_inputs, "outputs": outputs_bin}).encode()
    return {
        "json": (json_body, {"Content-Type": "application/json"}),
        "binary": (header + b"".join(blobs), {"Inference-Header-Content-Length": str(len(header))}),
    }


async def _load(url: str, path: str, body: bytes, headers: dict[str, str], concurrency: int,
                duration: float) -> tuple[list[float], int]:
    import aiohttp

    latencies: list[float] = []
    errors = 0
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        target = f"http://{url}{path}"
        # A short warm-up (connections, caches) that is not recorded.
        measure_from = time.perf_counter() + WARMUP_S
        deadline = measure_from + duration

        async def worker() -> None:
            nonlocal errors
            while time.perf_counter() < deadline:
                start = time.perf_counter()
                async with session.post(target, data=body, headers=headers) as resp:
                    await resp.read()
                    if resp.status != 200:
                        errors += 1
                if start >= measure_from:
                    latencies.append(time.perf_counter() - start)

        await asyncio.gather(*(asyncio.create_task(worker(), name=f"bench-client-{i}") for i in range(concurrency)))
    return latencies, errors


def _client_process(args: tuple, queue: mp.Queue) -> None:
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    queue.put(asyncio.run(_load(*args)))


def run_cell(url: str, path: str, body: bytes, headers: dict[str, str], concurrency: int, duration: float,
             processes: int) -> tuple[float, float, float, int]:
    """(requests/s, p50 ms, p99 ms, errors) for one mode and concurrency."""
    ctx = mp.get_context("spawn")
    queue: mp.Queue = ctx.Queue()
    per_proc = [concurrency // processes + (1 if i < concurrency % processes else 0) for i in range(processes)]
    procs = [ctx.Process(target=_client_process, args=((url, path, body, headers, n, duration), queue),
                         name=f"bench-http-client-{i}") for i, n in enumerate(per_proc) if n > 0]
    for p in procs:
        p.start()
    latencies: list[float] = []
    errors = 0
    for _ in procs:
        lat, err = queue.get(timeout=duration + WARMUP_S + 60)
        latencies.extend(lat)
        errors += err
    for p in procs:
        p.join()
    lat = np.array(latencies) * 1000.0
    return len(lat) / duration, float(np.percentile(lat, 50)), float(np.percentile(lat, 99)), errors


def benchmark(url: str, model: str, concurrencies: list[int], duration: float, processes: int) -> None:
    bodies = build_bodies(url, model)
    path = f"/v2/models/{model}/infer"
    print(f"model {model} at {url}, {duration:.0f}s per cell, {processes} client process(es)")
    print(f"{'mode':<8}{'conc':>6}{'req/s':>10}{'p50 ms':>10}{'p99 ms':>10}{'errors':>8}")
    for mode in ("json", "binary"):
        body, headers = bodies[mode]
        for conc in concurrencies:
            rps, p50, p99, errors = run_cell(url, path, body, headers, conc, duration, min(processes, conc))
            print(f"{mode:<8}{conc:>6}{rps:>10.0f}{p50:>10.2f}{p99:>10.2f}{errors:>8}", flush=True)


def codec_measurement(n: int = 1_000_000) -> None:
    """orjson vs the standard json module on a request/response carrying n FP32 values."""
    import orjson

    def best(fn, reps: int = 5) -> float:
        times = []
        for _ in range(reps):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        return min(times) * 1000.0

    arr = np.random.default_rng(0).random(n).astype(np.float32)
    body = json.dumps({"inputs": [{"name": "X", "datatype": "FP32", "shape": [n], "data": arr.tolist()}]}).encode()
    out_doc = {"model_name": "m", "model_version": "1",
               "outputs": [{"name": "Y", "datatype": "FP32", "shape": [n], "data": arr}]}
    as_list = {**out_doc, "outputs": [{**out_doc["outputs"][0], "data": arr.tolist()}]}
    data = orjson.loads(body)["inputs"][0]["data"]
    rows = [
        ("decode request  json.loads", best(lambda: json.loads(body))),
        ("decode request  orjson.loads", best(lambda: orjson.loads(body))),
        ("list -> np.asarray + astype(float32)", best(lambda: np.asarray(data).astype(np.float32))),
        ("encode response json.dumps(arr.tolist())", best(lambda: json.dumps(as_list).encode())),
        ("encode response orjson.dumps(arr.tolist())", best(lambda: orjson.dumps(as_list))),
        ("encode response orjson OPT_SERIALIZE_NUMPY", best(
            lambda: orjson.dumps(out_doc, option=orjson.OPT_SERIALIZE_NUMPY))),
    ]
    print(f"{n} FP32 values, request body {len(body) / 1e6:.1f} MB; best of 5")
    for name, ms in rows:
        print(f"  {name:<45}{ms:>8.1f} ms")


def self_test(args: argparse.Namespace) -> None:
    sys.path.insert(0, str(ROOT / "tests"))
    from support.fakes_http import FakeServer, HttpServerThread

    try:
        import uvloop

        policy = uvloop.EventLoopPolicy()
        asyncio.set_event_loop_policy(policy)
    except ImportError:
        pass
    with HttpServerThread(FakeServer()) as srv:
        benchmark(srv.url, args.model, args.concurrency, args.duration, args.processes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="localhost:8000")
    parser.add_argument("--model", default="add_sub")
    parser.add_argument("--duration", type=float, default=3.0)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--processes", type=int, default=1, help="client processes sharing the connections")
    parser.add_argument("--self-test", action="store_true", help="serve the fake facade in this process")
    parser.add_argument("--codec", action="store_true", help="only measure orjson vs json")
    args = parser.parse_args()
    if args.codec:
        codec_measurement()
    elif args.self_test:
        self_test(args)
    else:
        benchmark(args.url, args.model, args.concurrency, args.duration, args.processes)


if __name__ == "__main__":
    main()
