"""Ensembles end to end: a real server, the real tritonclient over HTTP and gRPC.

The branch ensemble is add_sub_onnx -> (scale_b on the sum, scale_c on the difference); the two
Python branch steps rendezvous through marker files, so a successful "sync" request proves that
they ran concurrently.
"""
from __future__ import annotations

import os
import queue
import time
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
import tritonclient.utils.shared_memory as shm
from tritonclient.utils import InferenceServerException

from support.ensemble_models import FP32_V, branch_repo, ensemble, step
from support.model_builders import python_model
from support.server_process import ServerProcess
from support.servers import serve

pytestmark = pytest.mark.timeout(180)


def _ins(mod, a: np.ndarray, b: np.ndarray | None = None, names=("INPUT0", "INPUT1")) -> list:
    arrays = [a] if b is None else [a, b]
    out = []
    for name, arr in zip(names, arrays):
        t = mod.InferInput(name, list(arr.shape), "FP32")
        t.set_data_from_numpy(arr)
        out.append(t)
    return out


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ens")
    repo = branch_repo(root / "repo", root / "marks")
    # Python first, then ONNX: OUT_SUM = 2x + x, OUT_DIFF = 2x - x (x feeds two steps).
    ensemble(
        repo, "chain",
        [step("scale_b", {"INPUT0": "X"}, {"OUTPUT0": "x2"}),
         step("add_sub_onnx", {"INPUT0": "x2", "INPUT1": "X"}, {"OUTPUT0": "OUT_SUM", "OUTPUT1": "OUT_DIFF"})],
        inputs={"X": FP32_V}, outputs={"OUT_SUM": FP32_V, "OUT_DIFF": FP32_V},
    )
    # An ensemble using an ensemble.
    ensemble(
        repo, "nested",
        [step("branch", {"INPUT0": "A", "INPUT1": "B"}, {"SUM2": "s2", "DIFF3": "d3"}),
         step("add_sub_onnx", {"INPUT0": "s2", "INPUT1": "d3"}, {"OUTPUT0": "TOTAL", "OUTPUT1": "REST"})],
        inputs={"A": FP32_V, "B": FP32_V}, outputs={"TOTAL": FP32_V, "REST": FP32_V},
    )
    # Y is a final output and also read by the next step.
    ensemble(
        repo, "tee",
        [step("scale_b", {"INPUT0": "X"}, {"OUTPUT0": "Y"}), step("scale_c", {"INPUT0": "Y"}, {"OUTPUT0": "Z"})],
        inputs={"X": FP32_V}, outputs={"Y": FP32_V, "Z": FP32_V},
    )
    # BYTES between steps: upper-case, then reverse.
    str_io = 'max_batch_size: 8 input [ { name: "INPUT0" data_type: TYPE_STRING dims: [ -1 ] } ] ' \
             'output [ { name: "OUTPUT0" data_type: TYPE_STRING dims: [ -1 ] } ]'
    python_model(repo, "str_upper", "out = np.array([v.upper() for v in x.reshape(-1)], dtype=object).reshape(x.shape)",
                 config=str_io)
    python_model(repo, "str_reverse", "out = np.array([v[::-1] for v in x.reshape(-1)], dtype=object).reshape(x.shape)",
                 config=str_io)
    str_v = "data_type: TYPE_STRING dims: [ -1 ]"
    ensemble(
        repo, "str_chain",
        [step("str_upper", {"INPUT0": "S"}, {"OUTPUT0": "up"}),
         step("str_reverse", {"INPUT0": "up"}, {"OUTPUT0": "R"})],
        inputs={"S": str_v}, outputs={"R": str_v},
    )
    return repo


@pytest.fixture(scope="module")
def server(repo):
    with serve(repo, "--allow-client-shm=true") as proc:
        yield proc


def _server_segments(server: ServerProcess) -> set[str]:
    prefix = f"tritonpy_{server.proc.pid}_"
    return {n for n in os.listdir("/dev/shm") if n.startswith(prefix)}


