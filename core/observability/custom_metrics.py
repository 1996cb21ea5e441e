"""Custom metrics that Python models define (`pb_utils.MetricFamily` / `Metric`), kept by the core.

Each operation a model makes on a metric reaches the core as a `MetricOp` from its worker. As in
Triton, the families live in the server, not in the model: two instances (or two models) that
declare the same family and labels update one series, so their increments add up. The values are
exported at /metrics with HELP/TYPE lines and only the labels the model gave.

One store per server, found by the server's runtime directory (as BLS finds its router), so that
neither the instances nor the metrics collector need the other.
"""
from __future__ import annotations

import bisect
import logging
import threading
from typing import Callable, Iterator

from prometheus_client.metrics_core import Metric
from prometheus_client.utils import floatToGoString as _untyped_go_float

from tritonpy.proto.messages import MetricOp

# Prometheus' own float formatting ("+Inf", "1e+06"); prometheus_client leaves it unannotated.
go_float: Callable[[float], str] = _untyped_go_float

log = logging.getLogger("tritonpy.core.observability.custom_metrics")

_KINDS = {0: "counter", 1: "gauge", 2: "histogram"}
_LabelKey = tuple[tuple[str, str], ...]


class _Series:
    __slots__ = ("labels", "models", "value", "bounds", "counts", "total", "count")

    def __init__(self, labels: dict[str, str], bounds: list[float]) -> None:
        self.labels = dict(labels)
        self.models: set[str] = set()
        self.value = 0.0
        self.bounds = sorted(bounds)
        self.counts = [0] * (len(self.bounds) + 1)  # the last one: above every bound
        self.total = 0.0
        self.count = 0


class _Family:
    def __init__(self, op: MetricOp) -> None:
        self.name = op.family
        self.description = op.description
        self.kind = op.kind
        self.series: dict[_LabelKey, _Series] = {}


class CustomMetrics:
    def __init__(self) -> None:
        self._families: dict[str, _Family] = {}
        self._lock = threading.Lock()

    def apply(self, model: str, op: MetricOp) -> None:
        if op.kind not in _KINDS:
            return
        with self._lock:
            family = self._families.get(op.family)
            if family is None:
                family = self._families[op.family] = _Family(op)
            elif family.kind != op.kind:
                log.warning("model '%s': metric family '%s' already exists with another kind; ignored",
                            model, op.family)
                return
            key = tuple(sorted(op.labels.items()))
            series = family.series.get(key)
            if series is None:
                series = family.series[key] = _Series(op.labels, op.buckets)
            series.models.add(model)
            if op.op == "increment":
                series.value += op.value
            elif op.op == "set":
                series.value = op.value
            elif op.op == "observe":
                series.counts[bisect.bisect_left(series.bounds, op.value)] += 1
                series.total += op.value
                series.count += 1

    def families(self, visible: Callable[[str], bool] = lambda model: True) -> Iterator[Metric]:
        """Prometheus families; a series shows when one of the models that use it is visible."""
        with self._lock:
            for family in self._families.values():
                fam = Metric(family.name, family.description, _KINDS[family.kind])
                fam.name = family.name  # prometheus_client drops a counter's `_total`; Triton keeps it
                for series in family.series.values():
                    if not any(visible(m) for m in series.models):
                        continue
                    if family.kind == 2:
                        _histogram(fam, series)
                    else:
                        fam.add_sample(family.name, series.labels, series.value)
                yield fam


def _histogram(fam: Metric, series: _Series) -> None:
    running = 0
    for bound, n in zip(series.bounds, series.counts):
        running += n
        fam.add_sample(fam.name + "_bucket", {**series.labels, "le": go_float(bound)}, running)
    fam.add_sample(fam.name + "_bucket", {**series.labels, "le": "+Inf"}, series.count)
    fam.add_sample(fam.name + "_count", series.labels, series.count)
    fam.add_sample(fam.name + "_sum", series.labels, series.total)


__all__ = ["CustomMetrics", "go_float"]
