"""What the framework backends share through ArrayBackend: the default-max-batch-size setting, the
completion from the model's declared tensors, the CPU-only refusal and the optional-input hooks."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tritonpy.backends import array_config
from tritonpy.backends.array_backend import ArrayBackend
from tritonpy.backends.base import BackendError, BackendRequest
from tritonpy.backends.openvino_backend import OpenVINOBackend
from tritonpy.backends.tensorflow_backend import TensorFlowBackend
from tritonpy.proto.messages import ErrorCode

CONFIG = {
    "name": "m",
    "max_batch_size": 8,
    "input": [{"name": "X", "data_type": "TYPE_FP32", "dims": [2]}],
    "output": [{"name": "Y", "data_type": "TYPE_FP32", "dims": [2]}],
}
X = array_config.TensorInfo("X", "FP32", (-1, 2))
Y = array_config.TensorInfo("Y", "FP32", (-1, 2))


def _make(cls: type[ArrayBackend], kind: str = "KIND_CPU", config: dict | None = None) -> ArrayBackend:
    return cls(config=dict(config or CONFIG), model_dir=Path("/nonexistent"), version_dir=Path("/nonexistent/1"),
               instance_name="m_0", kind=kind, device_id=0, backend_config={})


class Doubler(ArrayBackend):
    name = "doubler"

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.calls: list[dict[str, np.ndarray]] = []

    def _infer(self, feeds, fetch):
        self.calls.append(feeds)
        return [feeds["X"] * 2]


class CpuOnly(Doubler):
    name = "cpuonly"
    _cpu_only = True


@pytest.mark.parametrize("backend_config, expected", [
    (None, 4), ({}, 4), ({"default-max-batch-size": "16"}, 16), ({"default-max-batch-size": "0"}, 0),
    ({"default-max-batch-size": "many"}, 4),
])
def test_default_max_batch_size_setting(backend_config, expected):
    assert array_config.default_max_batch_size(backend_config) == expected


def test_completion_from_the_model_uses_the_setting():
    bare = {"name": "m"}
    assert ArrayBackend._complete_from_model(bare, [X], [Y], None)["max_batch_size"] == 4
    done = ArrayBackend._complete_from_model(bare, [X], [Y], {"default-max-batch-size": "2"})
    assert done["max_batch_size"] == 2
    assert done["input"] == [{"name": "X", "data_type": "TYPE_FP32", "dims": [2]}]
    assert "max_batch_size" not in bare  # the caller's dict is left alone


@pytest.mark.parametrize("cls", [CpuOnly, OpenVINOBackend, TensorFlowBackend])
def test_cpu_only_frameworks_refuse_a_gpu_instance(cls):
    # The refusal comes before the framework is imported, so it holds without openvino/tensorflow.
    with pytest.raises(BackendError) as info:
        _make(cls, kind="KIND_GPU")
    assert info.value.code == ErrorCode.UNSUPPORTED
    assert info.value.message == f"tritonpy's {cls.name} backend runs on the CPU only; use KIND_CPU"


def test_other_backends_accept_a_gpu_instance_kind():
    assert _make(Doubler, kind="KIND_GPU").kind == "KIND_GPU"
    assert _make(CpuOnly, kind="KIND_CPU").kind == "KIND_CPU"


def _request(**inputs: np.ndarray) -> BackendRequest:
    return BackendRequest(request_id="", inputs=inputs, datatypes={n: "FP32" for n in inputs}, requested_outputs=[])


def test_a_request_missing_a_configured_input_fails_alone():
    backend = _make(Doubler)
    x = np.ones((1, 2), np.float32)
    good, bad = _request(X=x), _request(Z=x)
    responses = backend.execute([good, bad], None)
    assert len(responses) == 2 and backend.calls and len(backend.calls) == 1
    np.testing.assert_array_equal(responses[0].outputs[0].array, 2 * x)
    assert responses[1].error is not None and responses[1].error.code == ErrorCode.INVALID_ARG
    assert "expected input(s) missing from the request: X" in responses[1].error.message


class OptionalInputs(Doubler):
    """Feeds what each request carries (like onnxruntime, whose models may have optional inputs)."""

    def _missing(self, request):
        return []

    def _feed_names(self, request):
        return [n for n in request.inputs if n in ("X", "BIAS")]

    def _infer(self, feeds, fetch):
        self.calls.append(feeds)
        return [feeds["X"] * 2 + feeds.get("BIAS", 0)]


def test_requests_with_different_optional_inputs_run_one_by_one():
    backend = _make(OptionalInputs)
    x = np.ones((1, 2), np.float32)
    responses = backend.execute([_request(X=x), _request(X=x, BIAS=x)], None)
    assert [sorted(c) for c in backend.calls] == [["X"], ["BIAS", "X"]]
    np.testing.assert_array_equal(responses[0].outputs[0].array, 2 * x)
    np.testing.assert_array_equal(responses[1].outputs[0].array, 3 * x)


def test_requests_with_the_same_optional_inputs_run_as_one_batch():
    backend = _make(OptionalInputs)
    x = np.ones((1, 2), np.float32)
    responses = backend.execute([_request(X=x, BIAS=x), _request(X=3 * x, BIAS=x)], None)
    assert len(backend.calls) == 1 and backend.calls[0]["X"].shape == (2, 2)
    assert len(responses) == 2
    np.testing.assert_array_equal(responses[0].outputs[0].array, 3 * x)
    np.testing.assert_array_equal(responses[1].outputs[0].array, 7 * x)
