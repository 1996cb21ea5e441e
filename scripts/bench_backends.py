"""Benchmark (not a test): served throughput of the framework backends vs the framework in-process.

For each backend (pytorch TorchScript, pytorch torch.export, openvino, and tensorflow when it is
installed) the same small CNN runs
  1. in this process, called in a loop by the framework itself, and
  2. behind a real tritonpy server (one model instance), called by tritonclient over gRPC with
     `--concurrency` requests in flight,
with the same intra-op thread count (`--threads`) in both, in the same run, so the ratio shows
the serving overhead (protocol, queueing, shared memory, the worker hop) on this machine.

    python scripts/bench_backends.py [--duration 5] [--threads 1] [--batch 1] [--concurrency 2]

Client and server share the machine: on a 2-core box the client's own CPU use is part of the gap.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from support.server_process import ServerProcess  # noqa: E402 - needs tests/ on the path

SIZE = 64


def torch_cnn():
    import torch

    class CNN(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.c1 = torch.nn.Conv2d(3, 16, 3, stride=2, padding=1)
            self.c2 = torch.nn.Conv2d(16, 32, 3, stride=2, padding=1)
            self.fc = torch.nn.Linear(32, 10)

        def forward(self, image):
            x = torch.relu(self.c2(torch.relu(self.c1(image))))
            return self.fc(x.mean(dim=(2, 3)))

    torch.manual_seed(0)
    return CNN().eval()


def write_repo(repo: Path, threads: int, backends: list[str]) -> dict[str, Callable[[np.ndarray], object]]:
    """Write one model per backend; return the in-process callables to compare with."""
    import torch

    model = torch_cnn()
    example = torch.randn(2, 3, SIZE, SIZE)
    torch.set_num_threads(threads)
    local: dict[str, Callable[[np.ndarray], object]] = {}

    def config(name: str, body: str) -> None:
        (repo / name).mkdir(parents=True, exist_ok=True)
        (repo / name / "config.pbtxt").write_text(body)

    io = (
        f'max_batch_size: 16\ninput [ {{ name: "image" data_type: TYPE_FP32 dims: [ 3, {SIZE}, {SIZE} ] }} ]\n'
        'output [ { name: "logits" data_type: TYPE_FP32 dims: [ 10 ] } ]\n'
        "dynamic_batching { }\ninstance_group [ { count: 1 kind: KIND_CPU } ]\n"
    )
    torch_params = f'parameters {{ key: "INTRA_OP_THREAD_COUNT" value {{ string_value: "{threads}" }} }}\n'

    def torch_call(fn):
        def call(x: np.ndarray):
            with torch.inference_mode():
                return fn(torch.from_numpy(x)).numpy()
        return call

    if "pytorch" in backends:
        traced = torch.jit.trace(model, example)
        config("cnn_torchscript", 'backend: "pytorch"\n' + io + torch_params)
        (repo / "cnn_torchscript" / "1").mkdir()
        traced.save(str(repo / "cnn_torchscript" / "1" / "model.pt"))
        local["cnn_torchscript"] = torch_call(traced)
    if "pytorch_export" in backends:
        batch = torch.export.Dim("batch", min=1, max=64)
        program = torch.export.export(model, (example,), dynamic_shapes={"image": {0: batch}})
        config("cnn_export", 'platform: "torch_aoti"\n' + io + torch_params)
        (repo / "cnn_export" / "1").mkdir()
        torch.export.save(program, str(repo / "cnn_export" / "1" / "model.pt2"))
        local["cnn_export"] = torch_call(program.module())
    if "openvino" in backends:
        import openvino as ov

        converted = ov.convert_model(model, example_input=example, input=[("image", ov.PartialShape([-1, 3, SIZE, SIZE]), ov.Type.f32)])
        converted.outputs[0].get_tensor().set_names({"logits"})
        (repo / "cnn_openvino" / "1").mkdir(parents=True)
        ov.save_model(converted, str(repo / "cnn_openvino" / "1" / "model.xml"))
        config("cnn_openvino", 'backend: "openvino"\n' + io + f'parameters {{ key: "INFERENCE_NUM_THREADS" value {{ string_value: "{threads}" }} }}\n')
        request = ov.Core().compile_model(
            converted, "CPU", {"INFERENCE_NUM_THREADS": str(threads), "NUM_STREAMS": "1", "INFERENCE_PRECISION_HINT": "f32"}
        ).create_infer_request()
        local["cnn_openvino"] = lambda x: request.infer({"image": x})
    if "tensorflow" in backends:
        local["cnn_tensorflow"] = write_tensorflow(repo, io, threads)
    return local


def write_tensorflow(repo: Path, io: str, threads: int) -> Callable[[np.ndarray], object]:
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(threads)

    class CNN(tf.Module):
        def __init__(self) -> None:
            super().__init__()
            self.k1 = tf.Variable(tf.random.stateless_normal([3, 3, 3, 16], seed=[1, 1]))
            self.k2 = tf.Variable(tf.random.stateless_normal([3, 3, 16, 32], seed=[2, 2]))
            self.w = tf.Variable(tf.random.stateless_normal([32, 10], seed=[3, 3]))

        @tf.function(input_signature=[tf.TensorSpec([None, 3, SIZE, SIZE], tf.float32, name="image")])
        def serve(self, image):
            x = tf.transpose(image, [0, 2, 3, 1])
            x = tf.nn.relu(tf.nn.conv2d(tf.nn.relu(tf.nn.conv2d(x, self.k1, 2, "SAME")), self.k2, 2, "SAME"))
            return {"logits": tf.matmul(tf.reduce_mean(x, axis=[1, 2]), self.w)}

    module = CNN()
    tf.saved_model.save(module, str(repo / "cnn_tensorflow" / "1" / "model.savedmodel"), signatures={"serving_default": module.serve})
    (repo / "cnn_tensorflow" / "config.pbtxt").write_text(
        'platform: "tensorflow_savedmodel"\n' + io + f'parameters {{ key: "TF_NUM_INTRA_THREADS" value {{ string_value: "{threads}" }} }}\n'
    )
    return lambda x: module.serve(tf.constant(x))


def run_local(fn: Callable[[np.ndarray], object], x: np.ndarray, duration: float) -> float:
    for _ in range(3):
        fn(x)
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < duration:
        fn(x)
        count += 1
    return count * x.shape[0] / (time.perf_counter() - start)


def run_served(url: str, model: str, x: np.ndarray, duration: float, concurrency: int) -> float:
    import tritonclient.grpc as grpcclient

    done = [0] * concurrency
    errors: list[BaseException] = []
    stop = time.perf_counter() + duration

    def loop(slot: int) -> None:
        client = grpcclient.InferenceServerClient(url)
        try:
            inp = grpcclient.InferInput("image", list(x.shape), "FP32")
            inp.set_data_from_numpy(x)
            out = [grpcclient.InferRequestedOutput("logits")]
            client.infer(model, [inp], outputs=out)  # warm-up
            while time.perf_counter() < stop:
                client.infer(model, [inp], outputs=out)
                done[slot] += 1
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            client.close()

    start = time.perf_counter()
    workers = [threading.Thread(target=loop, args=(i,), name=f"bench-client-{i}") for i in range(concurrency)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    if errors:
        raise errors[0]
    return sum(done) * x.shape[0] / (time.perf_counter() - start)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per measurement")
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads, in-process and per served instance")
    parser.add_argument("--batch", type=int, default=1, help="images per request")
    parser.add_argument("--concurrency", type=int, default=2, help="requests in flight against the server")
    args = parser.parse_args()

    backends = ["pytorch", "pytorch_export", "openvino"]
    try:
        import tensorflow  # noqa: F401

        backends.append("tensorflow")
    except ImportError:
        print("tensorflow not installed: skipping it")
    x = np.random.default_rng(0).standard_normal((args.batch, 3, SIZE, SIZE), dtype=np.float32)
    print(f"CNN on [{args.batch}, 3, {SIZE}, {SIZE}] float32; {args.threads} intra-op thread(s); "
          f"{os.cpu_count()} CPUs; {args.duration:.0f} s per figure; served over gRPC, concurrency {args.concurrency}")
    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp)
        local = write_repo(repo, args.threads, backends)
        in_process = {name: run_local(fn, x, args.duration) for name, fn in local.items()}
        rows = []
        with ServerProcess(repo) as server:
            for name in local:
                served = run_served(server.grpc_url, name, x, args.duration, args.concurrency)
                rows.append((name, in_process[name], served))
    print(f"{'model':<18}{'in-process img/s':>18}{'served img/s':>15}{'served/in-process':>20}")
    for name, raw, served in rows:
        print(f"{name:<18}{raw:>18.1f}{served:>15.1f}{served / raw:>20.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
