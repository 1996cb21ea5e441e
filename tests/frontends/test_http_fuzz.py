"""Malformed headers and bodies thrown at the infer route: never a 5xx, never a crash.

Hypothesis builds requests that are mostly well-formed with one part broken (random JSON values in
every field, random binary tails, random Inference-Header-Content-Length / Content-Encoding
values), plus pure garbage. After each example the server must still answer a valid request.
"""
from __future__ import annotations

import gzip
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from support.fake_facade import FakeFacade
from support.frontend_servers import HttpServerThread, http_request

MODELS = ["simple", "identity_fp32", "identity_bytes", "simple_string", "identity_bool", "batched_fp32",
          "identity_fp16", "repeat_int32", "nope"]
DATATYPES = ["INT32", "FP32", "BYTES", "BOOL", "FP16", "BF16", "UINT64", "INT8", "FLOAT", ""]

json_scalars = st.one_of(st.none(), st.booleans(), st.integers(-(2 ** 70), 2 ** 70),
                         st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=8))
json_values = st.recursive(json_scalars, lambda inner: st.one_of(st.lists(inner, max_size=5),
                                                                 st.dictionaries(st.text(max_size=6), inner, max_size=4)),
                           max_leaves=20)


def maybe(strategy):
    return st.one_of(st.just(None), strategy)


@st.composite
def infer_input(draw):
    item: dict = {}
    for key, good in (("name", st.sampled_from(["INPUT0", "INPUT1", "IN", "x"])),
                      ("datatype", st.sampled_from(DATATYPES)),
                      ("shape", st.lists(st.one_of(st.integers(-2, 20), st.sampled_from([2 ** 31, 2 ** 62, 2 ** 63])),
                                         max_size=3))):
        value = draw(st.one_of(good, json_values)) if draw(st.booleans()) else draw(good)
        if draw(st.integers(0, 9)):
            item[key] = value
    choice = draw(st.integers(0, 3))
    if choice == 0:
        item["data"] = draw(st.one_of(st.lists(st.integers(-300, 300), max_size=40),
                                      st.lists(st.text(max_size=3), max_size=20), json_values))
    params = {}
    if choice == 1:
        params["binary_data_size"] = draw(st.one_of(st.integers(-5, 100), json_values))
    if choice == 2:
        params["shared_memory_region"] = draw(st.one_of(st.text(max_size=4), json_values))
        if draw(st.booleans()):
            params["shared_memory_byte_size"] = draw(st.one_of(st.integers(-5, 100), json_values))
    if draw(st.booleans()):
        params.update(draw(st.dictionaries(st.text(max_size=6), json_values, max_size=2)))
    if params or draw(st.booleans()):
        item["parameters"] = params if draw(st.integers(0, 5)) else draw(json_values)
    return item


@st.composite
def infer_request(draw):
    doc: dict = {}
    if draw(st.integers(0, 9)):
        doc["inputs"] = draw(st.one_of(st.lists(infer_input(), max_size=3), json_values))
    if draw(st.booleans()):
        doc["outputs"] = draw(st.one_of(
            st.lists(st.fixed_dictionaries({"name": st.sampled_from(["OUTPUT0", "OUTPUT1", "OUT", "zz"])},
                                           optional={"parameters": st.dictionaries(
                                               st.sampled_from(["binary_data", "classification", "shared_memory_region",
                                                                "shared_memory_byte_size"]), json_values)}),
                     max_size=3), json_values))
    if draw(st.booleans()):
        doc["parameters"] = draw(st.one_of(st.dictionaries(
            st.sampled_from(["sequence_id", "sequence_start", "priority", "timeout", "binary_data_output",
                             "triton_x", "headers", "custom"]), json_values, max_size=3), json_values))
    if draw(st.booleans()):
        doc["id"] = draw(json_values)
    header = json.dumps(doc).encode()
    if draw(st.integers(0, 19)) == 0:
        header = draw(st.binary(max_size=64))
    tail = draw(st.binary(max_size=96)) if draw(st.booleans()) else b""
    body = header + tail
    headers = {}
    mode = draw(st.integers(0, 5))
    if mode == 1:
        headers["Inference-Header-Content-Length"] = str(len(header))
    elif mode == 2:
        headers["Inference-Header-Content-Length"] = draw(st.one_of(
            st.integers(-3, len(body) + 3).map(str), st.text(alphabet="0123456789+- x.", max_size=6)))
    elif mode == 3:
        headers["Inference-Header-Content-Length"] = "0"
    encoding = draw(st.sampled_from([None, None, "gzip", "deflate", "identity", "br", "gzip-bad"]))
    if encoding == "gzip":
        body = gzip.compress(body)
    elif encoding == "gzip-bad":
        encoding = "gzip"
    if encoding:
        headers["Content-Encoding"] = encoding
    if draw(st.booleans()):
        headers["Accept-Encoding"] = draw(st.sampled_from(["gzip", "deflate", "br", "gzip;q=x", ""]))
    return draw(st.sampled_from(MODELS)), body, headers


@pytest.fixture(scope="module")
def fuzz_server():
    fake = FakeFacade()
    with HttpServerThread(fake) as srv:
        yield srv, fake
    assert fake.responses_made == fake.responses_released


GOOD = json.dumps({"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [1], "data": [1.0]}]})


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                     HealthCheck.too_slow])
@given(case=infer_request())
def test_infer_route_never_fails_with_5xx(fuzz_server, case):
    srv, _ = fuzz_server
    model, body, headers = case
    status, resp_headers, raw = http_request(srv.port, "POST", f"/v2/models/{model}/infer", body, headers)
    assert status < 500 or status in (501, 503), (status, raw)
    if status != 200:
        assert "error" in json.loads(raw)
    # Still serving.
    assert http_request(srv.port, "POST", "/v2/models/identity_fp32/infer", GOOD)[0] == 200


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(path=st.text(alphabet="/v2modelsinfer%.-_0123456789ab", max_size=40),
       method=st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH"]), body=st.binary(max_size=32))
def test_any_path_any_method(fuzz_server, path, method, body):
    srv, _ = fuzz_server
    status, _, _ = http_request(srv.port, method, "/" + path.lstrip("/"), body)
    assert status < 500 or status in (501, 503)