def test_branch_runs_concurrently_over_http(server):
    client = httpclient.InferenceServerClient(server.http_url)
    a = np.arange(8, dtype=np.float32).reshape(2, 4)
    b = np.full((2, 4), 0.5, dtype=np.float32)
    result = client.infer("branch", _ins(httpclient, a, b), request_id="sync-http-1")
    np.testing.assert_allclose(result.as_numpy("SUM2"), 2 * (a + b))
    np.testing.assert_allclose(result.as_numpy("DIFF3"), 3 * (a - b))
    assert result.get_response()["model_name"] == "branch"
    assert result.get_response()["id"] == "sync-http-1"


def test_branch_runs_concurrently_over_grpc(server):
    client = grpcclient.InferenceServerClient(server.grpc_url)
    a = np.random.default_rng(0).random((3, 5), dtype=np.float32)
    b = np.ones((3, 5), dtype=np.float32)
    result = client.infer("branch", _ins(grpcclient, a, b), request_id="sync-grpc-1")
    np.testing.assert_allclose(result.as_numpy("SUM2"), 2 * (a + b), rtol=1e-6)
    np.testing.assert_allclose(result.as_numpy("DIFF3"), 3 * (a - b), rtol=1e-6)


def test_python_then_onnx_chain_with_a_tensor_read_twice(server):
    client = grpcclient.InferenceServerClient(server.grpc_url)
    x = np.arange(6, dtype=np.float32).reshape(1, 6)
    result = client.infer("chain", _ins(grpcclient, x, names=("X",)))
    np.testing.assert_allclose(result.as_numpy("OUT_SUM"), 3 * x)
    np.testing.assert_allclose(result.as_numpy("OUT_DIFF"), x)


def test_nested_ensemble(server):
    client = httpclient.InferenceServerClient(server.http_url)
    a = np.array([[1, 2, 3]], dtype=np.float32)
    b = np.array([[1, 1, 1]], dtype=np.float32)
    result = client.infer("nested", _ins(httpclient, a, b, names=("A", "B")), request_id="sync-nested")
    s2, d3 = 2 * (a + b), 3 * (a - b)
    np.testing.assert_allclose(result.as_numpy("TOTAL"), s2 + d3)
    np.testing.assert_allclose(result.as_numpy("REST"), s2 - d3)


def _executions(client, model: str) -> int:
    return int(client.get_inference_statistics(model)["model_stats"][0]["execution_count"])


def test_only_steps_feeding_requested_outputs_run(server):
    client = httpclient.InferenceServerClient(server.http_url)
    before_c = _executions(client, "scale_c")
    a = np.ones((1, 4), dtype=np.float32)
    outputs = [httpclient.InferRequestedOutput("SUM2")]
    result = client.infer("branch", _ins(httpclient, a, a), outputs=outputs)
    np.testing.assert_allclose(result.as_numpy("SUM2"), 4 * a)
    assert result.as_numpy("DIFF3") is None
    assert _executions(client, "scale_c") == before_c


def test_failing_step_is_named_and_keeps_its_status_code(server):
    a = np.ones((1, 4), dtype=np.float32)
    http = httpclient.InferenceServerClient(server.http_url)
    with pytest.raises(InferenceServerException) as err:
        http.infer("branch", _ins(httpclient, a, a), request_id="fail-1")
    assert err.value.status() == "503"
    assert "in ensemble 'branch', step 2 (model 'scale_c'): scale_c refuses request fail-1" in err.value.message()
    grpc = grpcclient.InferenceServerClient(server.grpc_url)
    with pytest.raises(InferenceServerException) as err:
        grpc.infer("branch", _ins(grpcclient, a, a), request_id="fail-2")
    assert err.value.status() == "StatusCode.UNAVAILABLE"
    assert "step 2 (model 'scale_c')" in err.value.message()
    # and the ensemble keeps serving
    ok = http.infer("branch", _ins(httpclient, a, a))
    np.testing.assert_allclose(ok.as_numpy("SUM2"), 4 * a)


