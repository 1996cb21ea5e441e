"""Pure-logic tests of the gRPC codec: ModelInferRequest -> InferRequest, InferResponse -> ModelInferResponse."""
from __future__ import annotations

import struct

import numpy as np
import pytest

from tritonpy.core.errors import ErrorCode, ServerError
from tritonpy.core.types import InferResponse, ResponseTensor, ShmRef
from tritonpy.frontends.grpc.codec import decode_request, encode_response, stream_error
from tritonpy.frontends.grpc.params import parse_request_params, set_param
from tritonpy.frontends.grpc.status import HeaderForwarder, Restrictions
from tritonpy.proto import grpc_service_pb2 as pb


def _req(**kw) -> pb.ModelInferRequest:
    return pb.ModelInferRequest(model_name="m", **kw)


def _err(msg) -> ServerError:
    with pytest.raises(ServerError) as info:
        decode_request(msg)
    return info.value


def _bytes(*items: bytes) -> bytes:
    return b"".join(struct.pack("<I", len(i)) + i for i in items)


def test_raw_contents_become_arrays_without_copy_per_element():
    msg = _req()
    msg.inputs.add(name="A", datatype="INT32", shape=[2, 2])
    msg.inputs.add(name="B", datatype="FP16", shape=[3])
    msg.raw_input_contents.extend([np.arange(4, dtype=np.int32).tobytes(), np.ones(3, np.float16).tobytes()])
    req, empty_final = decode_request(msg)
    assert not empty_final
    assert req.outputs is None
    a, b = req.inputs
    assert a.data.dtype == np.int32 and a.data.shape == (2, 2) and a.data.tolist() == [[0, 1], [2, 3]]
    assert b.data.dtype == np.float16 and b.data.tolist() == [1, 1, 1]


def test_raw_bytes_tensor_is_decoded_to_object_array():
    msg = _req()
    msg.inputs.add(name="S", datatype="BYTES", shape=[1, 2])
    msg.raw_input_contents.append(_bytes(b"ab", b""))
    (s,) = decode_request(msg)[0].inputs
    assert s.data.dtype == object and s.data.shape == (1, 2) and s.data.tolist() == [[b"ab", b""]]


@pytest.mark.parametrize(
    "datatype, field, values, np_type",
    [
        ("BOOL", "bool_contents", [True, False], np.bool_),
        ("INT8", "int_contents", [-1, 127], np.int8),
        ("INT16", "int_contents", [-300, 300], np.int16),
        ("INT32", "int_contents", [1, -2], np.int32),
        ("INT64", "int64_contents", [1 << 40, -1], np.int64),
        ("UINT8", "uint_contents", [255, 0], np.uint8),
        ("UINT16", "uint_contents", [65535, 1], np.uint16),
        ("UINT32", "uint_contents", [1 << 31, 0], np.uint32),
        ("UINT64", "uint64_contents", [1 << 63, 1], np.uint64),
        ("FP32", "fp32_contents", [1.5, -2.0], np.float32),
        ("FP64", "fp64_contents", [1.25, 2.5], np.float64),
    ],
)
def test_typed_contents_for_every_datatype(datatype, field, values, np_type):
    msg = _req()
    t = msg.inputs.add(name="X", datatype=datatype, shape=[2])
    getattr(t.contents, field).extend(values)
    (x,) = decode_request(msg)[0].inputs
    assert x.data.dtype == np_type
    assert x.data.tolist() == np.asarray(values, dtype=np_type).tolist()


def test_typed_bytes_contents():
    msg = _req()
    msg.inputs.add(name="S", datatype="BYTES", shape=[2]).contents.bytes_contents.extend([b"x", b"yz"])
    (s,) = decode_request(msg)[0].inputs
    assert s.data.tolist() == [b"x", b"yz"]


def test_contents_and_raw_cannot_be_mixed():
    msg = _req()
    msg.inputs.add(name="A", datatype="INT32", shape=[1]).contents.int_contents.append(1)
    msg.inputs.add(name="B", datatype="INT32", shape=[1])
    msg.raw_input_contents.append(b"\0" * 4)
    err = _err(msg)
    assert err.code == ErrorCode.INVALID_ARG
    assert err.message == "contents field must not be specified when using raw_input_contents for 'A' for model 'm'"


def test_fp16_cannot_use_typed_contents():
    msg = _req()
    msg.inputs.add(name="H", datatype="FP16", shape=[1]).contents.fp32_contents.append(1.0)
    assert _err(msg).message == (
        "unexpected explicit tensor data for input tensor 'H' for model 'm' of type 'FP32', expected datatype 'FP16'"
    )


def test_two_content_fields_are_rejected():
    msg = _req()
    c = msg.inputs.add(name="A", datatype="INT32", shape=[1]).contents
    c.int_contents.append(1)
    c.int64_contents.append(1)
    assert _err(msg).message.endswith("binary data was already supplied.")


