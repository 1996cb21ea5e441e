"""Per-model Python environments: a model's requirements.txt installed once into a cached venv,
EXECUTION_ENV_PATH as a directory and as a packed archive, and a clear load failure."""
from __future__ import annotations

import json
import subprocess
import sys
import tarfile

import numpy as np
import pytest
import tritonclient.http as httpclient

from support.model_builders import FP32_IO, python_model
from support.server_process import ServerProcess

# OUTPUT0 = x + 1 when the worker imports six 1.16.0 (the server's own environment has 1.17.0),
# then the worker's sys.prefix as a code: 1 inside the model's cached venv, 2 in an env under the
# cache's unpacked archives, 0 elsewhere.
SIX_PROBE = """
import six, sys
where = 1.0 if "/req-" in sys.prefix else (2.0 if "/packed-" in sys.prefix else 0.0)
out = np.array([x[0] + (1.0 if six.__version__ == "1.16.0" else 0.0), where], dtype=np.float32)
"""
PREFIX_PROBE = """
import sys
out = np.frombuffer(sys.prefix.encode().ljust(256), dtype=np.uint8).astype(np.float32)
"""


def infer(client, model: str) -> np.ndarray:
    inp = httpclient.InferInput("INPUT0", [1], "FP32")
    inp.set_data_from_numpy(np.zeros(1, dtype=np.float32))
    return client.infer(model, [inp]).as_numpy("OUTPUT0")


def prefix_of(client, model: str) -> str:
    return bytes(infer(client, model).astype(np.uint8)).decode().strip()


@pytest.fixture
def cache(tmp_path):
    return tmp_path / "env-cache"


def test_requirements_file_gets_its_own_cached_venv(tmp_path, cache, leak_check):
    repo = tmp_path / "repo"
    for name in ("six_a", "six_b"):  # same requirements text: one venv for both
        model = python_model(repo, name, SIX_PROBE, config=FP32_IO)
        (model / "requirements.txt").write_text("six==1.16.0\n")
    flags = ("--backend-config", f"python,env-cache-dir={cache}")
    with ServerProcess(repo, *flags) as server:
        client = httpclient.InferenceServerClient(server.http_url)
        assert infer(client, "six_a").tolist() == [1.0, 1.0]
        assert infer(client, "six_b").tolist() == [1.0, 1.0]
    built = sorted(p.name for p in cache.iterdir())
    assert len(built) == 1 and built[0].startswith("req-")
    stamp = (cache / built[0] / ".tritonpy-ready").stat().st_mtime_ns
    with ServerProcess(repo, *flags) as server:  # a second start reuses the cached venv
        assert infer(httpclient.InferenceServerClient(server.http_url), "six_a").tolist() == [1.0, 1.0]
    assert (cache / built[0] / ".tritonpy-ready").stat().st_mtime_ns == stamp
    assert sorted(p.name for p in cache.iterdir()) == built


def test_requirements_that_cannot_be_installed_fail_the_load_with_a_reason(tmp_path, cache, leak_check):
    repo = tmp_path / "repo"
    model = python_model(repo, "broken", "out = x", config=FP32_IO)
    (model / "requirements.txt").write_text("tritonpy-no-such-package-xyz==0.0.1\n")
    python_model(repo, "fine", "out = x", config=FP32_IO)
    with ServerProcess(repo, "--exit-on-error=false", "--strict-readiness=false",
                       "--backend-config", f"python,env-cache-dir={cache}") as server:
        client = httpclient.InferenceServerClient(server.http_url)
        rows = {r["name"]: r for r in client.get_model_repository_index()}
        assert rows["broken"]["state"] == "UNAVAILABLE"
        assert "installing broken/requirements.txt failed" in rows["broken"]["reason"]
        assert rows["fine"]["state"] == "READY"
    assert not list(cache.glob("req-*"))  # no half-built venv left behind


def _make_venv(path) -> None:
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True)


def test_execution_env_path_directory_and_archive(tmp_path, cache, leak_check):
    repo = tmp_path / "repo"
    env_dir = tmp_path / "plain-env"
    _make_venv(env_dir)
    param = 'parameters {{ key: "EXECUTION_ENV_PATH" value {{ string_value: "{}" }} }}\n'
    python_model(repo, "in_dir", PREFIX_PROBE, config=FP32_IO + param.format(env_dir))
    packed_model = python_model(repo, "in_archive", PREFIX_PROBE,
                                config=FP32_IO + param.format("$$TRITON_MODEL_DIRECTORY/env.tar.gz"))
    with tarfile.open(packed_model / "env.tar.gz", "w:gz") as tar:
        tar.add(env_dir, arcname=".")
    python_model(repo, "missing", "out = x", config=FP32_IO + param.format(tmp_path / "nowhere"))
    with ServerProcess(repo, "--exit-on-error=false", "--strict-readiness=false",
                       "--backend-config", f"python,env-cache-dir={cache}") as server:
        client = httpclient.InferenceServerClient(server.http_url)
        assert prefix_of(client, "in_dir") == str(env_dir)
        unpacked = prefix_of(client, "in_archive")
        assert unpacked.startswith(str(cache / "packed-"))
        rows = {r["name"]: r for r in client.get_model_repository_index()}
        assert "EXECUTION_ENV_PATH" in rows["missing"]["reason"] and "no such file" in rows["missing"]["reason"]
