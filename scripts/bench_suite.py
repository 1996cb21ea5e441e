"""Reproducible tiny-model suite for docs/benchmarks.md: tritonpy next to real Triton 2.51.

    python scripts/bench_suite.py [--levels 1,2,4,8,16] [--interval-ms 2000] [--out build/bench_suite]
                                  [--skip-triton] [--skip-tool] [--profile]

What it runs, all in one go so ratios come from the same minutes of the same machine:
1. start-up time (launch -> /v2/health/ready) and memory (RSS of the core and of each worker) of
   tritonpy-server on the example repository, and of real Triton 2.51 on its add_sub copy;
2. the C++ perf_analyzer 2.51 as the reference client against BOTH servers, Python add_sub, HTTP
   and gRPC, each concurrency level run back to back on the two servers (order alternating);
3. tritonpy-bench (this repo's client) on tritonpy (add_sub and add_sub_onnx) and on Triton
   (add_sub), HTTP binary and gRPC, to show the tool's own overhead next to perf_analyzer's;
4. with --profile, cProfile of the tritonpy core process under perf_analyzer HTTP load at c=4,
   the top functions written to OUT/profile_core.txt.

Real Triton comes from ../shared/tools/real-triton (setup_triton_env.sh puts it in
~/.cache/tritonpy-anchors/triton); without it, --skip-triton runs the tritonpy half only.
Results: Markdown on stdout, OUT/results.json, OUT/latency_throughput.html (inline SVG).
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import ROOT, LoadMeter, machine_info, print_table
from support.leaks import free_port  # bench_common put tests/ on the path
from support.server_process import ServerProcess

from tritonpy.bench.plot import write_html

TRITON_HOME = Path(os.environ.get("TRITON_HOME", Path.home() / ".cache/tritonpy-anchors/triton"))
TOOLS = ROOT.parent / "shared" / "tools" / "real-triton"
PA = TRITON_HOME / "bin" / "perf_analyzer_251"


def rss_tree(pid: int) -> dict[str, float]:
    """RSS in MiB of the process and each descendant, labelled by what it runs."""
    out: dict[str, float] = {}
    root = psutil.Process(pid)
    out[f"core ({root.name()})"] = root.memory_info().rss / 2**20
    for i, child in enumerate(root.children(recursive=True)):
        try:
            cmd = " ".join(child.cmdline())
            label = child.name()
            for key in ("add_sub_onnx", "add_sub", "densenet_onnx", "string_identity"):
                if key in cmd:
                    label += f" [{key}]"
                    break
            out[f"worker {i} {label}"] = child.memory_info().rss / 2**20
        except psutil.Error:
            continue
    return out


def tree_cpu(pid: int) -> dict[str, float]:
    """CPU seconds (user+system) of the server process and, summed, of its descendants."""
    root = psutil.Process(pid)
    t = root.cpu_times()
    out = {"core": t.user + t.system, "workers": 0.0}
    for child in root.children(recursive=True):
        try:
            c = child.cpu_times()
            out["workers"] += c.user + c.system
        except psutil.Error:
            continue
    return out


def success_count(http_url: str, model: str) -> int:
    """Successful inferences so far, from the statistics extension (both servers speak it)."""
    import urllib.request

    with urllib.request.urlopen(f"http://{http_url}/v2/models/{model}/stats", timeout=10) as resp:
        doc = json.load(resp)
    return sum(int(m["inference_stats"]["success"]["count"]) for m in doc["model_stats"])


# ---------------------------------------------------------------- servers

class TritonServer:
    """Real Triton 2.51 through start_triton.sh (background mode, its own ready wait)."""

    def __init__(self, repo: Path) -> None:
        self.http_port, self.grpc_port, self.metrics_port = free_port(), free_port(), free_port()
        env = dict(os.environ, TRITON_HOME=str(TRITON_HOME), MODEL_REPO=str(repo), TRITON_BACKGROUND="1",
                   HTTP_PORT=str(self.http_port), GRPC_PORT=str(self.grpc_port),
                   METRICS_PORT=str(self.metrics_port))
        t0 = time.monotonic()
        proc = subprocess.run(["bash", str(TOOLS / "start_triton.sh")], env=env, capture_output=True,
                              text=True, timeout=180)
        self.startup_s = time.monotonic() - t0
        if proc.returncode != 0:
            raise RuntimeError(f"real Triton did not start: {proc.stdout}\n{proc.stderr}")
        self.pid = int((TRITON_HOME / "triton.pid").read_text())
        self.http_url, self.grpc_url = f"127.0.0.1:{self.http_port}", f"127.0.0.1:{self.grpc_port}"

    def stop(self) -> None:
        try:
            os.kill(self.pid, signal.SIGTERM)
            psutil.Process(self.pid).wait(30)
        except (ProcessLookupError, psutil.Error):
            pass


# ---------------------------------------------------------------- clients

def perf_analyzer(model: str, url: str, protocol: str, level: int, interval_ms: int, out: Path) -> dict | None:
    """One perf_analyzer level; its CSV row (µs) or None. Retries once with a looser stability rule."""
    for stability in (15, 50):
        csv_path = out / f"pa_{url.replace(':', '_')}_{protocol}_{model}_c{level}.csv"
        cmd = [str(PA), "-m", model, "-u", url, "-i", protocol, "--concurrency-range", str(level),
               "--measurement-interval", str(interval_ms), "-s", str(stability), "-r", "8", "-f", str(csv_path)]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        if proc.returncode == 0 and csv_path.exists():
            with open(csv_path, newline="") as fh:
                row = next(csv.DictReader(fh))
            return {"throughput": float(row["Inferences/Second"]), "p50": float(row["p50 latency"]),
                    "p99": float(row["p99 latency"]), "stability_pct": stability,
                    "queue": float(row["Server Queue"]), "infer": float(row["Server Compute Infer"])}
    print(f"perf_analyzer failed at {url} {protocol} c={level}: {proc.stdout[-400:]} {proc.stderr[-400:]}",
          file=sys.stderr)
    return None


def bench_tool(model: str, url: str, protocol: str, level: int, interval_ms: int, out: Path) -> dict | None:
    json_path = out / f"tool_{url.replace(':', '_')}_{protocol}_{model}_c{level}.json"
    cmd = [sys.executable, "-m", "tritonpy.bench.cli", "-m", model, "-u", url, "-i", protocol,
           "--concurrency-range", str(level), "-p", str(interval_ms), "-s", "15", "-r", "8",
           "--warmup-interval", "300", "-q", "--json", str(json_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        print(f"tritonpy-bench failed: {proc.stderr[-500:]}", file=sys.stderr)
        return None
    row = json.loads(json_path.read_text())["results"][0]
    return {"throughput": row["throughput_infer_per_s"], "p50": row["latency_p50_us"],
            "p99": row["latency_p99_us"], "client_cpu_us": row["client_cpu_us_per_request"],
            "client_util": row["client_cpu_util"], "stable": row["stable"],
            "srv_queue": row["server_queue_us"], "srv_infer": row["server_compute_infer_us"]}


# ---------------------------------------------------------------- the suite

def build_repos(out: Path) -> tuple[Path, Path]:
    repo = out / "model_repository"
    subprocess.run([sys.executable, str(ROOT / "examples" / "build_examples.py"), "--out", str(repo)],
                   check=True, capture_output=True)
    triton_repo = out / "triton_repository"
    shutil.rmtree(triton_repo, ignore_errors=True)
    triton_repo.mkdir(parents=True)
    shutil.copytree(repo / "add_sub", triton_repo / "add_sub")
    return repo, triton_repo


def profile_core(repo: Path, out: Path, seconds: int) -> Path:
    """cProfile the tritonpy core process under perf_analyzer HTTP load (c=4)."""
    http, grpc_, metrics = free_port(), free_port(), free_port()
    prof = out / "core.prof"
    # The main thread's CPU clock, not wall time: on a busy 2-core machine a wall-clock profile
    # charges every preemption to whatever call was running (zmq sends looked 10x dearer that way).
    runner = ("import cProfile, runpy, sys, time\n"
              "prof = cProfile.Profile(time.thread_time)\n"
              "sys.argv = ['tritonpy-server', *sys.argv[2:]]\n"
              "prof.enable()\n"
              "try:\n    runpy.run_module('tritonpy.frontends.cli', run_name='__main__')\n"
              "except SystemExit:\n    pass\n"
              "finally:\n    prof.disable()\n    prof.dump_stats(sys.argv_out)\n")
    runner = runner.replace("sys.argv_out", repr(str(prof)))
    cmd = [sys.executable, "-c", runner, "x",
           "--model-repository", str(repo), "--http-address", "127.0.0.1", "--http-port", str(http),
           "--grpc-address", "127.0.0.1", "--grpc-port", str(grpc_), "--metrics-port", str(metrics)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        import urllib.request

        for _ in range(600):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{http}/v2/health/ready", timeout=1):
                    break
            except OSError:
                time.sleep(0.1)
        subprocess.run([str(PA), "-m", "add_sub", "-u", f"127.0.0.1:{http}", "--concurrency-range", "4",
                        "--measurement-interval", str(seconds * 1000 // 3), "-s", "90", "-r", "3"],
                       capture_output=True, timeout=300)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    import pstats

    text = out / "profile_core.txt"
    with open(text, "w") as fh:
        stats = pstats.Stats(str(prof), stream=fh)
        stats.sort_stats("tottime").print_stats(40)
        stats.sort_stats("cumulative").print_stats(60)
    return text


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--levels", default="1,2,4,8,16")
    ap.add_argument("--interval-ms", type=int, default=2000)
    ap.add_argument("--out", default=str(ROOT / "build" / "bench_suite"))
    ap.add_argument("--skip-triton", action="store_true")
    ap.add_argument("--skip-tool", action="store_true", help="perf_analyzer only")
    ap.add_argument("--profile", action="store_true")
    args = ap.parse_args()
    levels = [int(x) for x in args.levels.split(",")]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if not PA.exists():
        sys.exit(f"perf_analyzer not found at {PA}: run {TOOLS / 'setup_triton_env.sh'} first")
    repo, triton_repo = build_repos(out)
    meter = LoadMeter()
    facts = {"machine": machine_info(), "loadavg_before": os.getloadavg(),
             "command": " ".join([sys.executable, *sys.argv]), "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                                       time.gmtime())}
    print("machine: " + ", ".join(f"{k} {v}" for k, v in facts["machine"].items()))
    results: dict = {"facts": facts, "startup": {}, "memory": {}, "pa": [], "tool": []}

    t0 = time.monotonic()
    tp = ServerProcess(repo)
    tp.wait(120)
    results["startup"]["tritonpy"] = time.monotonic() - t0
    time.sleep(1.0)
    results["memory"]["tritonpy"] = rss_tree(tp.proc.pid)
    tr = None
    try:
        if not args.skip_triton:
            tr = TritonServer(triton_repo)
            results["startup"]["triton"] = tr.startup_s
            time.sleep(1.0)
            results["memory"]["triton"] = rss_tree(tr.pid)
        servers = [("tritonpy", tp)] + ([("triton", tr)] if tr else [])
        for protocol in ("http", "grpc"):
            for level in levels:
                order = servers if level % 2 or len(servers) == 1 else servers[::-1]
                for name, srv in order:
                    url = srv.http_url if protocol == "http" else srv.grpc_url
                    pid = srv.proc.pid if name == "tritonpy" else srv.pid
                    cpu0, n0 = tree_cpu(pid), success_count(srv.http_url, "add_sub")
                    row = perf_analyzer("add_sub", url, protocol, level, args.interval_ms, out)
                    cpu1, n1 = tree_cpu(pid), success_count(srv.http_url, "add_sub")
                    if row and n1 > n0:
                        # Server CPU per request over the whole perf_analyzer run (warm-up windows too).
                        row["core_cpu_us"] = (cpu1["core"] - cpu0["core"]) / (n1 - n0) * 1e6
                        row["workers_cpu_us"] = (cpu1["workers"] - cpu0["workers"]) / (n1 - n0) * 1e6
                    if row:
                        results["pa"].append({"server": name, "protocol": protocol, "level": level, **row})
                        print(f"perf_analyzer {name} {protocol} c={level}: {row['throughput']:.0f}/s "
                              f"p50 {row['p50']:.0f} µs", file=sys.stderr, flush=True)
        if not args.skip_tool:
            runs = [("tritonpy", tp, "add_sub"), ("tritonpy", tp, "add_sub_onnx")]
            if tr:
                runs.append(("triton", tr, "add_sub"))
            for protocol in ("http", "grpc"):
                for name, srv, model in runs:
                    for level in levels:
                        url = srv.http_url if protocol == "http" else srv.grpc_url
                        row = bench_tool(model, url, protocol, level, args.interval_ms, out)
                        if row:
                            results["tool"].append({"server": name, "model": model, "protocol": protocol,
                                                    "level": level, **row})
                            print(f"tritonpy-bench {name} {model} {protocol} c={level}: "
                                  f"{row['throughput']:.0f}/s", file=sys.stderr, flush=True)
    finally:
        tp.stop()
        if tr:
            tr.stop()
    facts["other_processes_share"] = meter.other_fraction()
    facts["loadavg_after"] = os.getloadavg()
    if args.profile:
        results["profile"] = str(profile_core(repo, out, 9))
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    report(results, levels, out)


def report(results: dict, levels: list[int], out: Path) -> None:
    f = results["facts"]
    print(f"\nrun {f['time_utc']}; load average before {f['loadavg_before'][0]:.1f}, after "
          f"{f['loadavg_after'][0]:.1f}; other processes used {f['other_processes_share']:.0%} of the machine")
    print("\nStart-up (launch -> ready) and memory (RSS MiB)\n")
    rows = []
    for name, secs in results["startup"].items():
        mem = results["memory"].get(name, {})
        rows.append([name, f"{secs:.2f} s", f"{sum(mem.values()):.0f}",
                     "; ".join(f"{k}: {v:.0f}" for k, v in mem.items())])
    print_table(["server", "start-up", "total RSS", "per process"], rows)
    pa = {(r["server"], r["protocol"], r["level"]): r for r in results["pa"]}
    for protocol in ("http", "grpc"):
        print(f"\nperf_analyzer 2.51 (C++), add_sub (Python backend), {protocol}\n")
        rows = []
        for level in levels:
            a, b = pa.get(("tritonpy", protocol, level)), pa.get(("triton", protocol, level))
            ratio = f"{a['throughput'] / b['throughput']:.2f}" if a and b else "-"
            rows.append([str(level),
                         f"{a['throughput']:,.0f}" if a else "-", f"{a['p50']:.0f}" if a else "-",
                         f"{a['p99']:.0f}" if a else "-",
                         f"{b['throughput']:,.0f}" if b else "-", f"{b['p50']:.0f}" if b else "-",
                         f"{b['p99']:.0f}" if b else "-", ratio])
        print_table(["c", "tritonpy infer/s", "p50 µs", "p99 µs", "Triton infer/s", "p50 µs", "p99 µs",
                     "tritonpy/Triton"], rows)
        print(f"\nServer CPU per request (µs, whole process tree, same runs), {protocol}\n")
        rows = []
        for level in levels:
            cells = [str(level)]
            for server in ("tritonpy", "triton"):
                r = pa.get((server, protocol, level))
                cells += ([f"{r['core_cpu_us']:.0f}", f"{r['workers_cpu_us']:.0f}"]
                          if r and "core_cpu_us" in r else ["-", "-"])
            rows.append(cells)
        print_table(["c", "tritonpy core", "tritonpy worker", "Triton server", "Triton python stub"], rows)
    if results["tool"]:
        print("\ntritonpy-bench (this repo's client)\n")
        rows = [[r["server"], r["model"], r["protocol"], str(r["level"]), f"{r['throughput']:,.0f}",
                 f"{r['p50']:.0f}", f"{r['p99']:.0f}", f"{r['srv_queue']:.0f}", f"{r['srv_infer']:.0f}",
                 f"{r['client_cpu_us']:.0f}", f"{r['client_util']:.0%}"] for r in results["tool"]]
        print_table(["server", "model", "proto", "c", "infer/s", "p50 µs", "p99 µs", "srv queue µs",
                     "srv infer µs", "client CPU µs/req", "client core"], rows)
    a16 = pa.get(("tritonpy", "http", 16))
    a1 = pa.get(("tritonpy", "http", 1))
    print("\nTargets (tritonpy, perf_analyzer client, HTTP): "
          f"c=16 {a16['throughput']:,.0f} infer/s (target >= 9,000); " if a16 else "\nTargets: c=16 not run; ",
          f"c=1 p50 {a1['p50']:.0f} µs (target <= 330)" if a1 else "c=1 not run")
    series = []
    for server in ("tritonpy", "triton"):
        for protocol in ("http", "grpc"):
            pts = [(r["throughput"], r["p50"], r["p99"], f"c={r['level']}") for r in results["pa"]
                   if r["server"] == server and r["protocol"] == protocol]
            if pts:
                series.append((f"{server} {protocol} (perf_analyzer)", pts))
    write_html(str(out / "latency_throughput.html"), series, "add_sub (Python backend): latency vs throughput",
               json.dumps(results["facts"], indent=1))
    print(f"\nfiles: {out / 'results.json'}, {out / 'latency_throughput.html'}")


if __name__ == "__main__":
    main()
