#!/usr/bin/env python3
"""A ResNet-class CNN served over gRPC, next to raw in-process onnxruntime (a benchmark, not a test).

    python scripts/bench_cnn.py [--size 112] [--duration 0.6] [--rounds 2] [--rotations 8]
                                [--slice 0.3] [--tput-pairs 10] [--wait-quiet 10]
                                [--keep DIR] [--profile]

What it does, all in one run so the figures share the machine's load:
1. builds a small ResNet (stem conv, six residual basic blocks with BatchNorm folded into the
   conv biases, global average pool, 1000-way Gemm; random weights, seed 0) as ONNX, and a model
   repository with two copies: `cnn_batched` (dynamic_batching, max_queue_delay 500 µs) and
   `cnn_plain` (no dynamic batching). Both: max_batch_size 8, one instance, intra_op_thread_count 2
   and inter_op_thread_count 1 (the names backends/array_config.py reads). The server runs with --disable-auto-complete-config, because auto-complete (as in Triton)
   would give cnn_plain `dynamic_batching {}`;
2. times `onnxruntime.InferenceSession.run` in this process with the same thread settings at batch
   1, 2, 4, 8 (images/s and p50 latency per call);
3. starts the server and drives both models with the tritonclient gRPC asyncio client (binary raw
   input contents, one image per request) at concurrency 1, 2, 4, 8: images/s, p50 and p99;
4. repeats that `--rounds` times, alternating raw and served (the tables show medians), then
   fetches the server's own statistics (queue / compute_input / compute_infer / compute_output);
5. measures the two ratios the "Scheduling" issue asks about with alternating short slices:
   closed loops of raw batch 1 and of c=1 requests to each served model, `--rotations` times
   (latency gap), and raw at its best batch vs served at its best configuration, `--tput-pairs`
   times (throughput ratio). On a shared machine the CPU speed changes by several times from one
   minute to the next, so only figures taken side by side are compared;
6. prints CPU time per image in each process (client, server, worker), from psutil.

With --profile it also runs cProfile over the client at concurrency 1 and prints the top entries,
to see how much of a request's time is spent in the client process itself.
"""
from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import pstats
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_common import (
    LoadMeter,
    percentiles_ms,
    print_machine,
    print_table,
    serve,
    time_loop,
    wait_quiet,
)

OPSET = 13
IR_VERSION = 8
BATCHES = [1, 2, 4, 8]
CONCURRENCY = [1, 2, 4, 8]
INTRA_THREADS = 2
SERVED_FOR_LATENCY = ["ident", "cnn_plain", "cnn_batched"]


# ---- the model -----------------------------------------------------------------------------------

def build_resnet(size: int):
    """Stem 7x7/2 + maxpool, stages of basic blocks at 32/64/128 channels, GAP, Gemm to 1000."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.RandomState(0)
    nodes: list = []
    inits: list = []
    counter = iter(range(10_000))

    def conv(x: str, cin: int, cout: int, k: int, stride: int = 1, relu: bool = True) -> str:
        i = next(counter)
        w, b, out = f"conv{i}_w", f"conv{i}_b", f"conv{i}"
        fan_in = cin * k * k
        inits.append(numpy_helper.from_array(
            (rng.standard_normal((cout, cin, k, k)) * np.sqrt(2.0 / fan_in)).astype(np.float32), w))
        # BatchNorm folded: its scale is in the weights, its shift is this bias.
        inits.append(numpy_helper.from_array((rng.standard_normal(cout) * 0.01).astype(np.float32), b))
        nodes.append(helper.make_node(
            "Conv", [x, w, b], [out], kernel_shape=[k, k], strides=[stride, stride], pads=[k // 2] * 4))
        if relu:
            nodes.append(helper.make_node("Relu", [out], [out + "_r"]))
            return out + "_r"
        return out

    def block(x: str, cin: int, cout: int, stride: int) -> str:
        y = conv(x, cin, cout, 3, stride)
        y = conv(y, cout, cout, 3, 1, relu=False)
        shortcut = x if (cin == cout and stride == 1) else conv(x, cin, cout, 1, stride, relu=False)
        i = next(counter)
        nodes.append(helper.make_node("Add", [y, shortcut], [f"add{i}"]))
        nodes.append(helper.make_node("Relu", [f"add{i}"], [f"add{i}_r"]))
        return f"add{i}_r"

    x = conv("input", 3, 32, 7, 2)
    nodes.append(helper.make_node("MaxPool", [x], ["pool"], kernel_shape=[3, 3], strides=[2, 2], pads=[1] * 4))
    x, channels = "pool", 32
    for cout, stride in ((32, 1), (32, 1), (64, 2), (64, 1), (128, 2), (128, 1)):
        x = block(x, channels, cout, stride)
        channels = cout
    nodes.append(helper.make_node("GlobalAveragePool", [x], ["gap"]))
    nodes.append(helper.make_node("Flatten", ["gap"], ["flat"], axis=1))
    inits.append(numpy_helper.from_array(
        (rng.standard_normal((1000, channels)) * np.sqrt(1.0 / channels)).astype(np.float32), "fc_w"))
    inits.append(numpy_helper.from_array(np.zeros(1000, np.float32), "fc_b"))
    nodes.append(helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["output"], transB=1))
    graph = helper.make_graph(
        nodes, "resnet_small",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, size, size])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 1000])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="tritonpy-bench")
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    return model


def config_text(name: str, size: int, batching: bool, spin: bool = False) -> str:
    dyn = "dynamic_batching { max_queue_delay_microseconds: 500 }\n" if batching else ""
    if spin:
        dyn += 'parameters { key: "allow_spinning" value: { string_value: "1" } }\n'
    return f"""\
