"""Traffic for scripts/soak.py: the models it serves, the client loops that drive them (one thread
per kind of traffic, each answer checked), and the ledger that classifies failures."""
from __future__ import annotations

import os
import queue
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

PY_MODEL = """
import numpy as np
import triton_python_backend_utils as pb_utils

class TritonPythonModel:
    def execute(self, requests):
        out = []
        for req in requests:
            x = pb_utils.get_input_tensor_by_name(req, "INPUT0").as_numpy()
            out.append(pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT0", (x {op}).astype(np.float32))]))
        return out
"""
STREAM_MODEL = """
import numpy as np
import triton_python_backend_utils as pb_utils

class TritonPythonModel:
    def execute(self, requests):
        for req in requests:
            x = pb_utils.get_input_tensor_by_name(req, "INPUT0").as_numpy()
            sender = req.get_response_sender()
            for i in range(3):
                sender.send(pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT0", (x + i).astype(np.float32))]))
            sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        return None
"""
IO = """
input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ -1 ] } ]
output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ -1 ] } ]
"""
# name -> (backend, extra config, model.py or "")
MODELS = {
    "ident": ("identity", "max_batch_size: 0\n", ""),
    "add_py": ("python", "max_batch_size: 0\n", PY_MODEL.format(op="+ 1")),
    "double_py": ("python", "max_batch_size: 0\n", PY_MODEL.format(op="* 2")),
    "stream_py": ("python", "max_batch_size: 0\nmodel_transaction_policy { decoupled: true }\n", STREAM_MODEL),
}
CHAOS_MODELS = ["add_py", "double_py", "stream_py", "ident"]


def write_repository(repo: Path) -> None:
    for name, (backend, extra, code) in MODELS.items():
        (repo / name / "1").mkdir(parents=True, exist_ok=True)
        (repo / name / "config.pbtxt").write_text(
            f'name: "{name}"\nbackend: "{backend}"\n{extra}{IO}instance_group [ {{ count: 1 kind: KIND_CPU }} ]\n')
        if code:
            (repo / name / "1" / "model.py").write_text(code)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- bookkeeping ------------------------------------------------------------------------------

@dataclass
class Ledger:
    """Every request's outcome, and the outage windows of killed workers."""

    ok: dict[str, int] = field(default_factory=dict)
    failures: list[tuple[str, str, float, float, str]] = field(default_factory=list)  # kind, model, t0, t1, why
    outages: list[tuple[str, float, float]] = field(default_factory=list)  # model, from, until
    lock: threading.Lock = field(default_factory=threading.Lock)

    def success(self, kind: str) -> None:
        with self.lock:
            self.ok[kind] = self.ok.get(kind, 0) + 1

    def failure(self, kind: str, model: str, t0: float, why: str) -> None:
        with self.lock:
            self.failures.append((kind, model, t0, time.monotonic(), why[:300]))

    def classify(self) -> tuple[int, list[tuple[str, str, float, float, str]]]:
        killed, lost = 0, []
        for kind, model, t0, t1, why in self.failures:
            if any(m == model and t0 <= until + 0.5 and t1 >= start - 0.05 for m, start, until in self.outages):
                killed += 1
            else:
                lost.append((kind, model, t0, t1, why))
        return killed, lost


def check(got: np.ndarray | None, want: np.ndarray) -> None:
    if got is None or got.shape != want.shape or not np.array_equal(got, want):
        raise AssertionError(f"wrong answer: {None if got is None else got[:4]} != {want[:4]}")


# --- traffic ----------------------------------------------------------------------------------

