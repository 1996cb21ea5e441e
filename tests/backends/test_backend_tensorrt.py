"""The tensorrt backend. Without a GPU (or without the `gpu` extra) a `model.plan` model must become
UNAVAILABLE with a reason naming the extra; the `gpu` tests build a small engine with TensorRT's
network API, serve it and compare with numpy (exact for ReLU; atol 1e-5 for the matmul).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from support.framework_helpers import infer_concurrently, infer_grpc, infer_http, load_error
from support.server_process import ServerProcess
from tritonpy.backends import tensorrt_backend


def _gpu_and_tensorrt() -> bool:
    try:
        tensorrt_backend._libraries()
    except Exception:  # noqa: BLE001 - any failure means "cannot run TensorRT here"
        return False
    return True


def test_profile_comes_from_the_instance_group():
    assert tensorrt_backend._profile({}) == 0
    assert tensorrt_backend._profile({"instance_group": [{"kind": "KIND_GPU"}, {"profile": ["2", "3"]}]}) == 2


def test_without_gpu_or_package_the_model_is_unavailable_naming_the_gpu_extra(tmp_path, leak_check):
    if _gpu_and_tensorrt():
        pytest.skip("this machine can run TensorRT")
    (tmp_path / "engine" / "1").mkdir(parents=True)
    (tmp_path / "engine" / "1" / "model.plan").write_bytes(b"\0" * 64)
    with ServerProcess(tmp_path, "--model-control-mode=explicit") as server:
        message = load_error(server.http_url, "engine")
    assert "failed to load model 'engine'" in message
    assert "pip install 'tritonpy[gpu]'" in message


# -- on a GPU ------------------------------------------------------------------------------------


def _build_engine(path: Path) -> np.ndarray:
    """INPUT [-1, 4] -> RELU -> OUTPUT, and INPUT x W -> PROJ [-1, 2]; profile batch 1..8. Returns W."""
    import tensorrt as trt

    weights = np.arange(8, dtype=np.float32).reshape(4, 2) / 8
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    x = network.add_input("INPUT", trt.float32, (-1, 4))
    relu = network.add_activation(x, trt.ActivationType.RELU)
    relu.get_output(0).name = "OUTPUT"
    network.mark_output(relu.get_output(0))
    w = network.add_constant((4, 2), trt.Weights(weights))
    proj = network.add_matrix_multiply(x, trt.MatrixOperation.NONE, w.get_output(0), trt.MatrixOperation.NONE)
    proj.get_output(0).name = "PROJ"
    network.mark_output(proj.get_output(0))
    profile = builder.create_optimization_profile()
    profile.set_shape("INPUT", (1, 4), (4, 4), (8, 4))
    config = builder.create_builder_config()
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(bytes(serialized))
    return weights


@pytest.mark.gpu
def test_engine_served_with_autocomplete_and_dynamic_batch(tmp_path, leak_check):
    weights = _build_engine(tmp_path / "relu" / "1" / "model.plan")
    (tmp_path / "relu" / "config.pbtxt").write_text("instance_group [ { kind: KIND_GPU count: 1 } ]\n")
    with ServerProcess(tmp_path) as server:
        import tritonclient.http as httpclient

        client = httpclient.InferenceServerClient(server.http_url)
        try:
            config = client.get_model_config("relu")
        finally:
            client.close()
        assert config["platform"] == "tensorrt_plan" and config["max_batch_size"] == 8
        x = np.random.default_rng(0).standard_normal((3, 4), dtype=np.float32)
        for infer, url in ((infer_http, server.http_url), (infer_grpc, server.grpc_url)):
            got = infer(url, "relu", {"INPUT": x}, ["OUTPUT", "PROJ"])
            np.testing.assert_array_equal(got["OUTPUT"], np.maximum(x, 0))
            np.testing.assert_allclose(got["PROJ"], x @ weights, atol=1e-5)
        batches = [np.full((rows, 4), rows - 2, np.float32) for rows in (1, 2, 3)]
        for x, got in zip(batches, infer_concurrently(server.http_url, "relu", [{"INPUT": b} for b in batches], ["OUTPUT"])):
            np.testing.assert_array_equal(got["OUTPUT"], np.maximum(x, 0))


@pytest.mark.gpu
def test_shape_outside_the_profile_fails_that_request(tmp_path, leak_check):
    from tritonclient.utils import InferenceServerException

    _build_engine(tmp_path / "relu" / "1" / "model.plan")
    (tmp_path / "relu" / "config.pbtxt").write_text("max_batch_size: 0\ninstance_group [ { kind: KIND_GPU count: 1 } ]\n"
                                                   'input [ { name: "INPUT" data_type: TYPE_FP32 dims: [ -1, 4 ] } ]\n')
    with ServerProcess(tmp_path) as server:
        with pytest.raises(InferenceServerException, match="outside the optimization profile"):
            infer_http(server.http_url, "relu", {"INPUT": np.zeros((9, 4), np.float32)}, ["OUTPUT"])
        got = infer_http(server.http_url, "relu", {"INPUT": np.ones((2, 4), np.float32)}, ["OUTPUT"])
        np.testing.assert_array_equal(got["OUTPUT"], np.ones((2, 4), np.float32))
