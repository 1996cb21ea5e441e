"""A/B a hot-path change: serve the example models from two checkouts at once and measure them
alternately with tritonpy-bench in one run, so machine noise hits both equally.

    git worktree add /tmp/before HEAD~1
    python scripts/bench_ab.py --before /tmp/before --after .

Each side runs with PYTHONPATH pointing at a `tritonpy` package made of that checkout's folders, so
the server and its workers import that side's code. Prints infer/s and p50 per side and the ratio.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOMS = ("core", "backends", "frontends", "shm", "proto", "bench")


def package_dir(checkout: Path, where: Path) -> Path:
    pkg = where / "tritonpy"
    pkg.mkdir(parents=True)
    for room in ROOMS:
        if (checkout / room).is_dir():
            os.symlink(checkout.resolve() / room, pkg / room)
    # Checkouts since the version moved into a real top package carry tritonpy/__init__.py too.
    for top in (checkout / "tritonpy").glob("*.py"):
        os.symlink(top.resolve(), pkg / top.name)
    return where


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(checkout: Path, repo: Path, tmp: Path, label: str):
    path = package_dir(checkout, tmp / label)
    env = dict(os.environ, PYTHONPATH=str(path))
    http, grpc, metrics = free_port(), free_port(), free_port()
    log = open(tmp / f"{label}.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "tritonpy.frontends.cli", "--model-repository", str(repo),
         "--http-address", "127.0.0.1", "--http-port", str(http), "--grpc-address", "127.0.0.1",
         "--grpc-port", str(grpc), "--metrics-port", str(metrics)],
        env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{http}/v2/health/ready", timeout=1) as r:
                if r.status == 200:
                    return proc, http, env
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit(f"{label} server did not become ready; see {tmp / (label + '.log')}")


def measure(url: str, model: str, concurrency: int, window_ms: int, out: Path) -> tuple[float, float]:
    subprocess.run(
        [sys.executable, "-m", "tritonpy.bench.cli", "-m", model, "-u", url, "--concurrency-range",
         f"{concurrency}:{concurrency}:1", "-p", str(window_ms), "-r", "3", "--json", str(out), "-q",
         "--progress", "none"], check=True, capture_output=True)
    row = json.loads(out.read_text())["results"][0]
    return float(row["throughput_infer_per_s"]), float(row["latency_p50_us"])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--before", type=Path, required=True)
    ap.add_argument("--after", type=Path, default=Path("."))
    ap.add_argument("--model", default="add_sub")
    ap.add_argument("--concurrency", default="1,8")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--window-ms", type=int, default=1500)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="tp_ab_") as tmp_text:
        tmp = Path(tmp_text)
        repo = tmp / "repo"
        subprocess.run([sys.executable, str(Path(__file__).parent.parent / "examples" / "build_examples.py"),
                        "--out", str(repo)], check=True, capture_output=True)
        servers = {label: start(path, repo, tmp, label) for label, path in (("before", args.before),
                                                                             ("after", args.after))}
        try:
            for c in (int(x) for x in args.concurrency.split(",")):
                got: dict[str, list[tuple[float, float]]] = {"before": [], "after": []}
                for _ in range(args.rounds):
                    for label, (_, port, _) in servers.items():
                        got[label].append(measure(f"127.0.0.1:{port}", args.model, c, args.window_ms,
                                                  tmp / f"{label}.json"))
                tput = {k: statistics.median(t for t, _ in v) for k, v in got.items()}
                p50 = {k: statistics.median(p for _, p in v) for k, v in got.items()}
                print(f"{args.model} c={c}: before {tput['before']:8.1f}/s p50 {p50['before']:7.0f} us | "
                      f"after {tput['after']:8.1f}/s p50 {p50['after']:7.0f} us | "
                      f"throughput after/before {tput['after'] / tput['before']:.2f}x, "
                      f"p50 after/before {p50['after'] / p50['before']:.2f}x")
        finally:
            for proc, _, _ in servers.values():
                proc.terminate()
                proc.wait(30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
