"""Every error path of the HTTP frontend with plain requests: status code and `{"error": ...}` text."""
from __future__ import annotations

import base64
import gzip
import json
import struct

import pytest

from support.fake_facade import FakeFacade
from support.frontend_servers import HttpServerThread, http_request
from tritonpy.frontends.options import HttpOptions

INFER = "/v2/models/simple/infer"


def _inp(name="INPUT0", datatype="INT32", shape=(1, 16), data=None, **extra):
    item = {"name": name, "datatype": datatype, "shape": list(shape)}
    item["data"] = list(range(16)) if data is None else data
    item.update(extra)
    return item


def _doc(inputs=None, **extra):
    doc = {"inputs": inputs if inputs is not None else [_inp(), _inp("INPUT1")]}
    doc.update(extra)
    return json.dumps(doc)


@pytest.fixture(scope="module")
def fake() -> FakeFacade:
    return FakeFacade()


@pytest.fixture(scope="module")
def srv(fake):
    with HttpServerThread(fake) as server:
        yield server
    assert fake.responses_made == fake.responses_released


def call(srv, method, path, body=None, headers=None):
    status, resp_headers, raw = http_request(srv.port, method, path, body, headers)
    return status, resp_headers, raw


def expect(srv, method, path, body, status, text, headers=None):
    got_status, resp_headers, raw = call(srv, method, path, body, headers)
    assert got_status == status, (got_status, raw)
    if text is None:
        assert raw == b""
        return resp_headers
    assert resp_headers["Content-Type"].startswith("application/json")
    error = json.loads(raw)["error"]
    assert text in error, error
    return resp_headers


BIN_HEADER = "Inference-Header-Content-Length"


def _binary(doc: dict, *blobs: bytes) -> tuple[bytes, dict]:
    header = json.dumps(doc).encode()
    return header + b"".join(blobs), {BIN_HEADER: str(len(header))}


