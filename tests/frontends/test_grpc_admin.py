"""Repository, shared-memory, statistics, trace and logging RPCs, plus endpoint options (restricted protocol,
header forwarding, compression, TLS/mTLS, IPv6, health check, bind errors)."""
from __future__ import annotations

import asyncio
import base64
import shutil
import subprocess

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from support.fake_facade import FakeFacade
from support.frontend_servers import ThreadedGrpc
from tritonpy.frontends.grpc.server import bind_address, channel_args, start_grpc
from tritonpy.frontends.options import GrpcOptions
from tritonpy.proto import grpc_service_pb2 as pb
from tritonpy.proto import grpc_service_pb2_grpc as pb_grpc
from tritonpy.proto import health_pb2, health_pb2_grpc


def _serve(options: GrpcOptions | None = None, *, allow_client_shm: bool = True, **kw):
    fake = FakeFacade(allow_client_shm=allow_client_shm, real_shm=False)
    return fake, ThreadedGrpc(fake, options, **kw).start()


@pytest.fixture
def env():
    fake, srv = _serve()
    client = grpcclient.InferenceServerClient(srv.url)
    channel = grpc.insecure_channel(srv.url)
    fake.url = srv.url
    yield fake, client, pb_grpc.GRPCInferenceServiceStub(channel)
    channel.close()
    client.close()
    srv.stop()


def _simple_inputs() -> list[grpcclient.InferInput]:
    out = []
    for name in ("INPUT0", "INPUT1"):
        i = grpcclient.InferInput(name, [1, 16], "INT32")
        i.set_data_from_numpy(np.ones((1, 16), dtype=np.int32))
        out.append(i)
    return out


def _rpc_error(fn, *args, **kw) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        fn(*args, **kw)
    return info.value


# --- repository -------------------------------------------------------------------------------------
def test_repository_index_load_unload(env):
    fake, client, stub = env
    index = client.get_model_repository_index(as_json=True)["models"]
    assert {"name": "simple", "version": "1", "state": "READY"} in index
    assert {"name": "never_loaded"} in index
    ready = stub.RepositoryIndex(pb.RepositoryIndexRequest(ready=True)).models
    assert "never_loaded" not in [m.name for m in ready] and "simple" in [m.name for m in ready]
    client.load_model("simple", config='{"max_batch_size": 4}', files={"file:1/model.onnx": b"\x00\x01"})
    assert fake.loads[-1] == ("simple", {"config": '{"max_batch_size": 4}', "file:1/model.onnx": b"\x00\x01"})
    client.load_model("plain")
    assert fake.loads[-1] == ("plain", None)
    client.unload_model("simple", unload_dependents=True)
    assert fake.unloads[-1] == ("simple", True)
    with pytest.raises(InferenceServerException) as info:
        client.unload_model("nope")
    assert info.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert "Model to be unloaded has not been served" in info.value.message()


def test_repository_errors(env):
    _, _, stub = env
    err = _rpc_error(stub.RepositoryIndex, pb.RepositoryIndexRequest(repository_name="other"))
    assert (err.code(), err.details()) == (grpc.StatusCode.UNIMPLEMENTED, "'repository_name' specification is not supported")
    req = pb.RepositoryModelLoadRequest(model_name="m")
    req.parameters["config"].bytes_param = b"{}"
    err = _rpc_error(stub.RepositoryModelLoad, req)
    assert (err.code(), err.details()) == (
        grpc.StatusCode.INVALID_ARGUMENT, "invalid value type for load parameter 'config', expected string_param."
    )
    req = pb.RepositoryModelLoadRequest(model_name="m")
    req.parameters["file:1/a"].string_param = "x"
    assert _rpc_error(stub.RepositoryModelLoad, req).details() == (
        "invalid value type for load parameter 'file:1/a', expected bytes_param."
    )
    req = pb.RepositoryModelLoadRequest(model_name="m")
    req.parameters["other"].string_param = "x"
    assert _rpc_error(stub.RepositoryModelLoad, req).details() == "unrecognized load parameter 'other'."
    err = _rpc_error(stub.RepositoryModelLoad, pb.RepositoryModelLoadRequest(model_name="broken"))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "no model file" in err.details()
    req = pb.RepositoryModelUnloadRequest(model_name="simple")
    req.parameters["unload_dependents"].string_param = "yes"
    assert _rpc_error(stub.RepositoryModelUnload, req).details() == (
        "invalid value type for 'unload_dependents' parameter, expected bool_param."
    )


