#!/usr/bin/env python3
"""Large FP32 tensors through an identity model, per transport, next to a numpy memcpy (a benchmark).

    python scripts/bench_large_tensors.py [--duration 0.6] [--skip-256] [--json-256]

One run: builds two identity models (`ident_py`, a Python-backend model returning INPUT0 as
OUTPUT0, and `ident_builtin`, the built-in `identity` backend; both FP32 dims [-1], no batching),
starts the server with --allow-client-shm=true, and for 16 MB and 256 MB inputs times one full
round trip (send the array, get the same array back as numpy) through:

  http-json    tritonclient.http, input and output as JSON numbers (16 MB only unless --json-256:
               a 256 MB tensor is about 1.3 GB of JSON text)
  http-binary  tritonclient.http, binary tensor extension for input and output
  grpc-raw     tritonclient.grpc, raw_input_contents / raw_output_contents
  grpc echo    not tritonpy: a plain grpcio server echoing the same bytes (the transport's floor)
  shm          system shared memory regions for input and output (tritonclient.utils.shared_memory,
               registered over gRPC); "shm" times the infer call with the input already in its
               region and the output read as a view, "shm+copy-in" adds copying the numpy input into
               the region (the fair comparison when the data does not start out in shared memory)

GB/s = input bytes / round-trip time (the same bytes also come back). The memcpy reference is
`np.copyto` of the same number of bytes, timed right before each transport, so each ratio compares
figures taken under the same machine load. Both models are measured at 16 MB; 256 MB runs only on
the faster one (by its 16 MB grpc-raw and shm times), to keep the run short. The table also shows
the server's own view from its statistics (request total, and compute_output: the worker placing
the output), and a last table times copies through fresh and kept shared-memory mappings, which
is where the shm path's time goes.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_common import LoadMeter, print_machine, print_table, serve, wait_quiet

MB = 1 << 20
SIZES = [("16 MB", 16 * MB), ("256 MB", 256 * MB)]
MODELS = ["ident_builtin", "ident_py"]

IDENT_PY = '''\
"""Returns INPUT0 as OUTPUT0: a Python-backend identity for transport benchmarks."""
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        return [
            pb_utils.InferenceResponse(output_tensors=[
                pb_utils.Tensor("OUTPUT0", pb_utils.get_input_tensor_by_name(r, "INPUT0").as_numpy())
            ])
            for r in requests
        ]
'''


def config_text(name: str, backend: str) -> str:
    return f"""\
