"""Prometheus metrics with Triton's names, read from the models' statistics at scrape time.

A collector, not live counters: the hot path only bumps plain integers in ModelStats, and a scrape
turns them into metric families. Because everything is computed at scrape time,
`--metrics-interval-ms` changes nothing here (Triton uses it to poll GPU/CPU counters in the
background; a scrape reads fresh values instead).

The text is rendered by `exposition()` rather than prometheus_client's `generate_latest`, which
would rename every counter to `<name>_total`: Triton (prometheus-cpp) exposes
`nv_inference_request_success{...}`, and dashboards and alerts query those exact names.
Nothing here knows about HTTP.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator
from typing import Any

import psutil
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import CollectorRegistry

from tritonpy.core.tenancy import tenants
from tritonpy.core.observability import custom_metrics
from tritonpy.core.observability.custom_metrics import go_float
from tritonpy.core.observability.gpu_metrics import GpuMetrics
from tritonpy.core.observability.stats import SUMMARY_NAMES, BucketCounts, ModelStats

_LABELS = ["model", "version"]
_REASONS = ("REJECTED", "CANCELED", "BACKEND", "OTHER")
# Beyond Triton: tenant quota refusals (core.quota) appear with their own reason once they happened:
# RATE_LIMITED, IN_FLIGHT_LIMITED, QUEUE_SHARE_LIMITED.
_BATCH_BOUNDS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
DEFAULT_QUANTILES: tuple[tuple[float, float], ...] = (
    (0.5, 0.05), (0.9, 0.01), (0.95, 0.001), (0.99, 0.001), (0.999, 0.001),
)

_COUNTER_DOCS = {
    "nv_inference_request_success": "Number of successful inference requests, all batch sizes",
    "nv_inference_request_failure": "Number of failed inference requests, all batch sizes",
    "nv_inference_count": "Number of inferences performed (does not include cached requests)",
    "nv_inference_exec_count": "Number of model executions performed (does not include cached requests)",
    "tritonpy_worker_restarts": "Number of times a backend worker of the model was restarted",
    "tritonpy_worker_out_of_memory": "Number of times a backend worker of the model died at its memory ceiling",
}
# (stats attribute, metric name part, help text part)
_LATENCIES = (
    ("request", "request", "inference request duration in microseconds (includes cached requests)"),
    ("queue", "queue", "inference queuing duration in microseconds (includes cached requests)"),
    ("compute_input", "compute_input", "compute input duration in microseconds (does not include cached requests)"),
    ("compute_infer", "compute_infer", "compute inference duration in microseconds (does not include cached requests)"),
    ("compute_output", "compute_output",
     "inference compute output duration in microseconds (does not include cached requests)"),
)


def _parse_bool(key: str, value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("true", "1", "on", "yes"):
        return True
    if lowered in ("false", "0", "off", "no"):
        return False
    raise ValueError(f"--metrics-config {key}: expected true or false, got '{value}'")


def _parse_quantiles(value: str) -> tuple[tuple[float, float], ...]:
    pairs = []
    for item in value.split(","):
        try:
            q, err = item.split(":")
            pair = (float(q), float(err))
        except ValueError:
            raise ValueError(f"--metrics-config summary_quantiles: expected '<q>:<error>,...', got '{value}'") from None
        if not (0.0 <= pair[0] <= 1.0 and 0.0 <= pair[1] <= 1.0):
            raise ValueError(f"--metrics-config summary_quantiles: '{item}' is not within [0, 1]")
        pairs.append(pair)
    return tuple(pairs)


@dataclasses.dataclass(frozen=True, slots=True)
class MetricsConfig:
    """`--metrics-config` as Triton defines it (reference C.7)."""

    counter_latencies: bool = True
    summary_latencies: bool = False
    summary_quantiles: tuple[tuple[float, float], ...] = DEFAULT_QUANTILES
    histogram_latencies: bool = False

    @classmethod
    def from_options(cls, values: dict[str, str]) -> MetricsConfig:
        """Raises ValueError for an unknown key or a bad value."""
        kwargs: dict[str, object] = {}
        for key, value in values.items():
            if key in ("counter_latencies", "summary_latencies", "histogram_latencies"):
                kwargs[key] = _parse_bool(key, value)
            elif key == "summary_quantiles":
                kwargs[key] = _parse_quantiles(value)
            else:
                raise ValueError(f"--metrics-config: unknown setting '{key}'")
        return cls(**kwargs)  # type: ignore[arg-type]


def _counter(name: str, doc: str) -> Metric:
    return Metric(name, doc, "counter")


class ServerCollector:
    # `server` is the InferenceServer; typed Any because observability sits below the model and
    # repository rooms (tests/layout/test_import_direction.py) and may not name their types.
    def __init__(self, server: Any, *, cpu_metrics: bool = True, config: MetricsConfig | None = None,
                 gpu: GpuMetrics | None = None) -> None:
        self.server = server
        self.cpu_metrics = cpu_metrics
        self.gpu = gpu  # NVML devices (core/observability/gpu_metrics.py), None without a GPU or when not allowed
        self.config = config or MetricsConfig()
        psutil.cpu_percent(None)  # prime the CPU sampler

    def _families(self) -> dict[str, Metric]:
        fams: dict[str, Metric] = {name: _counter(name, doc) for name, doc in _COUNTER_DOCS.items()}
        fams["nv_inference_pending_request_count"] = Metric(
            "nv_inference_pending_request_count",
            "Instantaneous number of pending requests awaiting execution per-model.", "gauge")
        if self.config.counter_latencies:
            for _, part, doc in _LATENCIES:
                name = f"nv_inference_{part}_duration_us"
                fams[name] = _counter(name, "Cumulative " + doc)
        if self.config.summary_latencies:
            for _, part, doc in _LATENCIES:
                name = f"nv_inference_{part}_summary_us"
                fams[name] = Metric(name, "Summary of " + doc, "summary")
        if self.config.histogram_latencies:
            name = "nv_inference_first_response_histogram_ms"
            fams[name] = Metric(name, "Duration from request to first response in milliseconds", "histogram")
        fams["nv_model_load_duration_secs"] = Metric("nv_model_load_duration_secs", "Model load time in seconds",
                                                     "gauge")
        fams["tritonpy_inference_batch_size"] = Metric(
            "tritonpy_inference_batch_size", "Batch sizes (requests per model execution) executed by the model",
            "histogram")
        return fams

    def _add_model(self, fams: dict[str, Metric], mv: Any, labels: dict[str, str]) -> None:
        s: ModelStats = mv.stats
        fams["nv_inference_request_success"].add_sample("nv_inference_request_success", labels, s.success.count)
        extra = tuple(r for r in s.failures_by_reason if r not in _REASONS)
        for reason in _REASONS + extra:
            fams["nv_inference_request_failure"].add_sample(
                "nv_inference_request_failure", {**labels, "reason": reason}, s.failures_by_reason.get(reason, 0))
        fams["nv_inference_count"].add_sample("nv_inference_count", labels, s.inference_count)
        fams["nv_inference_exec_count"].add_sample("nv_inference_exec_count", labels, s.execution_count)
        pending = mv.scheduler.pending_count if mv.scheduler is not None else 0
        fams["nv_inference_pending_request_count"].add_sample("nv_inference_pending_request_count", labels, pending)
        durations = {"request": s.success, "queue": s.queue, "compute_input": s.compute_input,
                     "compute_infer": s.compute_infer, "compute_output": s.compute_output}
        if self.config.counter_latencies:
            for attr, part, _ in _LATENCIES:
                name = f"nv_inference_{part}_duration_us"
                fams[name].add_sample(name, labels, durations[attr].ns // 1000)
        if self.config.summary_latencies:
            qs = [q for q, _ in self.config.summary_quantiles]
            for attr in SUMMARY_NAMES:
                name = f"nv_inference_{attr}_summary_us"
                window = s.summaries[attr] if s.summaries is not None else None
                values = window.quantiles(qs) if window is not None else [math.nan] * len(qs)
                for q, v in zip(qs, values):
                    fams[name].add_sample(name, {**labels, "quantile": go_float(q)}, v)
                fams[name].add_sample(name + "_sum", labels, window.total if window is not None else 0.0)
                fams[name].add_sample(name + "_count", labels, window.count if window is not None else 0)
        if self.config.histogram_latencies:
            hist = s.first_response or BucketCounts(s.first_response_buckets)
            self._histogram(fams["nv_inference_first_response_histogram_ms"], labels, hist.cumulative(),
                            hist.count, hist.total)
        fams["nv_model_load_duration_secs"].add_sample("nv_model_load_duration_secs", labels, mv.load_duration_s)
        fams["tritonpy_worker_restarts"].add_sample("tritonpy_worker_restarts", labels, s.worker_restarts)
        fams["tritonpy_worker_out_of_memory"].add_sample("tritonpy_worker_out_of_memory", labels,
                                                         s.worker_out_of_memory)
        sizes = {size: b.compute_infer.count for size, b in s.batches.items()}
        buckets = [(float(bound), sum(c for size, c in sizes.items() if size <= bound)) for bound in _BATCH_BOUNDS]
        self._histogram(fams["tritonpy_inference_batch_size"], labels, buckets, sum(sizes.values()),
                        float(sum(size * c for size, c in sizes.items())))

    @staticmethod
    def _histogram(fam: Metric, labels: dict[str, str], buckets: list[tuple[float, int]], count: int,
                   total: float) -> None:
        for bound, acc in buckets:
            fam.add_sample(fam.name + "_bucket", {**labels, "le": go_float(bound)}, acc)
        fam.add_sample(fam.name + "_bucket", {**labels, "le": "+Inf"}, count)
        fam.add_sample(fam.name + "_count", labels, count)
        fam.add_sample(fam.name + "_sum", labels, total)

    def collect(self) -> Iterator[Metric]:
        fams = self._families()
        models = self.server.models
        for mv in models.all_versions() if models is not None else []:
            if mv.state.value != "READY" and not mv.stats.execution_count:
                continue
            if not tenants.may_see(mv.name):  # scraped with a tenant's key: only its models
                continue
            labels = {"model": mv.name, "version": str(mv.version)}
            for key, value in mv.config.metric_tags.items():
                labels[f"_{key}"] = value
            self._add_model(fams, mv, labels)
        yield from fams.values()
        store = getattr(self.server, "custom_metrics", None)
        if isinstance(store, custom_metrics.CustomMetrics):  # what Python models defined with pb_utils
            yield from store.families(tenants.may_see)
        if self.cpu_metrics:
            mem = psutil.virtual_memory()
            util = GaugeMetricFamily("nv_cpu_utilization", "CPU utilization rate [0.0 - 1.0]")
            util.add_metric([], psutil.cpu_percent(None) / 100.0)
            total = GaugeMetricFamily("nv_cpu_memory_total_bytes", "CPU total memory (RAM), in bytes")
            total.add_metric([], float(mem.total))
            used = GaugeMetricFamily("nv_cpu_memory_used_bytes", "CPU used memory (RAM), in bytes")
            used.add_metric([], float(mem.total - mem.available))
            yield util
            yield total
            yield used
        if self.gpu is not None:
            yield from self.gpu.families()


def _escape_label(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


# prometheus-cpp (Triton's exporter) keeps a metric's labels in a std::map, so they print sorted by
# name (`{model=..,reason=..,version=..}`), and a histogram's `le` or a summary's `quantile` is
# appended after them. Tools that match on the text depend on that order.
_LAST_LABELS = ("le", "quantile")


def _label_text(labels: dict[str, str]) -> str:
    keys = sorted(k for k in labels if k not in _LAST_LABELS) + [k for k in _LAST_LABELS if k in labels]
    return ",".join(f'{k}="{_escape_label(str(labels[k]))}"' for k in keys)


def exposition(registry: CollectorRegistry) -> bytes:
    """Prometheus text format 0.0.4 with family and sample names exactly as collected."""
    lines: list[str] = []
    for fam in registry.collect():
        doc = fam.documentation.replace("\\", r"\\").replace("\n", r"\n")
        lines.append(f"# HELP {fam.name} {doc}")
        lines.append(f"# TYPE {fam.name} {fam.type}")
        for sample in fam.samples:
            if sample.labels:
                lines.append(f"{sample.name}{{{_label_text(sample.labels)}}} {go_float(sample.value)}")
            else:
                lines.append(f"{sample.name} {go_float(sample.value)}")
    lines.append("")
    return "\n".join(lines).encode()


def make_registry(server: Any, *, cpu_metrics: bool = True, config: MetricsConfig | None = None,
                  gpu_metrics: bool | None = None) -> CollectorRegistry:
    """A registry for `server`; also switches on the per-request observations that the summaries
    and the first-response histogram need (they cost a little on every request, so only then).
    `gpu_metrics` None follows `--allow-gpu-metrics` (server.options.allow_gpu_metrics); NVML is
    opened only when they are allowed."""
    config = config or MetricsConfig()
    ModelStats.keep_summaries = config.summary_latencies
    ModelStats.keep_first_response_histogram = config.histogram_latencies
    registry = CollectorRegistry(auto_describe=False)
    if gpu_metrics is None:
        gpu_metrics = bool(getattr(getattr(server, "options", None), "allow_gpu_metrics", False))
    gpu = GpuMetrics.open() if gpu_metrics else None
    registry.register(ServerCollector(server, cpu_metrics=cpu_metrics, config=config, gpu=gpu))
    return registry


__all__ = ["DEFAULT_QUANTILES", "MetricsConfig", "ServerCollector", "exposition", "make_registry"]
