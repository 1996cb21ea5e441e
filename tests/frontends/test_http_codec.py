"""Unit tests of the HTTP frontend's pure pieces: routing, decoding, encoding, small parsers."""
from __future__ import annotations

import json
import zlib

import numpy as np
import orjson
import pytest

from tritonpy.core.types import InferResponse, ResponseTensor, ShmRef
from tritonpy.frontends.http import app, body, decode, encode, generate, params, restricted
from tritonpy.frontends.http.errors import HttpError


def test_route_table():
    assert app.route("/v2/models/a%2Fb/versions/3/infer")[2:] == (app.infer.infer, ("a/b", "3"))
    assert app.route("/v2/models/stats")[0] == "statistics"
    assert app.route("/v2/models/m/stats")[3] == ("m", "")
    assert app.route("/v2/models/m/trace/setting")[3] == ("m",)
    assert app.route("/v2/models/m/versions/1/trace/setting") is None
    assert app.route("/v2/systemsharedmemory/region/r%20x/status")[3] == ("r x", "status")
    assert app.route("/v2/repository/models/m/unload")[3] == ("", "m", "unload")
    assert app.route("/v2/repository/index")[2] is app.handlers.repository_index
    assert app.route("/v2/models/m/versions/01/ready")[3] == ("m", "01")
    assert app.route("/v2x") is None and app.route("/v2/models//infer") is None
    with pytest.raises(HttpError):
        app.route("/v2/models/m/versions/9223372036854775808/infer")


def test_header_length_parser():
    assert decode.parse_header_length(None, 10) is None
    assert decode.parse_header_length(" 4 ", 10) == 4
    assert decode.parse_header_length("0", 0) == 0
    for bad in ("x", "1.0", "", "٣", "11", "-1", "+-1"):
        with pytest.raises(HttpError):
            decode.parse_header_length(bad, 10)


def test_json_tensor_conversion():
    arr = decode.tensor_from_json("x", "FP32", [2, 2], [[1, 2], [3.5, 4]])
    assert arr.dtype == np.float32 and arr.tolist() == [[1, 2], [3.5, 4]]
    assert decode.tensor_from_json("x", "UINT64", [1], [2 ** 64 - 1]).tolist() == [2 ** 64 - 1]
    assert decode.tensor_from_json("x", "BOOL", [2], [True, False]).dtype == np.bool_
    assert decode.tensor_from_json("x", "INT32", [0, 3], []).shape == (0, 3)
    out = decode.tensor_from_json("s", "BYTES", [2, 1], [["a"], ["é"]])
    assert out.dtype == object and out.reshape(-1).tolist() == [b"a", "é".encode()]
    with pytest.raises(HttpError):
        decode.tensor_from_json("x", "INT16", [1], [40000])


def test_binary_tensor_is_a_view():
    raw = bytearray(np.arange(4, dtype=np.int16).tobytes())
    arr = decode.tensor_from_bytes("x", "INT16", [2, 2], memoryview(raw), "m")
    raw[0] = 9
    assert arr[0, 0] == 9  # no copy was made


def test_decode_infer_binary_and_outputs():
    doc = {"id": "r", "parameters": {"binary_data_output": True, "sequence_id": "s"},
           "inputs": [{"name": "A", "datatype": "FP32", "shape": [2], "parameters": {"binary_data_size": 8}},
                      {"name": "B", "datatype": "INT8", "shape": [1], "data": [3]}],
           "outputs": [{"name": "O1"}, {"name": "O2", "parameters": {"binary_data": False, "classification": 2}},
                       {"name": "O3", "parameters": {"shared_memory_region": "r", "shared_memory_byte_size": 8,
                                                      "shared_memory_offset": 4}}]}
    header = orjson.dumps(doc)
    decoded = decode.decode_infer("m", "2", header + np.array([1, 2], np.float32).tobytes(), len(header))
    req = decoded.request
    assert (req.id, req.model_version, req.sequence_id) == ("r", "2", "s")
    assert req.inputs[0].data.tolist() == [1.0, 2.0] and req.inputs[1].data.dtype == np.int8
    assert decoded.binary_outputs == {"O1": True, "O2": False, "O3": True}
    assert req.outputs[1].classification == 2 and req.outputs[2].shm == ShmRef("r", 8, 4)


