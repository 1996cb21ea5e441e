"""The HTTP frontend against the real tritonclient.http (sync, with concurrency, and aio), served by
aiohttp on 127.0.0.1 over the fake facade in tests/support/fake_facade.py."""
from __future__ import annotations

import asyncio
import base64
import json
import time

import numpy as np
import pytest
import tritonclient.http as httpclient
import tritonclient.http.aio as aioclient
from tritonclient.utils import InferenceServerException, np_to_triton_dtype

from support.fake_facade import FakeFacade
from support.frontend_servers import HttpServerThread, http_request
from tritonpy.frontends.options import HttpOptions


@pytest.fixture
def fake() -> FakeFacade:
    return FakeFacade()


@pytest.fixture
def srv(fake):
    with HttpServerThread(fake) as server:
        yield server
    assert fake.responses_made == fake.responses_released


@pytest.fixture
def client(srv):
    c = httpclient.InferenceServerClient(srv.url, concurrency=4)
    yield c
    c.close()


def _simple_inputs(binary: bool, batch: int = 1):
    a = np.arange(16 * batch, dtype=np.int32).reshape(batch, 16)
    b = np.full((batch, 16), 3, dtype=np.int32)
    i0 = httpclient.InferInput("INPUT0", [batch, 16], "INT32").set_data_from_numpy(a, binary_data=binary)
    i1 = httpclient.InferInput("INPUT1", [batch, 16], "INT32").set_data_from_numpy(b, binary_data=binary)
    return [i0, i1], a, b


def test_health_and_metadata(client, fake):
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("simple") and client.is_model_ready("simple", "1")
    assert not client.is_model_ready("nope")
    fake.ready = False
    assert not client.is_server_ready() and not client.is_model_ready("simple")
    fake.live = False
    assert not client.is_server_live()
    assert client.get_server_metadata()["name"] == "triton"
    meta = client.get_model_metadata("simple", "1")
    assert meta["inputs"][0] == {"name": "INPUT0", "datatype": "INT32", "shape": [-1, 16]}
    assert client.get_model_config("simple")["max_batch_size"] == 8
    with pytest.raises(InferenceServerException, match="unknown model") as err:
        client.get_model_metadata("nope")
    assert err.value.status() == "404"


@pytest.mark.parametrize("binary", [True, False])
def test_infer_simple(client, fake, binary):
    inputs, a, b = _simple_inputs(binary, batch=2)
    outputs = [httpclient.InferRequestedOutput("OUTPUT0", binary_data=binary),
               httpclient.InferRequestedOutput("OUTPUT1", binary_data=binary)]
    result = client.infer("simple", inputs, outputs=outputs, request_id="req-7")
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)
    body = result.get_response()
    assert body["id"] == "req-7" and body["model_name"] == "simple" and body["model_version"] == "1"
    assert ("binary_data_size" in body["outputs"][0].get("parameters", {})) == binary


def test_infer_output_subset_and_default_binary(client):
    inputs, a, b = _simple_inputs(True)
    result = client.infer("simple", inputs, outputs=[httpclient.InferRequestedOutput("OUTPUT1")])
    assert [o["name"] for o in result.get_response()["outputs"]] == ["OUTPUT1"]
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)
    # No outputs listed: the client asks for binary_data_output and gets every output in binary.
    result = client.infer("simple", inputs)
    assert all("binary_data_size" in o["parameters"] for o in result.get_response()["outputs"])
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)


def test_reserved_and_custom_parameters(client, fake):
    inputs, _, _ = _simple_inputs(True)
    client.infer("simple", inputs, sequence_id=42, sequence_start=True, sequence_end=False, priority=3,
                 timeout=1500, parameters={"alpha": "x", "n": 5, "flag": True, "ratio": 0.5},
                 headers={"x-custom": "y"})
    req = fake.requests[-1]
    assert (req.sequence_id, req.sequence_start, req.sequence_end, req.priority, req.timeout_us) == (42, True, False, 3, 1500)
    assert req.parameters == {"alpha": "x", "n": 5, "flag": True, "ratio": 0.5}
    client.infer("simple", inputs, sequence_id="corr-1", sequence_end=True)
    assert fake.requests[-1].sequence_id == "corr-1" and fake.requests[-1].sequence_end


