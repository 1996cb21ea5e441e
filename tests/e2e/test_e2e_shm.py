"""Client system shared memory through the real tritonclient over HTTP and gRPC: inputs read from and
outputs written to the client's regions, every bad-key and out-of-bounds case, in-use protection."""
from __future__ import annotations

import base64
import time

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
import tritonclient.utils.shared_memory as shm
from tritonclient.utils import InferenceServerException

from support.model_builders import FP32_IO, python_model, slow_identity
from support.server_process import ServerProcess
from support.servers import serve

ADD_SUB = """
input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ 4 ] }, { name: "INPUT1" data_type: TYPE_FP32 dims: [ 4 ] } ]
output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 4 ] }, { name: "OUTPUT1" data_type: TYPE_FP32 dims: [ 4 ] } ]
"""
ADD_SUB_CODE = '''
import triton_python_backend_utils as pb_utils

class TritonPythonModel:
    def execute(self, requests):
        out = []
        for r in requests:
            a = pb_utils.get_input_tensor_by_name(r, "INPUT0").as_numpy()
            b = pb_utils.get_input_tensor_by_name(r, "INPUT1").as_numpy()
            out.append(pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT0", a + b), pb_utils.Tensor("OUTPUT1", a - b)]))
        return out
'''


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    repo = tmp_path_factory.mktemp("shm_repo")
    (repo / "add_sub" / "1").mkdir(parents=True)
    (repo / "add_sub" / "config.pbtxt").write_text('name: "add_sub"\nbackend: "python"\n' + ADD_SUB)
    (repo / "add_sub" / "1" / "model.py").write_text(ADD_SUB_CODE)
    slow_identity(repo, "slow_identity", seconds=1.5)
    python_model(repo, "identity", "out = x.copy()", config=FP32_IO)
    with serve(repo, "--allow-client-shm=true") as proc:
        yield proc


@pytest.fixture
def regions(leak_check):
    """Client regions: inputs (2 x 16 bytes) and outputs (2 x 16 bytes); destroyed after the test."""
    made = []

    def make(name: str, key: str, size: int):
        handle = shm.create_shared_memory_region(name, key, size)
        made.append(handle)
        return handle

    yield make
    for handle in made:
        shm.destroy_shared_memory_region(handle)


A = np.arange(4, dtype=np.float32)
B = np.full(4, 2, dtype=np.float32)


def _clients(server):
    return [("http", httpclient, httpclient.InferenceServerClient(server.http_url)),
            ("grpc", grpcclient, grpcclient.InferenceServerClient(server.grpc_url))]


@pytest.mark.parametrize("proto", ["http", "grpc"])
def test_inputs_and_outputs_in_shared_memory(server, regions, proto):
    (_, mod, client), = [c for c in _clients(server) if c[0] == proto]
    client.unregister_system_shared_memory()
    ip = regions("in", f"/tp_test_in_{proto}", 32)
    op = regions("out", f"/tp_test_out_{proto}", 32)
    shm.set_shared_memory_region(ip, [A])
    shm.set_shared_memory_region(ip, [B], offset=16)
    client.register_system_shared_memory("input_data", f"/tp_test_in_{proto}", 32)
    client.register_system_shared_memory("output_data", f"/tp_test_out_{proto}", 32)
    status = client.get_system_shared_memory_status()
    names = {r["name"] for r in status} if proto == "http" else set(status.regions)
    assert names == {"input_data", "output_data"}
    i0, i1 = mod.InferInput("INPUT0", [4], "FP32"), mod.InferInput("INPUT1", [4], "FP32")
    i0.set_shared_memory("input_data", 16)
    i1.set_shared_memory("input_data", 16, offset=16)
    o0, o1 = mod.InferRequestedOutput("OUTPUT0"), mod.InferRequestedOutput("OUTPUT1")
    o0.set_shared_memory("output_data", 16)
    o1.set_shared_memory("output_data", 16, offset=16)
    result = client.infer("add_sub", [i0, i1], outputs=[o0, o1])
    out0 = result.get_output("OUTPUT0")
    assert out0 is not None
    np.testing.assert_allclose(shm.get_contents_as_numpy(op, np.float32, [4]), A + B)
    np.testing.assert_allclose(shm.get_contents_as_numpy(op, np.float32, [4], offset=16), A - B)
    client.unregister_system_shared_memory()
    status = client.get_system_shared_memory_status()
    assert (len(status) if proto == "http" else len(status.regions)) == 0


