"""`pb_utils.MetricFamily` / `Metric`: custom metrics a model defines.

The API and its rules match Triton's. Every operation also goes to the core as a `MetricOp`
(over the worker's I/O channel, without waiting), which keeps the server-wide values and exports
them at /metrics (core/observability/custom_metrics.py). `value()` answers from this worker's
own copy. Operations made before the channel exists (none outside a worker) wait and go with
the next one.
"""
from __future__ import annotations

import bisect
import re
import threading

from tritonpy.backends.base import BackendError
from tritonpy.backends.python.pb_types import TritonModelException
from tritonpy.backends.worker import channel as worker_channel
from tritonpy.proto.messages import MetricOp

_NAME_RE = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
_families: dict[str, "MetricFamily"] = {}
_lock = threading.Lock()
_unsent: list[MetricOp] = []
_UNSENT_MAX = 10_000  # outside a worker nothing ever sends them: keep only the latest


def _publish(metric: "Metric", op: str, value: float = 0.0) -> None:
    family = metric._family
    msg = MetricOp(family.name, family.description, family.kind, metric._labels, op, float(value),
                   metric._buckets)
    channel = worker_channel.current()
    with _lock:  # held while sending, so that a set() from two threads arrives in order
        _unsent.append(msg)
        if channel is None or not channel.alive:
            del _unsent[:-_UNSENT_MAX]
            return
        try:
            for item in _unsent:
                channel.send(item)
        except BackendError:
            pass  # the worker is shutting down: the server no longer exports this model's values
        _unsent.clear()


class Metric:
    """One labelled series of a family."""

    def __init__(self, family: "MetricFamily", labels: dict[str, str], buckets: list[float] | None) -> None:
        self._family = family
        self._labels = dict(labels)
        self._value = 0.0
        self._buckets = sorted(float(b) for b in buckets) if buckets else []
        self._bucket_counts = [0] * (len(self._buckets) + 1)
        self._sum = 0.0
        self._count = 0

    def labels(self) -> dict[str, str]:
        return dict(self._labels)

    def increment(self, value: float) -> None:
        kind = self._family.kind
        if kind == MetricFamily.HISTOGRAM:
            raise TritonModelException("increment() is not supported for histogram metrics; use observe()")
        if kind == MetricFamily.COUNTER and value < 0:
            raise TritonModelException("counter metrics cannot be decremented")
        self._value += float(value)
        _publish(self, "increment", value)

    def set(self, value: float) -> None:
        if self._family.kind != MetricFamily.GAUGE:
            raise TritonModelException("set() is only supported for gauge metrics")
        self._value = float(value)
        _publish(self, "set", value)

    def observe(self, value: float) -> None:
        if self._family.kind != MetricFamily.HISTOGRAM:
            raise TritonModelException("observe() is only supported for histogram metrics")
        value = float(value)
        self._bucket_counts[bisect.bisect_left(self._buckets, value)] += 1
        self._sum += value
        self._count += 1
        _publish(self, "observe", value)

    def value(self) -> float:
        if self._family.kind == MetricFamily.HISTOGRAM:
            raise TritonModelException("value() is not supported for histogram metrics")
        return self._value

    def histogram(self) -> tuple[list[float], list[int], float, int]:
        """(bucket bounds, cumulative counts per bound, sum, count) of a histogram."""
        cumulative, running = [], 0
        for n in self._bucket_counts[:-1]:
            running += n
            cumulative.append(running)
        return list(self._buckets), cumulative, self._sum, self._count


# The family's `Metric()` method (Triton's name) hides the class inside the family's body.
_Metric = Metric


class MetricFamily:
    """A named metric of one kind; `Metric(labels=...)` gives its series."""

    kind: int  # COUNTER, GAUGE or HISTOGRAM

    COUNTER = 0
    GAUGE = 1
    HISTOGRAM = 2

    def __init__(self, name: str, description: str, kind: int = COUNTER) -> None:
        if not _NAME_RE.match(name or ""):
            raise TritonModelException(f"invalid metric family name '{name}'")
        if kind not in (self.COUNTER, self.GAUGE, self.HISTOGRAM):
            raise TritonModelException(f"invalid metric kind {kind}")
        with _lock:
            existing = _families.get(name)
            if existing is not None and existing.kind != kind:
                raise TritonModelException(f"metric family '{name}' already exists with a different kind")
            _families[name] = self
        self.name = name
        self.description = description
        self.kind = kind
        self._metrics: dict[tuple[tuple[str, str], ...], _Metric] = {}

    def Metric(self, labels: dict[str, str] | None = None, buckets: list[float] | None = None) -> _Metric:
        labels = {str(k): str(v) for k, v in (labels or {}).items()}
        if self.kind == self.HISTOGRAM and not buckets:
            raise TritonModelException("histogram metrics need buckets")
        if self.kind != self.HISTOGRAM and buckets:
            raise TritonModelException("buckets are only valid for histogram metrics")
        key = tuple(sorted(labels.items()))
        metric = self._metrics.get(key)
        if metric is None:
            metric = Metric(self, labels, buckets)
            self._metrics[key] = metric
            _publish(metric, "create")  # Triton shows a new series at once, at 0
        return metric

    def metrics(self) -> list[_Metric]:
        return list(self._metrics.values())


def families() -> list[MetricFamily]:
    with _lock:
        return list(_families.values())