@pytest.mark.parametrize("binary", [True, False])
def test_infer_bytes(client, binary):
    a = np.array([str(i).encode() for i in range(16)], dtype=np.object_).reshape(1, 16)
    b = np.array([b"1"] * 16, dtype=np.object_).reshape(1, 16)
    inputs = [httpclient.InferInput("INPUT0", [1, 16], "BYTES").set_data_from_numpy(a, binary_data=binary),
              httpclient.InferInput("INPUT1", [1, 16], "BYTES").set_data_from_numpy(b, binary_data=binary)]
    outputs = [httpclient.InferRequestedOutput("OUTPUT0", binary_data=binary)]
    result = client.infer("simple_string", inputs, outputs=outputs)
    got = result.as_numpy("OUTPUT0").reshape(-1)
    assert [int(x) for x in got] == [i + 1 for i in range(16)]


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64, np.bool_, np.uint8, np.int8, np.int64, np.uint64])
def test_identity_dtypes_binary(client, dtype):
    data = (np.arange(10) % 3).astype(dtype)
    wire = np_to_triton_dtype(np.dtype(dtype))
    inp = httpclient.InferInput("INPUT0", [10], wire).set_data_from_numpy(data, binary_data=True)
    result = client.infer(f"identity_{wire.lower()}", [inp], outputs=[httpclient.InferRequestedOutput("OUTPUT0")])
    out = result.as_numpy("OUTPUT0")
    assert out.dtype == data.dtype
    np.testing.assert_array_equal(out, data)


def test_fp16_json_is_rejected_both_ways(client):
    data = np.ones(4, dtype=np.float16)
    inp = httpclient.InferInput("INPUT0", [4], "FP16").set_data_from_numpy(data, binary_data=False)
    with pytest.raises(InferenceServerException, match="receiving FP16 data via JSON is not supported") as err:
        client.infer("identity_fp16", [inp])
    assert err.value.status() == "400"
    inp = httpclient.InferInput("INPUT0", [4], "FP16").set_data_from_numpy(data, binary_data=True)
    out = httpclient.InferRequestedOutput("OUTPUT0", binary_data=False)
    with pytest.raises(InferenceServerException, match="sending FP16 data via JSON is not supported"):
        client.infer("identity_fp16", [inp], outputs=[out])


def test_bool_json(client):
    data = np.array([True, False, True])
    inp = httpclient.InferInput("INPUT0", [3], "BOOL").set_data_from_numpy(data, binary_data=False)
    result = client.infer("identity_bool", [inp], outputs=[httpclient.InferRequestedOutput("OUTPUT0", binary_data=False)])
    assert result.get_response()["outputs"][0]["data"] == [True, False, True]


def test_classification(client):
    inputs, a, b = _simple_inputs(True, batch=2)
    out = httpclient.InferRequestedOutput("OUTPUT0", binary_data=True, class_count=3)
    result = client.infer("simple", inputs, outputs=[out])
    classes = result.as_numpy("OUTPUT0")
    assert classes.shape == (2, 3)
    assert classes[0, 0] == f"{float((a + b)[0, 15]):f}:15".encode()  # the core prints a C float
    out = httpclient.InferRequestedOutput("OUTPUT0", binary_data=False, class_count=2)
    body = client.infer("simple", inputs, outputs=[out]).get_response()
    entry = body["outputs"][0]
    assert entry["datatype"] == "BYTES" and entry["data"][0] == f"{float((a + b)[0, 15]):f}:15"


@pytest.fixture
def resource_tracker():
    """tritonclient's shm helpers use multiprocessing.shared_memory, whose resource tracker is a
    long-lived helper process started on first use; start it before the leak probe's snapshot."""
    from multiprocessing import resource_tracker as tracker

    tracker.ensure_running()


