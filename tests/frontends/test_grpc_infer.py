"""ModelInfer and the metadata RPCs through the real `tritonclient.grpc` against the frontend and a fake core."""
from __future__ import annotations

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from support.fake_facade import FakeFacade
from support.frontend_servers import ThreadedGrpc
from tritonpy.core.errors import ErrorCode, ServerError
from tritonpy.proto import grpc_service_pb2 as pb
from tritonpy.proto import grpc_service_pb2_grpc as pb_grpc


@pytest.fixture
def env():
    fake = FakeFacade(real_shm=False)
    srv = ThreadedGrpc(fake).start()
    client = grpcclient.InferenceServerClient(srv.url)
    yield fake, srv, client
    client.close()
    srv.stop()


@pytest.fixture
def stub(env):
    _, srv, _ = env
    channel = grpc.insecure_channel(srv.url)
    yield pb_grpc.GRPCInferenceServiceStub(channel)
    channel.close()


def _inputs(a: np.ndarray, b: np.ndarray, datatype: str = "INT32") -> list[grpcclient.InferInput]:
    out = []
    for name, arr in (("INPUT0", a), ("INPUT1", b)):
        i = grpcclient.InferInput(name, list(arr.shape), datatype)
        i.set_data_from_numpy(arr)
        out.append(i)
    return out


def _status(exc: InferenceServerException) -> str:
    return exc.status()


def test_health_and_metadata(env):
    fake, _, client = env
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("simple") and not client.is_model_ready("nope")
    fake.ready = False
    assert not client.is_server_ready()
    md = client.get_server_metadata(as_json=True)
    assert md["name"] == "triton" and "classification" in md["extensions"]
    mm = client.get_model_metadata("simple", as_json=True)
    assert mm["inputs"][0] == {"name": "INPUT0", "datatype": "INT32", "shape": ["-1", "16"]}
    cfg = client.get_model_config("simple").config
    assert cfg.max_batch_size == 8 and cfg.input[0].name == "INPUT0"


def test_metadata_errors_are_not_found(env):
    _, _, client = env
    for call in (client.get_model_metadata, client.get_model_config):
        with pytest.raises(InferenceServerException) as info:
            call("nope")
        assert _status(info.value) == "StatusCode.NOT_FOUND"
        assert "Request for unknown model: 'nope' is not found" in info.value.message()


def test_infer_int32_raw(env):
    fake, _, client = env
    a = np.arange(16, dtype=np.int32).reshape(1, 16)
    b = np.ones((1, 16), dtype=np.int32)
    result = client.infer("simple", _inputs(a, b), request_id="r1", parameters={"echo_tenant": "t1"})
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)
    resp = result.get_response()
    assert resp.id == "r1" and resp.model_name == "simple" and resp.model_version == "1"
    assert resp.parameters["echo_tenant"].string_param == "t1"
    assert fake.responses_released == 1


def test_requested_output_order_is_kept(env):
    _, _, client = env
    a = np.zeros((2, 16), dtype=np.int32)
    outs = [grpcclient.InferRequestedOutput("OUTPUT1"), grpcclient.InferRequestedOutput("OUTPUT0")]
    resp = client.infer("simple", _inputs(a, a), outputs=outs).get_response()
    assert [o.name for o in resp.outputs] == ["OUTPUT1", "OUTPUT0"]
    assert len(resp.raw_output_contents) == 2 and [list(o.shape) for o in resp.outputs] == [[2, 16], [2, 16]]


def test_infer_bytes(env):
    _, _, client = env
    a = np.array([[str(i).encode() for i in range(16)]], dtype=object)
    b = np.array([[b"1"] * 16], dtype=object)
    result = client.infer("simple_string", _inputs(a, b, "BYTES"))
    assert result.as_numpy("OUTPUT0").tolist() == [[str(i + 1).encode() for i in range(16)]]
    assert result.get_output("OUTPUT0").datatype == "BYTES"


