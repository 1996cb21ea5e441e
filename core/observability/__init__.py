"""Statistics, Prometheus metrics, GPU metrics, trace settings and the tracer, OpenTelemetry export, log settings."""
# The public names load on first use (PEP 562), so importing one module of this room does not pull in
# the others: rooms use each other in both directions, and eager imports here would make cycles.
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tritonpy.core.observability.metrics import MetricsConfig, exposition
    from tritonpy.core.observability.stats import ModelStats
    from tritonpy.core.observability.trace_settings import TraceSettings
    from tritonpy.core.observability.tracer import Tracer

_EXPORTS = {
    "MetricsConfig": "tritonpy.core.observability.metrics",
    "ModelStats": "tritonpy.core.observability.stats",
    "TraceSettings": "tritonpy.core.observability.trace_settings",
    "Tracer": "tritonpy.core.observability.tracer",
    "exposition": "tritonpy.core.observability.metrics",
}
# Spelled out (not derived from _EXPORTS) so that linters and type checkers can read it.
__all__ = ["MetricsConfig", "ModelStats", "TraceSettings", "Tracer", "exposition"]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