def test_system_shared_memory(resource_tracker, client, fake, leak_check):
    import tritonclient.utils.shared_memory as shm

    nbytes = 64
    ip = shm.create_shared_memory_region("tp_http_in", "/tp_http_in", 2 * nbytes)
    op = shm.create_shared_memory_region("tp_http_out", "/tp_http_out", nbytes)
    try:
        a = np.arange(16, dtype=np.int32).reshape(1, 16)
        b = np.full((1, 16), 2, dtype=np.int32)
        shm.set_shared_memory_region(ip, [a, b])
        client.register_system_shared_memory("in", "/tp_http_in", 2 * nbytes)
        client.register_system_shared_memory("out", "/tp_http_out", nbytes)
        status = client.get_system_shared_memory_status()
        assert {r["name"] for r in status} == {"in", "out"}
        assert client.get_system_shared_memory_status("in")[0]["byte_size"] == 2 * nbytes
        i0 = httpclient.InferInput("INPUT0", [1, 16], "INT32")
        i0.set_shared_memory("in", nbytes)
        i1 = httpclient.InferInput("INPUT1", [1, 16], "INT32")
        i1.set_shared_memory("in", nbytes, offset=nbytes)
        o0 = httpclient.InferRequestedOutput("OUTPUT0", binary_data=True)
        o0.set_shared_memory("out", nbytes)
        result = client.infer("simple", [i0, i1], outputs=[o0])
        entry = result.get_output("OUTPUT0")
        # As Triton answers: no data and no parameters. The C++ client (perf_analyzer) reads any
        # output `parameters` as `binary_data_size` and fails without it.
        assert entry == {"name": "OUTPUT0", "datatype": "INT32", "shape": [1, 16]}
        got = shm.get_contents_as_numpy(op, np.int32, [1, 16])
        np.testing.assert_array_equal(got, a + b)
        req = fake.requests[-1]
        assert req.inputs[1].shm.offset == nbytes and req.inputs[1].data is None
        with pytest.raises(InferenceServerException, match="already in manager"):
            client.register_system_shared_memory("in", "/tp_http_in", nbytes)
        client.unregister_system_shared_memory("in")
        assert [r["name"] for r in client.get_system_shared_memory_status()] == ["out"]
        client.unregister_system_shared_memory()
        assert client.get_system_shared_memory_status() == []
    finally:
        shm.destroy_shared_memory_region(ip)
        shm.destroy_shared_memory_region(op)


def test_cuda_shared_memory_endpoints(client, fake):
    handle = bytes(range(64))
    # The client expects the handle already base64-encoded (as cuda_shared_memory.get_raw_handle gives it).
    client.register_cuda_shared_memory("gpu0", base64.b64encode(handle), 0, 1024)
    assert fake.cuda_shm["gpu0"] == {"name": "gpu0", "device_id": 0, "byte_size": 1024, "raw": handle}
    assert client.get_cuda_shared_memory_status() == [{"name": "gpu0", "device_id": 0, "byte_size": 1024}]
    client.unregister_cuda_shared_memory("gpu0")
    assert client.get_cuda_shared_memory_status() == []


def test_repository(client, fake):
    index = client.get_model_repository_index()
    assert {"name": "simple", "version": "1", "state": "READY", "reason": ""} in index
    config = json.dumps({"backend": "python"})
    client.load_model("simple", config=config, files={"file:1/model.py": b"print('hi')\x00\xff"})
    assert fake.loads[-1] == ("simple", {"config": config, "file:1/model.py": b"print('hi')\x00\xff"})
    client.load_model("simple")
    assert fake.loads[-1] == ("simple", None)
    client.unload_model("simple", unload_dependents=True)
    assert fake.unloads[-1] == ("simple", True)
    with pytest.raises(InferenceServerException, match="has not been served") as err:
        client.unload_model("nope")
    assert err.value.status() == "400"


def test_statistics_logging_trace(client, fake):
    inputs, _, _ = _simple_inputs(True)
    client.infer("simple", inputs)
    stats = client.get_inference_statistics("simple")
    assert stats["model_stats"][0]["inference_count"] == 1
    assert len(client.get_inference_statistics()["model_stats"]) == len(fake.models)
    assert client.get_log_settings()["log_info"] is True
    assert client.update_log_settings({"log_verbose_level": 2})["log_verbose_level"] == 2
    assert client.get_trace_settings()["trace_rate"] == "1000"
    updated = client.update_trace_settings("simple", {"trace_rate": "5", "trace_level": ["TIMESTAMPS"]})
    assert updated["trace_rate"] == "5" and updated["trace_level"] == ["TIMESTAMPS"]
    assert client.get_trace_settings()["trace_rate"] == "1000"
    assert client.update_trace_settings("simple", {"trace_rate": None})["trace_rate"] == "1000"


@pytest.mark.parametrize("algorithm", ["gzip", "deflate"])
def test_compression_both_ways(client, algorithm):
    inputs, a, b = _simple_inputs(True)
    result = client.infer("simple", inputs, request_compression_algorithm=algorithm,
                          response_compression_algorithm=algorithm)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)
    inputs, a, b = _simple_inputs(False)
    result = client.infer("simple", inputs, outputs=[httpclient.InferRequestedOutput("OUTPUT0", binary_data=False)],
                          request_compression_algorithm=algorithm, response_compression_algorithm=algorithm)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)


