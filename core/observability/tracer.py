"""Per-request traces at the TIMESTAMPS level, written as Triton's JSON trace file.

The schedulers look at one module attribute, `ACTIVE`, per request: it is None while every trace
level is OFF, so tracing costs nothing then. When a level is on, `ACTIVE.sample()` decides (by
`trace_rate` and `trace_count`, with per-model overrides) whether a request is traced, and
`finish()` writes the record once the request completes.

A trace file is a JSON array of objects, one per traced request:

    {"id": 1, "model_name": "m", "model_version": 1, "request_id": "...",
     "timestamps": [{"name": "REQUEST_START", "ns": ...}, {"name": "QUEUE_START", "ns": ...}, ...]}

Timestamps are `time.monotonic_ns()` values (Triton uses its steady clock, too). The file is kept a
valid JSON array after every record (the closing bracket is rewritten each time), so it can be read
while the server runs and nothing is lost if the server is killed.

With trace_mode `opentelemetry` a sampled request needs no trace file: `finish()` hands its
timestamps to core/observability/otel.py, which exports them as spans.

Module state (one tracer, the open files) is per process: one server per process, as the CLI runs it.
"""
from __future__ import annotations

import atexit
import dataclasses
import itertools
import json
import logging
import os
from typing import TYPE_CHECKING, Any

from tritonpy.core.observability import otel

if TYPE_CHECKING:
    from tritonpy.core.observability.trace_settings import TraceSettings

log = logging.getLogger("tritonpy.core.observability.tracer")

TIMESTAMPS = "TIMESTAMPS"

ACTIVE: Tracer | None = None
_WRITERS: dict[str, TraceFileWriter] = {}


@dataclasses.dataclass(slots=True)
class TraceContext:
    """One sampled request: its trace id and where its record goes."""

    id: int
    model_name: str
    model_version: str
    path: str
    mode: str = "triton"  # "opentelemetry": exported as spans (core/observability/otel.py), not written to `path`


