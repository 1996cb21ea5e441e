"""OpenTelemetry trace export (`--trace-config mode=opentelemetry`): spans built from a request's
timestamps (checked with the SDK's InMemorySpanExporter in-process and, through the
TRITONPY_OTEL_EXPORTER hook, from a real server), the OTLP/HTTP exporter against a local receiver,
and the clear errors at settings time."""
from __future__ import annotations

import asyncio
import json
import os
import sys
import textwrap
import threading

import numpy as np
import pytest
import tritonclient.http as httpclient

pytest.importorskip("opentelemetry.sdk.trace")
pytest.importorskip("opentelemetry.exporter.otlp.proto.http.trace_exporter")

from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from support.model_builders import FP32_IO, python_model
from support.servers import serve
from tritonpy.core.observability import otel
from tritonpy.core.observability import tracer as tracing
from tritonpy.core.errors import ServerError
from tritonpy.core.observability.trace_settings import TraceSettings

STAMPS = [("REQUEST_START", 1_000), ("QUEUE_START", 2_000), ("COMPUTE_START", 5_000),
          ("COMPUTE_INPUT_END", 6_000), ("COMPUTE_OUTPUT_START", 8_000), ("COMPUTE_END", 9_000),
          ("REQUEST_END", 10_000)]
ROOT_EVENTS = ["REQUEST_START", "QUEUE_START", "REQUEST_END"]
COMPUTE_EVENTS = ["COMPUTE_START", "COMPUTE_INPUT_END", "COMPUTE_OUTPUT_START", "COMPUTE_END"]

# Loaded by the server process through TRITONPY_OTEL_EXPORTER: an InMemorySpanExporter that also
# appends each exported span as a JSON line to $OTEL_CAPTURE_FILE, so the test can read them.
CAPTURE_MODULE = '''
import json, os
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

class FileCapture(InMemorySpanExporter):
    def export(self, spans):
        result = super().export(spans)
        with open(os.environ["OTEL_CAPTURE_FILE"], "a") as f:
            for s in spans:
                f.write(json.dumps({
                    "name": s.name, "trace_id": s.context.trace_id, "span_id": s.context.span_id,
                    "parent": s.parent.span_id if s.parent else None, "start": s.start_time, "end": s.end_time,
                    "attributes": dict(s.attributes), "resource": dict(s.resource.attributes),
                    "events": [[e.name, e.timestamp] for e in s.events]}) + "\\n")
        return result

def make(settings):
    return FileCapture()
'''


@pytest.fixture(autouse=True)
def restore_tracer(monkeypatch):
    """Settings built here switch this process's tracer on; put it back for the other tests."""
    monkeypatch.setattr(tracing, "ACTIVE", tracing.ACTIVE)
    monkeypatch.setattr(otel, "_EXPORTER", otel._EXPORTER)


def check_pair(root, compute, *, model: str, trace_id: int | None = None) -> None:
    """The request span and its compute child: names, attributes, ordered events inside the spans."""
    assert root["name"] == "InferRequest" and compute["name"] == "compute"
    assert compute["parent"] == root["span_id"] and root["parent"] is None
    assert compute["trace_id"] == root["trace_id"]
    assert root["attributes"]["triton.model_name"] == model
    assert root["attributes"]["triton.model_version"] == 1
    if trace_id is not None:
        assert root["attributes"]["triton.trace_id"] == trace_id
    assert [e[0] for e in root["events"]] == ROOT_EVENTS
    assert [e[0] for e in compute["events"]] == COMPUTE_EVENTS
    for span in (root, compute):
        times = [e[1] for e in span["events"]]
        assert times == sorted(times)
        assert span["start"] == times[0] and span["end"] == times[-1]
    assert root["start"] <= compute["start"] <= compute["end"] <= root["end"]


def as_dict(span) -> dict:
    return {"name": span.name, "trace_id": span.context.trace_id, "span_id": span.context.span_id,
            "parent": span.parent.span_id if span.parent else None, "start": span.start_time,
            "end": span.end_time, "attributes": dict(span.attributes), "resource": dict(span.resource.attributes),
            "events": [[e.name, e.timestamp] for e in span.events]}


