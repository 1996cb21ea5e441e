"""Trace extension at the TIMESTAMPS level: settings over HTTP and gRPC switch tracing on, requests are
sampled by trace_rate/trace_count (per-model overrides respected) and written as Triton's JSON trace file
with ordered timestamps. Plus unit tests of the sampling and the file writer."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from support.model_builders import FP32_IO, python_model
from support.server_process import ServerProcess
from support.servers import serve
from test_metrics import FAIL_ON_NEGATIVE, infer_fp32
from tritonpy.core.observability import tracer as tracing
from tritonpy.core.errors import ServerError
from tritonpy.core.observability.trace_settings import TraceSettings

ORDER = ["REQUEST_START", "QUEUE_START", "COMPUTE_START", "COMPUTE_INPUT_END", "COMPUTE_OUTPUT_START",
         "COMPUTE_END", "REQUEST_END"]


def read_traces(path: Path) -> list[dict]:
    return json.loads(path.read_text()) if path.exists() else []


def check_record(record: dict, model: str, *, executed: bool = True) -> None:
    assert record["model_name"] == model and record["model_version"] == 1
    assert isinstance(record["id"], int) and record["id"] > 0
    names = [t["name"] for t in record["timestamps"]]
    if executed:
        assert names == ORDER
    else:
        assert names == [n for n in ORDER if n in names] and names[0] == "REQUEST_START"
    stamps = [t["ns"] for t in record["timestamps"]]
    assert stamps == sorted(stamps) and stamps[0] > 0


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    repo = tmp_path_factory.mktemp("trace") / "repo"
    python_model(repo, "pyfail", FAIL_ON_NEGATIVE, config=FP32_IO)
    python_model(repo, "other", "out = x * 2", config=FP32_IO)
    with serve(repo) as proc:
        yield proc


@pytest.fixture
def http(server):
    client = httpclient.InferenceServerClient(server.http_url)
    yield client
    # back to Triton's defaults for the next test
    cleared = {k: None for k in ("trace_level", "trace_rate", "trace_count", "trace_file")}
    for model in ("pyfail", "other"):
        client.update_trace_settings(model, cleared)
    client.update_trace_settings(settings={"trace_level": ["OFF"], "trace_rate": "1000", "trace_count": "-1",
                                           "trace_file": "", "log_frequency": "0"})


def test_timestamps_written_for_every_request(server, http, tmp_path):
    trace_file = tmp_path / "trace.json"
    settings = http.update_trace_settings(settings={"trace_file": str(trace_file), "trace_level": ["TIMESTAMPS"],
                                                    "trace_rate": "1"})
    assert settings["trace_level"] == ["TIMESTAMPS"] and settings["trace_rate"] == "1"
    infer_fp32(http, "pyfail", 1.0)
    infer_fp32(http, "pyfail", 2.0, n=3)
    with pytest.raises(InferenceServerException):
        infer_fp32(http, "pyfail", -1.0)
    records = read_traces(trace_file)  # valid JSON while the server runs
    assert len(records) == 3
    assert len({r["id"] for r in records}) == 3
    for record in records[:2]:
        check_record(record, "pyfail")
    check_record(records[2], "pyfail", executed=False)
    # Tracing off again: nothing more is written.
    http.update_trace_settings(settings={"trace_level": ["OFF"]})
    infer_fp32(http, "pyfail", 3.0)
    assert len(read_traces(trace_file)) == 3


def test_rate_and_count_sampling(server, http, tmp_path):
    trace_file = tmp_path / "sampled.json"
    http.update_trace_settings(settings={"trace_file": str(trace_file), "trace_level": ["TIMESTAMPS"],
                                         "trace_rate": "2", "trace_count": "3"})
    for i in range(10):
        infer_fp32(http, "other", float(i))
    records = read_traces(trace_file)
    assert len(records) == 3  # every 2nd request until the count ran out
    for record in records:
        check_record(record, "other")
    # trace_count reports what is left, as Triton does
    assert http.get_trace_settings()["trace_count"] == "0"


def test_per_model_overrides(server, http, tmp_path):
    global_file, other_file = tmp_path / "global.json", tmp_path / "other.json"
    http.update_trace_settings(settings={"trace_file": str(global_file), "trace_level": ["TIMESTAMPS"],
                                         "trace_rate": "1"})
    http.update_trace_settings("pyfail", {"trace_level": ["OFF"]})
    http.update_trace_settings("other", {"trace_file": str(other_file)})
    for i in range(2):
        infer_fp32(http, "pyfail", float(i + 1))
        infer_fp32(http, "other", float(i + 1))
    assert read_traces(global_file) == []
    records = read_traces(other_file)
    assert [r["model_name"] for r in records] == ["other", "other"]
    # Dropping the model's override (null) makes the global setting apply again.
    http.update_trace_settings("pyfail", {"trace_level": None})
    infer_fp32(http, "pyfail", 5.0)
    assert [r["model_name"] for r in read_traces(global_file)] == ["pyfail"]


def test_grpc_settings_drive_tracing(server, http, tmp_path):
    trace_file = tmp_path / "grpc.json"
    client = grpcclient.InferenceServerClient(server.grpc_url)
    result = client.update_trace_settings(settings={"trace_file": str(trace_file), "trace_level": ["TIMESTAMPS"],
                                                    "trace_rate": "1"}, as_json=True)
    assert result["settings"]["trace_level"] == {"value": ["TIMESTAMPS"]}
    data = np.array([1.0, 2.0], dtype=np.float32)
    inp = grpcclient.InferInput("INPUT0", [2], "FP32")
    inp.set_data_from_numpy(data)
    client.infer("other", [inp], request_id="req-42")
    [record] = read_traces(trace_file)
    check_record(record, "other")
    assert record["request_id"] == "req-42"


def test_tensors_level_refused(server, http):
    with pytest.raises(InferenceServerException) as err:
        http.update_trace_settings(settings={"trace_level": ["TENSORS"]})
    assert err.value.status() == "400"
    assert "TENSORS" in err.value.message() and "not supported" in err.value.message()
    with pytest.raises(InferenceServerException) as err:
        grpcclient.InferenceServerClient(server.grpc_url).update_trace_settings(settings={"trace_level": ["TENSORS"]})
    assert err.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert http.get_trace_settings()["trace_level"] == ["OFF"]


def test_trace_config_at_startup(tmp_path, leak_check):
    python_model(tmp_path / "repo", "other", "out = x * 2", config=FP32_IO)
    trace_file = tmp_path / "startup.json"
    args = ["--trace-config", f"triton,file={trace_file}", "--trace-config", "level=TIMESTAMPS",
            "--trace-config", "rate=1", "--trace-config", "count=2"]
    with ServerProcess(tmp_path / "repo", *args) as proc:
        client = httpclient.InferenceServerClient(proc.http_url)
        for i in range(4):
            infer_fp32(client, "other", float(i))
        assert client.get_trace_settings()["trace_count"] == "0"
    records = read_traces(trace_file)
    assert len(records) == 2 and [r["id"] for r in records] == [1, 2]
    for record in records:
        check_record(record, "other")


# --- pure logic ---------------------------------------------------------------------------------------
@pytest.fixture
def fresh_tracing():
    tracing.ACTIVE = None
    yield
    tracing.ACTIVE = None
    tracing.close_all()


def test_tracing_switches_with_the_level(fresh_tracing, tmp_path):
    settings = TraceSettings.from_options({})
    assert tracing.ACTIVE is None
    settings.update("m", {"trace_level": ["TIMESTAMPS"], "trace_rate": "3", "trace_file": str(tmp_path / "m.json")})
    tracer = tracing.ACTIVE
    assert tracer is not None and tracer.settings is settings
    assert tracer.sample("n", "1") is None  # the global level is OFF
    picks = [tracer.sample("m", "1") for _ in range(9)]
    assert [p is not None for p in picks] == [False, False, True] * 3
    assert [p.id for p in picks if p is not None] == [1, 2, 3]
    settings.update("m", {"trace_rate": "1"})
    assert tracing.ACTIVE is tracer  # counters survive updates
    settings.update("m", {"trace_level": None})
    assert tracing.ACTIVE is None


def test_trace_count_and_log_frequency(fresh_tracing, tmp_path):
    settings = TraceSettings.from_options({"level": "TIMESTAMPS", "rate": "1", "count": "3", "log-frequency": "2",
                                           "file": str(tmp_path / "t.json")})
    tracer = tracing.ACTIVE
    assert tracer is not None
    picks = [tracer.sample("m", "1") for _ in range(5)]
    assert [p.path for p in picks if p is not None] == [str(tmp_path / f"t.json.{i}") for i in (0, 0, 1)]
    assert settings.get()["trace_count"] == "0"


def test_bad_levels_refused(fresh_tracing):
    settings = TraceSettings.from_options({})
    for bad in (["TENSORS"], ["TIMESTAMPS", "TENSORS"], ["LOUD"], "TIMESTAMPS,OFF"):
        with pytest.raises(ServerError):
            settings.update("", {"trace_level": bad})
    assert settings.get()["trace_level"] == ["OFF"] and tracing.ACTIVE is None


def test_file_writer_is_valid_json_after_every_record(tmp_path):
    path = tmp_path / "w.json"
    writer = tracing.TraceFileWriter(str(path))
    try:
        assert json.loads(path.read_text()) == []
        for i in range(3):
            writer.append(json.dumps({"id": i}).encode())
            assert [r["id"] for r in json.loads(path.read_text())] == list(range(i + 1))
    finally:
        writer.close()
