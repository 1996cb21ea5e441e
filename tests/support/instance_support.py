"""Builders shared by the instance and pool tests: Python models that misbehave on request.

The model doubles its FP32 input `IN` into `OUT`; the first element of a request picks a
misbehaviour, so one batch can crash its worker while the neighbours are ordinary:

    -1  os._exit(3)               -2  SIGKILL itself          -3  segfault (ctypes.string_at(0))
    -4  hang holding the GIL      -5  SIGSTOP itself          -6  take 0.6 s, then answer
    -7  fail this request only
"""
from __future__ import annotations

import json
import textwrap
from pathlib import Path

import numpy as np

from tritonpy.core.instance.worker_instance import InstanceSpec
from tritonpy.core.types import InferRequest, InputTensor

MODEL_PY = textwrap.dedent(
    '''
    import ctypes, os, signal, time
    from pathlib import Path
    import numpy as np
    import triton_python_backend_utils as pb_utils

    HERE = Path(__file__).resolve().parent.parent

    class TritonPythonModel:
        def initialize(self, args):
            marker = HERE / "FAIL_INIT"
            if marker.exists():
                raise ValueError(marker.read_text())

        def is_ready(self):
            return not (HERE / "NOT_READY").exists()

        def execute(self, requests):
            responses = []
            for request in requests:
                x = pb_utils.get_input_tensor_by_name(request, "IN").as_numpy()
                v = float(x.flat[0]) if x.size else 0.0
                if v == -1:
                    os._exit(3)
                if v == -2:
                    os.kill(os.getpid(), signal.SIGKILL)
                if v == -3:
                    ctypes.string_at(0)
                if v == -4:
                    ctypes.PyDLL(None).sleep(1000)
                if v == -5:
                    os.kill(os.getpid(), signal.SIGSTOP)
                if v == -6:
                    time.sleep(0.6)
                if v == -7:
                    responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError("request -7 refused")))
                    continue
                responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("OUT", x * 2)]))
            return responses
    '''
)


def config(name: str = "m", max_batch_size: int = 8) -> dict:
    return {
        "name": name,
        "backend": "python",
        "max_batch_size": max_batch_size,
        "input": [{"name": "IN", "data_type": "TYPE_FP32", "dims": ["-1"]}],
        "output": [{"name": "OUT", "data_type": "TYPE_FP32", "dims": ["-1"]}],
    }


def make_model(repo: Path, name: str = "m", source: str = MODEL_PY) -> Path:
    """<repo>/<name>/1/model.py; returns the model directory."""
    model_dir = repo / name
    (model_dir / "1").mkdir(parents=True, exist_ok=True)
    (model_dir / "1" / "model.py").write_text(source)
    return model_dir


def make_spec(tmp_path: Path, name: str = "m", instance: str = "m_0", **overrides) -> InstanceSpec:
    model_dir = tmp_path / "repo" / name
    if not model_dir.exists():
        make_model(tmp_path / "repo", name)
    runtime = tmp_path / "run"
    runtime.mkdir(exist_ok=True)
    fields = dict(
        model_name=name,
        model_version=1,
        model_dir=str(model_dir),
        instance_name=instance,
        backend="python",
        config_json=json.dumps(config(name)),
        runtime_dir=str(runtime),
    )
    fields.update(overrides)
    return InstanceSpec(**fields)


def request(value: float = 1.0, rows: int = 1, cols: int = 4, rid: str = "") -> InferRequest:
    data = np.full((rows, cols), value, dtype=np.float32)
    if value >= 0:
        data = data + np.arange(rows * cols, dtype=np.float32).reshape(rows, cols)
    return InferRequest(model_name="m", id=rid, inputs=[InputTensor("IN", "FP32", [rows, cols], data=data)])


def expected(req: InferRequest) -> np.ndarray:
    return req.inputs[0].data * 2
