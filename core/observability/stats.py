"""Per-model-version statistics in the shape of Triton's statistics extension.

Durations are cumulative {count, ns}. As in Triton, the request-level success, queue and compute_*
durations count successful requests only (one entry each, the compute phases being those of the
batch it ran in), so queue + compute <= success holds for every request and for the sums;
inference_count counts rows, execution_count and batch_stats count backend executions.
The schedulers call `record_batch` per execution and `record_request` / `record_failure` when a
request completes.
"""
from __future__ import annotations

import bisect
import collections
import math
import time
from typing import Any

from tritonpy.proto import model_config_pb2 as mc

# Triton's default buckets (ms) for nv_inference_first_response_histogram_ms, and the metric family
# name a model's `model_metrics.metric_control` uses to override them.
DEFAULT_FIRST_RESPONSE_BUCKETS_MS: tuple[float, ...] = (100.0, 500.0, 2000.0, 5000.0)
FIRST_RESPONSE_FAMILY = "nv_inference_first_response_histogram_ms"
# How many recent observations a latency summary keeps to compute its quantiles.
SUMMARY_WINDOW = 1024
# The per-request latencies a summary is kept for (nv_inference_<name>_summary_us).
SUMMARY_NAMES = ("request", "queue", "compute_input", "compute_infer", "compute_output")


class Duration:
    __slots__ = ("count", "ns")

    def __init__(self) -> None:
        self.count = 0
        self.ns = 0

    def add(self, ns: int, count: int = 1) -> None:
        self.count += count
        self.ns += max(int(ns), 0)

    def as_dict(self) -> dict[str, int]:
        return {"count": self.count, "ns": self.ns}


class LatencyWindow:
    """A Prometheus summary's data: cumulative count and sum, plus the most recent observations
    (a bounded window) from which quantiles are computed at scrape time. Bounded memory and O(1)
    per observation; the quantiles describe recent traffic, as Triton's time-windowed summaries do."""

    __slots__ = ("values", "count", "total")

    def __init__(self, size: int = SUMMARY_WINDOW) -> None:
        self.values: collections.deque[float] = collections.deque(maxlen=size)
        self.count = 0
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.values.append(value)
        self.count += 1
        self.total += value

    def quantiles(self, qs: list[float] | tuple[float, ...]) -> list[float]:
        """Nearest-rank quantiles of the window (NaN when nothing was observed, as Prometheus does)."""
        ordered = sorted(self.values)
        n = len(ordered)
        if not n:
            return [math.nan for _ in qs]
        return [ordered[min(n - 1, max(0, math.ceil(q * n) - 1))] for q in qs]


class BucketCounts:
    """A Prometheus histogram's data: per-bucket counts (upper bounds inclusive), sum and count."""

    __slots__ = ("bounds", "counts", "count", "total")

    def __init__(self, bounds: tuple[float, ...] | list[float]) -> None:
        self.bounds = tuple(sorted(float(b) for b in bounds))
        self.counts = [0] * len(self.bounds)
        self.count = 0
        self.total = 0.0

    def observe(self, value: float) -> None:
        i = bisect.bisect_left(self.bounds, value)
        if i < len(self.counts):
            self.counts[i] += 1
        self.count += 1
        self.total += value

    def cumulative(self) -> list[tuple[float, int]]:
        """(upper bound, observations <= bound) for each bound, in order."""
        out, acc = [], 0
        for bound, c in zip(self.bounds, self.counts):
            acc += c
            out.append((bound, acc))
        return out


class _BatchStats:
    __slots__ = ("compute_input", "compute_infer", "compute_output")

    def __init__(self) -> None:
        self.compute_input = Duration()
        self.compute_infer = Duration()
        self.compute_output = Duration()


class _ResponseStats:
    """One response index of decoupled models (Triton's InferResponseStatistics)."""

    __slots__ = ("compute_infer", "compute_output", "success", "fail", "empty_response", "cancel")

    def __init__(self) -> None:
        self.compute_infer = Duration()
        self.compute_output = Duration()
        self.success = Duration()
        self.fail = Duration()
        self.empty_response = Duration()
        self.cancel = Duration()

    def as_dict(self) -> dict[str, dict[str, int]]:
        return {name: getattr(self, name).as_dict() for name in self.__slots__}