name: "{name}"
backend: "{backend}"
max_batch_size: 0
input [ {{ name: "INPUT0" data_type: TYPE_FP32 dims: [ -1 ] }} ]
output [ {{ name: "OUTPUT0" data_type: TYPE_FP32 dims: [ -1 ] }} ]
instance_group [ {{ count: 1 kind: KIND_CPU }} ]
"""


def write_repository(repo: Path) -> None:
    for name, backend in (("ident_builtin", "identity"), ("ident_py", "python")):
        d = repo / name
        (d / "1").mkdir(parents=True, exist_ok=True)
        (d / "config.pbtxt").write_text(config_text(name, backend))
        if backend == "python":
            (d / "1" / "model.py").write_text(IDENT_PY)


def timed(fn: Callable[[], None], duration: float, min_iters: int, warmup: bool = True) -> float:
    """Median seconds per call of `fn` (one warm-up call first, unless told otherwise)."""
    if warmup:
        fn()
    times: list[float] = []
    end = time.perf_counter() + duration
    while time.perf_counter() < end or len(times) < min_iters:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def check(out: np.ndarray, x: np.ndarray) -> None:
    """Cheap spot check that the array came back (a full compare would cost another pass)."""
    if out.size != x.size or out.flat[0] != x.flat[0] or out.flat[-1] != x.flat[-1] or out.flat[x.size // 2] != x.flat[x.size // 2]:
        raise RuntimeError("identity output differs from the input")


class Transports:
    """One callable per transport for a given model and input array."""

    def __init__(self, http_url: str, grpc_url: str) -> None:
        import tritonclient.grpc as grpcclient
        import tritonclient.http as httpclient

        self.http = httpclient.InferenceServerClient(http_url, connection_timeout=600, network_timeout=600)
        self.grpc = grpcclient.InferenceServerClient(grpc_url)
        self._regions: list[tuple[str, object]] = []

    def close(self) -> None:
        import tritonclient.utils.shared_memory as shm

        for name, handle in self._regions:
            try:
                self.grpc.unregister_system_shared_memory(name)
            finally:
                shm.destroy_shared_memory_region(handle)
        self._regions.clear()
        self.http.close()
        self.grpc.close()

    def server_stats(self, model: str) -> dict[str, int]:
        """Cumulative success count and phase durations (ns) the server reports for `model`."""
        inf = self.grpc.get_inference_statistics(model, as_json=True)["model_stats"][0]["inference_stats"]
        out = {"count": int(inf.get("success", {}).get("count", 0) or 0)}
        for key in ("success", "compute_input", "compute_infer", "compute_output"):
            out[key] = int(inf.get(key, {}).get("ns", 0) or 0)
        return out

    def http_call(self, model: str, x: np.ndarray, binary: bool) -> Callable[[], None]:
        import tritonclient.http as httpclient

        def call() -> None:
            item = httpclient.InferInput("INPUT0", [x.size], "FP32")
            item.set_data_from_numpy(x, binary_data=binary)
            result = self.http.infer(model, [item], outputs=[httpclient.InferRequestedOutput("OUTPUT0", binary_data=binary)])
            check(result.as_numpy("OUTPUT0"), x)

        return call

    def grpc_call(self, model: str, x: np.ndarray) -> Callable[[], None]:
        import tritonclient.grpc as grpcclient

        def call() -> None:
            item = grpcclient.InferInput("INPUT0", [x.size], "FP32")
            item.set_data_from_numpy(x)
            result = self.grpc.infer(model, [item], outputs=[grpcclient.InferRequestedOutput("OUTPUT0")])
            check(result.as_numpy("OUTPUT0"), x)

        return call

    def shm_calls(self, model: str, x: np.ndarray) -> tuple[Callable[[], None], Callable[[], None]]:
        """(infer with the input already in place, copy-in + infer)."""
        import tritonclient.grpc as grpcclient
        import tritonclient.utils.shared_memory as shm

        n = x.nbytes
        handles = {}
        for role in ("in", "out"):
            name = f"bench_{role}_{n}"
            key = f"/benchlt_{os.getpid()}_{role}_{n}"
            if name not in dict(self._regions):
                handle = shm.create_shared_memory_region(name, key, n)
                self.grpc.register_system_shared_memory(name, key, n)
                self._regions.append((name, handle))
            handles[role] = dict(self._regions)[name]
        shm.set_shared_memory_region(handles["in"], [x])
        item = grpcclient.InferInput("INPUT0", [x.size], "FP32")
        item.set_shared_memory(f"bench_in_{n}", n)
        wanted = grpcclient.InferRequestedOutput("OUTPUT0")
        wanted.set_shared_memory(f"bench_out_{n}", n)

        def infer() -> None:
            result = self.grpc.infer(model, [item], outputs=[wanted])
            out = result.get_output("OUTPUT0")
            view = shm.get_contents_as_numpy(handles["out"], np.float32, [int(d) for d in out.shape])
            check(view, x)

        def copy_in_and_infer() -> None:
            shm.set_shared_memory_region(handles["in"], [x])
            infer()

        return infer, copy_in_and_infer


ECHO_SERVER = """
import sys
from concurrent import futures
import grpc
opts = [("grpc.max_send_message_length", 2**31 - 1), ("grpc.max_receive_message_length", 2**31 - 1)]
handler = grpc.method_handlers_generic_handler(
    "Echo", {"echo": grpc.unary_unary_rpc_method_handler(lambda request, context: request)})