def test_mixed_shared_memory_and_ordinary_tensors(server, regions):
    client = httpclient.InferenceServerClient(server.http_url)
    client.unregister_system_shared_memory()
    ip = regions("in", "/tp_test_mixed", 64)
    shm.set_shared_memory_region(ip, [A], offset=48)
    client.register_system_shared_memory("mixed", "/tp_test_mixed", 32, offset=32)  # region = bytes 32..64
    i0 = httpclient.InferInput("INPUT0", [4], "FP32")
    i0.set_shared_memory("mixed", 16, offset=16)  # absolute offset 48
    i1 = httpclient.InferInput("INPUT1", [4], "FP32")
    i1.set_data_from_numpy(B)
    result = client.infer("add_sub", [i0, i1])
    np.testing.assert_allclose(result.as_numpy("OUTPUT0"), A + B)
    client.unregister_system_shared_memory()


def _expect(fn, status: str, text: str):
    with pytest.raises(InferenceServerException) as exc:
        fn()
    assert str(exc.value.status()) == status, exc.value
    assert text in exc.value.message(), exc.value.message()


@pytest.mark.parametrize("key", ["/../etc/passwd", "../../etc/shadow", "/dev/shm/x", "/a/b", "", "/.."])
def test_register_rejects_keys_that_are_not_plain_names(server, key):
    client = httpclient.InferenceServerClient(server.http_url)
    _expect(lambda: client.register_system_shared_memory("bad", key, 16), "400", "not a valid POSIX shared memory")


def test_register_errors(server, regions):
    client = httpclient.InferenceServerClient(server.http_url)
    gclient = grpcclient.InferenceServerClient(server.grpc_url)
    client.unregister_system_shared_memory()
    regions("r", "/tp_test_reg", 64)
    _expect(lambda: client.register_system_shared_memory("nokey", "/tp_test_does_not_exist", 16), "400",
            "Unable to open shared memory region")
    _expect(lambda: client.register_system_shared_memory("big", "/tp_test_reg", 65), "400", "exceeds")
    _expect(lambda: client.register_system_shared_memory("off", "/tp_test_reg", 16, offset=60), "400", "exceeds")
    client.register_system_shared_memory("dup", "/tp_test_reg", 16)
    _expect(lambda: client.register_system_shared_memory("dup", "/tp_test_reg", 16), "400", "already in manager")
    _expect(lambda: gclient.register_system_shared_memory("dup", "/tp_test_reg", 16), "StatusCode.ALREADY_EXISTS",
            "already in manager")
    _expect(lambda: gclient.register_system_shared_memory("x", "/tp_test_missing", 16), "StatusCode.INVALID_ARGUMENT",
            "Unable to open")
    _expect(lambda: client.get_system_shared_memory_status("never_registered"), "404", "Unable to find")
    client.unregister_system_shared_memory()


