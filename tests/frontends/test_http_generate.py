"""The generate extension: /generate (one flat JSON reply) and /generate_stream (SSE), over the fake."""
from __future__ import annotations

import json

import aiohttp
import pytest

from support.fake_facade import FakeFacade
from support.frontend_servers import HttpServerThread, http_request


@pytest.fixture
def fake() -> FakeFacade:
    return FakeFacade()


@pytest.fixture
def srv(fake):
    with HttpServerThread(fake) as server:
        yield server
    assert fake.responses_made == fake.responses_released


def post(srv, path, doc, headers=None):
    body = doc if isinstance(doc, (str, bytes)) else json.dumps(doc)
    return http_request(srv.port, "POST", path, body, headers)


def events(raw: bytes) -> list[dict]:
    chunks = raw.decode().split("\n\n")
    assert chunks[-1] == ""
    out = []
    for chunk in chunks[:-1]:
        assert chunk.startswith("data: ")
        out.append(json.loads(chunk[len("data: "):]))
    return out


def test_generate_flat_reply(srv, fake):
    status, headers, raw = post(srv, "/v2/models/text_gen/generate",
                                {"id": "42", "text_input": "hello", "parameters": {"echo_a": 1, "temperature": 0.5},
                                 "echo_b": "x", "max_tokens": 7})
    assert status == 200 and headers["Content-Type"].startswith("application/json")
    assert json.loads(raw) == {"id": "42", "model_name": "text_gen", "model_version": "1", "echo_a": 1,
                               "echo_b": "x", "text_output": "olleh", "length": 5}
    req = fake.requests[-1]
    assert req.inputs[0].shape == [1] and req.inputs[0].data.tolist() == [b"hello"]
    assert req.parameters == {"echo_a": 1, "temperature": 0.5, "echo_b": "x", "max_tokens": 7}


def test_generate_shapes_and_lists(srv, fake):
    status, _, raw = post(srv, "/v2/models/batched_fp32/generate", {"INPUT0": [1.0, 2.0, 3.0]})
    assert status == 200 and json.loads(raw)["OUTPUT0"] == [1.0, 2.0, 3.0]
    assert fake.requests[-1].inputs[0].shape == [1, 3]
    status, _, raw = post(srv, "/v2/models/identity_fp32/generate", {"INPUT0": 2.5})
    assert status == 200 and json.loads(raw)["OUTPUT0"] == 2.5
    status, _, raw = post(srv, "/v2/models/simple/generate", {"INPUT0": list(range(16)), "INPUT1": [1] * 16})
    assert status == 200 and json.loads(raw)["OUTPUT0"] == [i + 1 for i in range(16)]
    assert fake.requests[-1].inputs[0].shape == [1, 16]
    status, _, raw = post(srv, "/v2/models/identity_fp16/generate", {"INPUT0": [0.5, 1.5]})
    assert status == 400 and "receiving FP16 data via JSON is not supported" in json.loads(raw)["error"]


def test_generate_decoupled_needs_exactly_one_response(srv):
    status, _, raw = post(srv, "/v2/models/text_words/generate", {"text_input": "one"})
    assert status == 200 and json.loads(raw)["text_output"] == "one"
    status, _, raw = post(srv, "/v2/models/text_words/generate", {"text_input": "a b"})
    assert status == 400 and "generate expects model to produce exactly 1 response" in json.loads(raw)["error"]


def test_generate_stream_events(srv):
    status, headers, raw = post(srv, "/v2/models/text_words/generate_stream", {"text_input": "a bb ccc", "id": "s"})
    assert status == 200 and headers["Content-Type"] == "text/event-stream; charset=utf-8"
    got = events(raw)
    assert [e["text_output"] for e in got] == ["a", "bb", "ccc"]
    assert all(e["id"] == "s" and e["model_name"] == "text_words" for e in got)
    status, _, raw = post(srv, "/v2/models/text_gen/generate_stream", {"text_input": "abc"})
    assert status == 200 and events(raw) == [{"model_name": "text_gen", "model_version": "1", "text_output": "cba",
                                              "length": 3}]