def test_concurrent_async_infer(client, fake):
    pending = []
    for i in range(32):
        inputs, a, b = _simple_inputs(i % 2 == 0)
        pending.append((client.async_infer("simple", inputs, request_id=str(i)), a + b, str(i)))
    for handle, expected, rid in pending:
        result = handle.get_result()
        assert result.get_response()["id"] == rid
        np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), expected)
    assert fake.inference_count["simple"] == 32


async def test_aio_client(srv, fake):
    async with aioclient.InferenceServerClient(srv.url) as client:
        assert await client.is_server_ready()
        assert (await client.get_model_metadata("simple"))["name"] == "simple"

        async def one(i: int):
            a = np.full((1, 16), i, dtype=np.int32)
            inputs = [aioclient.InferInput("INPUT0", [1, 16], "INT32").set_data_from_numpy(a),
                      aioclient.InferInput("INPUT1", [1, 16], "INT32").set_data_from_numpy(a)]
            result = await client.infer("simple", inputs)
            np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a * 2)

        await asyncio.gather(*(one(i) for i in range(24)))
        with pytest.raises(InferenceServerException, match="decoupled"):
            await client.infer("repeat_int32", [aioclient.InferInput("IN", [2], "INT32").set_data_from_numpy(
                np.array([1, 2], dtype=np.int32))])


def test_decoupled_model_is_501(client):
    inp = httpclient.InferInput("IN", [2], "INT32").set_data_from_numpy(np.array([1, 2], dtype=np.int32))
    with pytest.raises(InferenceServerException) as err:
        client.infer("repeat_int32", [inp])
    assert err.value.status() == "501"
    assert "HTTP end point doesn't support models with decoupled transaction policy" in str(err.value)


@pytest.mark.parametrize("code,status", [("INVALID_ARG", "400"), ("NOT_FOUND", "404"), ("UNAVAILABLE", "503"),
                                         ("UNSUPPORTED", "501"), ("INTERNAL", "500"), ("ALREADY_EXISTS", "400"),
                                         ("CANCELLED", "400"), ("UNKNOWN", "400")])
def test_core_errors_keep_their_status(client, code, status):
    inputs, _, _ = _simple_inputs(True)
    with pytest.raises(InferenceServerException, match=f"fake {code} error") as err:
        client.infer("simple", inputs, parameters={"fake_error": code})
    assert err.value.status() == status


def test_header_forwarding():
    fake = FakeFacade()
    with HttpServerThread(fake, HttpOptions(header_forward_pattern="^x-fwd-")) as srv:
        with httpclient.InferenceServerClient(srv.url) as client:
            inputs, _, _ = _simple_inputs(True)
            client.infer("simple", inputs, headers={"X-Fwd-Tenant": "acme", "X-Other": "no"})
    params = {k.lower(): v for k, v in fake.requests[-1].parameters.items()}
    assert params == {"x-fwd-tenant": "acme"}
    fake = FakeFacade()
    with HttpServerThread(fake, HttpOptions(header_forward_pattern="(?-i)^x-fwd-")) as srv:
        status, _, _ = http_request(srv.port, "POST", "/v2/models/simple/infer", _json_simple(),
                                    {"X-Fwd-Upper": "1", "x-fwd-lower": "2"})
    assert status == 200 and fake.requests[-1].parameters == {"x-fwd-lower": "2"}


def _json_simple() -> bytes:
    data = list(range(16))
    return json.dumps({"inputs": [{"name": "INPUT0", "datatype": "INT32", "shape": [1, 16], "data": data},
                                  {"name": "INPUT1", "datatype": "INT32", "shape": [1, 16], "data": data}]}).encode()


def test_restricted_api():
    options = HttpOptions(restricted_api=((frozenset({"inference", "model-repository"}), "admin-key", "s3cret"),))
    fake = FakeFacade()
    with HttpServerThread(fake, options) as srv, httpclient.InferenceServerClient(srv.url) as client:
        inputs, a, b = _simple_inputs(True)
        with pytest.raises(InferenceServerException, match="This API is restricted, expecting header 'admin-key'") as err:
            client.infer("simple", inputs)
        assert err.value.status() == "403"
        with pytest.raises(InferenceServerException, match="restricted"):
            client.infer("simple", inputs, headers={"admin-key": "wrong"})
        result = client.infer("simple", inputs, headers={"Admin-Key": "s3cret"})
        np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)
        assert client.is_server_ready()  # health is not restricted
        with pytest.raises(InferenceServerException, match="restricted"):
            client.get_model_repository_index()
        # The restriction is checked before the method, as in Triton.
        status, _, body = http_request(srv.port, "GET", "/v2/models/simple/infer")
        assert status == 403 and json.loads(body) == {"error": "This API is restricted, expecting header 'admin-key'"}


