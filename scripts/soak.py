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
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import psutil

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from soak_traffic import CHAOS_MODELS, Ledger, Traffic, free_port, write_repository

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


def shm_usage(server_pid: int) -> tuple[int, int]:
    """Segments of this server (other servers may run on the machine) and of this soak's clients."""
    count = size = 0
    for entry in os.scandir("/dev/shm"):
        # the soak's own regions are named soakpy_, clear of the "tp_" names test runs look after
        if entry.name.startswith((f"tritonpy_{server_pid}_", f"soakpy_fixed_{os.getpid()}", f"soakpy_churn_{os.getpid()}_")):
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
    n_shm, shm_bytes = shm_usage(server.pid)
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
    shm_at_start = shm_usage(server.pid)
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
