"""Logging extension round trip over HTTP (/v2/logging) and gRPC (LogSettings) against a real server:
changes apply at run time (format and level filters of the server's own log lines), bad values are
refused with 400 / INVALID_ARGUMENT and change nothing."""
from __future__ import annotations

import re
import time

import grpc
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from support.model_builders import FP32_IO, python_model
from support.server_process import ServerProcess
from support.servers import serve
from test_metrics import infer_fp32
from tritonpy.proto import grpc_service_pb2 as pb
from tritonpy.proto import grpc_service_pb2_grpc as pb_grpc

DEFAULTS = {"log_file": "", "log_info": True, "log_warning": True, "log_error": True, "log_verbose_level": 0,
            "log_format": "default"}
NO_FILE_WARNING = "trace_level is TIMESTAMPS but no trace_file is set"
ISO_LINE = re.compile(r'^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ W \d+ tracer\.py:\d+\] "' + NO_FILE_WARNING, re.M)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    repo = tmp_path_factory.mktemp("logging") / "repo"
    python_model(repo, "other", "out = x * 2", config=FP32_IO)
    with serve(repo) as proc:
        yield proc


@pytest.fixture
def clients(server):
    http = httpclient.InferenceServerClient(server.http_url)
    gclient = grpcclient.InferenceServerClient(server.grpc_url)
    yield http, gclient
    http.update_log_settings({k: v for k, v in DEFAULTS.items() if k != "log_file"})
    http.update_trace_settings(settings={"trace_level": ["OFF"], "trace_rate": "1000"})


def _grpc_settings(gclient) -> dict:
    raw = gclient.get_log_settings(as_json=True)["settings"]
    return {k: next(iter(v.values())) for k, v in raw.items()}


def _wait_for(server: ServerProcess, pattern: re.Pattern, timeout: float = 10.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = server.output()
        if pattern.search(out):
            return out
        time.sleep(0.05)
    raise AssertionError(f"{pattern.pattern!r} not in the server log:\n{server.output()[-2000:]}")


def test_http_round_trip(clients):
    http, _ = clients
    assert http.get_log_settings() == DEFAULTS
    updated = http.update_log_settings({"log_verbose_level": 2, "log_format": "ISO8601", "log_info": False})
    assert updated == {**DEFAULTS, "log_verbose_level": 2, "log_format": "ISO8601", "log_info": False}
    assert http.get_log_settings() == updated
    # partial update keeps the rest
    assert http.update_log_settings({"log_error": False}) == {**updated, "log_error": False}


def test_grpc_round_trip(clients):
    http, gclient = clients
    assert _grpc_settings(gclient) == DEFAULTS  # each value sits in a oneof, so even defaults are sent
    result = gclient.update_log_settings({"log_verbose_level": 1, "log_format": "ISO8601", "log_warning": False},
                                      as_json=True)
    got = {k: next(iter(v.values())) for k, v in result["settings"].items()}
    assert got["log_verbose_level"] == 1 and got["log_format"] == "ISO8601" and got["log_warning"] is False
    # one store behind both protocols
    assert http.get_log_settings() == {**DEFAULTS, "log_verbose_level": 1, "log_format": "ISO8601",
                                       "log_warning": False}


@pytest.mark.parametrize("bad", [
    {"log_verbose_level": -1}, {"log_info": "yes"}, {"log_format": "json"}, {"log_colour": True},
    {"log_file": "/tmp/elsewhere.log"},
])
def test_http_bad_values_are_400_and_change_nothing(clients, bad):
    http, _ = clients
    with pytest.raises(InferenceServerException) as err:
        http.update_log_settings({"log_format": "ISO8601", **bad})
    assert err.value.status() == "400"
    assert http.get_log_settings() == DEFAULTS


@pytest.mark.parametrize("key, kind, value", [
    ("log_info", "string_param", "yes"), ("log_verbose_level", "bool_param", True),
    ("log_format", "string_param", "json"), ("log_warning", "uint32_param", 1),
])
def test_grpc_bad_values_are_invalid_argument(server, clients, key, kind, value):
    """tritonclient picks the value kind from the key, so wrong kinds go through the raw stub."""
    http, _ = clients
    request = pb.LogSettingsRequest()
    setattr(request.settings[key], kind, value)
    with grpc.insecure_channel(server.grpc_url) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        with pytest.raises(grpc.RpcError) as err:
            stub.LogSettings(request, timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
    assert http.get_log_settings() == DEFAULTS


def test_format_and_level_apply_at_run_time(server, clients):
    http, _ = clients
    http.update_log_settings({"log_format": "ISO8601"})
    # Tracing on without a file makes the server warn once (core/observability/tracer.py): a log line we control.
    http.update_trace_settings(settings={"trace_level": ["TIMESTAMPS"], "trace_rate": "1"})
    infer_fp32(http, "other", 1.0)
    out = _wait_for(server, ISO_LINE)
    assert len(ISO_LINE.findall(out)) == 1
    # With warnings off, the same warning from a fresh tracer is not written.
    http.update_trace_settings(settings={"trace_level": ["OFF"]})
    http.update_log_settings({"log_warning": False})
    http.update_trace_settings(settings={"trace_level": ["TIMESTAMPS"]})
    infer_fp32(http, "other", 2.0)
    http.update_log_settings({"log_warning": True, "log_format": "default"})
    http.update_trace_settings(settings={"trace_level": ["OFF"]})
    http.update_trace_settings(settings={"trace_level": ["TIMESTAMPS"]})
    infer_fp32(http, "other", 3.0)
    default_line = re.compile(r'^W\d{4} \d\d:\d\d:\d\d\.\d{6} \d+ tracer\.py:\d+\] "' + NO_FILE_WARNING, re.M)
    out = _wait_for(server, default_line)
    assert out.count(NO_FILE_WARNING) == 2  # the one with warnings off never appeared