name: "{name}"
platform: "onnxruntime_onnx"
max_batch_size: 8
input [ {{ name: "input" data_type: TYPE_FP32 dims: [ 3, {size}, {size} ] }} ]
output [ {{ name: "output" data_type: TYPE_FP32 dims: [ 1000 ] }} ]
instance_group [ {{ count: 1 kind: KIND_CPU }} ]
{dyn}parameters {{ key: "intra_op_thread_count" value: {{ string_value: "{INTRA_THREADS}" }} }}
parameters {{ key: "inter_op_thread_count" value: {{ string_value: "1" }} }}
"""


IDENT_CONFIG = """\
name: "ident"
backend: "identity"
max_batch_size: 8
input [ {{ name: "input" data_type: TYPE_FP32 dims: [ 3, {size}, {size} ] }} ]
output [ {{ name: "input_copy" data_type: TYPE_FP32 dims: [ 3, {size}, {size} ] }} ]
instance_group [ {{ count: 1 kind: KIND_CPU }} ]
"""


def write_repository(repo: Path, size: int) -> Path:
    import onnx

    model = build_resnet(size)
    for name, batching, spin in (("cnn_batched", True, False), ("cnn_plain", False, False),
                                 ("cnn_spin", False, True)):
        d = repo / name
        (d / "1").mkdir(parents=True, exist_ok=True)
        onnx.save(model, str(d / "1" / "model.onnx"))
        (d / "config.pbtxt").write_text(config_text(name, size, batching, spin))
    d = repo / "ident"
    (d / "1").mkdir(parents=True, exist_ok=True)
    (d / "config.pbtxt").write_text(IDENT_CONFIG.format(size=size))
    return repo / "cnn_plain" / "1" / "model.onnx"


# ---- raw onnxruntime ------------------------------------------------------------------------------

def raw_session(model_path: Path):
    """An in-process session with the options the server's onnxruntime backend uses for this config."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = INTRA_THREADS
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(model_path), sess_options=options, providers=["CPUExecutionProvider"])


def bench_raw(session, size: int, duration: float) -> dict[int, tuple[float, float]]:
    """batch -> (images/s, p50 ms per call)."""
    rng = np.random.RandomState(1)
    results = {}
    for batch in BATCHES:
        x = rng.rand(batch, 3, size, size).astype(np.float32)
        lat = time_loop(lambda x=x: session.run(["output"], {"input": x}), duration=duration)
        results[batch] = (batch * len(lat) / sum(lat), percentiles_ms(lat)[0])
    return results


# ---- served over gRPC -----------------------------------------------------------------------------