MALFORMED_INFER = [
    ("bad json", "{", "failed to parse the request JSON buffer"),
    ("empty body", "", "failed to parse the request JSON buffer"),
    ("array body", "[]", "must be a JSON object"),
    ("string body", '"x"', "must be a JSON object"),
    ("missing inputs", "{}", "Unable to parse 'inputs'"),
    ("inputs object", '{"inputs": {}}', "Unable to parse 'inputs'"),
    ("input not object", '{"inputs": [1]}', "each input must be a JSON object"),
    ("missing name", _doc([{"datatype": "INT32", "shape": [1], "data": [1]}]), "Unable to parse 'name'"),
    ("name not string", _doc([_inp(name=5)]), "Unable to parse 'name'"),
    ("missing datatype", _doc([{"name": "INPUT0", "shape": [1], "data": [1]}]), "Unable to parse 'datatype'"),
    ("unknown datatype", _doc([_inp(datatype="FLOAT")]), "invalid datatype 'FLOAT' for input 'INPUT0'"),
    ("shape missing", _doc([{"name": "INPUT0", "datatype": "INT32", "data": [1]}]), "Unable to parse 'shape'"),
    ("shape negative", _doc([_inp(shape=(1, -16))]), "Unable to parse 'shape'"),
    ("shape float", _doc([_inp(shape=(1, 16.0))]), "Unable to parse 'shape'"),
    ("shape bool", _doc([_inp(shape=(True, 16))]), "Unable to parse 'shape'"),
    ("zero elements, huge dims", _doc([_inp(shape=(0, 2 ** 62), data=[])]), "Unable to parse 'shape'"),
    ("dim past int64", _doc([_inp(shape=(2 ** 63,), data=[])]), "Unable to parse 'shape'"),
    ("shape not list", _doc([{"name": "INPUT0", "datatype": "INT32", "shape": 16, "data": [1]}]),
     "Unable to parse 'shape'"),
    ("no data", _doc([{"name": "INPUT0", "datatype": "INT32", "shape": [1]}]), "But no field is set"),
    ("data and binary", _doc([_inp(parameters={"binary_data_size": 64})]), "set 'data' 'binary_data_size'"),
    ("data and shm", _doc([_inp(parameters={"shared_memory_region": "r", "shared_memory_byte_size": 4})]),
     "set 'data' 'shared_memory_region'"),
    ("shm region without size",
     _doc([{"name": "INPUT0", "datatype": "INT32", "shape": [1], "parameters": {"shared_memory_region": "r"}}]),
     "'shared_memory_byte_size' must be given with 'shared_memory_region'"),
    ("shm size without region", _doc([_inp(parameters={"shared_memory_byte_size": 4})]),
     "'shared_memory_byte_size' given without 'shared_memory_region'"),
    ("shm region not string",
     _doc([{"name": "INPUT0", "datatype": "INT32", "shape": [1],
            "parameters": {"shared_memory_region": 3, "shared_memory_byte_size": 4}}]),
     "Unable to parse 'shared_memory_region'"),
    ("shm negative offset",
     _doc([{"name": "INPUT0", "datatype": "INT32", "shape": [1],
            "parameters": {"shared_memory_region": "r", "shared_memory_byte_size": 4, "shared_memory_offset": -1}}]),
     "Unable to parse 'shared_memory_offset'"),
    ("input parameters not object", _doc([_inp(parameters=[])]), "Unable to parse 'parameters'"),
    ("too few elements", _doc([_inp(data=list(range(15))), _inp("INPUT1")]), "Shape does not match true shape"),
    ("too many elements", _doc([_inp(data=list(range(17))), _inp("INPUT1")]), "Shape does not match true shape"),
    ("ragged nesting", _doc([_inp(data=[[1, 2], [3]], shape=(1, 3)), _inp("INPUT1")]), "Unable to parse 'data'"),
    ("string in INT32", _doc([_inp(data=["1"] * 16), _inp("INPUT1")]), "expected INT32 values for input 'INPUT0'"),
    ("float in INT32", _doc([_inp(data=[1.5] * 16), _inp("INPUT1")]), "expected INT32 values"),
    ("null in INT32", _doc([_inp(data=[None] * 16), _inp("INPUT1")]), "expected INT32 values"),
    ("object in INT32", _doc([_inp(data=[{}] * 16), _inp("INPUT1")]), "expected INT32 values"),
    ("INT32 overflow", _doc([_inp(data=[2 ** 31] * 16), _inp("INPUT1")]), "value out of range for INT32"),
    ("data scalar", _doc([_inp(data=5)]), "Unable to parse 'data'"),
    ("too deep", '{"inputs": [{"name": "INPUT0", "datatype": "INT32", "shape": [1], "data": '
     + "[" * 2000 + "]" * 2000 + "}]}", "failed to parse the request JSON buffer"),
    ("deep but valid json", _doc([_inp(shape=(1,), data=json.loads("[" * 100 + "1" + "]" * 100))]),
     "Unable to parse 'data'"),
    ("id not string", _doc(id=7), "Unable to parse 'id'"),
    ("parameters not object", _doc(parameters=[1]), "Unable to parse 'parameters'"),
    ("sequence_id negative", _doc(parameters={"sequence_id": -1}), "Unable to parse 'sequence_id'"),
    ("sequence_id float", _doc(parameters={"sequence_id": 1.5}), "Unable to parse 'sequence_id'"),
    ("sequence_id bool", _doc(parameters={"sequence_id": True}), "Unable to parse 'sequence_id'"),
    ("sequence_start int", _doc(parameters={"sequence_start": 1}), "Unable to parse 'sequence_start'"),
    ("sequence_end string", _doc(parameters={"sequence_end": "true"}), "Unable to parse 'sequence_end'"),
    ("priority negative", _doc(parameters={"priority": -2}), "Unable to parse 'priority'"),
    ("timeout string", _doc(parameters={"timeout": "10"}), "Unable to parse 'timeout'"),
    ("binary_data_output int", _doc(parameters={"binary_data_output": 1}), "Unable to parse 'binary_data_output'"),
    ("triton_ prefix", _doc(parameters={"triton_foo": 1}), "parameter keys starting with 'triton_' are reserved"),
    ("parameter object", _doc(parameters={"p": {}}), "parameter 'p' has invalid type"),
    ("parameter list", _doc(parameters={"p": [1]}), "parameter 'p' has invalid type"),
    ("parameter null", _doc(parameters={"p": None}), "parameter 'p' has invalid type"),
    ("headers not object", _doc(parameters={"headers": "x"}), "Unable to parse 'headers'"),
    ("outputs not list", _doc(outputs={}), "Unable to parse 'outputs'"),
    ("output not object", _doc(outputs=["OUTPUT0"]), "each output must be a JSON object"),
    ("output without name", _doc(outputs=[{}]), "Unable to parse 'name'"),
    ("classification negative", _doc(outputs=[{"name": "OUTPUT0", "parameters": {"classification": -1}}]),
     "Unable to set 'classification'"),
    ("classification string", _doc(outputs=[{"name": "OUTPUT0", "parameters": {"classification": "3"}}]),
     "Unable to set 'classification'"),
    ("output shm and classification",
     _doc(outputs=[{"name": "OUTPUT0", "parameters": {"shared_memory_region": "r", "shared_memory_byte_size": 4,
                                                       "classification": 1}}]),
     "Output can't set both 'shared_memory_region' and 'classification'"),
    ("output shm and binary",
     _doc(outputs=[{"name": "OUTPUT0", "parameters": {"shared_memory_region": "r", "shared_memory_byte_size": 4,
                                                       "binary_data": True}}]),
     "Output can't set both 'shared_memory_region' and 'binary_data'"),
    ("output shm without size", _doc(outputs=[{"name": "OUTPUT0", "parameters": {"shared_memory_region": "r"}}]),
     "'shared_memory_byte_size' must be given"),
    ("binary_data not bool", _doc(outputs=[{"name": "OUTPUT0", "parameters": {"binary_data": "yes"}}]),
     "Unable to parse 'binary_data'"),
    ("core: unknown input name", _doc([_inp("NOPE"), _inp("INPUT1")]), "unexpected inference input 'NOPE'"),
    ("core: wrong datatype", _doc([_inp(datatype="INT64"), _inp("INPUT1")]), "but model 'simple' expects 'INT32'"),
    ("core: batch too big", _doc([_inp(shape=(9, 16), data=list(range(144))),
                                  _inp("INPUT1", shape=(9, 16), data=list(range(144)))]),
     "batch-size must be <= 8"),
    ("core: unknown output", _doc(outputs=[{"name": "NOPE"}]), "unexpected inference output 'NOPE'"),
]