# --- statistics ---------------------------------------------------------------------------------------
def test_statistics(env):
    _, client, _ = env
    one = client.get_inference_statistics("simple", as_json=True)["model_stats"]
    assert len(one) == 1 and one[0]["name"] == "simple"
    assert one[0]["inference_stats"]["success"] == {"count": "2", "ns": "2000"}
    assert one[0]["response_stats"]["0"]["cancel"]["count"] == "2"
    assert one[0]["batch_stats"][0]["batch_size"] == "1"
    every = client.get_inference_statistics().model_stats
    assert len(every) == len(FakeFacade().models)
    with pytest.raises(InferenceServerException) as info:
        client.get_inference_statistics("nope")
    assert info.value.status() == "StatusCode.NOT_FOUND"


# --- shared memory ------------------------------------------------------------------------------------
def test_shared_memory_rpcs(env):
    fake, client, _ = env
    client.register_system_shared_memory("r1", "/tritonpy_test_r1", 64, offset=8)
    status = client.get_system_shared_memory_status(as_json=True)["regions"]
    assert status["r1"] == {"name": "r1", "key": "/tritonpy_test_r1", "offset": "8", "byte_size": "64"}
    with pytest.raises(InferenceServerException) as info:
        client.register_system_shared_memory("r1", "/tritonpy_test_r1", 64)
    assert info.value.status() == "StatusCode.ALREADY_EXISTS"
    with pytest.raises(InferenceServerException) as info:
        client.get_system_shared_memory_status("nope")
    assert info.value.status() == "StatusCode.NOT_FOUND"
    client.unregister_system_shared_memory("r1")
    assert not fake.system_shm
    client.register_cuda_shared_memory("c1", base64.b64encode(b"\x01" * 64), 0, 128)  # the client b64-decodes
    assert fake.cuda_shm["c1"]["raw"] == b"\x01" * 64
    cuda = client.get_cuda_shared_memory_status(as_json=True)["regions"]
    assert cuda["c1"] == {"name": "c1", "byte_size": "128"}  # device_id 0 is the proto default
    client.unregister_cuda_shared_memory()
    assert not fake.cuda_shm


def test_shared_memory_disabled_is_unimplemented():
    fake, srv = _serve(allow_client_shm=False)
    try:
        client = grpcclient.InferenceServerClient(srv.url)
        with pytest.raises(InferenceServerException) as info:
            client.register_system_shared_memory("r", "/k", 8)
        assert info.value.status() == "StatusCode.UNIMPLEMENTED"
        assert "client shared memory is disabled" in info.value.message()
        client.close()
    finally:
        srv.stop()


# --- trace & logging ----------------------------------------------------------------------------------
def test_trace_settings(env):
    _, client, stub = env
    settings = client.get_trace_settings(as_json=True)["settings"]
    assert settings["trace_level"] == {"value": ["OFF"]} and settings["trace_rate"] == {"value": ["1000"]}
    updated = client.update_trace_settings("simple", {"trace_rate": "5", "trace_level": ["TIMESTAMPS", "TENSORS"]},
                                           as_json=True)["settings"]
    assert updated["trace_rate"] == {"value": ["5"]}
    assert updated["trace_level"] == {"value": ["TIMESTAMPS", "TENSORS"]}
    cleared = client.update_trace_settings("simple", {"trace_rate": None}, as_json=True)["settings"]
    assert cleared["trace_rate"] == {"value": ["1000"]}
    with pytest.raises(InferenceServerException) as info:
        client.update_trace_settings(settings={"trace_rate": "fast"})
    assert (info.value.status(), info.value.message()) == (
        "StatusCode.INVALID_ARGUMENT", "Unable to parse 'trace_rate', got: fast"
    )
    req = pb.TraceSettingRequest()
    req.settings["trace_count"].value.extend(["1", "2"])
    assert _rpc_error(stub.TraceSetting, req).details() == "expect only 1 value for 'trace_count'"


