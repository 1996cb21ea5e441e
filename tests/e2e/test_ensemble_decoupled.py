"""An ensemble whose middle step is a decoupled Python model (as Triton allows): the ensemble
streams one response per response of that step, each carried through the steps after it; it is
served as a decoupled model (gRPC stream), and an error in a branch reaches the client (issue 19)."""
from __future__ import annotations

import queue
import textwrap

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from support.server_process import ServerProcess

HEADER = """
import numpy as np
import triton_python_backend_utils as pb_utils

def value(req, name):
    return pb_utils.get_input_tensor_by_name(req, name).as_numpy()

def tensor(name, array):
    return pb_utils.Tensor(name, np.asarray(array, dtype=np.int32))
"""

MODELS = {
    "tok": ("IN", "X", False, """
    def execute(self, requests):
        return [pb_utils.InferenceResponse([tensor("X", value(r, "IN") * 10)]) for r in requests]
    """),
    "gen": ("X", "Y", True, """
    def execute(self, requests):
        for r in requests:
            sender = r.get_response_sender()
            x = value(r, "X")
            for i in range(3):
                sender.send(pb_utils.InferenceResponse([tensor("Y", x + i)]))
            sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        return None
    """),
    "detok": ("Y", "OUT", False, """
    def execute(self, requests):
        out = []
        for r in requests:
            y = value(r, "Y")
            if int(y[0]) == 662:
                out.append(pb_utils.InferenceResponse(error=pb_utils.TritonError("detok refuses 662")))
            else:
                out.append(pb_utils.InferenceResponse([tensor("OUT", y * 2)]))
        return out
    """),
}

IO = 'data_type: TYPE_INT32 dims: [ 1 ]'


def _step(model, src, dst, inp, out):
    return (f'{{ model_name: "{model}" model_version: -1 input_map {{ key: "{inp}" value: "{src}" }} '
            f'output_map {{ key: "{out}" value: "{dst}" }} }}')


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    repo = tmp_path_factory.mktemp("ens_decoupled")
    for name, (inp, out, decoupled, body) in MODELS.items():
        d = repo / name
        (d / "1").mkdir(parents=True)
        policy = "model_transaction_policy { decoupled: true }\n" if decoupled else ""
        (d / "config.pbtxt").write_text(
            f'name: "{name}"\nbackend: "python"\n{policy}'
            f'input [ {{ name: "{inp}" {IO} }} ]\noutput [ {{ name: "{out}" {IO} }} ]\n'
        )
        (d / "1" / "model.py").write_text(
            HEADER + "\n\nclass TritonPythonModel:\n" + textwrap.indent(textwrap.dedent(body), "    "))
    d = repo / "pipe"
    (d / "1").mkdir(parents=True)
    steps = [_step("tok", "IN", "x", "IN", "X"), _step("gen", "x", "y", "X", "Y"),
             _step("detok", "y", "OUT", "Y", "OUT")]
    (d / "config.pbtxt").write_text(
        f'name: "pipe"\nplatform: "ensemble"\ninput [ {{ name: "IN" {IO} }} ]\noutput [ {{ name: "OUT" {IO} }} ]\n'
        f'ensemble_scheduling {{ step [ {", ".join(steps)} ] }}\n'
    )
    with ServerProcess(repo) as proc:
        yield proc
    assert proc.proc.returncode == 0, proc.output()


def _stream(server, n: int, count: int):
    client = grpcclient.InferenceServerClient(server.grpc_url)
    results: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: results.put((result, error)))
    inp = grpcclient.InferInput("IN", [1], "INT32")
    inp.set_data_from_numpy(np.array([n], dtype=np.int32))
    try:
        client.async_stream_infer("pipe", [inp], request_id="p")
        got = []
        for _ in range(count):
            result, error = results.get(timeout=30)
            got.append(error.message() if error is not None else int(result.as_numpy("OUT")[0]))
        return got
    finally:
        client.stop_stream()
        client.close()


def test_each_response_of_the_decoupled_step_flows_on(server, leak_check):
    assert _stream(server, 1, 3) == [20, 22, 24]


def test_the_ensemble_is_served_as_decoupled(server, leak_check):
    client = httpclient.InferenceServerClient(server.http_url)
    assert client.get_model_config("pipe")["model_transaction_policy"]["decoupled"] is True
    inp = httpclient.InferInput("IN", [1], "INT32")
    inp.set_data_from_numpy(np.array([1], dtype=np.int32))
    with pytest.raises(InferenceServerException, match="decoupled") as info:
        client.infer("pipe", [inp])
    assert info.value.status() == "501"
    client.close()


def test_an_error_in_a_branch_reaches_the_client(server, leak_check):
    got = _stream(server, 66, 3)  # x = 660; y = 660, 661, 662: the third branch fails in detok
    assert got[:2] == [1320, 1322]
    assert "in ensemble 'pipe', step 2 (model 'detok')" in got[2] and "detok refuses 662" in got[2]