def test_encode_infer_binary_json_and_shm():
    released = []
    resp = InferResponse(
        model_name="m", model_version="1", id="x",
        outputs=[ResponseTensor("A", "INT32", [2], np.array([1, 2], np.int32)),
                 ResponseTensor("B", "BYTES", [2], np.array([b"hi", b"\xff"], dtype=object)),
                 ResponseTensor("C", "FP32", [1], None, ShmRef("reg", 4, 0))],
        parameters={"p": 1}, _release=lambda: released.append(1))
    body_bytes, hlen = encode.encode_infer(resp, {"A": True, "B": False}, False)
    head = json.loads(body_bytes[:hlen])
    assert head["parameters"] == {"p": 1}
    assert head["outputs"][0]["parameters"] == {"binary_data_size": 8}
    assert head["outputs"][1]["data"] == ["hi", "\ufffd"]
    # written to the client's shared memory: name, datatype and shape only, as Triton answers
    assert head["outputs"][2] == {"name": "C", "datatype": "FP32", "shape": [1]}
    assert np.frombuffer(body_bytes[hlen:], np.int32).tolist() == [1, 2]
    body_json, none = encode.encode_infer(resp, {}, False)
    assert none is None and json.loads(body_json)["outputs"][0]["data"] == [1, 2]
    with pytest.raises(HttpError, match="sending FP16"):
        encode.encode_infer(InferResponse("m", "1", outputs=[ResponseTensor("H", "FP16", [1], np.ones(1, np.float16))]),
                            {}, False)


def test_generate_document_unwraps_single_elements():
    resp = InferResponse("m", "1", id="i", parameters={"k": "v"},
                         outputs=[ResponseTensor("s", "BYTES", [1, 1], np.array([[b"x"]], dtype=object)),
                                  ResponseTensor("n", "INT64", [1], np.array([7])),
                                  ResponseTensor("v", "FP32", [3], np.ones(3, np.float32)),
                                  ResponseTensor("e", "INT32", [0], np.zeros(0, np.int32))])
    doc = json.loads(encode.dumps(encode.generate_document(resp)))
    assert doc == {"id": "i", "model_name": "m", "model_version": "1", "k": "v", "s": "x", "n": 7,
                   "v": [1.0, 1.0, 1.0], "e": []}


def test_spread_shape():
    assert generate.spread_shape("x", [-1, 1], 1) == [1, 1]
    assert generate.spread_shape("x", [-1, 4], 8) == [2, 4]
    assert generate.spread_shape("x", [-1, -1], 5) == [1, 5]
    assert generate.spread_shape("x", [3], 3) == [3]
    for shape, count in (([4], 3), ([-1, 4], 6), ([2], 4)):
        with pytest.raises(HttpError):
            generate.spread_shape("x", shape, count)


def test_request_parameters():
    req = decode.InferRequest("m")
    assert params.apply_request_parameters(req, {"sequence_id": 5, "priority": 1, "timeout": 9,
                                                 "binary_data_output": True, "headers": {"h": "v"},
                                                 "triton_enable_empty_final_response": True, "x": 1.5})
    assert (req.sequence_id, req.priority, req.timeout_us) == (5, 1, 9)
    assert req.parameters == {"h": "v", "triton_enable_empty_final_response": True, "x": 1.5}
    pattern = params.compile_forward_pattern("^x-")
    params.forward_headers(req, pattern, {"X-A": "1", "y": "2"})
    assert req.parameters["X-A"] == "1" and "y" not in req.parameters
    assert params.compile_forward_pattern("(?-i)^x-").search("X-A") is None


def test_accept_encoding_choice():
    class R:
        def __init__(self, value):
            self.headers = {"Accept-Encoding": value} if value is not None else {}

    assert body.response_encoding(R(None)) == "identity"
    assert body.response_encoding(R("gzip")) == "gzip"
    assert body.response_encoding(R("deflate, gzip;q=0.5")) == "deflate"
    assert body.response_encoding(R("gzip;q=0, identity")) == "identity"
    assert body.response_encoding(R("br, gzip;q=abc")) == "identity"


def test_inflate_limits_and_formats():
    data = b"x" * 5000
    assert body._inflate(zlib.compress(data), "deflate", 5000) == data
    raw = zlib.compressobj(6, zlib.DEFLATED, -15)
    assert body._inflate(raw.compress(data) + raw.flush(), "deflate", 5000) == data
    import gzip

    assert body._inflate(gzip.compress(b"ab") + gzip.compress(b"cd"), "gzip", 10) == b"abcd"
    with pytest.raises(HttpError, match="exceeds the maximum allowed value"):
        body._inflate(gzip.compress(data), "gzip", 4999)


def test_restrictions():
    r = restricted.Restrictions([({"inference"}, "k", "v")])
    r.check("health", {})
    r.check("inference", {"k": "v"})
    with pytest.raises(HttpError) as err:
        r.check("inference", {"k": "w"})
    assert err.value.status == 403
    assert not restricted.Restrictions(None)
