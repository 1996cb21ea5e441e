"""A crashed or hung worker fails only its own request, is restarted, and the rest of the server serves on."""
from __future__ import annotations

import time

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from support.model_builders import crashy_model, python_model, FP32_IO
from support.server_process import ServerProcess


def _infer(client, model: str, values):
    data = np.asarray(values, dtype=np.float32)
    inp = httpclient.InferInput("INPUT0", list(data.shape), "FP32")
    inp.set_data_from_numpy(data, binary_data=True)
    return client.infer(model, [inp])


def _wait_ready(client, model: str, timeout: float = 30.0) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if client.is_model_ready(model):
            return time.monotonic() - start
        time.sleep(0.05)
    raise AssertionError(f"{model} not ready again within {timeout}s")


@pytest.fixture
def repo(tmp_path):
    crashy_model(tmp_path, "crashy", count=1)
    crashy_model(tmp_path, "crashy_two", count=2)
    python_model(tmp_path, "bystander", "out = x * 2", config=FP32_IO)
    return tmp_path


@pytest.mark.parametrize("trigger, what", [(-1.0, "os._exit"), (-2.0, "SIGKILL"), (-3.0, "segfault")])
def test_crash_fails_only_its_request_then_restarts(repo, trigger, what, leak_check):
    with ServerProcess(repo, "--log-verbose=0") as server:
        client = httpclient.InferenceServerClient(server.http_url, network_timeout=60)
        np.testing.assert_allclose(_infer(client, "crashy", [1, 2]).as_numpy("OUTPUT0"), [1, 2])
        started = time.monotonic()
        with pytest.raises(InferenceServerException) as exc:
            _infer(client, "crashy", [trigger, 1])
        elapsed = time.monotonic() - started
        assert exc.value.status() == "500", exc.value
        message = exc.value.message()
        assert "crashy" in message and "died" in message, message
        assert elapsed < 5.0, f"crash reported after {elapsed:.2f}s"
        # the other model never noticed
        np.testing.assert_allclose(_infer(client, "bystander", [3]).as_numpy("OUTPUT0"), [6])
        _wait_ready(client, "crashy")
        np.testing.assert_allclose(_infer(client, "crashy", [5]).as_numpy("OUTPUT0"), [5])
        assert client.is_server_ready()


def test_two_instances_one_dies_the_other_keeps_serving(repo, leak_check):
    with ServerProcess(repo) as server:
        client = grpcclient.InferenceServerClient(server.grpc_url)
        results = []

        def done(result, error):
            results.append((result, error))

        inp_crash = grpcclient.InferInput("INPUT0", [2], "FP32")
        inp_crash.set_data_from_numpy(np.array([-1, 0], dtype=np.float32))
        client.async_infer("crashy_two", [inp_crash], done)
        ok = 0
        for i in range(20):
            inp = grpcclient.InferInput("INPUT0", [1], "FP32")
            inp.set_data_from_numpy(np.array([i], dtype=np.float32))
            res = client.infer("crashy_two", [inp])
            assert res.as_numpy("OUTPUT0")[0] == i
            ok += 1
        deadline = time.monotonic() + 10
        while not results and time.monotonic() < deadline:
            time.sleep(0.01)
        assert results and results[0][1] is not None
        assert results[0][1].status() == "StatusCode.INTERNAL"
        assert ok == 20


def test_hung_worker_is_detected_by_heartbeat_and_restarted(repo, leak_check):
    with ServerProcess(repo, "--backend-config=heartbeat-timeout-seconds=2") as server:
        client = httpclient.InferenceServerClient(server.http_url, network_timeout=60)
        started = time.monotonic()
        with pytest.raises(InferenceServerException) as exc:
            _infer(client, "crashy", [-4.0])
        assert exc.value.status() == "500"
        assert time.monotonic() - started < 20
        _wait_ready(client, "crashy")
        np.testing.assert_allclose(_infer(client, "crashy", [7]).as_numpy("OUTPUT0"), [7])


def test_failing_initialize_makes_only_that_model_unavailable(tmp_path, leak_check):
    python_model(tmp_path, "broken", "out = x", config=FP32_IO, initialize="raise RuntimeError('no weights here')")
    python_model(tmp_path, "fine", "out = x + 1", config=FP32_IO)
    server = ServerProcess(tmp_path, "--exit-on-error=false", "--strict-readiness=false")
    with server:
        client = httpclient.InferenceServerClient(server.http_url)
        index = {m["name"]: m for m in client.get_model_repository_index()}
        assert index["broken"]["state"] == "UNAVAILABLE"
        assert "no weights here" in index["broken"]["reason"]
        assert index["fine"]["state"] == "READY"
        np.testing.assert_allclose(_infer(client, "fine", [1]).as_numpy("OUTPUT0"), [2])
        assert not client.is_model_ready("broken")
    assert "no weights here" in server.output()


def test_failing_model_with_exit_on_error_stops_the_server(tmp_path, leak_check):
    python_model(tmp_path, "broken", "out = x", config=FP32_IO, initialize="import no_such_module_here")
    server = ServerProcess(tmp_path)
    code = server.proc.wait(60)
    assert code != 0
    out = server.output()
    server.stop()
    assert "no_such_module_here" in out


def test_sigkilled_server_leaves_no_orphans_after_the_next_start(repo, leak_check):
    import os
    import signal

    import psutil

    server = ServerProcess(repo).wait()
    client = httpclient.InferenceServerClient(server.http_url)
    _infer(client, "crashy", np.zeros(4096, np.float32))  # big enough to use shared memory both ways
    workers = [p.pid for p in psutil.Process(server.proc.pid).children(recursive=True)]
    assert workers
    server.stop(signal.SIGKILL)
    deadline = time.monotonic() + 5
    while any(psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE for p in workers):
        assert time.monotonic() < deadline, "workers outlived a SIGKILLed server"
        time.sleep(0.05)
    # the next server start sweeps what the killed one could not unlink
    with ServerProcess(repo):
        pass
    left = [n for n in os.listdir("/dev/shm") if n.startswith(f"tritonpy_{server.proc.pid}_")]
    assert not left, left