async def drive(client, model: str, image: np.ndarray, concurrency: int, duration: float) -> tuple[float, list[float]]:
    """`concurrency` tasks each sending one-image requests back to back for `duration` seconds."""
    import tritonclient.grpc.aio as aioclient

    item = aioclient.InferInput("input", list(image.shape), "FP32")
    item.set_data_from_numpy(image)
    outputs = [aioclient.InferRequestedOutput("output")]

    async def one() -> None:
        result = await client.infer(model, [item], outputs=outputs)
        if result.as_numpy("output").shape != (1, 1000):
            raise RuntimeError("unexpected output shape")

    for _ in range(2):  # warm-up: onnxruntime's first run at each batch size, the channel
        await asyncio.gather(*(one() for _ in range(concurrency)))
    latencies: list[float] = []
    end = time.perf_counter() + duration

    async def worker() -> None:
        while time.perf_counter() < end:
            t0 = time.perf_counter()
            await one()
            latencies.append(time.perf_counter() - t0)

    t_start = time.perf_counter()
    await asyncio.gather(*(asyncio.create_task(worker(), name=f"bench-client-{i}") for i in range(concurrency)))
    return time.perf_counter() - t_start, latencies


async def spin_compare(url: str, size: int, duration: float, rounds: int) -> None:
    """cnn_plain (onnxruntime spin-waiting off, the default) against cnn_spin (on), alternating."""
    import tritonclient.grpc.aio as aioclient

    image = np.random.RandomState(3).rand(1, 3, size, size).astype(np.float32)
    client = aioclient.InferenceServerClient(url)
    try:
        print("\nonnxruntime spin-waiting, same run, alternating (images/s, p50 ms):")
        for c in (1, 4):
            rates: dict[str, list[float]] = {"cnn_plain": [], "cnn_spin": []}
            p50s: dict[str, list[float]] = {"cnn_plain": [], "cnn_spin": []}
            for _ in range(rounds):
                for model in ("cnn_plain", "cnn_spin"):
                    elapsed, lat = await drive(client, model, image, c, duration)
                    rates[model].append(len(lat) / elapsed)
                    p50s[model].append(percentiles_ms(lat)[0])
            off, on = _median(rates["cnn_plain"]), _median(rates["cnn_spin"])
            print(f"  c={c}: spin off {off:7.1f}/s p50 {_median(p50s['cnn_plain']):.2f} | "
                  f"spin on {on:7.1f}/s p50 {_median(p50s['cnn_spin']):.2f} | off/on = {off / on:.2f}x")
    finally:
        await client.close()


async def bench_served(client, size: int, duration: float) -> dict[tuple[str, int], tuple[float, float, float]]:
    """(model, concurrency) -> (images/s, p50 ms, p99 ms); one image per request."""
    image = np.random.RandomState(2).rand(1, 3, size, size).astype(np.float32)
    results = {}
    for model in ("cnn_batched", "cnn_plain"):
        for c in CONCURRENCY:
            elapsed, lat = await drive(client, model, image, c, duration)
            p50, p99 = percentiles_ms(lat)
            results[(model, c)] = (len(lat) / elapsed, p50, p99)
    return results


async def profile_client(client, size: int, duration: float) -> None:
    image = np.random.RandomState(2).rand(1, 3, size, size).astype(np.float32)
    prof = cProfile.Profile()
    prof.enable()
    elapsed, lat = await drive(client, "cnn_plain", image, 1, duration)
    prof.disable()
    out = io.StringIO()
    pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(12)
    stats = pstats.Stats(prof).stats
    total = sum(row[2] for row in stats.values())  # sum of internal times = profiled wall time
    waiting = sum(row[2] for func, row in stats.items() if func[2] in ("<method 'poll' of 'select.epoll' objects>",))
    n = max(1, len(lat))
    print(f"\ncProfile of the client, cnn_plain c=1: {len(lat)} requests in {elapsed:.2f} s "
          f"({1000 * elapsed / n:.2f} ms/request): {1000 * (total - waiting) / n:.2f} ms/request running in the "
          f"client's Python thread, {1000 * waiting / n:.2f} ms/request waiting in epoll for the server")
    print("\n".join(out.getvalue().splitlines()[:32]))


