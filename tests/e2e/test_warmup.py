"""Model warm-up end to end: `model_warmup` samples (zero, random, file data; batch_size; count) run
through the model before it turns READY, and a failing warm-up leaves it UNAVAILABLE with the reason."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from support.model_builders import python_model
from support.server_process import ServerProcess
from test_model_management import http_infer

pytestmark = pytest.mark.timeout(120)

LOGGING_INIT = """
import json
params = json.loads(args["model_config"]).get("parameters", {})
self.log_path = params["LOG_PATH"]["string_value"]
"""
LOGGING_BODY = """
import json
with open(self.log_path, "a") as f:
    f.write(json.dumps({"shape": list(x.shape), "values": x.reshape(-1).tolist()}) + "\\n")
if x.size and float(x.reshape(-1)[0]) == -1.0:
    raise ValueError("minus one is not welcome")
out = x.copy()
"""


def warm_model(repo: Path, name: str, log: Path, *, max_batch: int, samples: str, data: bytes | None = None) -> Path:
    config = (
        f"max_batch_size: {max_batch}\n"
        'input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ -1 ] } ]\n'
        'output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ -1 ] } ]\n'
        'instance_group [ { count: 1 kind: KIND_CPU } ]\n'
        f'parameters {{ key: "LOG_PATH" value: {{ string_value: "{log}" }} }}\n'
        f"model_warmup [ {samples} ]\n"
    )
    model_dir = python_model(repo, name, LOGGING_BODY, config=config, initialize=LOGGING_INIT)
    if data is not None:
        (model_dir / "warmup").mkdir()
        (model_dir / "warmup" / "in.bin").write_bytes(data)
    return model_dir


def sample(name: str, dims: list[int], kind: str, *, batch_size: int = 1, count: int = 0) -> str:
    return (
        f'{{ name: "{name}" batch_size: {batch_size} count: {count} inputs {{ key: "INPUT0" value: '
        f"{{ data_type: TYPE_FP32 dims: {dims} {kind} }} }} }}"
    )


def logged(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


@pytest.fixture
def repo(tmp_path) -> Path:
    root = tmp_path / "repo"
    root.mkdir()
    return root


def test_warmup_samples_run_before_ready(repo, tmp_path, leak_check):
    log = tmp_path / "warm.log"
    samples = ", ".join([
        sample("zeros", [3], "zero_data: true", batch_size=2, count=2),
        sample("random", [2], "random_data: true"),
        sample("file", [4], 'input_data_file: "in.bin"'),
    ])
    warm_model(repo, "warm", log, max_batch=4, samples=samples,
               data=np.array([1, 2, 3, 4], dtype=np.float32).tobytes())
    nolog = tmp_path / "plain.log"
    warm_model(repo, "unbatched", nolog, max_batch=0, samples=sample("zeros", [2], "zero_data: true", count=3))
    with ServerProcess(repo) as proc:
        seen = logged(log)  # everything here ran before the server (and the model) was ready
        assert len(seen) == 6
        assert seen[:4] == [{"shape": [1, 3], "values": [0.0, 0.0, 0.0]}] * 4
        assert seen[4]["shape"] == [1, 2] and all(0.0 <= v < 1.0 for v in seen[4]["values"])
        assert seen[5] == {"shape": [1, 4], "values": [1.0, 2.0, 3.0, 4.0]}
        assert logged(nolog) == [{"shape": [2], "values": [0.0, 0.0]}] * 3
        np.testing.assert_allclose(http_infer(proc.http_url, "unbatched", [5, 6]), [5, 6])
        assert len(logged(nolog)) == 4
        client = httpclient.InferenceServerClient(proc.http_url)
        config = client.get_model_config("warm")
        assert [s["name"] for s in config["model_warmup"]] == ["zeros", "random", "file"]
        client.close()


def test_failed_warmup_makes_the_model_unavailable(repo, tmp_path, leak_check):
    warm_model(repo, "ok", tmp_path / "ok.log", max_batch=0, samples=sample("zeros", [1], "zero_data: true"))
    warm_model(repo, "fails", tmp_path / "fails.log", max_batch=0,
               samples=sample("bad", [2], 'input_data_file: "in.bin"'),
               data=np.array([-1, 0], dtype=np.float32).tobytes())
    warm_model(repo, "nofile", tmp_path / "nofile.log", max_batch=0,
               samples=sample("missing", [2], 'input_data_file: "absent.bin"'))
    warm_model(repo, "short", tmp_path / "short.log", max_batch=0,
               samples=sample("short", [4], 'input_data_file: "in.bin"'), data=b"\0" * 8)
    with ServerProcess(repo, "--model-control-mode=explicit", "--load-model=ok") as proc:
        http = httpclient.InferenceServerClient(proc.http_url)
        grpc = grpcclient.InferenceServerClient(proc.grpc_url)
        with pytest.raises(InferenceServerException) as info:
            http.load_model("fails")
        assert info.value.status() == "400"
        assert "failed to run warmup sample 'bad'" in info.value.message()
        assert "minus one is not welcome" in info.value.message()
        row = [r for r in http.get_model_repository_index() if r["name"] == "fails"][0]
        assert row["state"] == "UNAVAILABLE" and "failed to run warmup sample 'bad'" in row["reason"]
        assert not http.is_model_ready("fails")

        with pytest.raises(InferenceServerException) as info:
            grpc.load_model("nofile")
        assert info.value.status() == "StatusCode.INVALID_ARGUMENT"
        assert "failed to run warmup sample 'missing'" in info.value.message()
        assert "unable to read warm-up file 'warmup/absent.bin'" in info.value.message()
        with pytest.raises(InferenceServerException) as info:
            http.load_model("short")
        assert "warm-up file 'in.bin' has 8 bytes, expected 16" in info.value.message()
        assert http.is_model_ready("ok")
        http.close()
        grpc.close()


def test_sample_inputs_shapes_and_bytes(tmp_path):
    from tritonpy.core.model.warmup import sample_inputs
    from tritonpy.proto import dtypes, model_config_pb2 as mc

    config = mc.ModelConfig(name="m", max_batch_size=8)
    warm = config.model_warmup.add(name="s", batch_size=2)
    warm.inputs["TEXT"].data_type = mc.TYPE_STRING
    warm.inputs["TEXT"].dims.extend([2])
    warm.inputs["TEXT"].input_data_file = "t.bin"
    warm.inputs["Z"].data_type = mc.TYPE_INT32
    warm.inputs["Z"].dims.extend([3])
    warm.inputs["Z"].zero_data = True
    (tmp_path / "warmup").mkdir()
    (tmp_path / "warmup" / "t.bin").write_bytes(dtypes.serialize_bytes(np.array([b"ab", b"c"], dtype=object)))
    inputs = {t.name: t for t in sample_inputs(tmp_path, config, warm, np.random.default_rng(0))}
    assert inputs["TEXT"].datatype == "BYTES" and inputs["TEXT"].shape == [1, 2]
    assert list(inputs["TEXT"].data.reshape(-1)) == [b"ab", b"c"]
    assert inputs["Z"].datatype == "INT32" and inputs["Z"].shape == [1, 3] and not inputs["Z"].data.any()


def test_sequence_model_warms_up_with_one_step_sequences(tmp_path, leak_check):
    from support.model_builders import python_model
    from support.server_process import ServerProcess

    config = """
    max_batch_size: 2
    input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ 1 ] } ]
    output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 1 ] } ]
    sequence_batching { }
    model_warmup [ { name: "zeros" batch_size: 1 inputs { key: "INPUT0" value: { data_type: TYPE_FP32 dims: [ 1 ] zero_data: true } } } ]
    """
    python_model(tmp_path, "seq_warm", "out = x + 1", config=config)
    with ServerProcess(tmp_path) as server:
        import numpy as np
        import tritonclient.http as httpclient

        client = httpclient.InferenceServerClient(server.http_url)
        assert client.is_model_ready("seq_warm")
        inp = httpclient.InferInput("INPUT0", [1, 1], "FP32")
        inp.set_data_from_numpy(np.array([[2]], dtype=np.float32))
        out = client.infer("seq_warm", [inp], sequence_id=5, sequence_start=True, sequence_end=True)
        assert out.as_numpy("OUTPUT0")[0][0] == 3