def test_missing_data_and_size_mismatches():
    msg = _req()
    msg.inputs.add(name="A", datatype="INT32", shape=[4])
    assert _err(msg).message == "unable to find data for input tensor 'A' for model 'm' in request."
    msg.raw_input_contents.append(b"\0" * 12)
    assert _err(msg).message == "input byte size mismatch for input 'A' for model 'm'. Expected 16, got 12"
    msg = _req()
    msg.inputs.add(name="A", datatype="INT32", shape=[4]).contents.int_contents.extend([1, 2])
    assert _err(msg).message == "input byte size mismatch for input 'A' for model 'm'. Expected 16, got 8"


def test_bytes_element_count_errors_use_triton_messages():
    msg = _req()
    msg.inputs.add(name="S", datatype="BYTES", shape=[3])
    msg.raw_input_contents.append(_bytes(b"a", b"b"))
    assert _err(msg).message == "expected 3 string elements for inference input 'S' for model 'm', got 2"
    msg.raw_input_contents[0] = _bytes(b"a", b"b", b"c", b"d", b"e")
    assert _err(msg).message == "unexpected number of string elements 4 for inference input 'S' for model 'm', expecting 3"
    msg.raw_input_contents[0] = struct.pack("<I", 10) + b"abc"
    assert _err(msg).message == (
        "incomplete string data for inference input 'S' for model 'm', expecting string of length 10 but only 3 "
        "bytes available"
    )


def test_reserved_parameters_are_parsed_and_type_checked():
    msg = _req()
    msg.parameters["sequence_id"].int64_param = -1
    msg.parameters["sequence_start"].bool_param = True
    msg.parameters["priority"].uint64_param = 3
    msg.parameters["timeout"].int64_param = 500
    msg.parameters["triton_enable_empty_final_response"].bool_param = True
    msg.parameters["custom"].double_param = 0.5
    req, empty_final = decode_request(msg, {"x-trace": "abc"})
    assert req.sequence_id == (1 << 64) - 1 and req.sequence_start and not req.sequence_end
    assert req.priority == 3 and req.timeout_us == 500 and empty_final
    assert req.parameters == {"custom": 0.5, "x-trace": "abc"}
    msg.parameters["sequence_id"].string_param = "corr-7"
    assert decode_request(msg)[0].sequence_id == "corr-7"


@pytest.mark.parametrize(
    "key, setter, message",
    [
        ("sequence_id", "bool_param", "invalid value type for 'sequence_id' parameter, expected int64_param or string_param."),
        ("sequence_start", "int64_param", "invalid value type for 'sequence_start' parameter, expected bool_param."),
        ("sequence_end", "string_param", "invalid value type for 'sequence_end' parameter, expected bool_param."),
        ("priority", "string_param", "invalid value type for 'priority' parameter, expected int64_param or uint64_param."),
        ("timeout", "uint64_param", "invalid value type for 'timeout' parameter, expected int64_param."),
        ("triton_enable_empty_final_response", "int64_param",
         "invalid value type for 'triton_enable_empty_final_response' parameter, expected bool_param."),
        ("triton_secret", "bool_param",
         "parameter keys starting with 'triton_' are reserved for Triton usage. Only the following keys starting "
         "with 'triton_' are allowed: triton_enable_empty_final_response"),
    ],
)
def test_reserved_parameter_type_errors(key, setter, message):
    msg = _req()
    value = {"bool_param": True, "int64_param": 1, "string_param": "1", "uint64_param": 1}[setter]
    setattr(msg.parameters[key], setter, value)
    err = _err(msg)
    assert (err.code, err.message) == (ErrorCode.INVALID_ARG, message)


def test_negative_priority_and_unset_custom_parameter():
    msg = _req()
    msg.parameters["priority"].int64_param = -2
    assert _err(msg).message == "invalid value for 'priority', expected value >= 0."
    params = pb.ModelInferRequest().parameters
    params["custom"]  # present but empty
    with pytest.raises(ServerError, match="expected int64_param, bool_param, or string_param"):
        parse_request_params(params)


def test_shared_memory_and_classification_parameters():
    msg = _req()
    t = msg.inputs.add(name="A", datatype="INT32", shape=[4])
    t.parameters["shared_memory_region"].string_param = "in"
    t.parameters["shared_memory_byte_size"].int64_param = 16
    t.parameters["shared_memory_offset"].int64_param = 8
    o = msg.outputs.add(name="O")
    o.parameters["shared_memory_region"].string_param = "out"
    o.parameters["shared_memory_byte_size"].int64_param = 16
    c = msg.outputs.add(name="C")
    c.parameters["classification"].int64_param = 2
    c.parameters["note"].string_param = "kept"
    req = decode_request(msg)[0]
    assert req.inputs[0].shm == ShmRef("in", 16, 8) and req.inputs[0].data is None
    assert req.outputs[0].shm == ShmRef("out", 16, 0)
    assert req.outputs[1].classification == 2 and req.outputs[1].parameters == {"note": "kept"}