async def paired_latency(client, session, size: int, rotations: int, slice_s: float) -> dict[str, list[float]]:
    """Per rotation, the p50 of a closed loop (one call at a time) of `slice_s` seconds each:
    raw batch 1, then c=1 requests to each served model. Values are p50s in seconds.

    Short alternating slices keep every column under the same machine load, which a shared
    machine changes by several times from one second to the next, while each slice is the steady
    back-to-back loop the "p50 at c=1" target is about. `ident` (the identity backend, same input)
    is the server's floor: the same request path with no compute.
    """
    import tritonclient.grpc.aio as aioclient

    image = np.random.RandomState(2).rand(1, 3, size, size).astype(np.float32)
    item = aioclient.InferInput("input", list(image.shape), "FP32")
    item.set_data_from_numpy(image)
    out: dict[str, list[float]] = {"raw": [], **{m: [] for m in SERVED_FOR_LATENCY}}
    for _ in range(rotations):
        lat = time_loop(lambda: session.run(["output"], {"input": image}), duration=slice_s)
        out["raw"].append(float(np.median(lat)))
        for m in SERVED_FOR_LATENCY:
            wanted = [aioclient.InferRequestedOutput("output" if m != "ident" else "input_copy")]
            for _ in range(3):
                await client.infer(m, [item], outputs=wanted)
            lat = []
            end = time.perf_counter() + slice_s
            while time.perf_counter() < end:
                t0 = time.perf_counter()
                await client.infer(m, [item], outputs=wanted)
                lat.append(time.perf_counter() - t0)
            out[m].append(float(np.median(lat)))
    return out


async def paired_throughput(client, session, size: int, raw_batch: int, model: str, concurrency: int,
                            duration: float, pairs: int) -> list[tuple[float, float]]:
    """Alternate `duration`-second slices of raw (at raw_batch) and served (model, concurrency)."""
    x = np.random.RandomState(1).rand(raw_batch, 3, size, size).astype(np.float32)
    image = x[:1].copy()
    out = []
    for _ in range(pairs):
        lat = time_loop(lambda: session.run(["output"], {"input": x}), duration=duration)
        raw_ips = raw_batch * len(lat) / sum(lat)
        elapsed, served_lat = await drive(client, model, image, concurrency, duration)
        out.append((raw_ips, len(served_lat) / elapsed))
    return out


def _cpu_by_process(server_pid: int) -> dict[str, float]:
    """CPU seconds so far of this client, the server process, and each worker (by model name)."""
    import psutil

    def cpu(proc) -> float:
        t = proc.cpu_times()
        return t.user + t.system

    server = psutil.Process(server_pid)
    result = {"client": cpu(psutil.Process()), "server": cpu(server)}
    for child in server.children(recursive=True):
        try:
            cmd = " ".join(child.cmdline())
            name = next((m for m in ("cnn_batched", "cnn_plain", "ident") if m in cmd), f"pid {child.pid}")
            result[f"worker {name}"] = result.get(f"worker {name}", 0.0) + cpu(child)
        except psutil.Error:
            continue
    return result


async def cpu_split(client, server_pid: int, session, size: int, duration: float) -> list[tuple[str, int, int, dict[str, float]]]:
    """CPU ms per image in each process while one configuration runs: where the machine's 2 cores go.

    CPU time is less sensitive than wall time to other tenants of a shared machine: when the
    machine is CPU-bound, throughput is at most (cores / CPU per image) for either path.
    """
    image = np.random.RandomState(2).rand(1, 3, size, size).astype(np.float32)
    out = []
    for batch in (1, 8):
        x = np.random.RandomState(1).rand(batch, 3, size, size).astype(np.float32)
        before = _cpu_by_process(server_pid)
        t0 = time.perf_counter()
        lat = time_loop(lambda x=x: session.run(["output"], {"input": x}), duration=duration, warmup=0)
        elapsed = time.perf_counter() - t0
        after = _cpu_by_process(server_pid)
        n = batch * len(lat)
        out.append((f"raw batch {batch}", 0, n, {"client": 1000 * (after["client"] - before["client"]) / n,
                                                  "server": 0.0, "wall": 1000 * elapsed / len(lat)}))
    for model, c in (("cnn_plain", 1), ("cnn_batched", 8)):
        before = _cpu_by_process(server_pid)
        elapsed, lat = await drive(client, model, image, c, duration)
        after = _cpu_by_process(server_pid)
        n = len(lat) + 2 * c  # drive's warm-up requests use CPU too
        per = {k: 1000 * (after[k] - before.get(k, 0.0)) / n for k in after
               if not k.startswith("worker") or model in k}
        per["wall"] = 1000 * elapsed / max(1, len(lat))
        out.append((f"{model} c={c}", c, n, per))
    return out