def test_infer_fp16(env):
    _, _, client = env
    x = np.linspace(-2, 2, 6, dtype=np.float16).reshape(2, 3)
    i = grpcclient.InferInput("INPUT0", [2, 3], "FP16")
    i.set_data_from_numpy(x)
    out = client.infer("batched_fp16", [i]).as_numpy("OUTPUT0")
    assert out.dtype == np.float16
    np.testing.assert_array_equal(out, x)


def test_reserved_parameters_reach_the_core(env):
    fake, _, client = env
    a = np.zeros((1, 16), dtype=np.int32)
    client.infer("simple", _inputs(a, a), sequence_id=42, sequence_start=True, sequence_end=False,
                 priority=2, timeout=1000)
    req = fake.requests[-1]
    assert (req.sequence_id, req.sequence_start, req.sequence_end, req.priority, req.timeout_us) == (
        42, True, False, 2, 1000
    )
    client.infer("simple", _inputs(a, a), sequence_id="corr", sequence_end=True)
    assert fake.requests[-1].sequence_id == "corr" and fake.requests[-1].sequence_end


def test_classification_and_shared_memory_outputs(env):
    fake, _, client = env
    a = np.arange(16, dtype=np.int32).reshape(1, 16)
    outs = [grpcclient.InferRequestedOutput("OUTPUT0", class_count=3), grpcclient.InferRequestedOutput("OUTPUT1")]
    outs[1].set_shared_memory("out_region", 64, offset=0)
    result = client.infer("simple", _inputs(a, a), outputs=outs)
    assert result.as_numpy("OUTPUT0").tolist() == [[b"30.000000:15", b"28.000000:14", b"26.000000:13"]]
    resp = result.get_response()
    assert resp.raw_output_contents[1] == b"" and resp.outputs[1].name == "OUTPUT1"
    req = fake.requests[-1]
    assert req.outputs[0].classification == 3
    assert (req.outputs[1].shm.region, req.outputs[1].shm.byte_size) == ("out_region", 64)


def test_shared_memory_input_parameters(env):
    fake, _, client = env
    i0 = grpcclient.InferInput("INPUT0", [1, 16], "INT32")
    i0.set_shared_memory("in_region", 64, offset=128)
    i1 = grpcclient.InferInput("INPUT1", [1, 16], "INT32")
    i1.set_data_from_numpy(np.ones((1, 16), dtype=np.int32))
    client.infer("simple", [i0, i1])
    shm_in, raw_in = fake.requests[-1].inputs
    assert (shm_in.shm.region, shm_in.shm.byte_size, shm_in.shm.offset, shm_in.data) == ("in_region", 64, 128, None)
    assert raw_in.data.tolist() == [[1] * 16]  # raw index skips the shm input


def test_typed_contents_through_the_wire(stub):
    req = pb.ModelInferRequest(model_name="simple")
    for name in ("INPUT0", "INPUT1"):
        req.inputs.add(name=name, datatype="INT32", shape=[1, 16]).contents.int_contents.extend(range(16))
    resp = stub.ModelInfer(req)
    assert np.frombuffer(resp.raw_output_contents[0], np.int32).tolist() == [2 * i for i in range(16)]
    assert resp.outputs[0].datatype == "INT32" and list(resp.outputs[0].shape) == [1, 16]
    req = pb.ModelInferRequest(model_name="identity")
    req.inputs.add(name="INPUT0", datatype="BYTES", shape=[2]).contents.bytes_contents.extend([b"a", b"bb"])
    resp = stub.ModelInfer(req)
    assert resp.raw_output_contents[0] == b"\x01\0\0\0a\x02\0\0\0bb"


