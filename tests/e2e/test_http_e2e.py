"""End to end over HTTP: a real tritonpy-server on the example repository (built by
examples/build_examples.py), driven by the real tritonclient.http and by plain requests."""
from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest
import tritonclient.http as httpclient
import tritonclient.http.aio as aioclient
from tritonclient.utils import InferenceServerException

from support.frontend_servers import http_request


@pytest.fixture
def client(example_server):
    c = httpclient.InferenceServerClient(example_server.http_url, concurrency=4)
    yield c
    c.close()


def _add_sub_inputs(a: np.ndarray, b: np.ndarray, binary: bool) -> list:
    return [httpclient.InferInput("INPUT0", list(a.shape), "FP32").set_data_from_numpy(a, binary_data=binary),
            httpclient.InferInput("INPUT1", list(b.shape), "FP32").set_data_from_numpy(b, binary_data=binary)]


@pytest.mark.parametrize("binary", [True, False])
def test_add_sub_python(client, binary):
    a = np.array([1, 2, 3, 4], dtype=np.float32)
    b = np.array([0.5, 0.5, 0.5, 0.5], dtype=np.float32)
    outputs = [httpclient.InferRequestedOutput("OUTPUT1", binary_data=binary)]
    result = client.infer("add_sub", _add_sub_inputs(a, b, binary), outputs=outputs, request_id="e2e")
    np.testing.assert_allclose(result.as_numpy("OUTPUT1"), a - b)
    body = result.get_response()
    assert body["id"] == "e2e" and [o["name"] for o in body["outputs"]] == ["OUTPUT1"]


def test_batched_onnx_and_concurrency(client):
    pending = []
    for i in range(16):
        a = np.full((3, 4), i, dtype=np.float32)
        b = np.ones((3, 4), dtype=np.float32)
        pending.append((client.async_infer("add_sub_onnx", _add_sub_inputs(a, b, True)), a + b))
    for handle, expected in pending:
        np.testing.assert_allclose(handle.get_result().as_numpy("OUTPUT0"), expected)


@pytest.mark.parametrize("binary", [True, False])
def test_strings(client, binary):
    data = np.array([[b"hello", "wörld".encode()]], dtype=np.object_)
    inp = httpclient.InferInput("INPUT0", [1, 2], "BYTES").set_data_from_numpy(data, binary_data=binary)
    result = client.infer("string_identity", [inp],
                          outputs=[httpclient.InferRequestedOutput("OUTPUT0", binary_data=binary)])
    got = [x if isinstance(x, bytes) else x.encode() for x in result.as_numpy("OUTPUT0").reshape(-1)]
    assert got == data.reshape(-1).tolist()  # (tritonclient gives str for JSON BYTES, bytes for binary)


def test_classification_with_labels(client):
    image = np.random.default_rng(0).random((1, 3, 224, 224)).astype(np.float32)
    inp = httpclient.InferInput("data_0", [1, 3, 224, 224], "FP32").set_data_from_numpy(image)
    out = httpclient.InferRequestedOutput("fc6_1", class_count=3)
    classes = client.infer("densenet_onnx", [inp], outputs=[out]).as_numpy("fc6_1").reshape(-1)
    assert len(classes) == 3
    value, index, label = classes[0].decode().split(":")
    assert label == f"label_{index}"


def test_raw_binary_request(example_server):
    image = np.random.default_rng(1).random((1, 3, 224, 224)).astype(np.float32)
    status, headers, body = http_request(example_server.http_port, "POST", "/v2/models/densenet_onnx/infer",
                                         image.tobytes(), {"Inference-Header-Content-Length": "0"})
    assert status == 200, body[:300]
    hlen = int(headers["Inference-Header-Content-Length"])
    header = json.loads(body[:hlen])
    assert header["outputs"][0]["name"] == "fc6_1" and header["outputs"][0]["shape"] == [1, 1000, 1, 1]
    assert len(body) - hlen == 4000


