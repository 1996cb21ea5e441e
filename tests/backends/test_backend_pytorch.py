"""The pytorch backend: a small CNN built here, saved as TorchScript and as a torch.export archive,
served by a real server and compared with torch's own output on the same input.

Tolerance: rtol 1e-4, atol 1e-5 (same weights and kernels; the server's worker may use a different
thread count, which can reorder float reductions).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from tritonpy.backends import pytorch_naming as ptc  # noqa: E402
from tritonpy.backends.base import BackendError  # noqa: E402
from tritonpy.proto.messages import ErrorCode  # noqa: E402
from support.framework_helpers import hide_package, infer_concurrently, infer_grpc, infer_http, load_error  # noqa: E402
from support.server_process import ServerProcess  # noqa: E402

RTOL, ATOL = 1e-4, 1e-5


class SmallCNN(torch.nn.Module):
    """conv(3->8) -> relu -> global average pool -> linear(8->10); returns (logits, features)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.fc = torch.nn.Linear(8, 10)

    def forward(self, image: torch.Tensor, scale: torch.Tensor):
        features = torch.relu(self.conv(image)).mean(dim=(2, 3))
        return self.fc(features) * scale, features


def _cnn() -> SmallCNN:
    torch.manual_seed(0)
    return SmallCNN().eval()


def _write(repo: Path, name: str, config: str, filename: str, save) -> None:
    (repo / name / "1").mkdir(parents=True)
    (repo / name / "config.pbtxt").write_text(config)
    save(repo / name / "1" / filename)


BATCHED_INDEXED = """
backend: "pytorch"
max_batch_size: 8
dynamic_batching { max_queue_delay_microseconds: 20000 }
input [ { name: "INPUT__0" data_type: TYPE_FP32 dims: [ 3, 16, 16 ] },
        { name: "INPUT__1" data_type: TYPE_FP32 dims: [ 1 ] } ]
output [ { name: "OUTPUT__0" data_type: TYPE_FP32 dims: [ 10 ] },
         { name: "OUTPUT__1" data_type: TYPE_FP32 dims: [ 8 ] } ]
"""

UNBATCHED_NAMED = """
platform: "pytorch_libtorch"
max_batch_size: 0
input [ { name: "scale" data_type: TYPE_FP32 dims: [ 2, 1 ] },
        { name: "image" data_type: TYPE_FP32 dims: [ 2, 3, 16, 16 ] } ]
output [ { name: "logits" data_type: TYPE_FP32 dims: [ 2, 10 ] },
         { name: "features" data_type: TYPE_FP32 dims: [ 2, 8 ] } ]
parameters { key: "INFERENCE_MODE" value { string_value: "false" } }
parameters { key: "DISABLE_OPTIMIZED_EXECUTION" value { string_value: "true" } }
parameters { key: "INTRA_OP_THREAD_COUNT" value { string_value: "1" } }
"""

EXPORTED = """
platform: "torch_aoti"
max_batch_size: 8
input [ { name: "image" data_type: TYPE_FP32 dims: [ 3, 16, 16 ] },
        { name: "scale" data_type: TYPE_FP32 dims: [ 1 ] } ]
output [ { name: "logits" data_type: TYPE_FP32 dims: [ 10 ] },
         { name: "features" data_type: TYPE_FP32 dims: [ 8 ] } ]
"""


@pytest.fixture(scope="module")
def cnn_repo(tmp_path_factory) -> tuple[Path, SmallCNN]:
    repo = tmp_path_factory.mktemp("torch_repo")
    model = _cnn()
    example = (torch.randn(2, 3, 16, 16), torch.ones(2, 1))
    traced = torch.jit.trace(model, example)
    _write(repo, "cnn_ts", BATCHED_INDEXED, "model.pt", lambda p: traced.save(str(p)))
    _write(repo, "cnn_named", UNBATCHED_NAMED, "model.pt", lambda p: traced.save(str(p)))
    batch = torch.export.Dim("batch", min=1, max=64)
    program = torch.export.export(model, example, dynamic_shapes={"image": {0: batch}, "scale": {0: batch}})
    _write(repo, "cnn_pt2", EXPORTED, "model.pt2", lambda p: torch.export.save(program, str(p)))
    return repo, model