@pytest.mark.parametrize(
    "build, code, message",
    [
        (lambda r: r.inputs.add(name="INPUT0", datatype="INT32", shape=[1]), grpc.StatusCode.INVALID_ARGUMENT,
         "unable to find data for input tensor 'INPUT0' for model 'identity' in request."),
        (lambda r: (r.inputs.add(name="INPUT0", datatype="INT32", shape=[2]), r.raw_input_contents.append(b"1234")),
         grpc.StatusCode.INVALID_ARGUMENT,
         "input byte size mismatch for input 'INPUT0' for model 'identity'. Expected 8, got 4"),
        (lambda r: (r.inputs.add(name="INPUT0", datatype="INT32", shape=[1]).contents.int_contents.append(1),
                    r.raw_input_contents.append(b"1234")),
         grpc.StatusCode.INVALID_ARGUMENT,
         "contents field must not be specified when using raw_input_contents for 'INPUT0' for model 'identity'"),
        (lambda r: r.inputs.add(name="INPUT0", datatype="FP16", shape=[1]).contents.fp32_contents.append(1),
         grpc.StatusCode.INVALID_ARGUMENT,
         "unexpected explicit tensor data for input tensor 'INPUT0' for model 'identity' of type 'FP32', "
         "expected datatype 'FP16'"),
        (lambda r: r.parameters["triton_x"].bool_param, grpc.StatusCode.INVALID_ARGUMENT,
         "parameter keys starting with 'triton_' are reserved for Triton usage. Only the following keys starting "
         "with 'triton_' are allowed: triton_enable_empty_final_response"),
        (lambda r: setattr(r.parameters["sequence_start"], "int64_param", 1), grpc.StatusCode.INVALID_ARGUMENT,
         "invalid value type for 'sequence_start' parameter, expected bool_param."),
    ],
)
def test_malformed_requests(stub, build, code, message):
    req = pb.ModelInferRequest(model_name="identity")
    build(req)
    with pytest.raises(grpc.RpcError) as info:
        stub.ModelInfer(req)
    assert info.value.code() == code
    assert info.value.details() == message


def test_core_errors_map_to_grpc_status(env):
    fake, _, client = env
    a = np.zeros((1, 16), dtype=np.int32)
    cases = [
        (ServerError(ErrorCode.UNAVAILABLE, "Exceeds maximum queue size"), "StatusCode.UNAVAILABLE"),
        (ServerError(ErrorCode.INTERNAL, "boom"), "StatusCode.INTERNAL"),
        (ServerError(ErrorCode.UNSUPPORTED, "nope"), "StatusCode.UNIMPLEMENTED"),
        (ServerError(ErrorCode.ALREADY_EXISTS, "dup"), "StatusCode.ALREADY_EXISTS"),
        (ServerError(ErrorCode.CANCELLED, "gone"), "StatusCode.CANCELLED"),
        (ServerError(ErrorCode.UNKNOWN, "??"), "StatusCode.UNKNOWN"),
        (ServerError(ErrorCode.INVALID_ARG, "bad"), "StatusCode.INVALID_ARGUMENT"),
    ]
    for err, status in cases:
        fake.fail_next = err
        with pytest.raises(InferenceServerException) as info:
            client.infer("simple", _inputs(a, a))
        assert (_status(info.value), info.value.message()) == (status, err.message)


def test_unknown_model_wrong_datatype_and_decoupled(env):
    _, _, client = env
    a = np.zeros((1, 16), dtype=np.int32)
    with pytest.raises(InferenceServerException) as info:
        client.infer("nope", _inputs(a, a))
    assert _status(info.value) == "StatusCode.NOT_FOUND"
    with pytest.raises(InferenceServerException) as info:
        client.infer("simple", _inputs(a.astype(np.float32), a.astype(np.float32), "FP32"))
    assert _status(info.value) == "StatusCode.INVALID_ARGUMENT"
    assert info.value.message() == "inference input 'INPUT0' data-type is 'FP32', but model 'simple' expects 'INT32'"
    i = grpcclient.InferInput("IN", [1], "INT32")
    i.set_data_from_numpy(np.array([1], dtype=np.int32))
    with pytest.raises(InferenceServerException) as info:
        client.infer("repeat_int32", [i])
    assert _status(info.value) == "StatusCode.UNIMPLEMENTED"
    assert info.value.message() == "ModelInfer RPC doesn't support models with decoupled transaction policy"


def test_large_message_above_grpc_default_limit(env):
    _, _, client = env
    x = np.arange(2_000_000, dtype=np.int32)  # 8 MB each way, over grpcio's 4 MB default
    i = grpcclient.InferInput("INPUT0", [x.size], "INT32")
    i.set_data_from_numpy(x)
    np.testing.assert_array_equal(client.infer("identity", [i]).as_numpy("OUTPUT0"), x)