@pytest.mark.parametrize("case,body,text", MALFORMED_INFER, ids=[c[0] for c in MALFORMED_INFER])
def test_malformed_infer_json(srv, case, body, text):
    expect(srv, "POST", INFER, body, 400, text)


def test_datatype_specific_json_errors(srv):
    for model, datatype, data, text in [
        ("identity_fp16", "FP16", [1.0], "receiving FP16 data via JSON is not supported. Please use the binary "
                                          "data format for input INPUT0"),
        ("identity_bf16", "BF16", [1.0], "receiving BF16 data via JSON is not supported"),
        ("identity_bool", "BOOL", [1], "expected BOOL values"),
        ("identity_fp32", "FP32", ["1.0"], "expected FP32 values"),
        ("identity_fp32", "FP32", [True], "expected FP32 values"),
        ("identity_uint8", "UINT8", [-1], "value out of range for UINT8"),
        ("identity_uint64", "UINT64", [-1], "value out of range for UINT64"),
        ("identity_uint64", "UINT64", [2 ** 64], "expected UINT64 values"),
        ("identity_int8", "INT8", [128], "value out of range for INT8"),
        ("identity_bytes", "BYTES", [1], "expected a string for BYTES input 'INPUT0'"),
        ("identity_bytes", "BYTES", [["a", 1]], "expected a string"),
    ]:
        shape = [len(data)] if datatype != "BYTES" else [1]
        body = _doc([{"name": "INPUT0", "datatype": datatype, "shape": shape, "data": data}])
        expect(srv, "POST", f"/v2/models/{model}/infer", body, 400, text)


def test_nested_json_data_is_accepted(srv):
    rows = [list(range(16))]
    status, _, raw = call(srv, "POST", INFER, _doc([_inp(data=rows), _inp("INPUT1", data=rows)]))
    assert status == 200 and json.loads(raw)["outputs"][0]["data"] == [2 * i for i in range(16)]


