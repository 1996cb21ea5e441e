"""Prometheus metrics with Triton's names, read from the models' statistics at scrape time.

A collector, not live counters: the hot path only bumps plain integers in ModelStats, and a scrape
turns them into metric families. Nothing here knows about HTTP.
"""
from __future__ import annotations

import psutil
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import CollectorRegistry

_LABELS = ["model", "version"]


class ServerCollector:
    def __init__(self, server, *, cpu_metrics: bool = True) -> None:
        self.server = server
        self.cpu_metrics = cpu_metrics
        psutil.cpu_percent(None)  # prime the CPU sampler

    def _families(self, tag_keys: list[str]):
        labels = _LABELS + [f"_{k}" for k in tag_keys]

        def counter(name, doc, extra=()):
            return CounterMetricFamily(name, doc, labels=labels + list(extra))

        return {
            "success": counter("nv_inference_request_success", "Number of successful inference requests, all batch sizes"),
            "failure": counter("nv_inference_request_failure", "Number of failed inference requests, all batch sizes",
                               ["reason"]),
            "count": counter("nv_inference_count", "Number of inferences performed (does not include cached requests)"),
            "exec": counter("nv_inference_exec_count",
                            "Number of model executions performed (does not include cached requests)"),
            "pending": GaugeMetricFamily("nv_inference_pending_request_count",
                                         "Instantaneous number of pending requests awaiting execution per-model.",
                                         labels=labels),
            "request_us": counter("nv_inference_request_duration_us",
                                  "Cumulative inference request duration in microseconds (includes cached requests)"),
            "queue_us": counter("nv_inference_queue_duration_us",
                                "Cumulative inference queuing duration in microseconds (includes cached requests)"),
            "input_us": counter("nv_inference_compute_input_duration_us",
                                "Cumulative compute input duration in microseconds (does not include cached requests)"),
            "infer_us": counter("nv_inference_compute_infer_duration_us",
                                "Cumulative compute inference duration in microseconds (does not include cached requests)"),
            "output_us": counter("nv_inference_compute_output_duration_us",
                                 "Cumulative inference compute output duration in microseconds (does not include cached requests)"),
            "load": GaugeMetricFamily("nv_model_load_duration_secs", "Model load time in seconds", labels=labels),
            "restarts": counter("tritonpy_worker_restarts", "Number of times a backend worker of the model was restarted"),
            "batch": HistogramMetricFamily("tritonpy_inference_batch_size",
                                           "Batch sizes (requests per model execution) executed by the model",
                                           labels=labels),
        }

    def collect(self):
        models = self.server.models
        versions = models.all_versions() if models is not None else []
        grouped: dict[tuple[str, ...], list] = {}
        for mv in versions:
            if mv.state.value != "READY" and not mv.stats.execution_count:
                continue
            tags = tuple(sorted(mv.config.metric_tags.keys()))
            grouped.setdefault(tags, []).append(mv)
        by_name: dict[str, object] = {}
        for tags, mvs in grouped.items():
            fams = self._families(list(tags))
            for mv in mvs:
                s = mv.stats
                lv = [mv.name, str(mv.version)] + [mv.config.metric_tags[k] for k in tags]
                fams["success"].add_metric(lv, s.success.count)
                for reason in ("REJECTED", "CANCELED", "BACKEND", "OTHER"):
                    fams["failure"].add_metric(lv + [reason], s.failures_by_reason.get(reason, 0))
                fams["count"].add_metric(lv, s.inference_count)
                fams["exec"].add_metric(lv, s.execution_count)
                pending = mv.scheduler.pending_count if mv.scheduler is not None else 0
                fams["pending"].add_metric(lv, pending)
                fams["request_us"].add_metric(lv, s.success.ns // 1000)
                fams["queue_us"].add_metric(lv, s.queue.ns // 1000)
                fams["input_us"].add_metric(lv, s.compute_input.ns // 1000)
                fams["infer_us"].add_metric(lv, s.compute_infer.ns // 1000)
                fams["output_us"].add_metric(lv, s.compute_output.ns // 1000)
                fams["load"].add_metric(lv, mv.load_duration_s)
                fams["restarts"].add_metric(lv, s.worker_restarts)
                buckets, total, acc = [], 0, 0
                sizes = {size: b.compute_infer.count for size, b in s.batches.items()}
                for bound in (1, 2, 4, 8, 16, 32, 64, 128, 256):
                    acc = sum(c for size, c in sizes.items() if size <= bound)
                    buckets.append((str(bound), acc))
                count = sum(sizes.values())
                total = sum(size * c for size, c in sizes.items())
                buckets.append(("+Inf", count))
                fams["batch"].add_metric(lv, buckets, total)
            for key, fam in fams.items():
                if key in by_name:
                    by_name[key].samples.extend(fam.samples)  # type: ignore[attr-defined]
                else:
                    by_name[key] = fam
        yield from by_name.values()
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


def make_registry(server, *, cpu_metrics: bool = True) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ServerCollector(server, cpu_metrics=cpu_metrics))
    return registry