def test_generate_stream_errors(srv):
    # Before the first response: an ordinary JSON error with the core's status.
    status, headers, raw = post(srv, "/v2/models/text_words/generate_stream",
                                {"text_input": "a", "fake_error": "UNAVAILABLE"})
    assert status == 503 and json.loads(raw) == {"error": "fake UNAVAILABLE error"}
    # After it: an error event inside the 200 reply.
    status, _, raw = post(srv, "/v2/models/text_words/generate_stream", {"text_input": "a b FAIL c"})
    assert status == 200
    assert events(raw) == [{"model_name": "text_words", "model_version": "1", "text_output": "a"},
                           {"model_name": "text_words", "model_version": "1", "text_output": "b"},
                           {"error": "the model failed mid-stream"}]


async def test_generate_stream_read_incrementally(srv):
    async with aiohttp.ClientSession() as session:
        async with session.post(f"http://{srv.url}/v2/models/text_words/generate_stream",
                                json={"text_input": "x y z"}) as resp:
            assert resp.status == 200
            lines = [line async for line in resp.content if line.strip()]
    assert [json.loads(line[len(b"data: "):])["text_output"] for line in lines] == ["x", "y", "z"]


@pytest.mark.parametrize("path,body,headers,status,text", [
    ("/v2/models/nope/generate", {"text_input": "a"}, None, 404, "Request for unknown model: 'nope' is not found"),
    ("/v2/models/text_gen/generate", "{", None, 400, "failed to parse the request JSON buffer"),
    ("/v2/models/text_gen/generate", "[1]", None, 400, "expected a JSON object"),
    ("/v2/models/text_gen/generate", {"text_input": "a", "parameters": [1]}, None, 400,
     "Expected JSON object for keyword: 'parameters'"),
    ("/v2/models/text_gen/generate", {"text_input": "a", "p": {"x": 1}}, None, 400, "parameter 'p' has invalid type"),
    ("/v2/models/text_gen/generate", {"text_input": "a", "parameters": {"p": None}}, None, 400,
     "parameter 'p' has invalid type"),
    ("/v2/models/text_gen/generate", {"text_input": ["a", "b"]}, None, 400,
     "The schema can not convert input 'text_input' to tensor with proper shape"),
    ("/v2/models/text_gen/generate", {"text_input": [["a"]]}, None, 400, "must be a scalar or a flat list"),
    ("/v2/models/text_gen/generate", {"text_input": 5}, None, 400, "expected a string"),
    ("/v2/models/text_gen/generate", {"text_input": "a", "id": 5}, None, 400, "Unable to parse 'id'"),
    ("/v2/models/text_gen/generate", {}, None, 400, "expected 1 inputs but got 0"),
    ("/v2/models/simple/generate", {"INPUT0": list(range(15)), "INPUT1": [1] * 16}, None, 400,
     "can not convert input 'INPUT0'"),
    ("/v2/models/simple/generate", {"INPUT0": ["a"] * 16, "INPUT1": [1] * 16}, None, 400, "expected INT32 values"),
    ("/v2/models/text_gen/generate", {"text_input": "a"}, {"Content-Encoding": "gzip"}, 400,
     "Unsupported content-encoding, only 'identity' is supported."),
    ("/v2/models/text_gen/generate_stream", {"text_input": "a"}, {"Content-Encoding": "deflate"}, 400,
     "only 'identity' is supported"),
    ("/v2/models/text_gen/generate_stream", "nope", None, 400, "failed to parse the request JSON buffer"),
])
def test_generate_errors(srv, path, body, headers, status, text):
    got, resp_headers, raw = post(srv, path, body, headers)
    assert got == status, raw
    assert resp_headers["Content-Type"].startswith("application/json")
    assert text in json.loads(raw)["error"]


def test_generate_wrong_method(srv):
    status, _, raw = http_request(srv.port, "GET", "/v2/models/text_gen/generate")
    assert status == 405 and json.loads(raw) == {"error": "Method Not Allowed"}
