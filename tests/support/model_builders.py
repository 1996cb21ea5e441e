"""Small model repositories written by tests: Python-backend models with knobs (crash, hang, sleep)."""
from __future__ import annotations

import textwrap
from pathlib import Path

PB_HEADER = """
import os, signal, time, ctypes
import numpy as np
import triton_python_backend_utils as pb_utils
"""


def python_model(repo: Path, name: str, body: str, *, config: str, initialize: str = "") -> Path:
    """Writes <repo>/<name>/config.pbtxt and 1/model.py whose execute() runs `body` per request.

    `body` sees `req`, `x` (INPUT0 as numpy) and must set `out` (OUTPUT0 numpy array).
    """
    model_dir = repo / name
    (model_dir / "1").mkdir(parents=True, exist_ok=True)
    (model_dir / "config.pbtxt").write_text(f'name: "{name}"\nbackend: "python"\n' + textwrap.dedent(config))
    init = textwrap.indent(textwrap.dedent(initialize) or "pass", " " * 8)
    per_request = textwrap.indent(textwrap.dedent(body), " " * 12)
    code = PB_HEADER + f"""

class TritonPythonModel:
    def initialize(self, args):
{init}

    def execute(self, requests):
        responses = []
        for req in requests:
            x = pb_utils.get_input_tensor_by_name(req, "INPUT0").as_numpy()
{per_request}
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT0", out)]))
        return responses
"""
    (model_dir / "1" / "model.py").write_text(code)
    return model_dir


FP32_IO = """
input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ -1 ] } ]
output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ -1 ] } ]
"""


def crashy_model(repo: Path, name: str = "crashy", count: int = 1) -> Path:
    """Identity on FP32, except a first element of -1 (os._exit), -2 (SIGKILL), -3 (segfault), -4 (hang)."""
    body = """
    first = float(x.reshape(-1)[0]) if x.size else 0.0
    if first == -1.0:
        os._exit(3)
    if first == -2.0:
        os.kill(os.getpid(), signal.SIGKILL)
    if first == -3.0:
        ctypes.string_at(0)
    if first == -4.0:
        ctypes.PyDLL(None).sleep(1000)
    out = x.copy()
    """
    return python_model(repo, name, body, config=FP32_IO + f"instance_group [ {{ count: {count} kind: KIND_CPU }} ]\n")


def slow_identity(repo: Path, name: str = "slow_identity", seconds: float = 1.0) -> Path:
    return python_model(repo, name, f"time.sleep({seconds})\nout = x.copy()", config=FP32_IO)
