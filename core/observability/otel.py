"""OpenTelemetry export of traced requests (`--trace-config mode=opentelemetry`).

With trace_mode `opentelemetry` a sampled request is exported as spans instead of a record in the
JSON trace file: one `InferRequest` span from REQUEST_START to REQUEST_END (events REQUEST_START,
QUEUE_START, REQUEST_END) and, when the request reached a model instance, a child `compute` span
from COMPUTE_START to COMPUTE_END with the compute events in order. Attributes name the model,
its version, the trace id and the request id.

Settings, as Triton's `--trace-config opentelemetry,<key>=<value>`:
  url                        OTLP/HTTP endpoint (default http://localhost:4318/v1/traces)
  resource                   `<key>=<value>` added to the resource (service.name defaults to
                             triton-inference-server)
  bsp_max_queue_size, bsp_schedule_delay (ms), bsp_max_export_batch_size: the batch span processor.

`opentelemetry-sdk` and `opentelemetry-exporter-otlp-proto-http` (the `otel` extra) are imported
only here and only in that mode; a missing package is reported when the mode is set
(`check_available`), not at the first request.

Swapping the exporter (tests, or a site that wants another one): set the module attribute
`EXPORTER_FACTORY`, or the environment variable TRITONPY_OTEL_EXPORTER=`module:callable`; the
callable gets the settings dict and returns an SDK SpanExporter.
"""
from __future__ import annotations

import atexit
import importlib
import logging
import os
import time
from typing import Any, Callable

log = logging.getLogger("tritonpy.core.observability.otel")

ENV_EXPORTER = "TRITONPY_OTEL_EXPORTER"
DEFAULT_URL = "http://localhost:4318/v1/traces"
SETTINGS = ("url", "resource", "bsp_max_queue_size", "bsp_schedule_delay", "bsp_max_export_batch_size")
_BSP_DEFAULTS = {"bsp_max_queue_size": 2048, "bsp_schedule_delay": 5000, "bsp_max_export_batch_size": 512}

EXPORTER_FACTORY: Callable[[dict[str, str]], Any] | None = None

_EXPORTER: OtelExporter | None = None


def _factory() -> Callable[[dict[str, str]], Any] | None:
    if EXPORTER_FACTORY is not None:
        return EXPORTER_FACTORY
    spec = os.environ.get(ENV_EXPORTER, "")
    if not spec:
        return None
    module, _, attr = spec.partition(":")
    try:
        factory: Callable[[dict[str, str]], Any] = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        raise RuntimeError(f"{ENV_EXPORTER}='{spec}' does not name an importable callable: {exc}") from None
    return factory


def check_settings(settings: dict[str, str]) -> None:
    """Raises ValueError with a clear message when a setting is malformed or the packages that the
    opentelemetry mode needs are not installed."""
    for key, value in settings.items():
        if key not in SETTINGS:
            raise ValueError(f"unknown opentelemetry trace setting '{key}'")
        if key.startswith("bsp_") and not value.isdigit():
            raise ValueError(f"opentelemetry trace setting '{key}' must be a non-negative integer, got '{value}'")
        if key == "resource" and "=" not in value:
            raise ValueError(f"opentelemetry trace setting 'resource' must be '<key>=<value>', got '{value}'")
    try:
        importlib.import_module("opentelemetry.sdk.trace")
    except ImportError:
        raise ValueError("trace_mode 'opentelemetry' needs the opentelemetry-sdk package "
                         "(pip install 'tritonpy[otel]')") from None
    try:
        custom = _factory()
    except RuntimeError as exc:
        raise ValueError(str(exc)) from None
    if custom is None:
        try:
            importlib.import_module("opentelemetry.exporter.otlp.proto.http.trace_exporter")
        except ImportError:
            raise ValueError("trace_mode 'opentelemetry' needs the opentelemetry-exporter-otlp-proto-http "
                             "package (pip install 'tritonpy[otel]')") from None


class OtelExporter:
    """A tracer provider with a batch span processor feeding the configured exporter."""

    def __init__(self, settings: dict[str, str]) -> None:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        attributes = {"service.name": "triton-inference-server"}
        if settings.get("resource"):
            key, _, value = settings["resource"].partition("=")
            attributes[key] = value
        custom = _factory()
        if custom is not None:
            exporter = custom(dict(settings))
        else:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            exporter = OTLPSpanExporter(endpoint=settings.get("url") or DEFAULT_URL)
        bsp = {k: int(settings.get(k) or v) for k, v in _BSP_DEFAULTS.items()}
        self.provider = TracerProvider(resource=Resource.create(attributes))
        self.provider.add_span_processor(BatchSpanProcessor(
            exporter, max_queue_size=bsp["bsp_max_queue_size"], schedule_delay_millis=bsp["bsp_schedule_delay"],
            max_export_batch_size=min(bsp["bsp_max_export_batch_size"], bsp["bsp_max_queue_size"])))
        self.tracer = self.provider.get_tracer("tritonpy")

    def export(self, trace_id: int, model: str, version: str, request_id: str,
               stamps: list[tuple[str, int]]) -> None:
        """Spans for one request; `stamps` are (name, time.monotonic_ns()) in order."""
        from opentelemetry import trace as otel_trace

        offset = time.time_ns() - time.monotonic_ns()  # monotonic -> wall clock, as OTLP wants
        attributes: dict[str, str | int] = {
            "triton.model_name": model,
            "triton.model_version": int(version) if version.isdigit() else -1,
            "triton.trace_id": trace_id,
        }
        if request_id:
            attributes["triton.request_id"] = request_id
        root = self.tracer.start_span("InferRequest", start_time=stamps[0][1] + offset, attributes=attributes)
        compute = [(name, ns) for name, ns in stamps if name.startswith("COMPUTE_")]
        for name, ns in stamps:
            if not name.startswith("COMPUTE_"):
                if name == "REQUEST_END" and compute:
                    self._compute_span(otel_trace.set_span_in_context(root), compute, offset, attributes)
                root.add_event(name, timestamp=ns + offset)
        root.end(end_time=stamps[-1][1] + offset)

    def _compute_span(self, parent: Any, compute: list[tuple[str, int]], offset: int,
                      attributes: dict[str, str | int]) -> None:
        span = self.tracer.start_span("compute", context=parent, start_time=compute[0][1] + offset,
                                      attributes=attributes)
        for name, ns in compute:
            span.add_event(name, timestamp=ns + offset)
        span.end(end_time=compute[-1][1] + offset)

    def shutdown(self) -> None:
        """Flush what is queued and stop the processor's thread."""
        self.provider.shutdown()


def exporter(settings: dict[str, str]) -> OtelExporter:
    """The process's exporter, created at the first traced request with the settings of that time."""
    global _EXPORTER
    if _EXPORTER is None:
        _EXPORTER = OtelExporter(settings)
    return _EXPORTER


def shutdown() -> None:
    global _EXPORTER
    if _EXPORTER is not None:
        current, _EXPORTER = _EXPORTER, None
        try:
            current.shutdown()
        except Exception:
            log.exception("OpenTelemetry exporter shutdown failed")


atexit.register(shutdown)

__all__ = ["DEFAULT_URL", "ENV_EXPORTER", "EXPORTER_FACTORY", "OtelExporter", "SETTINGS", "check_settings",
           "exporter", "shutdown"]