def test_log_settings(env):
    _, client, stub = env
    current = client.get_log_settings(as_json=True)["settings"]
    assert current["log_info"] == {"bool_param": True} and current["log_format"] == {"string_param": "default"}
    updated = client.update_log_settings({"log_verbose_level": 2, "log_info": False}, as_json=True)["settings"]
    assert updated["log_verbose_level"] == {"uint32_param": 2} and updated["log_info"] == {"bool_param": False}
    with pytest.raises(InferenceServerException) as info:
        client.update_log_settings({"log_file": "/tmp/x.log"})
    assert (info.value.status(), info.value.message()) == (
        "StatusCode.UNIMPLEMENTED", "log file location can not be updated through network protocol"
    )
    req = pb.LogSettingsRequest()
    req.settings["log_info"].uint32_param = 1
    assert _rpc_error(stub.LogSettings, req).details() == "expect boolean for 'log_info'"
    req = pb.LogSettingsRequest()
    req.settings["log_verbose_level"].bool_param = True
    assert _rpc_error(stub.LogSettings, req).details() == "expect int32 for 'log_verbose_level'"
    req = pb.LogSettingsRequest()
    req.settings["log_format"].string_param = "fancy"
    err = _rpc_error(stub.LogSettings, req)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "log_format" in err.details()


# --- endpoint options ---------------------------------------------------------------------------------
def test_health_check_follows_readiness(env):
    fake, client, _ = env
    with grpc.insecure_channel(fake.url) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        assert health.Check(health_pb2.HealthCheckRequest()).status == health_pb2.HealthCheckResponse.SERVING
        fake.ready = False
        assert health.Check(health_pb2.HealthCheckRequest()).status == health_pb2.HealthCheckResponse.NOT_SERVING


def test_restricted_protocol():
    options = GrpcOptions(restricted_protocol=((frozenset({"inference", "health"}), "infer-key", "s3cret"),))
    fake, srv = _serve(options)
    try:
        client = grpcclient.InferenceServerClient(srv.url)
        expected = "This protocol is restricted, expecting header 'triton-grpc-protocol-infer-key'"
        for call in (lambda h: client.infer("simple", _simple_inputs(), headers=h),
                     lambda h: client.is_server_live(headers=h)):
            with pytest.raises(InferenceServerException) as info:
                call(None)
            assert (info.value.status(), info.value.message()) == ("StatusCode.UNAVAILABLE", expected)
            with pytest.raises(InferenceServerException):
                call({"triton-grpc-protocol-infer-key": "wrong"})
            assert call({"triton-grpc-protocol-infer-key": "s3cret"})
        assert client.get_server_metadata().name == "triton"  # metadata is not restricted
        with grpc.insecure_channel(srv.url) as channel:
            err = _rpc_error(lambda: list(pb_grpc.GRPCInferenceServiceStub(channel).ModelStreamInfer(iter([]))))
            assert (err.code(), err.details()) == (grpc.StatusCode.UNAVAILABLE, expected)
            err = _rpc_error(health_pb2_grpc.HealthStub(channel).Check, health_pb2.HealthCheckRequest())
            assert err.code() == grpc.StatusCode.UNAVAILABLE
        client.close()
    finally:
        srv.stop()