BIN_DOC = {"inputs": [{"name": "INPUT0", "datatype": "INT32", "shape": [1, 16], "parameters": {"binary_data_size": 64}},
                      {"name": "INPUT1", "datatype": "INT32", "shape": [1, 16], "parameters": {"binary_data_size": 64}}]}
BLOB = struct.pack("<16i", *range(16))


def test_binary_extension_errors(srv):
    body, headers = _binary(BIN_DOC, BLOB, BLOB)
    assert call(srv, "POST", INFER, body, headers)[0] == 200
    for value, text in [("abc", "Unable to parse Inference-Header-Content-Length, got: abc"),
                        ("1e3", "Unable to parse Inference-Header-Content-Length"),
                        ("", "Unable to parse Inference-Header-Content-Length"),
                        ("-1", "inference header size should be in range (0, "),
                        (str(len(body) + 1), "inference header size should be in range (0, ")]:
        expect(srv, "POST", INFER, body, 400, text, {BIN_HEADER: value})
    body, headers = _binary(BIN_DOC, BLOB)
    expect(srv, "POST", INFER, body, 400, "unexpected size for input 'INPUT1', expecting 64 additional bytes "
                                          "for model 'simple'", headers)
    body, headers = _binary(BIN_DOC, BLOB, BLOB, b"xx")
    expect(srv, "POST", INFER, body, 400, "unexpected additional input data for model 'simple'", headers)
    doc = json.loads(json.dumps(BIN_DOC))
    doc["inputs"][0]["parameters"]["binary_data_size"] = 60
    body, headers = _binary(doc, BLOB[:60], BLOB)
    expect(srv, "POST", INFER, body, 400, "input byte size mismatch for input 'INPUT0' for model 'simple'. "
                                          "Expected 64, got 60", headers)
    for bad in (-1, "64", 1.5, None):
        doc["inputs"][0]["parameters"]["binary_data_size"] = bad
        body, headers = _binary(doc, BLOB, BLOB)
        expect(srv, "POST", INFER, body, 400, "Unable to parse 'binary_data_size'", headers)
    # Binary data announced, but no header: the whole body is taken as JSON.
    expect(srv, "POST", INFER, json.dumps(BIN_DOC), 400, "unexpected size for input 'INPUT0'")


def test_binary_bytes_errors(srv):
    def doc(size):
        return {"inputs": [{"name": "INPUT0", "datatype": "BYTES", "shape": [1],
                            "parameters": {"binary_data_size": size}}]}

    good = struct.pack("<I", 2) + b"ab"
    body, headers = _binary(doc(len(good)), good)
    assert call(srv, "POST", "/v2/models/identity_bytes/infer", body, headers)[0] == 200
    bad = struct.pack("<I", 9) + b"ab"
    body, headers = _binary(doc(len(bad)), bad)
    expect(srv, "POST", "/v2/models/identity_bytes/infer", body, 400,
           "unable to parse BYTES data for input 'INPUT0'", headers)
    two = good + good
    body, headers = _binary(doc(len(two)), two)
    expect(srv, "POST", "/v2/models/identity_bytes/infer", body, 400,
           "unexpected number of string elements 2 for input 'INPUT0'", headers)


def test_raw_binary_errors(srv):
    raw = {BIN_HEADER: "0"}
    expect(srv, "POST", INFER, b"\x00" * 64, 400,
           "Raw request must only have 1 input (found 1) to be deduced but got 2 inputs in 'simple' model "
           "configuration", raw)
    expect(srv, "POST", "/v2/models/two_dynamic/infer", b"\x00" * 8, 400,
           "The shape of the raw input 'INPUT0' can not be deduced because there are more than one "
           "variable-sized dimension", raw)
    expect(srv, "POST", "/v2/models/identity_fp32/infer", b"\x00" * 6, 400, "input byte size mismatch", raw)