server = grpc.server(futures.ThreadPoolExecutor(2), options=opts)
server.add_generic_rpc_handlers((handler,))
port = server.add_insecure_port("127.0.0.1:0")
server.start()
print(port, flush=True)
sys.stdin.read()
server.stop(0)
"""


def grpc_echo_s(sizes: list[int], duration: float) -> dict[int, float]:
    """The gRPC floor without tritonpy: a plain grpcio server (another process) echoing raw bytes.

    Same library, same loopback, same payload as grpc-raw, but no protobuf message around the
    bytes and no server logic, so the difference to grpc-raw is what tritonpy and tritonclient add.
    """
    import subprocess

    import grpc

    proc = subprocess.Popen([sys.executable, "-c", ECHO_SERVER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        port = int(proc.stdout.readline())
        opts = [("grpc.max_send_message_length", 2**31 - 1), ("grpc.max_receive_message_length", 2**31 - 1)]
        with grpc.insecure_channel(f"127.0.0.1:{port}", options=opts) as channel:
            echo = channel.unary_unary("/Echo/echo")
            results = {}
            for n in sizes:
                data = np.random.RandomState(0).rand(n // 4).astype(np.float32).tobytes()

                def call(data: bytes = data) -> None:
                    if len(echo(data)) != len(data):
                        raise RuntimeError("echo returned a different size")

                results[n] = timed(call, duration, 3 if n <= 16 * MB else 1)
            return results
    finally:
        proc.stdin.close()
        proc.wait(10)


def memcpy_s(nbytes: int, duration: float) -> float:
    src = np.ones(nbytes // 4, dtype=np.float32)
    dst = np.empty_like(src)
    return timed(lambda: np.copyto(dst, src), min(duration, 0.5), 5)


def measure(t: Transports, model: str, nbytes: int, duration: float, json: bool, others: bool = True) -> dict[str, tuple]:
    """transport -> (seconds per round trip, memcpy seconds taken just before, server ms per request
    in total and in compute_output (the worker placing the output), from the server's statistics)."""
    x = np.random.RandomState(0).rand(nbytes // 4).astype(np.float32)
    min_iters = 3 if nbytes <= 16 * MB else 1
    calls: list[tuple[str, Callable[[], None]]] = []
    if json:
        calls.append(("http-json", t.http_call(model, x, binary=False)))
    if others:
        shm_infer, shm_copy = t.shm_calls(model, x)
        calls += [
            ("http-binary", t.http_call(model, x, binary=True)),
            ("grpc-raw", t.grpc_call(model, x)),
            ("shm", shm_infer),
            ("shm+copy-in", shm_copy),
        ]
    results = {}
    for label, call in calls:
        ref = memcpy_s(nbytes, duration)
        before = t.server_stats(model)
        # JSON takes seconds per request: one timed call, no warm-up (its cost is not in set-up).
        seconds = timed(call, duration, 1, warmup=False) if label == "http-json" else timed(call, duration, min_iters)
        after = t.server_stats(model)
        n = max(1, after["count"] - before["count"])
        server_ms = (after["success"] - before["success"]) / n / 1e6
        output_ms = (after["compute_output"] - before["compute_output"]) / n / 1e6
        results[label] = (seconds, ref, server_ms, output_ms)
        print(f"  {model} {nbytes // MB} MB {label}: {1000 * seconds:.1f} ms", flush=True)
    return results


def mapping_costs(nbytes: int) -> list[list[str]]:
    """Why shared memory is slower than memcpy here: what a fresh mapping costs per request.

    The worker maps a client's region anew for every batch; each first touch of a page of a fresh
    mapping is a page fault. This times copying `nbytes` into a /dev/shm file through a mapping
    kept open, through a fresh mapping, and through a fresh mapping made with MAP_POPULATE.
    """
    import mmap

    src = np.random.RandomState(0).rand(nbytes // 4).astype(np.float32)
    dst = np.empty_like(src)
    path = f"/dev/shm/benchlt_map_{os.getpid()}"
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)
    try:
        os.ftruncate(fd, nbytes)
        kept = mmap.mmap(fd, nbytes)
        kept_view = np.frombuffer(kept, np.float32)

        def fresh(flags: int, write: bool) -> None:
            m = mmap.mmap(fd, nbytes, flags=flags)
            v = np.frombuffer(m, np.float32)
            np.copyto(v, src) if write else np.copyto(dst, v)
            del v
            m.close()

        populate = getattr(mmap, "MAP_POPULATE", 0)
        cases = [
            ("np.copyto (reference)", lambda: np.copyto(dst, src)),
            ("write through a kept mapping", lambda: np.copyto(kept_view, src)),
            ("write through a fresh mapping", lambda: fresh(mmap.MAP_SHARED, True)),
            ("read through a fresh mapping", lambda: fresh(mmap.MAP_SHARED, False)),
            ("write through a fresh MAP_POPULATE mapping", lambda: fresh(mmap.MAP_SHARED | populate, True)),
        ]
        rows = []
        for label, fn in cases:
            s = timed(fn, 0.3, 10)
            rows.append([label, f"{1000 * s:.2f}", f"{nbytes / s / 1e9:.2f}"])
        kept_view = None  # drop the export before closing the mapping
        kept.close()
        return rows
    finally:
        os.close(fd)
        os.unlink(path)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=0.6, help="seconds per measurement (default 0.6)")
    parser.add_argument("--skip-256", action="store_true", help="only 16 MB")
    parser.add_argument("--wait-quiet", type=float, default=10.0, help="wait up to this many s for an idle machine")
    parser.add_argument("--json-256", action="store_true", help="also HTTP JSON at 256 MB (slow)")
    args = parser.parse_args()
    print_machine()
    print(f"machine busy before start: {100 * wait_quiet(max_wait=args.wait_quiet):.0f}%")
    table: list[tuple[str, str, str, float, float, float, float]] = []
    malloc_env = {k: v for k, v in os.environ.items() if k.startswith("MALLOC_")}
    if malloc_env:
        print("malloc settings (client and server inherit them): " + ", ".join(f"{k}={v}" for k, v in malloc_env.items()))
    with tempfile.TemporaryDirectory(prefix="tp_bench_lt_") as tmp:
        repo = Path(tmp)
        write_repository(repo)
        extra = ("--allow-client-shm=true", "--http-max-input-size", str((1 << 31) - 1))
        with serve(repo, *extra) as server:
            meter = LoadMeter()
            t = Transports(server.http_url, server.grpc_url)
            try:
                first = {m: measure(t, m, SIZES[0][1], args.duration, False) for m in MODELS}
                faster = min(MODELS, key=lambda m: first[m]["grpc-raw"][0] + first[m]["shm"][0])
                first[faster] = {**measure(t, faster, SIZES[0][1], args.duration, True, others=False), **first[faster]}
                for m, res in first.items():
                    table += [(m, SIZES[0][0], label, *v) for label, v in res.items()]
                if not args.skip_256:
                    res = measure(t, faster, SIZES[1][1], args.duration, args.json_256)
                    table += [(faster, SIZES[1][0], label, *v) for label, v in res.items()]
            finally:
                t.close()
            other = meter.other_fraction()
        mapping = mapping_costs(SIZES[0][1])
    wanted = [n for label, n in SIZES if label == SIZES[0][0] or not args.skip_256]
    for n, seconds in grpc_echo_s(wanted, args.duration).items():
        ref = memcpy_s(n, args.duration)
        label = next(lbl for lbl, size in SIZES if size == n)
        table.append(("(plain grpcio)", label, "grpc echo", seconds, ref, float("nan"), float("nan")))
    sizes = dict(SIZES)
    rows = []
    for model, size, label, s, ref, server_ms, output_ms in table:
        n = sizes[size]
        server_cols = ["-", "-"] if math.isnan(server_ms) else [f"{server_ms:.1f}", f"{output_ms:.1f}"]
        rows.append([model, size, label, f"{1000 * s:.1f}", f"{n / s / 1e9:.2f}", f"{n / ref / 1e9:.2f}", f"{ref / s:.3f}",
                     *server_cols])
    print("\nround trip of an FP32 tensor through an identity model (medians; server columns are means from "
          "the server's statistics: request total, and compute_output = the worker placing the output):")
    print_table(["model", "size", "transport", "ms/request", "GB/s", "memcpy GB/s", "x memcpy", "server ms",
                 "compute_output ms"], rows)
    print(f"faster model (16 MB grpc-raw + shm): {faster}")
    print(f"http-json: measured on {faster} only (seconds per request)")
    if args.skip_256 or not args.json_256:
        print("http-json at 256 MB: not measured (about 1.3 GB of JSON text per direction); see the 16 MB row")
    for model, size, label, s, ref, _, _ in table:
        if label.startswith("shm") and model == faster:
            r = ref / s
            print(f"{size} {label}: {r:.3f} x memcpy (target >= 0.5: {'met' if r >= 0.5 else 'NOT met'})")
    print(f"\nwhat a fresh shared-memory mapping costs here ({SIZES[0][0]}, medians):")
    print_table(["copy", "ms", "GB/s"], mapping)
    print(f"\nother processes used {100 * other:.0f}% of the machine's CPU time during the transport measurements")
    return 0


if __name__ == "__main__":
    sys.exit(main())