def test_infer_errors_for_bad_references(server, regions):
    client = httpclient.InferenceServerClient(server.http_url)
    gclient = grpcclient.InferenceServerClient(server.grpc_url)
    client.unregister_system_shared_memory()
    regions("r", "/tp_test_refs", 32)
    client.register_system_shared_memory("refs", "/tp_test_refs", 32)
    i1 = httpclient.InferInput("INPUT1", [4], "FP32")
    i1.set_data_from_numpy(B)

    def run(region, size, offset=0, proto=httpclient, c=client):
        i0 = proto.InferInput("INPUT0", [4], "FP32")
        i0.set_shared_memory(region, size, offset=offset)
        other = proto.InferInput("INPUT1", [4], "FP32")
        other.set_data_from_numpy(B)
        return c.infer("add_sub", [i0, other])

    _expect(lambda: run("unknown_region", 16), "404", "Unable to find shared memory region")
    _expect(lambda: run("refs", 16, offset=24), "400", "out of bounds")
    _expect(lambda: run("refs", 12), "400", "does not match")
    _expect(lambda: run("unknown_region", 16, proto=grpcclient, c=gclient), "StatusCode.NOT_FOUND",
            "Unable to find shared memory region")
    out = httpclient.InferRequestedOutput("OUTPUT0")
    out.set_shared_memory("refs", 8)  # too small for 16 bytes
    i0 = httpclient.InferInput("INPUT0", [4], "FP32")
    i0.set_data_from_numpy(A)
    with pytest.raises(InferenceServerException) as exc:
        client.infer("add_sub", [i0, i1], outputs=[out])
    assert exc.value.status() == "400" and "too small" in exc.value.message()
    client.unregister_system_shared_memory()
    assert client.is_server_ready()


def test_unregister_while_in_use_fails_clearly_then_succeeds(server, regions):
    client = httpclient.InferenceServerClient(server.http_url, concurrency=2)
    client.unregister_system_shared_memory()
    ip = regions("busy", "/tp_test_busy", 16)
    shm.set_shared_memory_region(ip, [A])
    client.register_system_shared_memory("busy", "/tp_test_busy", 16)
    inp = httpclient.InferInput("INPUT0", [4], "FP32")
    inp.set_shared_memory("busy", 16)
    pending = client.async_infer("slow_identity", [inp])
    time.sleep(0.4)
    _expect(lambda: client.unregister_system_shared_memory("busy"), "503", "in use")
    np.testing.assert_allclose(pending.get_result().as_numpy("OUTPUT0"), A)
    client.unregister_system_shared_memory("busy")
    assert client.get_system_shared_memory_status() == []


def test_segment_deleted_by_client_while_registered(server, leak_check):
    client = httpclient.InferenceServerClient(server.http_url)
    client.unregister_system_shared_memory()
    handle = shm.create_shared_memory_region("gone", "/tp_test_gone", 16)
    client.register_system_shared_memory("gone", "/tp_test_gone", 16)
    shm.destroy_shared_memory_region(handle)  # unlinks the segment behind the server's back
    inp = httpclient.InferInput("INPUT0", [4], "FP32")
    inp.set_shared_memory("gone", 16)
    with pytest.raises(InferenceServerException) as exc:
        client.infer("identity", [inp])
    assert exc.value.status() in ("400", "500") and "gone" in exc.value.message()
    client.unregister_system_shared_memory()
    # still serving
    ok = httpclient.InferInput("INPUT0", [2], "FP32")
    ok.set_data_from_numpy(np.ones(2, np.float32))
    np.testing.assert_allclose(client.infer("identity", [ok]).as_numpy("OUTPUT0"), [1, 1])


def test_client_shm_disabled_by_default(tmp_path, leak_check):
    python_model(tmp_path, "identity", "out = x", config=FP32_IO)
    with ServerProcess(tmp_path) as server:
        client = httpclient.InferenceServerClient(server.http_url)
        _expect(lambda: client.register_system_shared_memory("x", "/tp_x", 16), "501", "--allow-client-shm")
        gclient = grpcclient.InferenceServerClient(server.grpc_url)
        _expect(lambda: gclient.register_system_shared_memory("x", "/tp_x", 16), "StatusCode.UNIMPLEMENTED",
                "--allow-client-shm")


def test_cuda_shm_without_gpu_answers_a_clear_error(server):
    client = httpclient.InferenceServerClient(server.http_url)
    handle = base64.b64encode(b"\x00" * 64).decode()
    _expect(lambda: client.register_cuda_shared_memory("c", handle, 0, 16), "503", "GPU")
    gclient = grpcclient.InferenceServerClient(server.grpc_url)
    _expect(lambda: gclient.register_cuda_shared_memory("c", handle, 0, 16), "StatusCode.UNAVAILABLE", "GPU")
    assert client.get_cuda_shared_memory_status() == []
