"""Python-backend models written as Triton's docs show them, unchanged, through a real server and the
real tritonclient (issue 19): a BLS model name read from a BYTES tensor, a malformed worker message
that must fail its call rather than hang, `TritonError(message=...)`, a decoupled `execute` that
returns something, BLS response iterators (plain `for` over `async_exec`, `len()`, `cancel()`)."""
from __future__ import annotations

import queue
import textwrap

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from support.server_process import ServerProcess

ONE = """
input [ { name: "IN" data_type: TYPE_INT32 dims: [ 1 ] } ]
output [ { name: "OUT" data_type: TYPE_INT32 dims: [ -1 ] } ]
instance_group [ { count: 1 kind: KIND_CPU } ]
"""
NAMED = """
input [ { name: "MODEL" data_type: TYPE_STRING dims: [ 1 ] }, { name: "IN" data_type: TYPE_INT32 dims: [ 1 ] } ]
output [ { name: "OUT" data_type: TYPE_INT32 dims: [ -1 ] } ]
instance_group [ { count: 1 kind: KIND_CPU } ]
"""
DECOUPLED = "model_transaction_policy { decoupled: true }\n"

HEADER = """
import asyncio, json, time
import numpy as np
import triton_python_backend_utils as pb_utils

def ints(values):
    return pb_utils.InferenceResponse([pb_utils.Tensor("OUT", np.array(values, dtype=np.int32))])

def n_of(req):
    return int(pb_utils.get_input_tensor_by_name(req, "IN").as_numpy()[0])

def call(model, n, **kw):
    x = pb_utils.Tensor("IN", np.array([n], dtype=np.int32))
    return pb_utils.InferenceRequest(model_name=model, inputs=[x], requested_output_names=["OUT"], **kw)
"""

MODELS = {
    "plus_one": (ONE, """
    def execute(self, requests):
        return [ints([n_of(r) + 1]) for r in requests]
    """),
    # The upstream pattern: the model to call comes in a BYTES tensor, as_numpy()[0] is bytes.
    "by_name": (NAMED, """
    def execute(self, requests):
        out = []
        for req in requests:
            name = pb_utils.get_input_tensor_by_name(req, "MODEL").as_numpy()[0]
            assert isinstance(name, bytes)
            x = pb_utils.get_input_tensor_by_name(req, "IN")
            resp = pb_utils.InferenceRequest(model_name=name, inputs=[x], requested_output_names=[b"OUT"]).exec()
            out.append(pb_utils.InferenceResponse(error=resp.error()) if resp.has_error()
                       else pb_utils.InferenceResponse(resp.output_tensors()))
        return out
    """),
    # Sends a BlsCall that the core cannot decode (a bytes model name, past pb_utils' checks):
    # the call must come back failed, not hang.
    "malformed": (ONE, """
    def execute(self, requests):
        import queue
        from tritonpy.backends.worker import channel
        from tritonpy.proto.messages import RequestMsg
        out = []
        for req in requests:
            q = queue.SimpleQueue()
            handle = channel.current().bls_start(
                model_name=b"plus_one", model_version="", request=RequestMsg("", [], ["OUT"]),
                inputs=[], decoupled=False, timeout_us=0, sink=q.put)
            result = q.get(timeout=20)
            handle.finish()
            err = result.response.error
            out.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(err.message)) if err else ints([0]))
        return out
    """),
    "raises_message": (ONE, """
    def execute(self, requests):
        return [pb_utils.InferenceResponse(error=pb_utils.TritonError(
            message="bad input here", code=pb_utils.TritonError.INVALID_ARG)) for _ in requests]
    """),
    # Decoupled, but returns a list: Triton answers the client with an error.
    "returns_list": (DECOUPLED + ONE, """
    def execute(self, requests):
        return [ints([1]) for _ in requests]
    """),
    # Decoupled, N responses slowly; ignores cancellation.
    "stubborn": (DECOUPLED + ONE, """
    def execute(self, requests):
        for req in requests:
            sender = req.get_response_sender()
            for i in range(n_of(req)):
                time.sleep(0.05)
                sender.send(ints([i]))
            sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        return None
    """),
    # Decoupled, honours cancellation: stops and closes when asked.
    "polite": (DECOUPLED + ONE, """
    def execute(self, requests):
        for req in requests:
            sender = req.get_response_sender()
            for i in range(n_of(req)):
                if req.is_cancelled():
                    break
                sender.send(ints([i]))
                time.sleep(0.02)
            sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        return None
    """),
    # Decoupled: a response, an error response that is not the last, another response, FINAL.
    "err_mid": (DECOUPLED + ONE, """
    def execute(self, requests):
        for req in requests:
            sender = req.get_response_sender()
            sender.send(ints([1]))
            sender.send(pb_utils.InferenceResponse(error=pb_utils.TritonError("hiccup")))
            sender.send(ints([2]), flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        return None
    """),
    # upstream bls_decoupled async example: a plain `for` over the awaited iterator.
    "async_for": (ONE, """
    async def execute(self, requests):
        out = []
        for req in requests:
            values = []
            for r in await call("stubborn", n_of(req)).async_exec(decoupled=True):
                values.append(int(r.output_tensors()[0].as_numpy()[0]))
            stream = await call("stubborn", 2).async_exec(decoupled=True)
            async for r in stream:
                values.append(10 + int(r.output_tensors()[0].as_numpy()[0]))
            out.append(ints(values))
        return out
    """),
    # len(), and cancel() on a model that ignores it (all 4 responses, no error) and on one that
    # honours it (stops early, still ends normally).
    "iter_cancel": (ONE, """
    def execute(self, requests):
        out = []
        for req in requests:
            it = call("stubborn", 4).exec(decoupled=True)
            time.sleep(0.6)
            waiting = len(it)
            first = next(it)
            it.cancel()
            rest = list(it)
            errors = sum(r.has_error() for r in [first] + rest)
            polite = call("polite", 500).exec(decoupled=True)
            seen = 0
            for r in polite:
                assert not r.has_error(), r.error().message()
                seen += 1
                if seen == 2:
                    polite.cancel()
            out.append(ints([waiting, 1 + len(rest), errors, int(seen < 100), len(it)]))
        return out
    """),
}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    repo = tmp_path_factory.mktemp("dropin")
    for name, (io, body) in MODELS.items():
        m = repo / name
        (m / "1").mkdir(parents=True)
        (m / "config.pbtxt").write_text(f'name: "{name}"\nbackend: "python"\n' + io)
        code = HEADER + "\n\nclass TritonPythonModel:\n" + textwrap.indent(textwrap.dedent(body), "    ")
        (m / "1" / "model.py").write_text(code)
    with ServerProcess(repo) as proc:
        yield proc
    assert proc.proc.returncode == 0, proc.output()