def test_metadata_config_and_statistics(server):
    client = httpclient.InferenceServerClient(server.http_url)
    meta = client.get_model_metadata("branch")
    assert meta["platform"] == "ensemble"
    assert [i["name"] for i in meta["inputs"]] == ["INPUT0", "INPUT1"]
    assert meta["outputs"][0] == {"name": "SUM2", "datatype": "FP32", "shape": [-1, -1]}
    config = client.get_model_config("branch")
    assert config["platform"] == "ensemble" and config["backend"] == ""
    assert config["instance_group"] == []
    steps = config["ensemble_scheduling"]["step"]
    assert [s["model_name"] for s in steps] == ["add_sub_onnx", "scale_b", "scale_c"]
    assert steps[0]["model_version"] == -1 and steps[0]["output_map"] == {"OUTPUT0": "sum", "OUTPUT1": "diff"}
    grpc = grpcclient.InferenceServerClient(server.grpc_url)
    assert grpc.get_model_metadata("branch").platform == "ensemble"
    assert len(grpc.get_model_config("branch").config.ensemble_scheduling.step) == 3
    before = client.get_inference_statistics("branch")["model_stats"][0]["inference_stats"]
    a = np.ones((2, 4), dtype=np.float32)
    client.infer("branch", _ins(httpclient, a, a))
    with pytest.raises(InferenceServerException):
        client.infer("branch", _ins(httpclient, a, a), request_id="fail-stats")
    after = client.get_inference_statistics("branch")["model_stats"][0]["inference_stats"]
    assert after["success"]["count"] == before["success"]["count"] + 1
    assert after["fail"]["count"] == before["fail"]["count"] + 1
    assert after["queue"]["count"] == after["success"]["count"]
    assert client.is_model_ready("branch") and client.is_server_ready()


def test_intermediate_responses_are_released(server):
    """Large tensors live in the workers' output arenas; if a step response were never released,
    the arenas would have to grow (a new segment) within a few requests."""
    client = httpclient.InferenceServerClient(server.http_url)
    a = np.random.default_rng(1).random((1, 65536), dtype=np.float32)
    b = np.ones((1, 65536), dtype=np.float32)
    for i in range(3):
        client.infer("branch", _ins(httpclient, a, b), request_id=f"sync-warm-{i}")
        client.infer("chain", _ins(httpclient, a, names=("X",)))
    before = _server_segments(server)
    for i in range(25):
        result = client.infer("branch", _ins(httpclient, a, b), request_id=f"sync-burst-{i}")
        np.testing.assert_allclose(result.as_numpy("SUM2"), 2 * (a + b), rtol=1e-6)
        client.infer("chain", _ins(httpclient, a, names=("X",)))
        with pytest.raises(InferenceServerException):
            client.infer("branch", _ins(httpclient, a, b), request_id=f"fail-burst-{i}")
    assert _server_segments(server) == before


def test_cancelled_grpc_request_cancels_its_steps(server):
    client = grpcclient.InferenceServerClient(server.grpc_url)
    http = httpclient.InferenceServerClient(server.http_url)
    a = np.ones((1, 65536), dtype=np.float32)
    before = http.get_inference_statistics("branch")["model_stats"][0]["inference_stats"]["fail"]["count"]
    done: queue.Queue = queue.Queue()
    call = client.async_infer("branch", _ins(grpcclient, a, a), request_id="slow-cancel",
                              callback=lambda result, error: done.put((result, error)))
    time.sleep(0.5)  # let the first steps start (correctness does not depend on it)
    call.cancel()
    result, error = done.get(timeout=30)
    assert result is None and error is not None and "CANCELLED" in str(error)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        stats = http.get_inference_statistics("branch")["model_stats"][0]["inference_stats"]
        if stats["fail"]["count"] > before:
            break
        time.sleep(0.1)
    assert stats["fail"]["count"] == before + 1
    ok = http.infer("branch", _ins(httpclient, a, a), request_id="sync-after-cancel")
    np.testing.assert_allclose(ok.as_numpy("SUM2"), 4 * a)