def _reference(model: SmallCNN, image: np.ndarray, scale: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    with torch.inference_mode():
        logits, features = model(torch.from_numpy(image), torch.from_numpy(scale))
    return logits.numpy(), features.numpy()


def _inputs(rows: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((rows, 3, 16, 16), dtype=np.float32), rng.uniform(0.5, 2, (rows, 1)).astype(np.float32)


# -- served and compared ---------------------------------------------------------------------------


def test_torchscript_and_export_served_match_torch(cnn_repo, leak_check):
    repo, model = cnn_repo
    with ServerProcess(repo) as server:
        # TorchScript, INPUT__i / OUTPUT__i convention, a batch of 3 over HTTP and gRPC.
        image, scale = _inputs(3, 1)
        want_logits, want_features = _reference(model, image, scale)
        for infer, url in ((infer_http, server.http_url), (infer_grpc, server.grpc_url)):
            got = infer(url, "cnn_ts", {"INPUT__0": image, "INPUT__1": scale}, ["OUTPUT__0", "OUTPUT__1"])
            np.testing.assert_allclose(got["OUTPUT__0"], want_logits, rtol=RTOL, atol=ATOL)
            np.testing.assert_allclose(got["OUTPUT__1"], want_features, rtol=RTOL, atol=ATOL)

        # Concurrent requests of different sizes: the dynamic batcher may run them as one call;
        # each still gets exactly its own rows.
        batches = [_inputs(rows, 10 + rows) for rows in (1, 2, 3, 1)]
        results = infer_concurrently(
            server.http_url, "cnn_ts", [{"INPUT__0": i, "INPUT__1": s} for i, s in batches], ["OUTPUT__0"]
        )
        for (i, s), got in zip(batches, results):
            np.testing.assert_allclose(got["OUTPUT__0"], _reference(model, i, s)[0], rtol=RTOL, atol=ATOL)

        # Names from forward()'s signature (listed in another order), unbatched, parameters set.
        image, scale = _inputs(2, 2)
        want_logits, want_features = _reference(model, image, scale)
        got = infer_http(server.http_url, "cnn_named", {"image": image, "scale": scale}, ["features", "logits"])
        np.testing.assert_allclose(got["logits"], want_logits, rtol=RTOL, atol=ATOL)
        np.testing.assert_allclose(got["features"], want_features, rtol=RTOL, atol=ATOL)

        # torch.export archive (model.pt2) with a dynamic batch dimension.
        image, scale = _inputs(5, 3)
        want_logits, want_features = _reference(model, image, scale)
        got = infer_grpc(server.grpc_url, "cnn_pt2", {"image": image, "scale": scale}, ["logits", "features"])
        np.testing.assert_allclose(got["logits"], want_logits, rtol=RTOL, atol=ATOL)
        np.testing.assert_allclose(got["features"], want_features, rtol=RTOL, atol=ATOL)


def test_bad_configs_fail_the_load_with_clear_reasons(tmp_path, cnn_repo, leak_check):
    repo, _ = cnn_repo
    traced = (repo / "cnn_ts" / "1" / "model.pt").read_bytes()
    cases = {
        "wrong_name": BATCHED_INDEXED.replace('"INPUT__1"', '"nope"'),
        "no_io": 'backend: "pytorch"\nmax_batch_size: 0\n',
    }
    for name, config in cases.items():
        _write(tmp_path, name, config, "model.pt", lambda p: p.write_bytes(traced))
    _write(tmp_path, "not_torch", BATCHED_INDEXED, "model.pt", lambda p: p.write_bytes(b"not a torchscript file"))
    with ServerProcess(tmp_path, "--model-control-mode=explicit") as server:
        assert "input 'INPUT__0' is neither a forward() argument (image, scale)" in load_error(server.http_url, "wrong_name")
        assert "cannot auto-complete" in load_error(server.http_url, "no_io")
        assert "failed to load 'model.pt' with torch" in load_error(server.http_url, "not_torch")


def test_missing_torch_makes_the_model_unavailable_naming_the_extra(tmp_path, monkeypatch, cnn_repo, leak_check):
    repo, _ = cnn_repo
    hide_package(monkeypatch, tmp_path, "torch")
    with ServerProcess(repo, "--model-control-mode=explicit") as server:
        message = load_error(server.http_url, "cnn_ts")
    assert "failed to load model 'cnn_ts'" in message
    assert "pip install 'tritonpy[torch]'" in message


# -- in-process --------------------------------------------------------------------------------------


def test_kind_gpu_without_cuda_is_a_clear_error(cnn_repo):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    from tritonpy.backends.config import parse_config
    from tritonpy.backends.pytorch_backend import PyTorchBackend

    repo, _ = cnn_repo
    config = {
        "name": "cnn_ts", "backend": "pytorch", "max_batch_size": 8,
        "input": [{"name": "INPUT__0", "data_type": "TYPE_FP32", "dims": [3, 16, 16]},
                  {"name": "INPUT__1", "data_type": "TYPE_FP32", "dims": [1]}],
        "output": [{"name": "OUTPUT__0", "data_type": "TYPE_FP32", "dims": [10]}],
    }
    with pytest.raises(BackendError, match="KIND_GPU needs CUDA") as info:
        PyTorchBackend(
            config=parse_config(json.dumps(config)), model_dir=repo / "cnn_ts",
            version_dir=repo / "cnn_ts" / "1", instance_name="cnn_ts_0", kind="KIND_GPU", device_id=0,
            backend_config={},
        )
    assert info.value.code == ErrorCode.UNAVAILABLE


def test_naming_rules():
    assert ptc.input_order(["INPUT__1", "INPUT__0"], None) == ["INPUT__0", "INPUT__1"]
    assert ptc.input_order(["b", "a"], ["a", "b"]) == ["a", "b"]
    with pytest.raises(BackendError, match="indices 0..1 exactly once"):
        ptc.input_order(["X__0", "X__2"], None)
    with pytest.raises(BackendError, match="forward\\(\\) argument names are not available"):
        ptc.input_order(["a"], None)
    with pytest.raises(BackendError, match="forward\\(\\) takes 2 input"):
        ptc.input_order(["a"], ["a", "b"])
    assert ptc.output_indices(["OUTPUT__1", "OUTPUT__0"]) == {"OUTPUT__1": 1, "OUTPUT__0": 0}
    assert ptc.output_indices(["logits", "features"]) == {"logits": 0, "features": 1}


def test_parameters():
    def params(**kv):
        return {"parameters": {k: {"string_value": v} for k, v in kv.items()}}

    default = ptc.options({}, cpu_threads=3)
    assert default.inference_mode and not default.disable_optimized_execution and default.intra_op_threads == 3
    opts = ptc.options(
        params(INFERENCE_MODE="False", ENABLE_CACHE_CLEANING="true", ENABLE_JIT_EXECUTOR="false", INTRA_OP_THREAD_COUNT="2"),
        cpu_threads=3,
    )
    assert (opts.inference_mode, opts.enable_cache_cleaning, opts.enable_jit_executor, opts.enable_jit_profiling) == (
        False, True, False, None,
    )
    assert opts.intra_op_threads == 2
    with pytest.raises(BackendError, match="INFERENCE_MODE must be true or false"):
        ptc.options(params(INFERENCE_MODE="maybe"), cpu_threads=1)


class _Identity(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def test_gathered_batch_runs_once_without_copying(tmp_path):
    """In-process: a gathered batch is handed to torch as-is and split into row views."""
    from tritonpy.backends.base import BackendRequest
    from tritonpy.backends.config import parse_config
    from tritonpy.backends.pytorch_backend import PyTorchBackend

    (tmp_path / "ident" / "1").mkdir(parents=True)
    torch.jit.script(_Identity()).save(str(tmp_path / "ident" / "1" / "model.pt"))
    config = parse_config(json.dumps({
        "name": "ident", "backend": "pytorch", "max_batch_size": 8,
        "input": [{"name": "INPUT__0", "data_type": "TYPE_FP32", "dims": [4]}],
        "output": [{"name": "OUTPUT__0", "data_type": "TYPE_FP32", "dims": [4]}],
    }))
    backend = PyTorchBackend(
        config=config, model_dir=tmp_path / "ident", version_dir=tmp_path / "ident" / "1", instance_name="ident_0",
        kind="KIND_CPU", device_id=0, backend_config={},
    )
    whole = np.arange(12, dtype=np.float32).reshape(3, 4)
    whole.flags.writeable = False  # like the shared-memory views the worker hands out
    requests = [
        BackendRequest(request_id=str(i), inputs={"INPUT__0": part}, datatypes={"INPUT__0": "FP32"}, requested_outputs=[])
        for i, part in enumerate((whole[:1], whole[1:]))
    ]
    responses = backend.execute(requests, {"INPUT__0": whole})
    outs = [r.outputs[0].array for r in responses]
    np.testing.assert_array_equal(outs[0], whole[:1])
    np.testing.assert_array_equal(outs[1], whole[1:])
    assert all(np.shares_memory(o, whole) for o in outs)  # zero copy in and out
    backend.finalize()


def test_resolving_framework_backends_imports_no_framework():
    """The registry finds the four classes without importing torch/openvino/tensorflow/tensorrt."""
    import subprocess
    import sys

    probe = (
        "import sys, json\n"
        "from pathlib import Path\n"
        "from tritonpy.backends.registry import find_backend\n"
        "for name in ('pytorch', 'openvino', 'tensorflow', 'tensorrt'):\n"
        "    find_backend(name, model_dir=Path('/nonexistent'), version_dir=Path('/nonexistent/1'))\n"
        "print(json.dumps([m for m in ('torch', 'openvino', 'tensorflow', 'tensorrt', 'cuda') if m in sys.modules]))\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True)
    assert json.loads(out.stdout) == []