def test_spans_from_timestamps_in_memory(monkeypatch):
    memory = InMemorySpanExporter()
    monkeypatch.setattr(otel, "EXPORTER_FACTORY", lambda settings: memory)
    exporter = otel.OtelExporter({"resource": "deployment.environment=test"})
    try:
        exporter.export(7, "m", "1", "req-1", STAMPS)
        exporter.export(8, "m", "1", "", STAMPS[:2] + STAMPS[-1:])  # failed before reaching an instance
        exporter.provider.force_flush()
        spans = [as_dict(s) for s in memory.get_finished_spans()]
    finally:
        exporter.shutdown()
    first = [s for s in spans if s["attributes"]["triton.trace_id"] == 7]
    root = next(s for s in first if s["name"] == "InferRequest")
    compute = next(s for s in first if s["name"] == "compute")
    check_pair(root, compute, model="m", trace_id=7)
    assert root["attributes"]["triton.request_id"] == "req-1"
    # compute events keep the phase spacing (monotonic -> wall clock is one shift for all)
    assert [t - compute["events"][0][1] for _, t in compute["events"]] == [0, 1_000, 3_000, 4_000]
    assert root["resource"]["service.name"] == "triton-inference-server"
    assert root["resource"]["deployment.environment"] == "test"
    second = [s for s in spans if s["attributes"]["triton.trace_id"] == 8]
    assert [s["name"] for s in second] == ["InferRequest"]
    assert [e[0] for e in second[0]["events"]] == ROOT_EVENTS
    assert "triton.request_id" not in second[0]["attributes"]


def test_settings_errors(monkeypatch):
    with pytest.raises(ServerError, match="unknown trace setting 'colour'"):
        TraceSettings.from_options({"mode": "opentelemetry", "colour": "red"})
    with pytest.raises(ValueError, match="unknown opentelemetry trace setting 'colour'"):
        otel.check_settings({"colour": "red"})
    with pytest.raises(ServerError, match="bsp_schedule_delay"):
        TraceSettings.from_options({"mode": "opentelemetry", "bsp_schedule_delay": "soon"})
    with pytest.raises(ServerError, match="resource"):
        TraceSettings.from_options({"mode": "opentelemetry", "resource": "novalue"})
    # the exporter package missing: a clear message when the mode is set, not at the first request
    monkeypatch.setitem(sys.modules, "opentelemetry.exporter.otlp.proto.http.trace_exporter", None)
    with pytest.raises(ServerError, match="opentelemetry-exporter-otlp-proto-http"):
        TraceSettings.from_options({"mode": "opentelemetry"})
    settings = TraceSettings.from_options({})
    with pytest.raises(ServerError, match="pip install 'tritonpy\\[otel\\]'"):
        settings.update("", {"trace_mode": "opentelemetry"})
    assert settings.get()["trace_mode"] == "triton"  # a refused update changes nothing
    monkeypatch.setitem(sys.modules, "opentelemetry.sdk.trace", None)
    with pytest.raises(ServerError, match="opentelemetry-sdk"):
        TraceSettings.from_options({"mode": "opentelemetry"})
    # the triton mode needs neither package
    assert TraceSettings.from_options({"mode": "triton"}).get()["trace_mode"] == "triton"


def test_opentelemetry_settings_kept_apart():
    settings = TraceSettings.from_options({"mode": "opentelemetry", "url": "http://127.0.0.1:1/v1/traces",
                                           "bsp_max_export_batch_size": "8", "level": "TIMESTAMPS"})
    assert settings.otel == {"url": "http://127.0.0.1:1/v1/traces", "bsp_max_export_batch_size": "8"}
    values = settings.get()
    assert values["trace_mode"] == "opentelemetry" and values["trace_level"] == ["TIMESTAMPS"]
    assert "url" not in values


def infer(client, model: str, n: int) -> None:
    for i in range(n):
        inp = httpclient.InferInput("INPUT0", [4], "FP32")
        inp.set_data_from_numpy(np.full([4], float(i), dtype=np.float32))
        client.infer(model, [inp], request_id=f"r{i}")