def test_raw_binary_request(srv):
    data = np.arange(10, dtype=np.float32)
    status, headers, body = http_request(srv.port, "POST", "/v2/models/identity_fp32/infer", data.tobytes(),
                                         {"Inference-Header-Content-Length": "0"})
    assert status == 200 and headers["Content-Type"] == "application/octet-stream"
    hlen = int(headers["Inference-Header-Content-Length"])
    header = json.loads(body[:hlen])
    assert header["outputs"][0]["shape"] == [10] and header["outputs"][0]["parameters"]["binary_data_size"] == 40
    np.testing.assert_array_equal(np.frombuffer(body[hlen:], dtype=np.float32), data)
    # Batched model: batch 1 is added.
    status, headers, body = http_request(srv.port, "POST", "/v2/models/batched_fp32/infer", data.tobytes(),
                                         {"Inference-Header-Content-Length": "0"})
    assert status == 200 and json.loads(body[: int(headers["Inference-Header-Content-Length"])])["outputs"][0]["shape"] == [1, 10]
    # BYTES with shape [1]: the whole body is the one element.
    status, headers, body = http_request(srv.port, "POST", "/v2/models/identity_bytes/infer", b"hello world",
                                         {"Inference-Header-Content-Length": "0"})
    hlen = int(headers["Inference-Header-Content-Length"])
    assert status == 200 and body[hlen:] == len(b"hello world").to_bytes(4, "little") + b"hello world"


def test_cancel_when_client_disconnects(srv, fake):
    import socket

    body = json.dumps({"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [1], "data": [1.0]}],
                       "parameters": {"fake_delay": 30}}).encode()
    with socket.create_connection(("127.0.0.1", srv.port)) as sock:
        sock.sendall(b"POST /v2/models/identity_fp32/infer HTTP/1.1\r\nHost: x\r\n"
                     + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        deadline = time.monotonic() + 10
        while not fake.requests and time.monotonic() < deadline:
            time.sleep(0.01)
    deadline = time.monotonic() + 10
    while fake.cancelled == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert fake.cancelled == 1


def test_max_input_size_also_after_decompression():
    import gzip

    fake = FakeFacade()
    with HttpServerThread(fake, HttpOptions(max_input_size=4096)) as srv:
        big = json.dumps({"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [2000],
                                      "data": [1.0] * 2000}]}).encode()
        status, _, body = http_request(srv.port, "POST", "/v2/models/identity_fp32/infer", big)
        assert status == 400 and "exceeds the maximum allowed value of 4096 bytes" in json.loads(body)["error"]
        packed = gzip.compress(big)
        assert len(packed) < 4096
        status, _, body = http_request(srv.port, "POST", "/v2/models/identity_fp32/infer", packed,
                                       {"Content-Encoding": "gzip"})
        assert status == 400 and "exceeds the maximum allowed value" in json.loads(body)["error"]
        small = json.dumps({"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [2], "data": [1.0, 2.0]}]})
        status, _, _ = http_request(srv.port, "POST", "/v2/models/identity_fp32/infer", gzip.compress(small.encode()),
                                    {"Content-Encoding": "gzip"})
        assert status == 200


def test_large_binary_tensor_round_trip(client):
    data = np.random.default_rng(0).random(1 << 20).astype(np.float32)
    inp = httpclient.InferInput("INPUT0", [data.size], "FP32").set_data_from_numpy(data, binary_data=True)
    result = client.infer("identity_fp32", [inp])
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), data)


def test_load_model_base64_of_client_matches(fake, srv):
    payload = {"parameters": {"config": "{}", "file:1/a.bin": base64.b64encode(b"\x00\x01").decode()}}
    status, _, _ = http_request(srv.port, "POST", "/v2/repository/models/simple/load", json.dumps(payload))
    assert status == 200 and fake.loads[-1][1] == {"config": "{}", "file:1/a.bin": b"\x00\x01"}