@pytest.mark.parametrize(
    "params, message",
    [
        ({"shared_memory_region": "r"},
         "'shared_memory_byte_size' must be specified along with 'shared_memory_region' parameter for tensor 'A'"),
        ({"shared_memory_byte_size": 4},
         "'shared_memory_byte_size' can not be specified without 'shared_memory_region' parameter for tensor 'A'"),
        ({"shared_memory_offset": 4},
         "'shared_memory_offset' can not be specified without 'shared_memory_region' parameter for tensor 'A'"),
        ({"shared_memory_region": 5, "shared_memory_byte_size": 4},
         "invalid value type for 'shared_memory_region' parameter for tensor 'A', expected string_param."),
        ({"shared_memory_region": "r", "shared_memory_byte_size": "4"},
         "invalid value type for 'shared_memory_byte_size' parameter for tensor 'A', expected int64_param."),
        ({"shared_memory_region": "r", "shared_memory_byte_size": 4, "shared_memory_offset": True},
         "invalid value type for 'shared_memory_offset' parameter for tensor 'A', expected int64_param."),
    ],
)
def test_shared_memory_parameter_errors(params, message):
    msg = _req()
    t = msg.inputs.add(name="A", datatype="INT32", shape=[1])
    for key, value in params.items():
        set_param(t.parameters[key], value)
    assert _err(msg).message == message


def test_shm_input_with_contents_and_output_conflicts():
    msg = _req()
    t = msg.inputs.add(name="A", datatype="INT32", shape=[1])
    t.parameters["shared_memory_region"].string_param = "r"
    t.parameters["shared_memory_byte_size"].int64_param = 4
    t.contents.int_contents.append(1)
    assert _err(msg).message == "unexpected 'content' provided when using shared memory for input tensor 'A' for model 'm'"
    msg = _req()
    o = msg.outputs.add(name="O")
    o.parameters["shared_memory_region"].string_param = "r"
    o.parameters["shared_memory_byte_size"].int64_param = 4
    o.parameters["classification"].int64_param = 1
    assert _err(msg).message == "output can't set both 'shared_memory_region' and 'classification'"
    msg = _req()
    msg.outputs.add(name="O").parameters["classification"].int64_param = 0
    assert _err(msg).message == "invalid value for 'classification' parameter, expected >= 1"
    msg = _req()
    msg.outputs.add(name="O").parameters["classification"].string_param = "2"
    assert _err(msg).message == "invalid value type for 'classification' parameter, expected int64_param"


def test_encode_response_keeps_output_order_and_aligns_shm_outputs():
    released = []
    resp = InferResponse(
        model_name="m", model_version="1", id="7",
        outputs=[
            ResponseTensor("B", "BYTES", [2], data=np.array([b"a", b"bc"], dtype=object)),
            ResponseTensor("S", "FP32", [4], shm=ShmRef("r", 16)),
            ResponseTensor("T", "INT64", [2, 2], data=np.arange(4, dtype=np.int64).reshape(2, 2).T),
        ],
        parameters={"flag": True, "n": 3, "big": 1 << 63, "x": 0.5, "s": "v"},
        _release=lambda: released.append(1),
    )
    out = encode_response(resp)
    assert [o.name for o in out.outputs] == ["B", "S", "T"]
    assert [list(o.shape) for o in out.outputs] == [[2], [4], [2, 2]]
    assert out.raw_output_contents[0] == struct.pack("<I", 1) + b"a" + struct.pack("<I", 2) + b"bc"
    assert out.raw_output_contents[1] == b""
    assert np.frombuffer(out.raw_output_contents[2], np.int64).tolist() == [0, 2, 1, 3]
    p = out.parameters
    assert p["flag"].bool_param and p["n"].int64_param == 3 and p["big"].uint64_param == 1 << 63
    assert p["x"].double_param == 0.5 and p["s"].string_param == "v"
    assert not released  # release is the caller's job


def test_stream_error_shell():
    msg = stream_error(ServerError(ErrorCode.NOT_FOUND, "nope"), "id1", "m", "2")
    assert msg.error_message == "nope"
    assert msg.infer_response.id == "id1" and msg.infer_response.model_name == "m"
    assert msg.infer_response.parameters["triton_final_response"].bool_param


def test_restrictions_and_header_forwarding():
    r = Restrictions([({"inference", "health"}, "admin-key", "secret")])
    assert r.denied("metadata", []) is None
    assert r.denied("inference", [("triton-grpc-protocol-admin-key", "secret")]) is None
    assert r.denied("inference", [("triton-grpc-protocol-admin-key", "wrong")]) == (
        "This protocol is restricted, expecting header 'triton-grpc-protocol-admin-key'"
    )
    f = HeaderForwarder("x-.*")
    assert f.params([("X-Id", "1"), ("user-agent", "u"), ("x-bin", b"\0")]) == {"X-Id": "1"}
    assert HeaderForwarder("(?-i)x-.*").params([("X-Id", "1"), ("x-id", "2")]) == {"x-id": "2"}
    assert not HeaderForwarder("")