def test_real_server_exports_one_span_pair_per_sampled_request(tmp_path, monkeypatch):
    (tmp_path / "otel_capture.py").write_text(textwrap.dedent(CAPTURE_MODULE))
    capture = tmp_path / "spans.jsonl"
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")])))
    monkeypatch.setenv(otel.ENV_EXPORTER, "otel_capture:make")
    monkeypatch.setenv("OTEL_CAPTURE_FILE", str(capture))
    python_model(tmp_path / "repo", "m", "out = x", config=FP32_IO)
    flags = ["--trace-config", "mode=opentelemetry", "--trace-config", "level=TIMESTAMPS",
             "--trace-config", "rate=2", "--trace-config", "opentelemetry,resource=deployment.environment=ci"]
    with serve(tmp_path / "repo", *flags) as server:
        client = httpclient.InferenceServerClient(server.http_url)
        assert client.get_trace_settings()["trace_mode"] == "opentelemetry"
        infer(client, "m", 6)  # rate 2: requests 2, 4 and 6 are traced
        client.close()
    # the batch span processor flushes at exit
    spans = [json.loads(line) for line in capture.read_text().splitlines()]
    roots = sorted((s for s in spans if s["name"] == "InferRequest"), key=lambda s: s["start"])
    assert len(roots) == 3 and len(spans) == 6
    assert [r["attributes"]["triton.request_id"] for r in roots] == ["r1", "r3", "r5"]
    for root in roots:
        compute = next(s for s in spans if s["parent"] == root["span_id"])
        check_pair(root, compute, model="m")
        assert root["resource"]["deployment.environment"] == "ci"
    assert len({r["attributes"]["triton.trace_id"] for r in roots}) == 3


class Receiver:
    """A tiny OTLP/HTTP receiver on 127.0.0.1 in its own thread: counts POSTs to /v1/traces and
    decodes their protobuf bodies."""

    def __init__(self) -> None:
        self.posts = 0
        self.span_names: list[str] = []
        self.port = 0
        self._ready = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="otlp-receiver", daemon=True)

    async def _traces(self, request: web.Request) -> web.Response:
        body = await request.read()
        message = ExportTraceServiceRequest()
        message.ParseFromString(body)
        self.posts += 1
        for rs in message.resource_spans:
            for ss in rs.scope_spans:
                self.span_names.extend(span.name for span in ss.spans)
        return web.Response(body=b"", content_type="application/x-protobuf")

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        app = web.Application()
        app.router.add_post("/v1/traces", self._traces)
        self._runner = web.AppRunner(app, access_log=None)
        self._loop.run_until_complete(self._runner.setup())
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        self._loop.run_until_complete(site.start())
        self.port = site._server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()
        self._loop.run_until_complete(self._runner.cleanup())
        self._loop.close()

    def __enter__(self) -> "Receiver":
        self._thread.start()
        assert self._ready.wait(10)
        return self

    def __exit__(self, *exc) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


def test_otlp_http_exporter_posts_to_receiver(tmp_path, monkeypatch):
    monkeypatch.delenv(otel.ENV_EXPORTER, raising=False)
    python_model(tmp_path / "repo", "m", "out = x", config=FP32_IO)
    with Receiver() as receiver:
        flags = ["--trace-config", "mode=opentelemetry", "--trace-config", "level=TIMESTAMPS",
                 "--trace-config", "rate=1", "--trace-config", "count=4",
                 "--trace-config", f"opentelemetry,url=http://127.0.0.1:{receiver.port}/v1/traces"]
        with serve(tmp_path / "repo", *flags) as server:
            client = httpclient.InferenceServerClient(server.http_url)
            infer(client, "m", 6)  # count 4: only the first four are traced
            assert client.get_trace_settings()["trace_count"] == "0"
            client.close()
    assert receiver.posts >= 1
    assert sorted(receiver.span_names) == ["InferRequest"] * 4 + ["compute"] * 4