def test_client_shared_memory_in_and_out(server, leak_check):
    """Inputs read from, and final outputs written straight into, client shared memory; in `tee`,
    Y is both a final output in shared memory and read by the next step from there."""
    client = httpclient.InferenceServerClient(server.http_url)
    client.unregister_system_shared_memory()
    a = np.arange(4, dtype=np.float32).reshape(1, 4)
    b = np.full((1, 4), 2.0, dtype=np.float32)
    key_in, key_out = f"/tp_ens_in_{os.getpid()}", f"/tp_ens_out_{os.getpid()}"
    h_in = shm.create_shared_memory_region("ens_in", key_in, 32)
    h_out = shm.create_shared_memory_region("ens_out", key_out, 32)
    try:
        shm.set_shared_memory_region(h_in, [a, b])
        client.register_system_shared_memory("ens_in", key_in, 32)
        client.register_system_shared_memory("ens_out", key_out, 32)
        ins = [httpclient.InferInput("INPUT0", [1, 4], "FP32"), httpclient.InferInput("INPUT1", [1, 4], "FP32")]
        ins[0].set_shared_memory("ens_in", 16)
        ins[1].set_shared_memory("ens_in", 16, offset=16)
        outs = [httpclient.InferRequestedOutput("SUM2"), httpclient.InferRequestedOutput("DIFF3")]
        outs[0].set_shared_memory("ens_out", 16)
        outs[1].set_shared_memory("ens_out", 16, offset=16)
        client.infer("branch", ins, outputs=outs, request_id="sync-shm")
        np.testing.assert_allclose(shm.get_contents_as_numpy(h_out, np.float32, [1, 4]), 2 * (a + b))
        np.testing.assert_allclose(shm.get_contents_as_numpy(h_out, np.float32, [1, 4], offset=16), 3 * (a - b))

        x = [httpclient.InferInput("X", [1, 4], "FP32")]
        x[0].set_shared_memory("ens_in", 16)
        outs = [httpclient.InferRequestedOutput("Y"), httpclient.InferRequestedOutput("Z", binary_data=True)]
        outs[0].set_shared_memory("ens_out", 16)
        result = client.infer("tee", x, outputs=outs)
        np.testing.assert_allclose(shm.get_contents_as_numpy(h_out, np.float32, [1, 4]), 2 * a)
        np.testing.assert_allclose(result.as_numpy("Z"), 6 * a)
    finally:
        client.unregister_system_shared_memory()
        shm.destroy_shared_memory_region(h_in)
        shm.destroy_shared_memory_region(h_out)


def test_bytes_tensors_between_steps(server):
    client = grpcclient.InferenceServerClient(server.grpc_url)
    data = np.array([[b"abc", b"", b"tritonpy"]], dtype=np.object_)
    t = grpcclient.InferInput("S", [1, 3], "BYTES")
    t.set_data_from_numpy(data)
    result = client.infer("str_chain", [t])
    assert result.as_numpy("R").tolist() == [[b"CBA", b"", b"YPNOTIRT"]]


def test_packed_bytes_from_http_binary_flow_between_steps(server):
    """HTTP binary BYTES inputs stay in wire form in the core (proto/packed_bytes.py); they must
    still reach each step intact, including empty and non-ASCII elements."""
    client = httpclient.InferenceServerClient(server.http_url)
    data = np.array([[b"abc", b"", "\u00e9t\u00e9".encode(), b"x\x00y"]], dtype=np.object_)
    t = httpclient.InferInput("S", [1, 4], "BYTES")
    t.set_data_from_numpy(data, binary_data=True)
    result = client.infer("str_chain", [t])
    assert result.as_numpy("R").tolist() == [[b"CBA", b"", "\u00e9T\u00e9".encode()[::-1].upper(), b"Y\x00X"]]