def _in(n: int, module=httpclient):
    inp = module.InferInput("IN", [1], "INT32")
    inp.set_data_from_numpy(np.array([n], dtype=np.int32))
    return [inp]


def test_bls_model_name_as_bytes(server, leak_check):
    client = httpclient.InferenceServerClient(server.http_url)
    name = httpclient.InferInput("MODEL", [1], "BYTES")
    name.set_data_from_numpy(np.array([b"plus_one"], dtype=np.object_))
    res = client.infer("by_name", [name, *_in(41)], timeout=30)
    assert res.as_numpy("OUT").tolist() == [42]
    client.close()


def test_malformed_worker_message_fails_its_call(server, leak_check):
    client = httpclient.InferenceServerClient(server.http_url, network_timeout=30)
    with pytest.raises(InferenceServerException, match="malformed message"):
        client.infer("malformed", _in(1))
    # The instance is fine afterwards.
    assert httpclient.InferenceServerClient(server.http_url).infer("plus_one", _in(1)).as_numpy("OUT").tolist() == [2]
    client.close()


def test_triton_error_message_keyword(server, leak_check):
    client = httpclient.InferenceServerClient(server.http_url)
    with pytest.raises(InferenceServerException, match="bad input here") as info:
        client.infer("raises_message", _in(1))
    assert info.value.status() == "400"
    client.close()


def test_decoupled_execute_returning_a_value_errors_the_client(server, leak_check):
    client = grpcclient.InferenceServerClient(server.grpc_url)
    results: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: results.put((result, error)))
    try:
        client.async_stream_infer("returns_list", _in(1, grpcclient))
        result, error = results.get(timeout=20)
        assert result is None
        assert "is using the decoupled mode and the execute function must return None" in str(error)
    finally:
        client.stop_stream()
        client.close()


def test_async_exec_decoupled_iterator_plain_for(server, leak_check):
    client = httpclient.InferenceServerClient(server.http_url)
    res = client.infer("async_for", _in(3), timeout=30)
    assert res.as_numpy("OUT").tolist() == [0, 1, 2, 10, 11]
    client.close()


def test_bls_iterator_len_and_cancel(server, leak_check):
    client = httpclient.InferenceServerClient(server.http_url, network_timeout=60)
    res = client.infer("iter_cancel", _in(0))
    waiting, total, errors, stopped_early, left = res.as_numpy("OUT").tolist()
    assert waiting >= 1  # responses that arrived while the caller slept
    assert total == 4 and errors == 0  # the stubborn model completed normally despite cancel()
    assert stopped_early == 1  # the polite model saw is_cancelled() and ended the call
    assert left == 0
    client.close()


def test_non_final_error_keeps_the_grpc_stream_going(server, leak_check):
    client = grpcclient.InferenceServerClient(server.grpc_url)
    results: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: results.put((result, error)))
    try:
        client.async_stream_infer("err_mid", _in(1, grpcclient), request_id="e1")
        got = []
        for _ in range(3):
            result, error = results.get(timeout=20)
            got.append("error: " + error.message() if error is not None else int(result.as_numpy("OUT")[0]))
        assert got == [1, "error: hiccup", 2]
        # The stream still serves: another request on it.
        client.async_stream_infer("err_mid", _in(1, grpcclient), request_id="e2")
        result, error = results.get(timeout=20)
        assert error is None and int(result.as_numpy("OUT")[0]) == 1
        for _ in range(2):
            results.get(timeout=20)
    finally:
        client.stop_stream()
        client.close()