async def server_breakdown(client, models: list[str]) -> dict[str, dict[str, float]]:
    """Per model, the server's own cumulative statistics as average ms per request (or per batch)."""
    result = {}
    for m in models:
        stats = (await client.get_inference_statistics(m, as_json=True))["model_stats"][0]
        inf = stats["inference_stats"]
        n = max(1, int(inf.get("success", {}).get("count", 0) or 0))
        per = {k: int(inf.get(k, {}).get("ns", 0) or 0) / n / 1e6
               for k in ("success", "queue", "compute_input", "compute_infer", "compute_output")}
        per["requests"] = n
        per["executions"] = int(stats.get("execution_count", 0) or 0)
        result[m] = per
    return result


async def run_all(url: str, server_pid: int, session, args) -> dict:
    """Tables (alternating rounds), then the paired measurements behind the two target ratios."""
    import tritonclient.grpc.aio as aioclient

    raws, serveds = [], []
    async with aioclient.InferenceServerClient(url) as client:
        for r in range(args.rounds):
            raws.append(bench_raw(session, args.size, args.duration))
            serveds.append(await bench_served(client, args.size, args.duration))
            print(f"round {r + 1}/{args.rounds} done", flush=True)
        breakdown = await server_breakdown(client, ["cnn_batched", "cnn_plain"])
        split = await cpu_split(client, server_pid, session, args.size, args.duration)
        lat_pairs = await paired_latency(client, session, args.size, args.rotations, args.slice)
        raw_med = {b: _median([r[b][0] for r in raws]) for b in BATCHES}
        best_batch = max(raw_med, key=raw_med.get)
        served_med = {k: _median([s[k][0] for s in serveds]) for k in serveds[0]}
        best_model, best_c = max(served_med, key=served_med.get)
        tput_pairs = await paired_throughput(
            client, session, args.size, best_batch, best_model, best_c, args.slice, args.tput_pairs)
        if args.profile:
            await profile_client(client, args.size, args.duration)
    return {
        "raws": raws, "serveds": serveds, "breakdown": breakdown, "split": split, "lat_pairs": lat_pairs,
        "tput_pairs": tput_pairs, "best_batch": best_batch, "best_served": (best_model, best_c),
    }


def _median(values: list[float]) -> float:
    return float(np.median(values))