class Traffic:
    def __init__(self, http_url: str, grpc_url: str, ledger: Ledger, stop: threading.Event, pause: float) -> None:
        self.http_url, self.grpc_url = http_url, grpc_url
        self.ledger, self.stop, self.pause = ledger, stop, pause

    def loop(self, kind: str, model: str, call) -> None:
        rng = np.random.default_rng(abs(hash(kind)) % 2**32)
        while not self.stop.is_set():
            x = rng.integers(0, 100, size=int(rng.integers(1, 64))).astype(np.float32)
            t0 = time.monotonic()
            try:
                call(x)
                self.ledger.success(kind)
            except Exception as exc:  # noqa: BLE001 - every failure is recorded and classified
                self.ledger.failure(kind, model, t0, f"{type(exc).__name__}: {exc}")
            time.sleep(self.pause)

    def http(self, binary: bool) -> None:
        import tritonclient.http as httpclient

        client = httpclient.InferenceServerClient(self.http_url, network_timeout=60)
        model = "double_py" if binary else "add_py"
        want = (lambda x: x * 2) if binary else (lambda x: x + 1)

        def call(x: np.ndarray) -> None:
            inp = httpclient.InferInput("INPUT0", [x.size], "FP32")
            inp.set_data_from_numpy(x, binary_data=binary)
            out = httpclient.InferRequestedOutput("OUTPUT0", binary_data=binary)
            check(client.infer(model, [inp], outputs=[out]).as_numpy("OUTPUT0"), want(x))

        self.loop("http_binary" if binary else "http_json", model, call)

    def grpc_unary(self) -> None:
        import tritonclient.grpc as grpcclient

        client = grpcclient.InferenceServerClient(self.grpc_url)

        def call(x: np.ndarray) -> None:
            inp = grpcclient.InferInput("INPUT0", [x.size], "FP32")
            inp.set_data_from_numpy(x)
            check(client.infer("ident", [inp], client_timeout=60).as_numpy("OUTPUT0"), x)

        self.loop("grpc", "ident", call)

    def grpc_stream(self) -> None:
        import tritonclient.grpc as grpcclient

        client = grpcclient.InferenceServerClient(self.grpc_url)
        answers: queue.Queue = queue.Queue()
        client.start_stream(callback=lambda result, error: answers.put((result, error)))

        def call(x: np.ndarray) -> None:
            inp = grpcclient.InferInput("INPUT0", [x.size], "FP32")
            inp.set_data_from_numpy(x)
            client.async_stream_infer("stream_py", [inp], enable_empty_final_response=True)
            got = []
            while True:
                result, error = answers.get(timeout=60)
                if error is not None:
                    raise RuntimeError(str(error))
                if result.get_response().parameters.get("triton_final_response").bool_param:
                    break
                got.append(result.as_numpy("OUTPUT0"))
            if len(got) != 3:
                raise AssertionError(f"{len(got)} streamed responses instead of 3")
            for i, arr in enumerate(got):
                check(arr, x + i)

        try:
            self.loop("grpc_stream", "stream_py", call)
        finally:
            client.stop_stream()

    def shm_fixed(self) -> None:
        """One region kept registered; input and output both in it."""
        import tritonclient.http as httpclient
        import tritonclient.utils.shared_memory as shm

        client = httpclient.InferenceServerClient(self.http_url, network_timeout=60)
        key, size = f"/soakpy_fixed_{os.getpid()}", 1 << 16
        handle = shm.create_shared_memory_region("soak_fixed", key, size)
        client.register_system_shared_memory("soak_fixed", key, size)

        def call(x: np.ndarray) -> None:
            shm.set_shared_memory_region(handle, [x])
            inp = httpclient.InferInput("INPUT0", [x.size], "FP32")
            inp.set_shared_memory("soak_fixed", x.nbytes)
            out = httpclient.InferRequestedOutput("OUTPUT0", binary_data=True)
            out.set_shared_memory("soak_fixed", x.nbytes, offset=size // 2)
            client.infer("double_py", [inp], outputs=[out])
            check(shm.get_contents_as_numpy(handle, np.float32, [x.size], offset=size // 2), x * 2)

        try:
            self.loop("shm", "double_py", call)
        finally:
            client.unregister_system_shared_memory("soak_fixed")
            shm.destroy_shared_memory_region(handle)

    def shm_churn(self) -> None:
        """register -> infer -> unregister -> delete, a fresh 1 MiB region every round."""
        import tritonclient.http as httpclient
        import tritonclient.utils.shared_memory as shm

        client = httpclient.InferenceServerClient(self.http_url, network_timeout=60)
        rounds = iter(range(1 << 62))

        def call(x: np.ndarray) -> None:
            n = next(rounds)
            key, size = f"/soakpy_churn_{os.getpid()}_{n}", 1 << 20
            handle = shm.create_shared_memory_region(f"churn{n}", key, size)
            try:
                shm.set_shared_memory_region(handle, [x])
                client.register_system_shared_memory(f"churn{n}", key, size)
                try:
                    inp = httpclient.InferInput("INPUT0", [x.size], "FP32")
                    inp.set_shared_memory(f"churn{n}", x.nbytes)
                    out = httpclient.InferRequestedOutput("OUTPUT0", binary_data=True)
                    out.set_shared_memory(f"churn{n}", x.nbytes, offset=size // 2)
                    client.infer("add_py", [inp], outputs=[out])
                    check(shm.get_contents_as_numpy(handle, np.float32, [x.size], offset=size // 2), x + 1)
                finally:
                    client.unregister_system_shared_memory(f"churn{n}")
            finally:
                shm.destroy_shared_memory_region(handle)

        self.loop("shm_churn", "add_py", call)