def test_system_shared_memory(client, resource_tracker, leak_check):
    import tritonclient.utils.shared_memory as shm

    a = np.array([1, 2, 3, 4], dtype=np.float32)
    b = np.array([4, 3, 2, 1], dtype=np.float32)
    ip = shm.create_shared_memory_region("tp_e2e_http_in", "/tp_e2e_http_in", 32)
    op = shm.create_shared_memory_region("tp_e2e_http_out", "/tp_e2e_http_out", 16)
    try:
        shm.set_shared_memory_region(ip, [a, b])
        client.register_system_shared_memory("h_in", "/tp_e2e_http_in", 32)
        client.register_system_shared_memory("h_out", "/tp_e2e_http_out", 16)
        i0 = httpclient.InferInput("INPUT0", [4], "FP32")
        i0.set_shared_memory("h_in", 16)
        i1 = httpclient.InferInput("INPUT1", [4], "FP32")
        i1.set_shared_memory("h_in", 16, offset=16)
        o0 = httpclient.InferRequestedOutput("OUTPUT0", binary_data=True)
        o0.set_shared_memory("h_out", 16)
        client.infer("add_sub", [i0, i1], outputs=[o0])
        np.testing.assert_allclose(shm.get_contents_as_numpy(op, np.float32, [4]), a + b)
    finally:
        client.unregister_system_shared_memory()
        shm.destroy_shared_memory_region(ip)
        shm.destroy_shared_memory_region(op)


def test_generate_and_stream(example_server):
    doc = json.dumps({"INPUT0": [1, 2, 3, 4], "INPUT1": [1, 1, 1, 1], "id": "g"})
    status, _, body = http_request(example_server.http_port, "POST", "/v2/models/add_sub/generate", doc)
    assert status == 200, body
    reply = json.loads(body)
    assert reply["id"] == "g" and reply["OUTPUT0"] == [2, 3, 4, 5] and reply["OUTPUT1"] == [0, 1, 2, 3]
    status, headers, body = http_request(example_server.http_port, "POST", "/v2/models/add_sub/generate_stream", doc)
    assert status == 200 and headers["Content-Type"].startswith("text/event-stream")
    assert body.startswith(b"data: ") and json.loads(body[6:].strip())["OUTPUT0"] == [2, 3, 4, 5]


def test_admin_endpoints(client):
    assert client.is_server_ready() and client.is_model_ready("add_sub")
    assert client.get_model_config("add_sub_onnx")["max_batch_size"] == 8
    assert client.get_model_metadata("add_sub")["inputs"][0]["shape"] == [4]
    names = {m["name"] for m in client.get_model_repository_index()}
    assert {"add_sub", "add_sub_onnx", "densenet_onnx", "string_identity"} <= names
    a = np.ones(4, dtype=np.float32)
    client.infer("add_sub", _add_sub_inputs(a, a, True))
    stats = client.get_inference_statistics("add_sub")["model_stats"][0]
    assert stats["name"] == "add_sub" and stats["inference_count"] >= 1
    assert "log_info" in client.get_log_settings()
    assert "trace_level" in client.get_trace_settings()


def test_errors_from_the_core(client, example_server):
    a = np.ones(3, dtype=np.float32)
    with pytest.raises(InferenceServerException) as err:
        client.infer("add_sub", _add_sub_inputs(a, a, True))
    assert err.value.status() == "400"
    with pytest.raises(InferenceServerException) as err:
        client.infer("nope", _add_sub_inputs(a, a, True))
    assert err.value.status() == "404"
    status, _, body = http_request(example_server.http_port, "POST", "/v2/models/add_sub/infer", "{")
    assert status == 400 and "failed to parse the request JSON buffer" in json.loads(body)["error"]


def test_compressed_round_trip(client):
    a = np.arange(4, dtype=np.float32)
    result = client.infer("add_sub", _add_sub_inputs(a, a, False), request_compression_algorithm="gzip",
                          response_compression_algorithm="deflate")
    np.testing.assert_allclose(result.as_numpy("OUTPUT0"), a + a)


async def test_aio_client(example_server):
    async with aioclient.InferenceServerClient(example_server.http_url) as client:
        async def one(i: int):
            a = np.full(4, i, dtype=np.float32)
            inputs = [aioclient.InferInput("INPUT0", [4], "FP32").set_data_from_numpy(a),
                      aioclient.InferInput("INPUT1", [4], "FP32").set_data_from_numpy(a)]
            result = await client.infer("add_sub", inputs)
            np.testing.assert_allclose(result.as_numpy("OUTPUT1"), np.zeros(4))

        await asyncio.gather(*(one(i) for i in range(12)))
