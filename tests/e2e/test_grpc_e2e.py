"""End to end over gRPC: a real tritonpy-server on the example repository, driven by the real tritonclient.grpc."""
from __future__ import annotations

import asyncio
import queue

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as aioclient
import tritonclient.utils.shared_memory as shm
from tritonclient.utils import InferenceServerException

from tritonpy.proto import health_pb2, health_pb2_grpc


@pytest.fixture
def client(example_server):
    c = grpcclient.InferenceServerClient(example_server.grpc_url)
    yield c
    c.close()


def _fp32_inputs(mod, a: np.ndarray, b: np.ndarray) -> list:
    out = []
    for name, arr in (("INPUT0", a), ("INPUT1", b)):
        i = mod.InferInput(name, list(arr.shape), "FP32")
        i.set_data_from_numpy(arr)
        out.append(i)
    return out


def test_health_metadata_config(example_server, client):
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("add_sub")
    assert client.get_model_metadata("add_sub_onnx", as_json=True)["inputs"][0]["shape"] == ["-1", "4"]
    cfg = client.get_model_config("densenet_onnx").config
    assert cfg.platform == "onnxruntime_onnx" and cfg.output[0].name == "fc6_1"
    with grpc.insecure_channel(example_server.grpc_url) as channel:
        status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest()).status
    assert status == health_pb2.HealthCheckResponse.SERVING


def test_python_backend_add_sub(client):
    a = np.arange(4, dtype=np.float32)
    b = np.full(4, 0.5, dtype=np.float32)
    result = client.infer("add_sub", _fp32_inputs(grpcclient, a, b), request_id="e2e")
    np.testing.assert_allclose(result.as_numpy("OUTPUT0"), a + b)
    np.testing.assert_allclose(result.as_numpy("OUTPUT1"), a - b)
    assert result.get_response().id == "e2e"
    stats = client.get_inference_statistics("add_sub", as_json=True)["model_stats"][0]
    assert int(stats["inference_count"]) >= 1


def test_bytes_and_classification(client):
    strings = np.array([[b"hello", b"", "wörld".encode()]], dtype=object)
    i = grpcclient.InferInput("INPUT0", [1, 3], "BYTES")
    i.set_data_from_numpy(strings)
    assert client.infer("string_identity", [i]).as_numpy("OUTPUT0").tolist() == strings.tolist()
    image = np.random.RandomState(1).rand(1, 3, 224, 224).astype(np.float32)
    i = grpcclient.InferInput("data_0", [1, 3, 224, 224], "FP32")
    i.set_data_from_numpy(image)
    out = grpcclient.InferRequestedOutput("fc6_1", class_count=3)
    top = client.infer("densenet_onnx", [i], outputs=[out]).as_numpy("fc6_1").reshape(-1)
    assert len(top) == 3
    value, index, label = top[0].decode().split(":")
    assert label == f"label_{index}" and float(value) >= float(top[1].decode().split(":")[0])


async def test_aio_concurrent_batched_onnx(example_server):
    async with aioclient.InferenceServerClient(example_server.grpc_url) as c:
        xs = [np.full((1, 4), k, dtype=np.float32) for k in range(12)]
        results = await asyncio.gather(*(c.infer("add_sub_onnx", _fp32_inputs(aioclient, x, x)) for x in xs))
    for x, r in zip(xs, results):
        np.testing.assert_allclose(r.as_numpy("OUTPUT0"), x + x)


def test_stream_in_order(client):
    results: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: results.put((result, error)))
    try:
        for k in range(5):
            x = np.full(4, k, dtype=np.float32)
            client.async_stream_infer("add_sub", _fp32_inputs(grpcclient, x, x), request_id=str(k))
        got = [results.get(timeout=30) for _ in range(5)]
    finally:
        client.stop_stream()
    assert all(e is None for _, e in got)
    assert [r.get_response().id for r, _ in got] == ["0", "1", "2", "3", "4"]
    assert [float(r.as_numpy("OUTPUT0")[0]) for r, _ in got] == [0.0, 2.0, 4.0, 6.0, 8.0]
    assert all(r.get_response().parameters["triton_final_response"].bool_param for r, _ in got)


def test_system_shared_memory_round_trip(client, resource_tracker, leak_check):
    a = np.arange(4, dtype=np.float32)
    in_handle = shm.create_shared_memory_region("grpc_in", "/tp_grpc_e2e_in", 32)
    out_handle = shm.create_shared_memory_region("grpc_out", "/tp_grpc_e2e_out", 32)
    try:
        shm.set_shared_memory_region(in_handle, [a, a])
        client.register_system_shared_memory("grpc_in", "/tp_grpc_e2e_in", 32)
        client.register_system_shared_memory("grpc_out", "/tp_grpc_e2e_out", 32)
        inputs = [grpcclient.InferInput(n, [4], "FP32") for n in ("INPUT0", "INPUT1")]
        inputs[0].set_shared_memory("grpc_in", 16)
        inputs[1].set_shared_memory("grpc_in", 16, offset=16)
        outputs = [grpcclient.InferRequestedOutput(n) for n in ("OUTPUT0", "OUTPUT1")]
        outputs[0].set_shared_memory("grpc_out", 16)
        outputs[1].set_shared_memory("grpc_out", 16, offset=16)
        result = client.infer("add_sub", inputs, outputs=outputs)
        o0 = result.get_output("OUTPUT0")
        assert o0.datatype == "FP32" and list(o0.shape) == [4]
        np.testing.assert_allclose(shm.get_contents_as_numpy(out_handle, np.float32, [4]), a + a)
        status = client.get_system_shared_memory_status(as_json=True)["regions"]
        assert set(status) == {"grpc_in", "grpc_out"}
    finally:
        client.unregister_system_shared_memory()
        shm.destroy_shared_memory_region(in_handle)
        shm.destroy_shared_memory_region(out_handle)


def test_errors_from_the_real_core(client):
    x = np.zeros(4, dtype=np.float32)
    with pytest.raises(InferenceServerException) as info:
        client.infer("missing_model", _fp32_inputs(grpcclient, x, x))
    assert info.value.status() == "StatusCode.NOT_FOUND"
    bad = grpcclient.InferInput("INPUT0", [4], "INT32")
    bad.set_data_from_numpy(np.zeros(4, dtype=np.int32))
    good = grpcclient.InferInput("INPUT1", [4], "FP32")
    good.set_data_from_numpy(x)
    with pytest.raises(InferenceServerException) as info:
        client.infer("add_sub", [bad, good])
    assert info.value.status() == "StatusCode.INVALID_ARGUMENT"
    with pytest.raises(InferenceServerException) as info:
        client.load_model("add_sub")
    assert info.value.status() == "StatusCode.UNAVAILABLE"  # model control mode "none"