def test_header_forwarding_and_compression():
    options = GrpcOptions(header_forward_pattern="^x-", infer_response_compression_level="high")
    fake, srv = _serve(options)
    try:
        client = grpcclient.InferenceServerClient(srv.url)
        result = client.infer("simple", _simple_inputs(), headers={"x-tenant": "acme", "other": "no"},
                              compression_algorithm="gzip")
        assert result.as_numpy("OUTPUT0").tolist() == [[2] * 16]
        assert fake.requests[-1].parameters == {"x-tenant": "acme"}
        client.close()
    finally:
        srv.stop()


def test_ipv6_loopback():
    fake, srv = _serve(address="::1")
    try:
        assert srv.url.startswith("[::1]:")
        client = grpcclient.InferenceServerClient(srv.url)
        assert client.is_server_live()
        client.close()
    finally:
        srv.stop()


def test_options_helpers():
    assert bind_address("0.0.0.0", 8001) == "0.0.0.0:8001"
    assert bind_address("::", 8001) == "[::]:8001"
    assert bind_address("ipv6:[::1]", 9) == "[::1]:9"
    args = dict(channel_args(GrpcOptions(keepalive_time=1234, max_connection_age=50)))
    assert args["grpc.max_receive_message_length"] == args["grpc.max_send_message_length"] == 2**31 - 1
    assert args["grpc.keepalive_time_ms"] == 1234 and args["grpc.max_connection_age_ms"] == 50
    assert args["grpc.so_reuseport"] == 0 and "grpc.max_connection_age_grace_ms" not in args


async def test_port_in_use_raises_oserror():
    fake, srv = _serve()
    try:
        options = GrpcOptions(address="127.0.0.1", port=srv.options.port)
        with pytest.raises(OSError, match="failed to bind"):
            await start_grpc(fake, options)
        with pytest.raises(ValueError, match="compression level"):
            await start_grpc(fake, GrpcOptions(infer_response_compression_level="max"))
    finally:
        srv.stop()


# --- TLS ----------------------------------------------------------------------------------------------
def _openssl(*args: str, cwd) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    d = tmp_path_factory.mktemp("certs")
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt", "-days", "2",
             "-subj", "/CN=tritonpy-test-ca", cwd=d)
    (d / "san.ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    for name in ("server", "client"):
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
                 "-subj", f"/CN={name}", cwd=d)
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
                 "-out", f"{name}.crt", "-days", "2", "-extfile", "san.ext", cwd=d)
    return d


@pytest.mark.parametrize("mutual", [False, True])
def test_tls(certs, mutual):
    options = GrpcOptions(use_ssl=True, use_ssl_mutual=mutual, server_cert=str(certs / "server.crt"),
                          server_key=str(certs / "server.key"), root_cert=str(certs / "ca.crt"))
    fake, srv = _serve(options)
    try:
        client = grpcclient.InferenceServerClient(
            srv.url, ssl=True, root_certificates=str(certs / "ca.crt"),
            private_key=str(certs / "client.key") if mutual else None,
            certificate_chain=str(certs / "client.crt") if mutual else None,
        )
        assert client.infer("simple", _simple_inputs()).as_numpy("OUTPUT1").tolist() == [[0] * 16]
        client.close()
        plain = grpcclient.InferenceServerClient(srv.url)
        with pytest.raises(InferenceServerException):
            plain.is_server_live(client_timeout=2)
        plain.close()
        if mutual:
            anonymous = grpcclient.InferenceServerClient(srv.url, ssl=True, root_certificates=str(certs / "ca.crt"))
            with pytest.raises(InferenceServerException):
                anonymous.is_server_live(client_timeout=2)
            anonymous.close()
    finally:
        srv.stop()


def test_tls_missing_files_is_oserror():
    options = GrpcOptions(use_ssl=True, server_cert="/nonexistent/cert.pem", server_key="/x")
    with pytest.raises(OSError, match="server certificate"):
        asyncio.run(start_grpc(FakeFacade(), options))
