"""BLS from Python models through a real server and the real tritonclient: a chain of calls
(A -> B -> the ONNX add_sub), a call to a missing model, decoupled iterators (with cancel),
concurrent `async_exec`, and a timeout."""
from __future__ import annotations

import textwrap

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from support.servers import examples_module, serve
from test_decoupled import shm_bytes, write_models as write_decoupled_models

FP32X2 = """
input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ 4 ] }, { name: "INPUT1" data_type: TYPE_FP32 dims: [ 4 ] } ]
output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 4 ] }, { name: "OUTPUT1" data_type: TYPE_FP32 dims: [ 4 ] } ]
instance_group [ { count: 1 kind: KIND_CPU } ]
"""
FP32_ANY = """
input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ -1 ] } ]
output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ -1 ] } ]
instance_group [ { count: 1 kind: KIND_CPU } ]
"""
ONE_OUT = """
input [ { name: "IN" data_type: TYPE_INT32 dims: [ 1 ] } ]
output [ { name: "OUT" data_type: TYPE_INT32 dims: [ -1 ] } ]
instance_group [ { count: 1 kind: KIND_CPU } ]
"""

HEADER = """
import asyncio, json
import numpy as np
import triton_python_backend_utils as pb_utils

def call(model, inputs, outputs, **kw):
    return pb_utils.InferenceRequest(model_name=model, inputs=inputs, requested_output_names=outputs, **kw)

def inputs_of(req, batch=False):
    xs = [pb_utils.get_input_tensor_by_name(req, n).as_numpy() for n in ("INPUT0", "INPUT1")]
    if batch:
        xs = [x.reshape(1, -1) for x in xs]
    return [pb_utils.Tensor("INPUT0", xs[0]), pb_utils.Tensor("INPUT1", xs[1])]

def raise_if_error(resp):
    if resp.has_error():
        raise pb_utils.TritonModelException(resp.error().message())
    return resp

def ints(values):
    return pb_utils.InferenceResponse([pb_utils.Tensor("OUT", np.array(values, dtype=np.int32))])
"""

MODELS = {
    # B: add_sub through the ONNX model (batched [1, 4]).
    "model_b": (FP32X2, """
    def execute(self, requests):
        out = []
        for req in requests:
            resp = raise_if_error(call("add_sub_onnx", inputs_of(req, batch=True), ["OUTPUT0", "OUTPUT1"]).exec())
            tensors = [pb_utils.Tensor(t.name(), t.as_numpy().reshape(-1)) for t in resp.output_tensors()]
            out.append(pb_utils.InferenceResponse(tensors))
        return out
    """),
    # A: calls B, which calls the ONNX model.
    "model_a": (FP32X2, """
    def execute(self, requests):
        out = []
        for req in requests:
            resp = raise_if_error(call("model_b", inputs_of(req), ["OUTPUT0", "OUTPUT1"]).exec())
            out.append(pb_utils.InferenceResponse(resp.output_tensors()))
        return out
    """),
    # A BLS call to a model that does not exist: an error response, not an exception.
    "bls_missing": (ONE_OUT, """
    def execute(self, requests):
        out = []
        for req in requests:
            x = pb_utils.Tensor("IN", np.array([1], dtype=np.int32))
            resp = call("no_such_model", [x], ["OUT"]).exec()
            assert resp.has_error()
            out.append(pb_utils.InferenceResponse(error=resp.error()))
        return out
    """),
    # Decoupled BLS: all responses of `repeat`, then the first two of `endless` and cancel.
    "bls_decoupled": (ONE_OUT, """
    def execute(self, requests):
        out = []
        for req in requests:
            n = pb_utils.get_input_tensor_by_name(req, "IN")
            values = [int(r.output_tensors()[0].as_numpy()[0])
                      for r in call("repeat", [n], ["OUT"]).exec(decoupled=True)]
            it = call("endless", [n], ["OUT"], parameters={"marker": "/dev/null"}).exec(decoupled=True)
            seen = 0
            for r in it:
                if r.has_error():
                    break
                seen += 1
                if seen == 2:
                    it.cancel()
            values.append(100 + min(seen, 2))
            out.append(ints(values))
        return out
    """),
    # Two BLS calls at once from an async execute, plus an async decoupled call.
    "bls_async": (FP32X2, """
    async def execute(self, requests):
        out = []
        for req in requests:
            first, second = await asyncio.gather(
                call("add_sub_onnx", inputs_of(req, batch=True), ["OUTPUT0"]).async_exec(),
                call("model_b", inputs_of(req), ["OUTPUT1"]).async_exec(),
            )
            raise_if_error(first)
            raise_if_error(second)
            n = pb_utils.Tensor("IN", np.array([2], dtype=np.int32))
            stream = await call("repeat", [n], ["OUT"]).async_exec(decoupled=True)
            count = 0
            async for r in stream:
                count += 1
            assert count == 2, count
            o0 = pb_utils.get_output_tensor_by_name(first, "OUTPUT0").as_numpy().reshape(-1)
            o1 = pb_utils.get_output_tensor_by_name(second, "OUTPUT1").as_numpy().reshape(-1)
            out.append(pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT0", o0), pb_utils.Tensor("OUTPUT1", o1)]))
        return out
    """),
    # A call that cannot finish within its timeout.
    "bls_timeout": (ONE_OUT, """
    def execute(self, requests):
        out = []
        for req in requests:
            n = pb_utils.Tensor("IN", np.array([1], dtype=np.int32))
            resp = call("slow", [n], ["OUT"], timeout=200_000).exec()
            out.append(pb_utils.InferenceResponse(error=resp.error()) if resp.has_error() else ints([0]))
        return out
    """),
    # Large tensors both ways through BLS (shared-memory blocks on both sides, released after use).
    "bls_big": (ONE_OUT, """
    def execute(self, requests):
        out = []
        for req in requests:
            x = pb_utils.Tensor("INPUT0", np.arange(100000, dtype=np.float32))
            resp = raise_if_error(call("big_identity", [x], ["OUTPUT0"]).exec())
            y = resp.output_tensors()[0].as_numpy()
            out.append(ints([int(y.shape[0]), int(y[-1])]))
        return out
    """),
    "big_identity": (FP32_ANY, """
    def execute(self, requests):
        out = []
        for r in requests:
            x = pb_utils.get_input_tensor_by_name(r, "INPUT0").as_numpy()
            out.append(pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT0", x.copy())]))
        return out
    """),
    "slow": (ONE_OUT, """
    def execute(self, requests):
        import time
        time.sleep(1.5)
        return [ints([1]) for _ in requests]
    """),
}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    import onnx

    repo = tmp_path_factory.mktemp("bls")
    examples = examples_module()
    d = repo / "add_sub_onnx"
    (d / "1").mkdir(parents=True)
    onnx.save(examples._add_sub_model(), str(d / "1" / "model.onnx"))
    (d / "config.pbtxt").write_text(examples.ADD_SUB_ONNX_CONFIG)
    write_decoupled_models(repo)
    for name, (io, body) in MODELS.items():
        m = repo / name
        (m / "1").mkdir(parents=True, exist_ok=True)
        (m / "config.pbtxt").write_text(f'name: "{name}"\nbackend: "python"\n' + io)
        code = HEADER + "\n\nclass TritonPythonModel:\n" + textwrap.indent(textwrap.dedent(body), "    ")
        (m / "1" / "model.py").write_text(code)
    with serve(repo) as proc:
        yield proc


