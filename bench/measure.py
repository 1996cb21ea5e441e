"""Measurement windows for one load level: warm-up, back-to-back windows until the last three agree
(throughput and average latency within --stability-percentage of their mean) or --max-trials runs
out, then one result merged from those three windows, with the server's own breakdown taken from
statistics-extension deltas over exactly the same span.
"""
from __future__ import annotations

import asyncio
import dataclasses
import time
from typing import Callable

import numpy as np

from .control import Control, StatsSnapshot
from .load import LoadGenerator, Recorder

STABLE_WINDOWS = 3
CPU_SATURATED = 0.90  # of one core: the event loop runs on one thread


@dataclasses.dataclass(slots=True)
class Window:
    duration_s: float
    latencies_ns: list[int]
    errors: int
    first_error: str | None
    delayed: int
    cpu_s: float
    stats_before: StatsSnapshot
    stats_after: StatsSnapshot

    @property
    def throughput(self) -> float:
        return len(self.latencies_ns) / self.duration_s if self.duration_s > 0 else 0.0

    @property
    def avg_latency_us(self) -> float:
        return (sum(self.latencies_ns) / len(self.latencies_ns) / 1000.0) if self.latencies_ns else 0.0


@dataclasses.dataclass(slots=True)
class LevelResult:
    mode: str
    level: float
    requests: int
    errors: int
    first_error: str | None
    delayed: int
    duration_s: float
    throughput: float
    latency_us: dict[str, float]  # avg, min, max, p50, p90, p95, p99
    server: dict[str, float]  # per request, µs; plus counts
    client_cpu_us_per_request: float
    client_cpu_util: float  # of one core
    stable: bool
    windows: int

    @property
    def saturated(self) -> bool:
        return self.client_cpu_util >= CPU_SATURATED

    def row(self) -> dict[str, object]:
        """One flat CSV/JSON row; names carry their unit."""
        row: dict[str, object] = {
            "mode": self.mode, "level": _num(self.level), "throughput_infer_per_s": round(self.throughput, 2),
            "requests": self.requests, "errors": self.errors, "delayed": self.delayed,
            "duration_s": round(self.duration_s, 4),
        }
        row.update({f"latency_{k}_us": round(v, 1) for k, v in self.latency_us.items()})
        row.update({f"server_{k}": round(v, 2) for k, v in self.server.items()})
        row["client_cpu_us_per_request"] = round(self.client_cpu_us_per_request, 1)
        row["client_cpu_util"] = round(self.client_cpu_util, 3)
        row["client_saturated"] = self.saturated
        row["stable"] = self.stable
        row["windows"] = self.windows
        return row


def _num(v: float) -> float | int:
    return int(v) if float(v).is_integer() else v


def server_breakdown(delta: StatsSnapshot) -> dict[str, float]:
    """Average µs per successful request of each server phase, from a statistics delta."""
    n = delta.success_count
    per = (lambda ns: ns / n / 1000.0) if n else (lambda ns: 0.0)
    return {
        "success_count": float(n),
        "fail_count": float(delta.fail_count),
        "avg_request_us": per(delta.success_ns),
        "queue_us": per(delta.queue_ns),
        "compute_input_us": per(delta.compute_input_ns),
        "compute_infer_us": per(delta.compute_infer_ns),
        "compute_output_us": per(delta.compute_output_ns),
        "avg_batch": (delta.inference_count / delta.execution_count) if delta.execution_count else 0.0,
    }


def merge(mode: str, level: float, windows: list[Window], stable: bool) -> LevelResult:
    lat = np.fromiter((x for w in windows for x in w.latencies_ns), dtype=np.int64)
    duration = sum(w.duration_s for w in windows)
    if lat.size:
        pct = np.percentile(lat, [50, 90, 95, 99]) / 1000.0
        latency = {"avg": float(lat.mean()) / 1000.0, "min": float(lat.min()) / 1000.0,
                   "max": float(lat.max()) / 1000.0, "p50": float(pct[0]), "p90": float(pct[1]),
                   "p95": float(pct[2]), "p99": float(pct[3])}
    else:
        latency = dict.fromkeys(("avg", "min", "max", "p50", "p90", "p95", "p99"), 0.0)
    cpu = sum(w.cpu_s for w in windows)
    delta = windows[-1].stats_after.minus(windows[0].stats_before)
    return LevelResult(
        mode=mode, level=level, requests=int(lat.size), errors=sum(w.errors for w in windows),
        first_error=next((w.first_error for w in windows if w.first_error), None),
        delayed=sum(w.delayed for w in windows), duration_s=duration,
        throughput=lat.size / duration if duration else 0.0, latency_us=latency,
        server=server_breakdown(delta),
        client_cpu_us_per_request=(cpu / lat.size * 1e6) if lat.size else 0.0,
        client_cpu_util=cpu / duration if duration else 0.0, stable=stable, windows=len(windows),
    )


def is_stable(windows: list[Window], percentage: float) -> bool:
    if len(windows) < STABLE_WINDOWS:
        return False
    last = windows[-STABLE_WINDOWS:]
    for values in ([w.throughput for w in last], [w.avg_latency_us for w in last]):
        mean = sum(values) / len(values)
        if mean <= 0 or any(abs(v - mean) > mean * percentage / 100.0 for v in values):
            return False
    return True


ProgressFn = Callable[[float, int, Window], None]


class Measurer:
    def __init__(self, load: LoadGenerator, control: Control, *, mode: str, measurement_mode: str,
                 interval_ms: int, window_count: int, request_count: int, stability: float,
                 max_trials: int, warmup_ms: int, progress: ProgressFn) -> None:
        self.load, self.control = load, control
        self.mode, self.measurement_mode = mode, measurement_mode
        self.interval_s = interval_ms / 1000.0
        self.window_count, self.request_count = window_count, request_count
        self.stability, self.max_trials = stability, max_trials
        self.warmup_s = warmup_ms / 1000.0
        self.progress = progress

    def _target(self) -> int:
        if self.request_count:
            return self.request_count
        return self.window_count if self.measurement_mode == "count_windows" else 0

    async def _wait_window(self, rec: Recorder) -> None:
        if rec.target:
            # A count window still gives up after a long while: a stalled server must not hang the run.
            limit = max(60.0, self.interval_s * 20)
            try:
                await asyncio.wait_for(rec.reached.wait(), limit)
            except asyncio.TimeoutError:
                pass
        else:
            await asyncio.sleep(self.interval_s)

    async def run_level(self, level: float) -> LevelResult:
        await self.load.set_level(level)
        if self.warmup_s:
            await asyncio.sleep(self.warmup_s)
        windows: list[Window] = []
        stats = await self.control.stats()
        target = self._target()
        self.load.swap(target)
        t0, cpu0 = time.perf_counter(), time.process_time()
        trials = 1 if self.request_count else self.max_trials
        for trial in range(1, trials + 1):
            await self._wait_window(self.load.recorder)
            rec = self.load.swap(target)
            t1, cpu1 = time.perf_counter(), time.process_time()
            after = await self.control.stats()
            lat = rec.latencies[:target] if self.request_count else rec.latencies
            window = Window(t1 - t0, lat, rec.errors, rec.first_error, rec.delayed, cpu1 - cpu0, stats, after)
            windows.append(window)
            self.progress(level, trial, window)
            stats, t0, cpu0 = after, t1, cpu1
            if self.request_count or is_stable(windows, self.stability):
                break
        if self.request_count:
            return merge(self.mode, level, windows, True)
        stable = is_stable(windows, self.stability)
        return merge(self.mode, level, windows[-STABLE_WINDOWS:], stable)
