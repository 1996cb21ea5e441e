"""The onnxruntime backend: pure config rules in-process, execution in a real worker."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper  # noqa: E402

from tritonpy.backends import array_config as ort_config  # noqa: E402
from tritonpy.backends.base import BackendError  # noqa: E402
from tritonpy.backends.array_config import TensorInfo  # noqa: E402
from tritonpy.proto.messages import ErrorCode  # noqa: E402
from support.worker_harness import WorkerHarness, write_model  # noqa: E402


def _save(model_dir: Path, graph_nodes, inputs, outputs, version: int = 1) -> Path:
    graph = helper.make_graph(graph_nodes, "g", inputs, outputs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    path = model_dir / str(version) / "model.onnx"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(model.SerializeToString())
    return model_dir


def add_model(repo: Path, name: str = "add", batch_dim="N") -> Path:
    """SUM = X + Y, DIFF = X - Y, TEXT_OUT = TEXT (strings); first dim `batch_dim`."""
    vi = helper.make_tensor_value_info
    return _save(
        repo / name,
        [
            helper.make_node("Add", ["X", "Y"], ["SUM"]),
            helper.make_node("Sub", ["X", "Y"], ["DIFF"]),
            helper.make_node("Identity", ["TEXT"], ["TEXT_OUT"]),
        ],
        [vi("X", TensorProto.FLOAT, [batch_dim, 4]), vi("Y", TensorProto.FLOAT, [batch_dim, 4]), vi("TEXT", TensorProto.STRING, [batch_dim, 2])],
        [vi("SUM", TensorProto.FLOAT, [batch_dim, 4]), vi("DIFF", TensorProto.FLOAT, [batch_dim, 4]), vi("TEXT_OUT", TensorProto.STRING, [batch_dim, 2])],
    )


def wide_model(repo: Path) -> Path:
    """OUT = Relu(X), X: [N, 4096] floats (rows large enough to live in shared memory)."""
    vi = helper.make_tensor_value_info
    return _save(
        repo / "wide",
        [helper.make_node("Relu", ["X"], ["OUT"])],
        [vi("X", TensorProto.FLOAT, ["N", 4096])],
        [vi("OUT", TensorProto.FLOAT, ["N", 4096])],
    )


def _harness(tmp_path, model_dir, config=None, **kwargs) -> WorkerHarness:
    config = config or {"name": model_dir.name, "backend": "onnxruntime"}
    return WorkerHarness(tmp_path, model_dir=model_dir, backend="onnxruntime", config=config, **kwargs)


# -- pure rules ---------------------------------------------------------------------------------

X = TensorInfo("X", "FP32", (-1, 4))
Y = TensorInfo("Y", "FP32", (-1,))


def test_auto_complete_batchable_model_gets_default_max_batch_size():
    out = ort_config.auto_complete({"name": "m"}, [X, Y], [TensorInfo("O", "INT64", (-1, 4))], default_max_batch_size=4)
    assert out["max_batch_size"] == 4
    assert out["input"] == [
        {"name": "X", "data_type": "TYPE_FP32", "dims": [4]},
        {"name": "Y", "data_type": "TYPE_FP32", "dims": [1], "reshape": {"shape": []}},
    ]
    assert out["output"] == [{"name": "O", "data_type": "TYPE_INT64", "dims": [4]}]
    assert "dynamic_batching" not in out  # the core decides that


def test_auto_complete_fixed_first_dim_means_no_batching():
    fixed = TensorInfo("X", "FP32", (2, 4))
    out = ort_config.auto_complete({"name": "m"}, [fixed], [fixed], default_max_batch_size=4)
    assert out["max_batch_size"] == 0
    assert out["input"][0]["dims"] == [2, 4]


def test_auto_complete_respects_config():
    config = {"name": "m", "max_batch_size": 0, "input": [{"name": "X", "dims": [-1, 4]}]}
    out = ort_config.auto_complete(config, [X], [TensorInfo("O", "FP32", (-1, 4))], default_max_batch_size=4)
    assert out["max_batch_size"] == 0  # full-rank dims in the config: the user wants no batching
    assert out["input"][0] == {"name": "X", "dims": [-1, 4], "data_type": "TYPE_FP32"}
    config = {"name": "m", "max_batch_size": 16}
    assert ort_config.auto_complete(config, [X], [X], default_max_batch_size=4)["max_batch_size"] == 16


def test_validate_rejects_unknown_tensor_and_type_mismatch():
    with pytest.raises(BackendError, match="unexpected inference input 'Z', allowed inputs are: X"):
        ort_config.validate({"input": [{"name": "Z"}]}, [X], [])
    with pytest.raises(BackendError, match="configuration expects datatype TYPE_INT32 for input 'X', model provides TYPE_FP32"):
        ort_config.validate({"name": "m", "input": [{"name": "X", "data_type": "TYPE_INT32"}]}, [X], [])


def test_thread_counts_share_the_cpus_between_instances():
    cpus = os.cpu_count() or 1
    assert ort_config.thread_counts({}) == (max(1, cpus), 1)
    groups = {"instance_group": [{"count": 2, "kind": "KIND_CPU"}, {"count": 1}]}
    assert ort_config.thread_counts(groups) == (max(1, cpus // 3), 1)
    params = {"parameters": {"intra_op_thread_count": {"string_value": "3"}, "inter_op_thread_count": {"string_value": "2"}}}
    assert ort_config.thread_counts(params) == (3, 2)
    with pytest.raises(BackendError, match="must be an integer"):
        ort_config.thread_counts({"parameters": {"intra_op_thread_count": {"string_value": "many"}}})


def test_providers():
    available = ["CPUExecutionProvider"]
    assert ort_config.providers({}, "KIND_CPU", 0, available) == ["CPUExecutionProvider"]
    with pytest.raises(BackendError, match="'CUDAExecutionProvider' is not available.*onnxruntime-gpu") as info:
        ort_config.providers({}, "KIND_GPU", 0, available)
    assert info.value.code == ErrorCode.UNAVAILABLE
    cfg = {"optimization": {"execution_accelerators": {"gpu_execution_accelerator": [{"name": "tensorrt", "parameters": {"precision_mode": "FP16"}}]}}}
    got = ort_config.providers(cfg, "KIND_GPU", 1, ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"])
    assert got == [
        ("TensorrtExecutionProvider", {"device_id": 1, "trt_fp16_enable": True}),
        ("CUDAExecutionProvider", {"device_id": 1}),
        "CPUExecutionProvider",
    ]
    cfg = {"optimization": {"execution_accelerators": {"cpu_execution_accelerator": [{"name": "openvino"}]}}}
    with pytest.raises(BackendError, match="OpenVINOExecutionProvider"):
        ort_config.providers(cfg, "KIND_CPU", 0, available)
    cfg = {"optimization": {"execution_accelerators": {"cpu_execution_accelerator": [{"name": "warp-drive"}]}}}
    with pytest.raises(BackendError, match="unknown execution accelerator"):
        ort_config.providers(cfg, "KIND_CPU", 0, available)


# -- in a worker --------------------------------------------------------------------------------


def _inputs(rows: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "X": rng.standard_normal((rows, 4)).astype(np.float32),
        "Y": rng.standard_normal((rows, 4)).astype(np.float32),
        "TEXT": np.array([[f"r{seed}-{i}".encode(), "é".encode()] for i in range(rows)], dtype=object),
    }


def test_autocomplete_and_infer(tmp_path, leak_check):
    model_dir = add_model(tmp_path)
    with _harness(tmp_path, model_dir, autocomplete=True, backend_config={"default-max-batch-size": "8"}) as h:
        h.start()
        done = h.init()
        assert done.ok, done.error
        completed = json.loads(done.config_json)
        assert completed["max_batch_size"] == 8
        assert {e["name"]: (e["data_type"], e["dims"]) for e in completed["input"]} == {
            "X": ("TYPE_FP32", [4]), "Y": ("TYPE_FP32", [4]), "TEXT": ("TYPE_STRING", [2])
        }
        data = _inputs(3)
        out = h.infer(data)
        np.testing.assert_allclose(out["SUM"], data["X"] + data["Y"], rtol=1e-6)
        np.testing.assert_allclose(out["DIFF"], data["X"] - data["Y"], rtol=1e-6)
        assert out["TEXT_OUT"].tolist() == data["TEXT"].tolist()
        only = h.infer(data, outputs=["DIFF"])
        assert list(only) == ["DIFF"]
        assert h.finalize() == 0


def test_batch_of_requests_is_concatenated_and_split(tmp_path, leak_check):
    model_dir = add_model(tmp_path)
    config = {"name": "add", "backend": "onnxruntime", "max_batch_size": 8}
    with _harness(tmp_path, model_dir, config=config, autocomplete=True) as h:
        h.start()
        assert h.init().ok
        batch = [_inputs(n, seed) for seed, n in enumerate([1, 3, 2])]
        done = h.execute([h.request(d, outputs=["SUM", "TEXT_OUT"]) for d in batch])
        assert len(done.responses) == len(batch)
        for data, response in zip(batch, done.responses):
            out = h.outputs(response)
            assert out["SUM"].shape == (data["X"].shape[0], 4)
            np.testing.assert_allclose(out["SUM"], data["X"] + data["Y"], rtol=1e-6)
            assert out["TEXT_OUT"].tolist() == data["TEXT"].tolist()
        h.release(done.batch_id)


def test_gathered_batch_runs_once_and_outputs_share_one_block(tmp_path, leak_check):
    model_dir = wide_model(tmp_path)
    config = {"name": "wide", "backend": "onnxruntime", "max_batch_size": 8}
    with _harness(tmp_path, model_dir, config=config, autocomplete=True) as h:
        h.start()
        assert h.init().ok
        rng = np.random.default_rng(1)
        per_request = [{"X": rng.standard_normal((n, 4096)).astype(np.float32)} for n in (2, 1, 3)]
        requests, gathered = h.gathered_batch(per_request)
        done = h.execute(requests, gathered=gathered)
        assert len(done.responses) == len(per_request)
        refs = [r.outputs[0] for r in done.responses]
        assert len({r.segment for r in refs}) == 1
        row_bytes = 4096 * 4
        assert [r.offset - refs[0].offset for r in refs] == [0, 2 * row_bytes, 3 * row_bytes]
        for data, response in zip(per_request, done.responses):
            np.testing.assert_array_equal(h.outputs(response)["OUT"], np.maximum(data["X"], 0))
        h.release(done.batch_id)


def test_bad_request_in_a_batch_fails_alone(tmp_path, leak_check):
    model_dir = wide_model(tmp_path)
    config = {"name": "wide", "backend": "onnxruntime", "max_batch_size": 8}
    with _harness(tmp_path, model_dir, config=config, autocomplete=True) as h:
        h.start()
        assert h.init().ok
        good = np.ones((1, 4096), np.float32)
        bad = np.ones((1, 7), np.float32)  # wrong width: onnxruntime rejects it
        done = h.execute([h.request({"X": good}), h.request({"X": bad}), h.request({"X": -good})])
        assert done.error is None
        assert done.responses[1].error is not None
        assert done.responses[1].error.code == ErrorCode.INVALID_ARG
        np.testing.assert_array_equal(h.outputs(done.responses[0])["OUT"], good)
        np.testing.assert_array_equal(h.outputs(done.responses[2])["OUT"], 0 * good)
        h.release(done.batch_id)


def test_non_batching_model_runs_requests_one_by_one(tmp_path, leak_check):
    model_dir = add_model(tmp_path, name="fixed", batch_dim=2)
    with _harness(tmp_path, model_dir, autocomplete=True) as h:
        h.start()
        done = h.init()
        assert done.ok and json.loads(done.config_json)["max_batch_size"] == 0
        batch = [_inputs(2, 0), _inputs(2, 1)]
        result = h.execute([h.request(d, outputs=["SUM"]) for d in batch])
        assert len(result.responses) == len(batch)
        for data, response in zip(batch, result.responses):
            np.testing.assert_allclose(h.outputs(response)["SUM"], data["X"] + data["Y"], rtol=1e-6)
        h.release(result.batch_id)


def test_bad_onnx_file_fails_the_load(tmp_path, leak_check):
    model_dir = write_model(tmp_path, "broken", files={"model.onnx": "this is not a protobuf"})
    with _harness(tmp_path, model_dir) as h:
        h.start()
        done = h.init()
        assert not done.ok
        assert done.error.startswith("failed to load model 'broken': ")
        assert "protobuf" in done.error.lower()
        assert h.wait_exit() == 0


def test_missing_onnx_file_fails_the_load(tmp_path, leak_check):
    model_dir = write_model(tmp_path, "empty", files={})
    with _harness(tmp_path, model_dir) as h:
        h.start()
        done = h.init()
        assert not done.ok and "unable to find" in done.error and "model.onnx" in done.error


def test_gpu_instance_without_the_cuda_provider_fails_the_load(tmp_path, leak_check):
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("a GPU build of onnxruntime: the CUDA provider exists, nothing to refuse")
    gpu_dir = add_model(tmp_path, name="gpu")
    with _harness(tmp_path, gpu_dir, autocomplete=True) as h:
        h.start()
        done = h.init(instance_kind="KIND_GPU")
        assert not done.ok and "CUDAExecutionProvider" in done.error
