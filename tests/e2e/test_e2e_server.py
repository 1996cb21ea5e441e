"""End to end: a real tritonpy-server process on the example repository, driven by the real tritonclient."""
from __future__ import annotations

import json
import signal
import time
import urllib.request

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from support.server_process import ServerProcess


def test_startup_prints_model_table_and_service_lines(example_server):
    deadline = time.monotonic() + 10
    while "Started Metrics Service at" not in example_server.output() and time.monotonic() < deadline:
        time.sleep(0.05)
    out = example_server.output()
    for model in ("densenet_onnx", "add_sub", "add_sub_onnx", "string_identity"):
        assert model in out
    assert f"Started GRPCInferenceService at 127.0.0.1:{example_server.grpc_port}" in out
    assert f"Started HTTPService at 127.0.0.1:{example_server.http_port}" in out
    assert "Started Metrics Service at" in out


def test_health_and_config_like_the_quick_start(example_server):
    with urllib.request.urlopen(f"http://{example_server.http_url}/v2/health/ready") as r:
        assert r.status == 200 and r.read() == b""
    with urllib.request.urlopen(f"http://{example_server.http_url}/v2/models/densenet_onnx/config") as r:
        cfg = json.loads(r.read())
    assert cfg["name"] == "densenet_onnx" and cfg["platform"] == "onnxruntime_onnx"
    assert cfg["backend"] == "onnxruntime"
    assert cfg["version_policy"] == {"latest": {"num_versions": 1}}
    assert cfg["max_batch_size"] == 0
    assert cfg["input"][0]["dims"] == [1, 3, 224, 224] and cfg["input"][0]["data_type"] == "TYPE_FP32"
    assert cfg["output"][0]["dims"] == [1, 1000, 1, 1]
    assert cfg["instance_group"][0]["kind"] == "KIND_CPU" and cfg["instance_group"][0]["count"] == 2
    assert cfg["default_model_filename"] == "model.onnx"


def test_http_infer_add_sub_python(example_server):
    client = httpclient.InferenceServerClient(example_server.http_url)
    a = np.arange(4, dtype=np.float32)
    b = np.ones(4, dtype=np.float32)
    inputs = [httpclient.InferInput("INPUT0", [4], "FP32"), httpclient.InferInput("INPUT1", [4], "FP32")]
    inputs[0].set_data_from_numpy(a)
    inputs[1].set_data_from_numpy(b, binary_data=True)
    result = client.infer("add_sub", inputs, request_id="r1")
    np.testing.assert_allclose(result.as_numpy("OUTPUT0"), a + b)
    np.testing.assert_allclose(result.as_numpy("OUTPUT1"), a - b)
    assert result.get_response()["id"] == "r1"


def test_grpc_infer_densenet_classification(example_server):
    client = grpcclient.InferenceServerClient(example_server.grpc_url)
    assert client.is_server_ready() and client.is_model_ready("densenet_onnx")
    image = np.random.default_rng(0).random((1, 3, 224, 224), dtype=np.float32)
    inp = grpcclient.InferInput("data_0", [1, 3, 224, 224], "FP32")
    inp.set_data_from_numpy(image)
    raw = client.infer("densenet_onnx", [inp])
    assert raw.as_numpy("fc6_1").shape == (1, 1000, 1, 1)
    top = client.infer("densenet_onnx", [inp], outputs=[grpcclient.InferRequestedOutput("fc6_1", class_count=3)])
    labels = top.as_numpy("fc6_1")
    assert labels.shape == (3,)
    scores = raw.as_numpy("fc6_1").reshape(-1)
    best = int(np.argmax(scores))
    value, index, label = labels[0].decode().split(":")
    assert int(index) == best and label == f"label_{best}"


def test_strings_and_batched_onnx(example_server):
    client = httpclient.InferenceServerClient(example_server.http_url)
    data = np.array([[b"abc", b"hello"]], dtype=np.object_)
    inp = httpclient.InferInput("INPUT0", [1, 2], "BYTES")
    inp.set_data_from_numpy(data)
    out = client.infer("string_identity", [inp]).as_numpy("OUTPUT0")
    assert out.shape == (1, 2)
    meta = client.get_model_metadata("add_sub_onnx")
    shape = [2 if d == -1 else d for d in meta["inputs"][0]["shape"]]
    a = np.ones(shape, dtype=np.float32)
    ins = [httpclient.InferInput(i["name"], shape, i["datatype"]) for i in meta["inputs"]]
    for i in ins:
        i.set_data_from_numpy(a)
    res = client.infer("add_sub_onnx", ins)
    assert res.as_numpy(meta["outputs"][0]["name"]).shape == tuple(shape)


def test_metrics_after_traffic(example_server):
    with urllib.request.urlopen(f"http://127.0.0.1:{example_server.metrics_port}/metrics") as r:
        text = r.read().decode()
    from prometheus_client.parser import text_string_to_metric_families

    fams = {f.name: f for f in text_string_to_metric_families(text)}
    success = {tuple(sorted(s.labels.items())): s.value for s in fams["nv_inference_request_success"].samples}
    assert success[(("model", "add_sub"), ("version", "1"))] >= 1


def test_sigterm_shuts_down_cleanly(example_repo, leak_check):
    proc = ServerProcess(example_repo).wait()
    code = proc.stop(signal.SIGTERM)
    assert code == 0, proc.output()