def test_compression_errors(srv):
    body = _doc().encode()
    headers = expect(srv, "POST", INFER, body, 400, "Unsupported compression type", {"Content-Encoding": "br"})
    assert headers["Accept-Encoding"] == "gzip, deflate"
    expect(srv, "POST", INFER, b"not gzip", 400, "failed to decompress the request body (gzip)",
           {"Content-Encoding": "gzip"})
    expect(srv, "POST", INFER, gzip.compress(body)[:-10], 400, "failed to decompress", {"Content-Encoding": "gzip"})
    expect(srv, "POST", INFER, b"\x00\x01garbage", 400, "failed to decompress the request body (deflate)",
           {"Content-Encoding": "deflate"})
    # identity is fine, and the response follows Accept-Encoding weights.
    status, resp_headers, raw = call(srv, "POST", INFER, body, {"Content-Encoding": "identity",
                                                                "Accept-Encoding": "deflate;q=0.5, gzip;q=0.9"})
    assert status == 200 and resp_headers["Content-Encoding"] == "gzip"
    assert json.loads(gzip.decompress(raw))["model_name"] == "simple"
    status, resp_headers, _ = call(srv, "POST", INFER, body, {"Accept-Encoding": "br"})
    assert status == 200 and "Content-Encoding" not in resp_headers


def test_model_and_route_errors(srv):
    expect(srv, "POST", "/v2/models/nope/infer", _doc(), 404, "Request for unknown model: 'nope' is not found")
    expect(srv, "POST", "/v2/models/simple/versions/2/infer", _doc(), 404, "'simple' version 2 is not found")
    expect(srv, "POST", "/v2/models/simple/versions/99999999999999999999/infer", _doc(), 400,
           "failed to get model version from specified version string")
    expect(srv, "POST", "/v2/models/repeat_int32/infer", _doc(), 501,
           "HTTP end point doesn't support models with decoupled transaction policy")
    for method, path in [("GET", INFER), ("POST", "/v2/health/live"), ("PUT", "/v2/logging"), ("DELETE", "/v2"),
                         ("POST", "/v2/models/simple"), ("GET", "/v2/repository/index"),
                         ("POST", "/v2/systemsharedmemory/status"), ("GET", "/v2/cudasharedmemory/register"),
                         ("HEAD", "/v2/health/ready")]:
        status, _, raw = call(srv, method, path)
        assert status == 405, (method, path)
        if method != "HEAD":
            assert json.loads(raw) == {"error": "Method Not Allowed"}
    for path in ["/", "/v1/models", "/v2/", "/v2/models", "/v2/models/simple/", "/v2/models/simple/versions/x",
                 "/v2/models/simple/versions/1/trace/setting", "/v2/models/simple/bogus", "/v2/health",
                 "/v2/repository/models/simple", "/v2/systemsharedmemory/region/r/bogus"]:
        status, _, raw = call(srv, "GET", path)
        assert status == 404 and json.loads(raw) == {"error": "Not Found"}, path


def test_health_and_ready_errors(srv, fake):
    expect(srv, "GET", "/v2/models/nope/ready", None, 400, "Model version not ready")
    expect(srv, "GET", "/v2/models/simple/versions/3/ready", None, 400, "Model version not ready")
    fake.ready = False
    try:
        expect(srv, "GET", "/v2/health/ready", None, 400, None)
        expect(srv, "GET", "/v2/models/simple/ready", None, 400, "Model version not ready")
    finally:
        fake.ready = True
    expect(srv, "GET", "/v2/health/ready", None, 200, None)
    expect(srv, "GET", "/v2/models/nope/config", None, 404, "unknown model")
    expect(srv, "GET", "/v2/models/nope/stats", None, 404, "unknown model")


