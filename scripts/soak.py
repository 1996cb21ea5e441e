"""Soak: mixed traffic against a real server, with chaos, for a bounded time; then a leak report.

    python scripts/soak.py                # 5 minutes
    python scripts/soak.py --minutes 60   # the long run

Starts `tritonpy.frontends.cli` on 127.0.0.1 (free ports) with four small models and drives, one
client thread each (low concurrency on purpose): HTTP JSON, HTTP binary, gRPC unary, gRPC
streaming (a decoupled model), and client system shared memory (a fixed region, plus a churn
thread that registers, infers, unregisters and deletes a fresh region each round). A chaos thread
SIGKILLs a random model's worker and reloads a random model, alternately.

Every answer is checked. A failure counts as *killed* when its request overlapped the outage of
a model whose worker was just killed (from the kill until the model is ready again); every other
failure, or a wrong answer, counts as *lost*. Lost must be 0 (exit status 1 otherwise).

Sampled every few seconds: RSS of the core and of its workers, the core's fds and threads, and the
server's segments in /dev/shm. The report gives the RSS slopes (least squares over the run after
the first fifth, the warm-up) and the before/after figures (before = after warm-up; after = once
the traffic stopped and things settled).
"""
from __future__ import annotations

import argparse
import json
import os
import queue
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import psutil

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
        key, size = f"/tp_soak_fixed_{os.getpid()}", 1 << 16
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
            key, size = f"/tp_soak_churn_{os.getpid()}_{n}", 1 << 20
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


# --- chaos and sampling ---------------------------------------------------------------------------

def workers_of(server: psutil.Process, model: str | None = None) -> list[psutil.Process]:
    found = []
    for child in server.children():
        try:
            cmd = child.cmdline()
        except psutil.Error:
            continue
        if "tritonpy.backends.worker" not in cmd or "--instance-name" not in cmd:
            continue
        instance = cmd[cmd.index("--instance-name") + 1] if cmd.index("--instance-name") + 1 < len(cmd) else ""
        if model is None or instance.startswith(f"{model}_"):  # instances are '<group>_<n>'
            found.append(child)
    return found


def chaos(server: psutil.Process, http_url: str, repo: Path, ledger: Ledger, stop: threading.Event, every: float,
          log: list[str]) -> None:
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(http_url, network_timeout=120)
    rng = random.Random(7)
    action = 0
    while not stop.wait(every):
        model = rng.choice(CHAOS_MODELS)
        t = time.monotonic()
        if action % 2 == 0:
            victims = workers_of(server, model)
            for w in victims:
                try:
                    w.send_signal(signal.SIGKILL)
                except psutil.Error:
                    pass
            # the outage lasts until the model is ready again with a new worker
            old = {w.pid for w in victims}
            while time.monotonic() - t < 60:
                now = {w.pid for w in workers_of(server, model)}
                if now and not now & old and client.is_model_ready(model):
                    break
                time.sleep(0.02)
            ledger.outages.append((model, t, time.monotonic()))
            log.append(f"{t:.1f} killed {model} worker(s) {sorted(old)}; back after {time.monotonic() - t:.2f}s")
        else:
            try:
                # a changed configuration makes the load a real reload (new workers); the serving
                # version keeps serving until the new one is ready
                with open(repo / model / "config.pbtxt", "a") as fh:
                    fh.write(f"# reload {action}\n")
                client.load_model(model)
                log.append(f"{t:.1f} reloaded {model} in {time.monotonic() - t:.2f}s")
            except Exception as exc:  # noqa: BLE001
                ledger.failure("reload", "(reload)", t, f"{type(exc).__name__}: {exc}")
        action += 1


def shm_usage() -> tuple[int, int]:
    count = size = 0
    for entry in os.scandir("/dev/shm"):
        if entry.name.startswith(("tritonpy_", "tp_soak_")):
            count += 1
            size += entry.stat().st_blocks * 512
    return count, size


def sample(server: psutil.Process) -> dict:
    workers = workers_of(server)
    rss_workers = 0
    for w in workers:
        try:
            rss_workers += w.memory_info().rss
        except psutil.Error:
            pass
    n_shm, shm_bytes = shm_usage()
    return {
        "t": time.monotonic(), "core_rss": server.memory_info().rss, "workers_rss": rss_workers,
        "workers": len(workers), "fds": server.num_fds(), "threads": server.num_threads(),
        "shm_segments": n_shm, "shm_bytes": shm_bytes,
    }


def sampler(server: psutil.Process, samples: list[dict], stop: threading.Event, every: float) -> None:
    while not stop.wait(every):
        try:
            samples.append(sample(server))
        except psutil.Error:
            return


def slope_mb_per_min(samples: list[dict], key: str) -> float:
    if len(samples) < 3:
        return 0.0
    t = np.array([s["t"] for s in samples]) / 60.0
    y = np.array([s[key] for s in samples]) / 2**20
    return float(np.polyfit(t - t[0], y, 1)[0])


# --- main -------------------------------------------------------------------------------------

