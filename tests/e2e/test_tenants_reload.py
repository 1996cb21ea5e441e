"""The tenants file is re-read without a restart: on change (mtime poll, 1 s) and on SIGHUP."""
from __future__ import annotations

import json
import os
import signal
import time

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from support.model_builders import FP32_IO, python_model
from support.server_process import ServerProcess
from support.servers import serve

KEY_A = "reload-key-aaaa"
KEY_B = "reload-key-bbbb"


def tenants(a_models: list[str], *, with_b: bool) -> dict:
    data = {"tenants": {"a": {"keys": [KEY_A], "models": a_models, "rights": ["inference"]}}}
    if with_b:
        data["tenants"]["b"] = {"keys": [KEY_B], "models": ["*"], "rights": ["inference"]}
    return data


def http_status(key: str, model: str = "m") -> str:
    client = httpclient.InferenceServerClient(SERVER.http_url)
    inp = httpclient.InferInput("INPUT0", [1], "FP32")
    inp.set_data_from_numpy(np.ones(1, dtype=np.float32))
    try:
        client.infer(model, [inp], headers={"Authorization": f"Bearer {key}"})
        return "200"
    except InferenceServerException as exc:
        return str(exc.status())


def grpc_status(key: str, model: str = "m") -> str:
    client = grpcclient.InferenceServerClient(SERVER.grpc_url)
    inp = grpcclient.InferInput("INPUT0", [1], "FP32")
    inp.set_data_from_numpy(np.ones(1, dtype=np.float32))
    try:
        client.infer(model, [inp], headers={"authorization": f"Bearer {key}"})
        return "OK"
    except InferenceServerException as exc:
        return str(exc.status())


def eventually(check, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.1)


SERVER: ServerProcess
PADDED = 300  # JSON allows trailing blanks: equal sizes make a rewrite invisible to the size check


@pytest.fixture
def server(tmp_path):
    global SERVER
    repo = tmp_path / "repo"
    python_model(repo, "m", "out = x", config=FP32_IO)
    path = tmp_path / "tenants.json"
    path.write_text(json.dumps(tenants([], with_b=False)).ljust(PADDED))
    with serve(repo, "--tenants-config", str(path)) as proc:
        SERVER = proc
        yield proc, path


def write(path, data: dict) -> None:
    """Replace the file atomically and make sure its mtime moves even on a coarse clock."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))


def test_file_change_grants_and_revokes_access_without_restart(server):
    proc, path = server
    assert http_status(KEY_A) == "404" and grpc_status(KEY_A) == "StatusCode.NOT_FOUND"
    assert http_status(KEY_B) == "401" and grpc_status(KEY_B) == "StatusCode.UNAUTHENTICATED"
    write(path, tenants(["m"], with_b=True))
    eventually(lambda: http_status(KEY_A) == "200")
    assert grpc_status(KEY_A) == "OK" and http_status(KEY_B) == "200" and grpc_status(KEY_B) == "OK"
    write(path, tenants([], with_b=False))
    eventually(lambda: http_status(KEY_B) == "401")
    assert grpc_status(KEY_B) == "StatusCode.UNAUTHENTICATED"
    assert http_status(KEY_A) == "404"
    # A broken file keeps the last good configuration.
    path.write_text("{not json")
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 2_000_000_000))
    eventually(lambda: "tenants file not reloaded" in proc.output())
    assert http_status(KEY_A) == "404" and http_status(KEY_B) == "401"
    assert KEY_A not in proc.output() and KEY_B not in proc.output()


def test_sighup_reloads(server):
    proc, path = server
    # Same size and an unchanged mtime: only the signal can make the server notice.
    st = os.stat(path)
    path.write_text(json.dumps(tenants(["m"], with_b=False)).ljust(PADDED))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert os.stat(path).st_size == st.st_size
    time.sleep(2.5)  # two poll periods: the watcher saw nothing to reload
    assert http_status(KEY_A) == "404"
    proc.proc.send_signal(signal.SIGHUP)
    eventually(lambda: http_status(KEY_A) == "200")
    assert proc.proc.poll() is None