def test_repository_errors(srv):
    expect(srv, "POST", "/v2/repository/myrepo/models/simple/load", "", 501,
           "'repository_name' specification is not supported")
    expect(srv, "POST", "/v2/repository/myrepo/models/simple/unload", "", 501,
           "'repository_name' specification is not supported")
    load = "/v2/repository/models/simple/load"
    expect(srv, "POST", load, "{", 400, "failed to parse the request JSON buffer")
    expect(srv, "POST", load, "[1]", 400, "expected a JSON object")
    expect(srv, "POST", load, json.dumps({"parameters": []}), 400, "Unable to parse 'parameters'")
    expect(srv, "POST", load, json.dumps({"parameters": {"config": 1}}), 400, "Unable to parse 'config'")
    expect(srv, "POST", load, json.dumps({"parameters": {"file:1/m.py": "!!!not base64"}}), 400,
           "unable to decode the base64 content of 'file:1/m.py'")
    expect(srv, "POST", load, json.dumps({"parameters": {"bogus": "x"}}), 400, "unrecognized load parameter 'bogus'")
    expect(srv, "POST", "/v2/repository/models/nope/load", "", 400, "failed to load 'nope'")
    unload = "/v2/repository/models/simple/unload"
    expect(srv, "POST", unload, json.dumps({"parameters": {"unload_dependents": "yes"}}), 400,
           "Unable to parse 'unload_dependents'")
    expect(srv, "POST", unload, json.dumps({"parameters": 3}), 400, "Unable to parse 'parameters'")
    expect(srv, "POST", "/v2/repository/index", json.dumps({"ready": 1}), 400, "Unable to parse 'ready'")
    expect(srv, "POST", "/v2/repository/index", "nope", 400, "failed to parse the request JSON buffer")
    assert call(srv, "POST", "/v2/repository/index", "")[0] == 200
    assert call(srv, "POST", "/v2/repository/other/index", json.dumps({"ready": True}))[0] == 200


def test_shared_memory_errors(srv):
    base = "/v2/systemsharedmemory"
    expect(srv, "POST", f"{base}/register", json.dumps({"key": "/k", "byte_size": 4}), 400,
           "'region name' is necessary to register system shared memory region")
    reg = f"{base}/region/r1/register"
    expect(srv, "POST", reg, "", 400, "The document is empty")
    expect(srv, "POST", reg, json.dumps({"byte_size": 4}), 400, "Shared memory register request has no 'key' field")
    expect(srv, "POST", reg, json.dumps({"key": "/k"}), 400, "Shared memory register request has no 'byte_size' field")
    expect(srv, "POST", reg, json.dumps({"key": 5, "byte_size": 4}), 400, "Unable to parse 'key'")
    expect(srv, "POST", reg, json.dumps({"key": "/k", "byte_size": -4}), 400, "Unable to parse 'byte_size'")
    expect(srv, "POST", reg, json.dumps({"key": "/k", "byte_size": 4, "offset": "0"}), 400, "Unable to parse 'offset'")
    expect(srv, "POST", reg, json.dumps({"key": "/tritonpy_does_not_exist", "byte_size": 4}), 400,
           "Unable to open shared memory region")
    expect(srv, "GET", f"{base}/region/nope/status", None, 404, "Unable to find system shared memory region")
    cuda = "/v2/cudasharedmemory"
    expect(srv, "POST", f"{cuda}/register", "{}", 400, "'region name' is necessary to register cuda shared memory")
    creg = f"{cuda}/region/g/register"
    b64 = base64.b64encode(bytes(64)).decode()
    expect(srv, "POST", creg, json.dumps({"byte_size": 4, "device_id": 0}), 400,
           "Shared memory register request has no 'raw_handle' field")
    expect(srv, "POST", creg, json.dumps({"raw_handle": b64, "byte_size": 4, "device_id": 0}), 400,
           "Unable to parse 'raw_handle'")
    expect(srv, "POST", creg, json.dumps({"raw_handle": {"b64": "???"}, "byte_size": 4, "device_id": 0}), 400,
           "'raw_handle' must be a valid base64 encoded cudaIpcMemHandle_t")
    expect(srv, "POST", creg, json.dumps({"raw_handle": {"b64": base64.b64encode(b"short").decode()},
                                          "byte_size": 4, "device_id": 0}), 400, "must be a valid base64")
    expect(srv, "POST", creg, json.dumps({"raw_handle": {"b64": b64}, "byte_size": 4}), 400,
           "Unable to parse 'device_id'")
    expect(srv, "POST", creg, json.dumps({"raw_handle": {"b64": b64}, "device_id": 0}), 400,
           "Unable to parse 'byte_size'")