def run(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="tritonpy-soak-") as tmp:
        repo = Path(tmp) / "repo"
        write_repository(repo)
        http_port, grpc_port, metrics_port = free_port(), free_port(), free_port()
        log_path = Path(tmp) / "server.log"
        cmd = [sys.executable, "-m", "tritonpy.frontends.cli", "--model-repository", str(repo),
               "--http-address", "127.0.0.1", "--http-port", str(http_port),
               "--grpc-address", "127.0.0.1", "--grpc-port", str(grpc_port),
               "--metrics-address", "127.0.0.1", "--metrics-port", str(metrics_port),
               "--allow-client-shm=true", "--model-control-mode=explicit", "--load-model=*"]
        with open(log_path, "wb") as log_file:
            proc = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT)
        try:
            return drive(args, proc, f"127.0.0.1:{http_port}", f"127.0.0.1:{grpc_port}", repo)
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(60)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            print(f"server exit status after SIGTERM: {proc.returncode}")
            if args.keep_log:
                Path(args.keep_log).write_bytes(log_path.read_bytes())


def wait_ready(proc: subprocess.Popen, http_url: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"http://{http_url}/v2/health/ready", timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError("server not ready in time")


def drive(args: argparse.Namespace, proc: subprocess.Popen, http_url: str, grpc_url: str, repo: Path) -> int:
    wait_ready(proc, http_url)
    server = psutil.Process(proc.pid)
    shm_at_start = shm_usage()
    ledger, stop, chaos_stop = Ledger(), threading.Event(), threading.Event()
    traffic = Traffic(http_url, grpc_url, ledger, stop, args.pause)
    samples: list[dict] = []
    events: list[str] = []
    threads = [threading.Thread(target=f, daemon=True) for f in (
        lambda: traffic.http(False), lambda: traffic.http(True), traffic.grpc_unary, traffic.grpc_stream,
        traffic.shm_fixed, traffic.shm_churn)]
    threads.append(threading.Thread(target=sampler, args=(server, samples, stop, args.sample_every), daemon=True))
    chaos_thread = threading.Thread(target=chaos, args=(server, http_url, repo, ledger, chaos_stop,
                                                        args.chaos_every, events), daemon=True)
    duration = args.minutes * 60
    started = time.monotonic()
    for t in threads:
        t.start()
    chaos_thread.start()
    warm_until = started + duration / 5
    while time.monotonic() < started + duration:
        time.sleep(1)
        if proc.poll() is not None:
            events.append(f"SERVER EXITED with {proc.returncode}")
            break
    chaos_stop.set()
    chaos_thread.join(120)
    stop.set()
    for t in threads:
        t.join(120)
    time.sleep(3)  # let restarts, releases and unlinks settle
    final = sample(server)
    steady = [s for s in samples if s["t"] >= warm_until] or samples
    before = steady[0] if steady else final
    killed, lost = ledger.classify()
    report = {
        "minutes": round((time.monotonic() - started) / 60, 2),
        "requests_ok": dict(sorted(ledger.ok.items())),
        "requests_ok_total": sum(ledger.ok.values()),
        "failed_in_killed_batches": killed,
        "lost": len(lost),
        "lost_examples": [f"{k} {m}: {why}" for k, m, _, _, why in lost[:10]],
        "worker_kills": sum(1 for e in events if " killed " in e),
        "reloads": sum(1 for e in events if " reloaded " in e),
        "core_rss_mb": [round(before["core_rss"] / 2**20, 1), round(final["core_rss"] / 2**20, 1)],
        "core_rss_slope_mb_per_min": round(slope_mb_per_min(steady, "core_rss"), 3),
        "workers_rss_mb": [round(before["workers_rss"] / 2**20, 1), round(final["workers_rss"] / 2**20, 1)],
        "workers_rss_slope_mb_per_min": round(slope_mb_per_min(steady, "workers_rss"), 3),
        "workers": [before["workers"], final["workers"]],
        "core_fds": [before["fds"], final["fds"]],
        "core_threads": [before["threads"], final["threads"]],
        "dev_shm_segments": [shm_at_start[0], before["shm_segments"], final["shm_segments"]],
        "dev_shm_mb": [round(shm_at_start[1] / 2**20, 1), round(before["shm_bytes"] / 2**20, 1),
                       round(final["shm_bytes"] / 2**20, 1)],
        "server_alive": proc.poll() is None,
        "events": events,
    }
    print(json.dumps(report, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps({**report, "samples": samples}, indent=1))
    return 0 if not lost and report["server_alive"] else 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=5.0, help="how long to drive traffic (default 5)")
    p.add_argument("--pause", type=float, default=0.01, help="seconds each client thread waits between requests")
    p.add_argument("--chaos-every", type=float, default=15.0, help="seconds between chaos actions (kill, reload)")
    p.add_argument("--sample-every", type=float, default=5.0, help="seconds between resource samples")
    p.add_argument("--json", default="", help="also write the report and all samples to this file")
    p.add_argument("--keep-log", default="", help="copy the server log here at the end")
    return run(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