def _fp32_inputs(module=httpclient):
    a = np.arange(4, dtype=np.float32)
    b = np.full(4, 10, dtype=np.float32)
    ins = [module.InferInput("INPUT0", [4], "FP32"), module.InferInput("INPUT1", [4], "FP32")]
    ins[0].set_data_from_numpy(a)
    ins[1].set_data_from_numpy(b)
    return ins, a, b


def _int_input(n: int, module=httpclient):
    inp = module.InferInput("IN", [1], "INT32")
    inp.set_data_from_numpy(np.array([n], dtype=np.int32))
    return [inp]


def test_bls_chain_a_b_onnx(server, leak_check):
    client = httpclient.InferenceServerClient(server.http_url)
    ins, a, b = _fp32_inputs()
    for _ in range(3):
        res = client.infer("model_a", ins)
        np.testing.assert_allclose(res.as_numpy("OUTPUT0"), a + b)
        np.testing.assert_allclose(res.as_numpy("OUTPUT1"), a - b)
    client.close()


def test_bls_to_missing_model_is_an_error_response(server, leak_check):
    client = grpcclient.InferenceServerClient(server.grpc_url)
    with pytest.raises(InferenceServerException, match="no_such_model"):
        client.infer("bls_missing", _int_input(1, grpcclient))
    client.close()


def test_bls_decoupled_iterator_and_cancel(server, leak_check):
    client = httpclient.InferenceServerClient(server.http_url)
    res = client.infer("bls_decoupled", _int_input(3))
    assert res.as_numpy("OUT").tolist() == [0, 1, 2, 102]
    client.close()


def test_async_exec_concurrent_calls(server, leak_check):
    client = grpcclient.InferenceServerClient(server.grpc_url)
    ins, a, b = _fp32_inputs(grpcclient)
    res = client.infer("bls_async", ins)
    np.testing.assert_allclose(res.as_numpy("OUTPUT0"), a + b)
    np.testing.assert_allclose(res.as_numpy("OUTPUT1"), a - b)
    client.close()


def test_bls_timeout_is_an_error_response(server, leak_check):
    client = httpclient.InferenceServerClient(server.http_url)
    with pytest.raises(InferenceServerException, match="timeout"):
        client.infer("bls_timeout", _int_input(1))
    client.close()


@pytest.fixture
def big_warm(server):
    """One call first, so the arenas the server grows on demand exist before the leak snapshot."""
    client = httpclient.InferenceServerClient(server.http_url)
    client.infer("bls_big", _int_input(1))
    client.close()


def test_bls_large_tensors_release_their_memory(server, big_warm, leak_check):
    client = httpclient.InferenceServerClient(server.http_url)
    settled = shm_bytes()
    for _ in range(10):
        res = client.infer("bls_big", _int_input(1))
        assert res.as_numpy("OUT").tolist() == [100000, 99999]
    assert shm_bytes() <= settled
    client.close()