def test_client_shm_disabled_is_501():
    fake = FakeFacade(allow_client_shm=False)
    with HttpServerThread(fake) as srv:
        expect(srv, "POST", "/v2/systemsharedmemory/region/r/register", json.dumps({"key": "/k", "byte_size": 4}),
               501, "client shared memory is disabled")


def test_logging_and_trace_errors(srv):
    expect(srv, "POST", "/v2/logging", "", 400, "The document is empty")
    expect(srv, "POST", "/v2/logging", "[]", 400, "expected a JSON object")
    expect(srv, "POST", "/v2/logging", json.dumps({"log_verbose_level": -1}), 400, "non-negative")
    expect(srv, "POST", "/v2/logging", json.dumps({"log_info": "yes"}), 400, "must be a boolean")
    expect(srv, "GET", "/v2/models/nope/trace/setting", None, 404, "unknown model")
    expect(srv, "POST", "/v2/trace/setting", "{", 400, "failed to parse the request JSON buffer")
    expect(srv, "POST", "/v2/trace/setting", json.dumps({"bogus": "1"}), 400, "unknown trace setting")


def test_restricted_categories_cover_every_route():
    groups = [(frozenset({"health"}), "k1", "v"), (frozenset({"metadata", "model-config"}), "k2", "v"),
              (frozenset({"inference"}), "k3", "v"), (frozenset({"shared-memory"}), "k4", "v"),
              (frozenset({"model-repository", "statistics"}), "k5", "v"), (frozenset({"trace", "logging"}), "k6", "v")]
    routes = [("GET", "/v2/health/live", "k1"), ("GET", "/v2/health/ready", "k1"), ("GET", "/v2/models/simple/ready", "k1"),
              ("GET", "/v2", "k2"), ("GET", "/v2/models/simple", "k2"), ("GET", "/v2/models/simple/config", "k2"),
              ("POST", INFER, "k3"), ("POST", "/v2/models/text_gen/generate", "k3"),
              ("POST", "/v2/models/text_gen/generate_stream", "k3"),
              ("GET", "/v2/systemsharedmemory/status", "k4"), ("POST", "/v2/cudasharedmemory/unregister", "k4"),
              ("POST", "/v2/repository/index", "k5"), ("POST", "/v2/repository/models/simple/unload", "k5"),
              ("GET", "/v2/models/stats", "k5"), ("GET", "/v2/models/simple/stats", "k5"),
              ("GET", "/v2/trace/setting", "k6"), ("GET", "/v2/models/simple/trace/setting", "k6"),
              ("GET", "/v2/logging", "k6")]
    fake = FakeFacade()
    with HttpServerThread(fake, HttpOptions(restricted_api=tuple(groups))) as srv:
        for method, path, key in routes:
            expect(srv, method, path, None, 403, f"This API is restricted, expecting header '{key}'")
            status, _, _ = call(srv, method, path, None, {key: "v"})
            assert status != 403, (method, path)


def test_too_large_body(srv):
    fake = FakeFacade()
    with HttpServerThread(fake, HttpOptions(max_input_size=1000)) as small:
        expect(small, "POST", INFER, " " * 1001, 400,
               "Request JSON size of 1001 bytes exceeds the maximum allowed value of 1000 bytes. "
               "Use --http-max-input-size to increase the limit.")
        expect(small, "POST", INFER, b"\x00" * 1001, 400, "Request size of 1001 bytes exceeds", {BIN_HEADER: "0"})
        expect(small, "POST", "/v2/logging", " " * 1001, 400, "exceeds the maximum allowed value")


def test_too_large_chunked_body():
    import http.client

    fake = FakeFacade()
    with HttpServerThread(fake, HttpOptions(max_input_size=1000)) as srv:
        conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=10)
        try:
            conn.request("POST", INFER, body=iter([b" " * 600, b" " * 600]), encode_chunked=True)
            resp = conn.getresponse()
            assert resp.status == 400 and "exceeds the maximum allowed value" in json.loads(resp.read())["error"]
        finally:
            conn.close()
        # A chunked body under the limit is fine.
        conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=10)
        try:
            body = _doc().encode()
            conn.request("POST", INFER, body=iter([body[:10], body[10:]]), encode_chunked=True)
            assert conn.getresponse().status == 200
        finally:
            conn.close()
