"""Round trip core -> worker -> core through the identity backend, next to a plain numpy copy.

One round trip = write the FP32 input into a shared-memory arena, send Execute, the worker maps
it (zero copy), the identity backend returns it, the worker writes the output into its own arena
(one copy), ExecuteDone comes back, the output is mapped as a numpy view and the batch released.
That is two memcpys of the payload plus the control messages, so the floor is about twice the
time of one `np.copyto` of the same bytes, which the table shows for comparison.

Two paths are measured:
  direct: the worker protocol driven with plain zmq (tests/worker_harness.py), the worker's own cost;
  core:   the core's WorkerInstance (asyncio, its batch codec and supervision), when importable.

    python scripts/bench_worker_roundtrip.py [--quick] [--no-core]
"""
from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "support"))

from support.worker_harness import WorkerHarness, write_model  # noqa: E402 - needs tests/ on the path

SIZES = [("64 B", 64), ("64 KB", 64 * 1024), ("16 MB", 16 * 1024 * 1024)]
CONFIG = {
    "name": "ident",
    "backend": "identity",
    "max_batch_size": 0,
    "input": [{"name": "IN", "data_type": "TYPE_FP32", "dims": [-1]}],
    "output": [{"name": "OUT", "data_type": "TYPE_FP32", "dims": [-1]}],
    "instance_group": [{"name": "ident", "count": 1, "kind": "KIND_CPU"}],
}


def _iterations(nbytes: int, quick: bool) -> int:
    n = 2000 if nbytes <= 4096 else 500 if nbytes <= 1 << 20 else 40
    return max(5, n // 10) if quick else n


def _numpy_copy_us(nbytes: int, iters: int) -> float:
    src = np.ones(nbytes // 4, dtype=np.float32)
    dst = np.empty_like(src)
    times = []
    for _ in range(iters):
        t0 = time.perf_counter_ns()
        np.copyto(dst, src)
        times.append(time.perf_counter_ns() - t0)
    return statistics.median(times) / 1000


def bench_direct(tmp: Path, quick: bool) -> dict[int, float]:
    model_dir = write_model(tmp, "ident", files={})
    results: dict[int, float] = {}
    with WorkerHarness(tmp, model_dir=model_dir, backend="identity", config=CONFIG) as h:
        h.start()
        assert h.init().ok
        for _, nbytes in SIZES:
            x = np.ones(nbytes // 4, dtype=np.float32)
            iters = _iterations(nbytes, quick)
            times = []
            for i in range(iters + 5):
                t0 = time.perf_counter_ns()
                done = h.execute([h.request({"IN": x}, outputs=["OUT"])])
                out = h.outputs_view(done.responses[0])["OUT"]
                assert out.nbytes == nbytes
                h.release(done.batch_id)
                h.free_inputs()
                elapsed = time.perf_counter_ns() - t0
                if i >= 5:  # warm-up: segment creation, first faults
                    times.append(elapsed)
            results[nbytes] = statistics.median(times) / 1000
        h.finalize()
    return results


async def _bench_core_async(tmp: Path, quick: bool) -> dict[int, float]:
    import json

    from tritonpy.core.instance.worker_instance import InstanceSpec, WorkerInstance
    from tritonpy.core.types import InferRequest, InputTensor, RequestedOutput

    model_dir = write_model(tmp, "ident_core", files={})
    spec = InstanceSpec(
        model_name="ident", model_version=1, model_dir=str(model_dir), instance_name="ident_0",
        backend="identity", config_json=json.dumps(CONFIG), runtime_dir=str(tmp / "run"),
    )
    instance = WorkerInstance(spec)
    results: dict[int, float] = {}
    await instance.start()
    try:
        for _, nbytes in SIZES:
            x = np.ones(nbytes // 4, dtype=np.float32)
            iters = _iterations(nbytes, quick)
            times = []
            for i in range(iters + 5):
                req = InferRequest(
                    model_name="ident", inputs=[InputTensor("IN", "FP32", [x.size], data=x)],
                    outputs=[RequestedOutput("OUT")],
                )
                t0 = time.perf_counter_ns()
                outcome = await instance.execute([req], gather=False)
                response = outcome.results[0]
                assert response.outputs[0].data.nbytes == nbytes
                response.release()
                elapsed = time.perf_counter_ns() - t0
                if i >= 5:
                    times.append(elapsed)
            results[nbytes] = statistics.median(times) / 1000
    finally:
        await instance.stop()
    return results


def bench_core(tmp: Path, quick: bool) -> dict[int, float] | None:
    try:
        return asyncio.run(_bench_core_async(tmp, quick))
    except Exception as exc:  # noqa: BLE001 - the core path is optional in this benchmark
        print(f"(core WorkerInstance path skipped: {type(exc).__name__}: {exc})")
        return None


def _gbps(nbytes: int, us: float) -> float:
    return nbytes / (us * 1e-6) / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer iterations")
    parser.add_argument("--no-core", action="store_true", help="skip the core WorkerInstance path")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="tp_bench_") as tmp_name:
        tmp = Path(tmp_name)
        direct = bench_direct(tmp, args.quick)
        core = None if args.no_core else bench_core(tmp, args.quick)
    header = f"{'size':>6} | {'numpy copy':>18} | {'direct round trip':>22}"
    if core:
        header += f" | {'core WorkerInstance':>22}"
    print(header)
    print("-" * len(header))
    for label, nbytes in SIZES:
        copy_us = _numpy_copy_us(nbytes, _iterations(nbytes, args.quick))
        row = f"{label:>6} | {copy_us:9.1f} µs {_gbps(nbytes, copy_us):5.2f} GB/s"
        row += f" | {direct[nbytes]:11.1f} µs {_gbps(nbytes, direct[nbytes]):5.2f} GB/s"
        if core:
            row += f" | {core[nbytes]:11.1f} µs {_gbps(nbytes, core[nbytes]):5.2f} GB/s"
        print(row)
    print("(medians; GB/s = payload bytes / round-trip time; a round trip copies the payload twice)")


if __name__ == "__main__":
    main()
