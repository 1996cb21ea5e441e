"""Per-model-version statistics in the shape of Triton's statistics extension.

Durations are cumulative {count, ns}. The scheduler records queue time, the instance records the
compute phases the worker measured; request totals are recorded when the response is complete.
"""
from __future__ import annotations

import time


class Duration:
    __slots__ = ("count", "ns")

    def __init__(self) -> None:
        self.count = 0
        self.ns = 0

    def add(self, ns: int, count: int = 1) -> None:
        self.count += count
        self.ns += max(int(ns), 0)

    def as_dict(self) -> dict:
        return {"count": self.count, "ns": self.ns}


class _BatchStats:
    __slots__ = ("compute_input", "compute_infer", "compute_output")

    def __init__(self) -> None:
        self.compute_input = Duration()
        self.compute_infer = Duration()
        self.compute_output = Duration()


class ModelStats:
    """Counters for one model version. Cheap to update: plain attribute arithmetic on the loop."""

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
        # Failure counts by Triton's metric `reason` label: REJECTED, CANCELED, BACKEND, OTHER.
        self.failures_by_reason: dict[str, int] = {}
        self.worker_restarts = 0

    # --- recording -------------------------------------------------------------------------
    def record_queue(self, ns: int) -> None:
        self.queue.add(ns)

    def record_execution(self, batch_size: int, input_ns: int, infer_ns: int, output_ns: int) -> None:
        """One backend execution of `batch_size` requests (per-request compute is shared equally)."""
        self.execution_count += 1
        self.inference_count += batch_size
        self.last_inference_ms = int(time.time() * 1000)
        b = self.batches.get(batch_size)
        if b is None:
            b = self.batches[batch_size] = _BatchStats()
        b.compute_input.add(input_ns)
        b.compute_infer.add(infer_ns)
        b.compute_output.add(output_ns)
        self.compute_input.add(input_ns * batch_size, batch_size)
        self.compute_infer.add(infer_ns * batch_size, batch_size)
        self.compute_output.add(output_ns * batch_size, batch_size)

    def record_success(self, request_ns: int) -> None:
        self.success.add(request_ns)

    def record_failure(self, request_ns: int, reason: str = "OTHER") -> None:
        self.fail.add(request_ns)
        self.failures_by_reason[reason] = self.failures_by_reason.get(reason, 0) + 1

    # --- reporting -------------------------------------------------------------------------
    def as_dict(self) -> dict:
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
            "response_stats": {},
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