def report(res: dict, args) -> None:
    raws, serveds = res["raws"], res["serveds"]
    raw = {b: (_median([r[b][0] for r in raws]), _median([r[b][1] for r in raws])) for b in BATCHES}
    served = {k: tuple(_median([s[k][i] for s in serveds]) for i in range(3)) for k in serveds[0]}
    print(f"\nraw onnxruntime, input [N,3,{args.size},{args.size}], intra_op {INTRA_THREADS}, in process "
          f"(median of {args.rounds} rounds):")
    print_table(["batch", "images/s", "p50 ms/call"], [[str(b), f"{ips:.1f}", f"{p50:.2f}"] for b, (ips, p50) in raw.items()])
    print(f"\nserved over gRPC (tritonclient.grpc.aio, one image per request; median of {args.rounds} rounds):")
    print_table(
        ["model", "concurrency", "images/s", "p50 ms", "p99 ms"],
        [[m, str(c), f"{ips:.1f}", f"{p50:.2f}", f"{p99:.2f}"] for (m, c), (ips, p50, p99) in served.items()],
    )
    print("\nserver statistics over the table runs (average ms per request; compute = per execution / requests):")
    rows = []
    for m, st in res["breakdown"].items():
        rows.append([m, str(st["requests"]), str(st["executions"]), f"{st['success']:.2f}", f"{st['queue']:.2f}",
                     f"{st['compute_input']:.2f}", f"{st['compute_infer']:.2f}", f"{st['compute_output']:.2f}"])
    print_table(["model", "requests", "executions", "total", "queue", "compute_input", "compute_infer", "compute_output"], rows)

    print("\nCPU time per image by process (ms; raw runs in the client process; "
          "'wall' = elapsed time per call or per request per client task):")
    rows = []
    totals = {}
    for label, _, n, per in res["split"]:
        worker = sum(v for k, v in per.items() if k.startswith("worker"))
        total = per["client"] + per["server"] + worker
        totals[label] = total
        rows.append([label, str(n), f"{per['client']:.2f}", f"{per['server']:.2f}", f"{worker:.2f}",
                     f"{total:.2f}", f"{per['wall']:.2f}"])
    print_table(["run", "images", "client", "server", "worker", "total CPU", "wall"], rows)
    best_raw_cpu = min(totals["raw batch 1"], totals["raw batch 8"])
    for label in ("cnn_plain c=1", "cnn_batched c=8"):
        print(f"  CPU-bound ceiling {label} / raw: {best_raw_cpu / totals[label]:.2f} "
              "(best raw CPU per image / served CPU per image)")

    print("\nheadline ratios (paired measurements, taken after the tables):")
    pairs = res["tput_pairs"]
    ratios = [s / r for r, s in pairs]
    ratio = _median(ratios)
    model, c = res["best_served"]
    print(f"throughput: raw batch {res['best_batch']} vs served {model} c={c}, {len(pairs)} alternating "
          f"{args.slice:.1f} s slices: raw median {_median([r for r, _ in pairs]):.1f} images/s, served median "
          f"{_median([s for _, s in pairs]):.1f} images/s")
    print("  served / raw per pair: " + ", ".join(f"{x:.3f}" for x in ratios))
    print(f"  served / best raw throughput = {ratio:.3f} (median of pairs; target >= 0.95: "
          f"{'met' if ratio >= 0.95 else 'NOT met'})")
    lp = res["lat_pairs"]
    raw_ms = np.asarray(lp["raw"]) * 1000
    print(f"latency at c=1: {len(raw_ms)} rotations of {args.slice:.1f} s closed loops (raw batch 1, then each "
          "served model); per-rotation p50s:")
    rows = [["raw onnxruntime", f"{np.median(raw_ms):.2f}", f"{raw_ms.min():.2f}-{raw_ms.max():.2f}", ""]]
    for m in SERVED_FOR_LATENCY:
        ms = np.asarray(lp[m]) * 1000
        rows.append([m, f"{np.median(ms):.2f}", f"{ms.min():.2f}-{ms.max():.2f}", f"{np.median(ms - raw_ms):+.2f}"])
    print_table(["path", "median p50 ms", "range of p50s", "median of (p50 - raw p50)"], rows)
    for m in ("cnn_plain", "cnn_batched"):
        gap = float(np.median((np.asarray(lp[m]) - np.asarray(lp["raw"])) * 1000))
        print(f"  {m}: served p50 at c=1 - raw p50 at batch 1 = {gap:+.2f} ms "
              f"(target <= 0.5 ms: {'met' if gap <= 0.5 else 'NOT met'})")
    print("  (ident is the same request with no compute: the server's floor on this machine)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=112, help="image height and width (default 112)")
    parser.add_argument("--duration", type=float, default=0.6, help="seconds per measurement (default 0.6)")
    parser.add_argument("--rounds", type=int, default=2, help="raw/served alternations for the tables (default 2)")
    parser.add_argument("--rotations", type=int, default=8, help="raw/served slice rotations for the latency gap")
    parser.add_argument("--slice", type=float, default=0.3, help="seconds per slice in the throughput pairs")
    parser.add_argument("--tput-pairs", type=int, default=10, help="raw/served slice pairs for the throughput ratio")
    parser.add_argument("--keep", type=Path, help="write the model repository here instead of a temp folder")
    parser.add_argument("--wait-quiet", type=float, default=10.0, help="wait up to this many s for an idle machine")
    parser.add_argument("--profile", action="store_true", help="also cProfile the client at concurrency 1")
    parser.add_argument("--spin-compare", action="store_true",
                        help="only compare onnxruntime spin-waiting off (default) and on, served, same run")
    args = parser.parse_args()
    print_machine()
    with tempfile.TemporaryDirectory(prefix="tp_bench_cnn_") as tmp:
        repo = args.keep or Path(tmp)
        model_path = write_repository(repo, args.size)
        session = raw_session(model_path)
        print(f"machine busy before start: {100 * wait_quiet(max_wait=args.wait_quiet):.0f}%")
        # Without this flag the server (like Triton) adds `dynamic_batching {}` to an onnxruntime
        # model with max_batch_size > 1 and no scheduler, and cnn_plain would batch too.
        with serve(repo, "--disable-auto-complete-config") as server:
            if args.spin_compare:
                asyncio.run(spin_compare(server.grpc_url, args.size, max(args.duration, 1.0), 4))
                return 0
            meter = LoadMeter()
            res = asyncio.run(run_all(server.grpc_url, server.proc.pid, session, args))
            other = meter.other_fraction()
    report(res, args)
    print(f"\nother processes used {100 * other:.0f}% of the machine's CPU time during the measurements")
    return 0


if __name__ == "__main__":
    sys.exit(main())