class ModelStats:
    """Counters for one model version. Cheap to update: plain attribute arithmetic on the loop.

    Per-request latency observations (summaries, first-response histogram) cost more, so they are
    kept only when `--metrics-config` asks for them: the metrics module turns the class-wide
    switches below on at startup.
    """

    keep_summaries: bool = False
    keep_first_response_histogram: bool = False

    def __init__(self, name: str, version: str) -> None:
        self.name = name
        self.version = version
        self.last_inference_ms = 0
        self.inference_count = 0
        self.execution_count = 0
        self.success = Duration()
        self.fail = Duration()
        self.queue = Duration()
        self.compute_input = Duration()
        self.compute_infer = Duration()
        self.compute_output = Duration()
        self.cache_hit = Duration()
        self.cache_miss = Duration()
        self.batches: dict[int, _BatchStats] = {}
        self.responses: dict[int, _ResponseStats] = {}  # decoupled models: by response index
        # Failure counts by Triton's metric `reason` label: REJECTED, CANCELED, BACKEND, OTHER.
        self.failures_by_reason: dict[str, int] = {}
        self.worker_restarts = 0
        self.worker_out_of_memory = 0  # worker deaths at the model's memory ceiling (core.worker_limits)
        self.last_worker_failure = ""  # "out of memory" after such a death: shown as the model's reason
        self.first_response_buckets: tuple[float, ...] = DEFAULT_FIRST_RESPONSE_BUCKETS_MS
        self.summaries: dict[str, LatencyWindow] | None = None
        self.first_response: BucketCounts | None = None

    def configure(self, config: mc.ModelConfig) -> None:
        """Take per-model metric options (histogram buckets from `model_metrics`) from a model config."""
        metrics = getattr(config, "model_metrics", None)
        for control in getattr(metrics, "metric_control", ()) or ():
            if control.metric_identifier.family == FIRST_RESPONSE_FAMILY and control.histogram_options.buckets:
                self.first_response_buckets = tuple(sorted(float(b) for b in control.histogram_options.buckets))
                self.first_response = None

    # --- recording -------------------------------------------------------------------------
    def record_batch(self, batch_size: int, input_ns: int, infer_ns: int, output_ns: int) -> None:
        """One backend execution of `batch_size` rows: execution/inference counts and batch_stats.

        The per-request compute phases are recorded by `record_request` when each request succeeds,
        so (as in Triton) the request-level queue and compute durations cover successful requests only
        and queue + compute <= success for every request."""
        self.execution_count += 1
        self.inference_count += batch_size
        self.last_inference_ms = int(time.time() * 1000)
        b = self.batches.get(batch_size)
        if b is None:
            b = self.batches[batch_size] = _BatchStats()
        b.compute_input.add(input_ns)
        b.compute_infer.add(infer_ns)
        b.compute_output.add(output_ns)

    def record_request(self, request_ns: int, queue_ns: int, input_ns: int, infer_ns: int, output_ns: int) -> None:
        """A successful request: its duration, queue time and the compute phases of its batch."""
        self.success.add(request_ns)
        self.queue.add(queue_ns)
        self.compute_input.add(input_ns)
        self.compute_infer.add(infer_ns)
        self.compute_output.add(output_ns)
        if ModelStats.keep_summaries:
            windows = self.summaries
            if windows is None:
                windows = self.summaries = {name: LatencyWindow() for name in SUMMARY_NAMES}
            windows["request"].observe(request_ns / 1000.0)
            windows["queue"].observe(queue_ns / 1000.0)
            windows["compute_input"].observe(input_ns / 1000.0)
            windows["compute_infer"].observe(infer_ns / 1000.0)
            windows["compute_output"].observe(output_ns / 1000.0)
        if ModelStats.keep_first_response_histogram:
            hist = self.first_response
            if hist is None:
                hist = self.first_response = BucketCounts(self.first_response_buckets)
            # Without decoupled models the first response is the only one: it completes the request.
            hist.observe(request_ns / 1e6)

    def record_response(self, index: int, infer_ns: int, output_ns: int, outcome: str) -> None:
        """Response `index` of a decoupled request; outcome: success, fail, empty_response, cancel."""
        r = self.responses.get(index)
        if r is None:
            r = self.responses[index] = _ResponseStats()
        if outcome != "cancel":
            r.compute_infer.add(infer_ns)
            r.compute_output.add(output_ns)
        getattr(r, outcome).add(infer_ns + output_ns)

    def record_failure(self, request_ns: int, reason: str = "OTHER") -> None:
        self.fail.add(request_ns)
        self.failures_by_reason[reason] = self.failures_by_reason.get(reason, 0) + 1

    # --- reporting -------------------------------------------------------------------------
    def as_dict(self) -> dict[str, Any]:
        """Triton's JSON for one entry of `model_stats`."""
        return {
            "name": self.name,
            "version": self.version,
            "last_inference": self.last_inference_ms,
            "inference_count": self.inference_count,
            "execution_count": self.execution_count,
            "inference_stats": {
                "success": self.success.as_dict(),
                "fail": self.fail.as_dict(),
                "queue": self.queue.as_dict(),
                "compute_input": self.compute_input.as_dict(),
                "compute_infer": self.compute_infer.as_dict(),
                "compute_output": self.compute_output.as_dict(),
                "cache_hit": self.cache_hit.as_dict(),
                "cache_miss": self.cache_miss.as_dict(),
            },
            "response_stats": {str(i): r.as_dict() for i, r in sorted(self.responses.items())},
            "batch_stats": [
                {
                    "batch_size": size,
                    "compute_input": b.compute_input.as_dict(),
                    "compute_infer": b.compute_infer.as_dict(),
                    "compute_output": b.compute_output.as_dict(),
                }
                for size, b in sorted(self.batches.items())
            ],
            "memory_usage": [],
        }
