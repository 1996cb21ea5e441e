"""The example repository builder: every model loads through the config pipeline and runs."""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from tritonpy.core.repository.config import finalize_config, load_config, validate_config
from tritonpy.core.repository.config_json import config_to_json, model_metadata
from tritonpy.core.repository.scan import read_labels, scan_repositories, select_versions
from tritonpy.proto import model_config_pb2 as mc

ROOT = Path(__file__).resolve().parents[2]
BUILDER = ROOT / "examples" / "build_examples.py"
MODELS = ["add_sub", "add_sub_onnx", "densenet_onnx", "string_identity"]


def _load_builder():
    spec = importlib.util.spec_from_file_location("build_examples", BUILDER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("examples") / "model_repository"
    assert sorted(_load_builder().build(out)) == MODELS
    return out


def _loaded(repo: Path) -> dict[str, mc.ModelConfig]:
    sources, unavailable = scan_repositories([repo])
    assert not unavailable
    configs = {}
    for name, source in sources.items():
        config = finalize_config(load_config(source), autocomplete=True)
        validate_config(config)
        assert select_versions(config, source.version_dirs) == [1]
        configs[name] = config
    return configs


def test_every_example_loads_and_validates(repo):
    configs = _loaded(repo)
    assert sorted(configs) == MODELS
    summary = {
        name: (c.backend, c.platform, c.max_batch_size, c.WhichOneof("scheduling_choice"),
               [(g.kind, g.count) for g in c.instance_group])
        for name, c in configs.items()
    }
    cpu = mc.ModelInstanceGroup.KIND_CPU
    assert summary == {
        "densenet_onnx": ("onnxruntime", "onnxruntime_onnx", 0, None, [(cpu, 2)]),
        "add_sub": ("python", "", 0, None, [(cpu, 1)]),
        "add_sub_onnx": ("onnxruntime", "onnxruntime_onnx", 8, "dynamic_batching", [(cpu, 2)]),
        "string_identity": ("python", "", 8, "dynamic_batching", [(cpu, 1)]),
    }


def test_densenet_config_renders_like_the_quick_start(repo):
    config = _loaded(repo)["densenet_onnx"]
    rendered = config_to_json(config)
    assert rendered["input"] == [{
        "name": "data_0", "data_type": "TYPE_FP32", "format": "FORMAT_NONE", "dims": [1, 3, 224, 224],
        "is_shape_tensor": False, "allow_ragged_batch": False, "optional": False, "is_non_linear_format_io": False,
    }]
    assert rendered["output"][0]["dims"] == [1, 1000, 1, 1]
    assert rendered["output"][0]["label_filename"] == "densenet_labels.txt"
    assert rendered["instance_group"][0] == {
        "name": "densenet_onnx", "kind": "KIND_CPU", "count": 2, "gpus": [], "secondary_devices": [],
        "profile": [], "passive": False, "host_policy": "",
    }
    assert model_metadata(config, ["1"])["inputs"] == [{"name": "data_0", "datatype": "FP32", "shape": [1, 3, 224, 224]}]
    labels = read_labels(repo / "densenet_onnx", "densenet_labels.txt")
    assert len(labels) == 1000 and labels[0] == "label_0" and labels[-1] == "label_999"


def test_densenet_runs_on_onnxruntime(repo):
    session = ort.InferenceSession(str(repo / "densenet_onnx" / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [(i.name, i.shape) for i in session.get_inputs()] == [("data_0", [1, 3, 224, 224])]
    x = np.random.RandomState(1).rand(1, 3, 224, 224).astype(np.float32)
    (y,) = session.run(None, {"data_0": x})
    assert y.shape == (1, 1000, 1, 1) and y.dtype == np.float32 and np.isfinite(y).all()
    assert np.unique(y).size > 900, "random weights still give distinct scores"


def test_add_sub_onnx_runs_batched(repo):
    session = ort.InferenceSession(str(repo / "add_sub_onnx" / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    b = np.full((3, 4), 2.0, dtype=np.float32)
    total, diff = session.run(["OUTPUT0", "OUTPUT1"], {"INPUT0": a, "INPUT1": b})
    np.testing.assert_array_equal(total, a + b)
    np.testing.assert_array_equal(diff, a - b)


def test_build_is_idempotent_and_leaves_other_folders(tmp_path):
    repo = tmp_path / "repo"
    _load_builder().build(repo)
    (repo / "add_sub" / "stale.txt").write_text("removed on rebuild")
    (repo / "mine").mkdir(exist_ok=True)
    before = (repo / "densenet_onnx" / "1" / "model.onnx").read_bytes()
    result = subprocess.run(
        [sys.executable, str(BUILDER), "--out", str(repo)], capture_output=True, text=True, timeout=60, check=True
    )
    assert "built 4 models" in result.stdout
    assert not (repo / "add_sub" / "stale.txt").exists()
    assert (repo / "mine").is_dir()
    assert (repo / "densenet_onnx" / "1" / "model.onnx").read_bytes() == before, "deterministic weights"


class _FakeTensor:
    def __init__(self, name: str, array: np.ndarray) -> None:
        self._name, self._array = name, array

    def name(self) -> str:
        return self._name

    def as_numpy(self) -> np.ndarray:
        return self._array


class _FakeRequest:
    def __init__(self, **inputs: np.ndarray) -> None:
        self.tensors = {k: _FakeTensor(k, v) for k, v in inputs.items()}


def _fake_pb_utils() -> types.ModuleType:
    """Just the pb_utils names the example models use, to check their logic without a server."""
    pb = types.ModuleType("triton_python_backend_utils")
    pb.Tensor = _FakeTensor
    pb.InferenceResponse = lambda output_tensors: {t.name(): t.as_numpy() for t in output_tensors}
    pb.get_input_tensor_by_name = lambda request, name: request.tensors.get(name)
    pb.get_output_config_by_name = lambda cfg, name: next(o for o in cfg["output"] if o["name"] == name)
    pb.triton_string_to_numpy = lambda s: {"TYPE_FP32": np.float32, "TYPE_STRING": np.object_}[s]
    return pb


def _python_model(path: Path, monkeypatch):
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", _fake_pb_utils())
    spec = importlib.util.spec_from_file_location(f"example_{path.parent.parent.name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.TritonPythonModel()


def test_python_examples_compute_what_they_promise(repo, monkeypatch):
    configs = _loaded(repo)
    model = _python_model(repo / "add_sub" / "1" / "model.py", monkeypatch)
    model.initialize({"model_config": json.dumps(config_to_json(configs["add_sub"]))})
    a, b = np.array([1, 2, 3, 4], np.float32), np.array([4, 3, 2, 1], np.float32)
    (response,) = model.execute([_FakeRequest(INPUT0=a, INPUT1=b)])
    np.testing.assert_array_equal(response["OUTPUT0"], a + b)
    np.testing.assert_array_equal(response["OUTPUT1"], a - b)
    assert response["OUTPUT0"].dtype == np.float32

    model = _python_model(repo / "string_identity" / "1" / "model.py", monkeypatch)
    strings = np.array([[b"hello", b""], [b"\xff\x00", "w\u00f6rld".encode()]], dtype=np.object_)
    first, second = model.execute([_FakeRequest(INPUT0=strings), _FakeRequest(INPUT0=strings[:1])])
    assert first["OUTPUT0"].tolist() == strings.tolist() and first["OUTPUT0"].dtype == np.object_
    assert second["OUTPUT0"].shape == (1, 2)
