"""Shared helpers for the end-to-end benchmarks in scripts/ (not a test module).

The benchmarks start a real `tritonpy.frontends.cli` server process through the test helper
`tests/support/server_process.py`, so they measure what a client of the installed server sees. Both the
client and the server run on the same machine: on a small machine they compete for CPU, which is
why every benchmark prints its reference figure (raw onnxruntime, numpy copy) from the same run,
so the ratios stay meaningful even when absolute numbers drift with the machine's load.
"""
from __future__ import annotations

import contextlib
import os
import platform
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "tests") not in sys.path:
    sys.path.insert(0, str(ROOT / "tests"))

from support.server_process import ServerProcess  # noqa: E402 - importable once tests/ is on the path


def machine_info() -> dict[str, str]:
    """The facts a reader needs to compare figures across machines."""
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    info = {
        "cpus": str(os.cpu_count()),
        "cpu model": model,
        "python": platform.python_version(),
        "numpy": np.__version__,
    }
    with contextlib.suppress(ImportError):
        import onnxruntime

        info["onnxruntime"] = onnxruntime.__version__
    from importlib import metadata

    for dist in ("tritonclient", "grpcio"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            info[dist] = metadata.version(dist)
    return info


def print_machine() -> None:
    print("machine: " + ", ".join(f"{k} {v}" for k, v in machine_info().items()))


@contextlib.contextmanager
def serve(repo: Path, *extra: str, timeout: float = 60.0) -> Iterator[ServerProcess]:
    """A server on free ports, stopped (and its log shown on failure) when the block ends."""
    server = ServerProcess(repo, *extra)
    try:
        server.wait(timeout)
        yield server
    except BaseException:
        tail = server.output()[-3000:]
        print(f"--- server log tail ---\n{tail}", file=sys.stderr)
        raise
    finally:
        server.stop()


def _machine_busy_jiffies() -> tuple[int, int]:
    """(busy, total) clock ticks of all CPUs since boot, from /proc/stat."""
    fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return sum(fields) - idle, sum(fields)


def _tree_cpu_seconds() -> float:
    """CPU seconds used by this process and its live descendants (server, workers)."""
    import psutil

    me = psutil.Process()
    total = 0.0
    for proc in [me, *me.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):
            t = proc.cpu_times()
            total += t.user + t.system
    return total


class LoadMeter:
    """How much of the machine *other* processes used while a benchmark ran.

    The benchmarks run on a small shared machine where other people's test suites come and go;
    printing this next to the figures says how much to trust them.
    """

    def __init__(self) -> None:
        self._busy0, self._total0 = _machine_busy_jiffies()
        self._mine0 = _tree_cpu_seconds()
        self._t0 = time.monotonic()

    def other_fraction(self) -> float:
        busy, _ = _machine_busy_jiffies()
        ticks = os.sysconf("SC_CLK_TCK")
        machine_busy_s = (busy - self._busy0) / ticks
        mine = _tree_cpu_seconds() - self._mine0
        capacity = (time.monotonic() - self._t0) * (os.cpu_count() or 1)
        return max(0.0, (machine_busy_s - mine) / capacity) if capacity > 0 else 0.0


def wait_quiet(threshold: float = 0.15, max_wait: float = 60.0, sample: float = 1.0) -> float:
    """Wait (up to max_wait s) until the machine is at most `threshold` busy over `sample` s; last figure."""
    deadline = time.monotonic() + max_wait
    while True:
        b0, t0 = _machine_busy_jiffies()
        time.sleep(sample)
        b1, t1 = _machine_busy_jiffies()
        busy = (b1 - b0) / max(1, t1 - t0)
        if busy <= threshold or time.monotonic() >= deadline:
            return busy


def percentiles_ms(latencies_s: list[float]) -> tuple[float, float]:
    """(p50, p99) in milliseconds."""
    lat = np.asarray(latencies_s) * 1000.0
    return float(np.percentile(lat, 50)), float(np.percentile(lat, 99))


def time_loop(fn: Callable[[], object], *, duration: float, warmup: int = 3, min_iters: int = 5) -> list[float]:
    """Call `fn` repeatedly for about `duration` seconds; per-call latencies in seconds (after warm-up)."""
    for _ in range(warmup):
        fn()
    latencies: list[float] = []
    end = time.perf_counter() + duration
    while time.perf_counter() < end or len(latencies) < min_iters:
        t0 = time.perf_counter()
        fn()
        latencies.append(time.perf_counter() - t0)
    return latencies


def print_table(headers: list[str], rows: list[list[str]]) -> None:
    """A Markdown table, so the output can be pasted into docs/benchmarks.md as is."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    print("| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in rows:
        print("| " + " | ".join(c.rjust(w) for c, w in zip(r, widths)) + " |")