class TraceFileWriter:
    """Appends records to one JSON-array trace file, keeping it valid JSON after every write."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.records = 0
        directory = os.path.dirname(os.path.abspath(path))
        os.makedirs(directory, exist_ok=True)
        self._file = open(path, "w+b")  # a fresh file per server run, as Triton truncates it
        self._file.write(b"[\n]\n")
        self._file.flush()

    def append(self, record: bytes) -> None:
        # Overwrite the closing "]\n" with the record and a new closing bracket.
        self._file.seek(-2, os.SEEK_END)
        if self.records:
            self._file.write(b",\n")
        self._file.write(record + b"\n]\n")
        self._file.flush()
        self.records += 1

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()


def _writer(path: str) -> TraceFileWriter:
    writer = _WRITERS.get(path)
    if writer is None:
        writer = _WRITERS[path] = TraceFileWriter(path)
    return writer


def close_all() -> None:
    """Close every trace file (they are valid JSON already; this only releases the descriptors)."""
    for writer in _WRITERS.values():
        writer.close()
    _WRITERS.clear()


atexit.register(close_all)


class _Scope:
    """Sampling state for the global settings or for one model with its own overrides."""

    __slots__ = ("seen", "written")

    def __init__(self) -> None:
        self.seen = 0
        self.written = 0


class Tracer:
    """Samples requests per the current trace settings and writes their records."""

    def __init__(self, settings: TraceSettings) -> None:
        self.settings = settings
        self._ids = itertools.count(1)
        self._scopes: dict[str, _Scope] = {}
        self._warned_no_file = False

    def sample(self, model: str, version: str) -> TraceContext | None:
        """Whether this request is traced: every `trace_rate`-th request of its scope (the model,
        when it has its own overrides, else the whole server), while `trace_count` lasts.
        Never raises: the request is already queued when the scheduler asks."""
        try:
            return self._sample(model, version)
        except Exception:
            log.exception("trace sampling failed for model '%s'; request not traced", model)
            return None

    def _sample(self, model: str, version: str) -> TraceContext | None:
        settings = self.settings
        values = settings.get(model)
        if TIMESTAMPS not in values["trace_level"]:
            return None
        rate = int(str(values["trace_rate"]))
        owner = model if settings.models.get(model) else ""
        scope = self._scopes.get(owner)
        if scope is None:
            scope = self._scopes[owner] = _Scope()
        if rate <= 0 or values["trace_count"] == "0":
            return None
        scope.seen += 1
        if scope.seen % rate:
            return None
        path = str(values["trace_file"])
        mode = str(values.get("trace_mode") or "triton")
        if mode == "opentelemetry":
            settings.consume_count(model)
            scope.written += 1
            return TraceContext(next(self._ids), model, version, "", mode)
        if not path:
            if not self._warned_no_file:
                self._warned_no_file = True
                log.warning("trace_level is TIMESTAMPS but no trace_file is set; requests are not traced")
            return None
        settings.consume_count(model)
        frequency = int(str(values["log_frequency"] or 0))
        if frequency > 0:
            # Triton's log_frequency: every N traces go to a new file <trace_file>.<index>.
            path = f"{path}.{scope.written // frequency}"
        scope.written += 1
        return TraceContext(next(self._ids), model, version, path)


def configure(settings: TraceSettings) -> None:
    """Make `settings` the live trace settings: tracing turns on when any level (global or a
    model's) is TIMESTAMPS and off when every level is OFF. Sampling counters survive updates."""
    global ACTIVE
    if settings.any_level(TIMESTAMPS):
        if ACTIVE is None or ACTIVE.settings is not settings:
            ACTIVE = Tracer(settings)
    elif ACTIVE is not None and ACTIVE.settings is settings:
        ACTIVE = None


def timestamps(entry: Any, end_ns: int) -> list[tuple[str, int]]:
    """The named timestamps of a completed scheduler entry, in order. Compute input-end and
    output-start come from the phase durations the worker measured, placed inside the batch's
    compute window."""
    stamps = [("REQUEST_START", entry.request.arrival_ns), ("QUEUE_START", entry.enqueue_ns)]
    if entry.dispatch_ns and entry.compute_end_ns:
        start, end = entry.dispatch_ns, entry.compute_end_ns
        input_ns, _infer_ns, output_ns = entry.compute_ns
        input_end = min(start + input_ns, end)
        output_start = max(end - output_ns, input_end)
        stamps += [
            ("COMPUTE_START", start),
            ("COMPUTE_INPUT_END", input_end),
            ("COMPUTE_OUTPUT_START", output_start),
            ("COMPUTE_END", end),
        ]
    stamps.append(("REQUEST_END", end_ns))
    return stamps


def render(ctx: TraceContext, request_id: str, stamps: list[tuple[str, int]]) -> bytes:
    version = int(ctx.model_version) if ctx.model_version.isdigit() else -1
    parts = [f'{{"id":{ctx.id},"model_name":{json.dumps(ctx.model_name)},"model_version":{version}']
    if request_id:
        parts.append(f',"request_id":{json.dumps(request_id)}')
    parts.append(',"timestamps":[')
    parts.append(",".join(f'{{"name":"{name}","ns":{int(ns)}}}' for name, ns in stamps))
    parts.append("]}")
    return "".join(parts).encode()


def finish(entry: Any, end_ns: int) -> None:
    """Write the record of a traced scheduler entry that just completed (success or failure)."""
    ctx: TraceContext = entry.trace
    entry.trace = None
    if ctx.mode == "opentelemetry":
        try:
            otel.exporter(ACTIVE.settings.otel if ACTIVE is not None else {}).export(
                ctx.id, ctx.model_name, ctx.model_version, entry.request.id or "", timestamps(entry, end_ns))
        except Exception:
            log.exception("cannot export trace %d to OpenTelemetry", ctx.id)
        return
    try:
        _writer(ctx.path).append(render(ctx, entry.request.id or "", timestamps(entry, end_ns)))
    except OSError as exc:
        log.error("cannot write trace %d to '%s': %s", ctx.id, ctx.path, exc)


__all__ = ["ACTIVE", "Tracer", "TraceContext", "TraceFileWriter", "configure", "finish", "timestamps", "close_all"]
