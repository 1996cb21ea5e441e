"""Implicit state (`sequence_batching.state`): the store in the worker (backends/worker/state.py) on its
own, in a real worker process, and end to end through a real server and tritonclient."""
from __future__ import annotations

import concurrent.futures
import json
import textwrap
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from support.server_process import ServerProcess
from support.servers import serve
from support.instance_support import make_model, make_spec
from tritonpy.backends.base import BackendError, BackendRequest, BackendResponse, OutputTensor
from tritonpy.backends.worker.state import SequenceStates
from tritonpy.core.errors import ServerError
from tritonpy.core.instance.worker_instance import WorkerInstance
from tritonpy.core.types import InferRequest, InputTensor
from tritonpy.proto import dtypes
from tritonpy.proto.messages import EndSequences, ErrorCode
from support.worker_harness import WorkerHarness, write_model

START, END = 1, 2

# out = state + input; the new state is returned as STATE_OUT (never shown to clients).
STATE_MODEL = textwrap.dedent(
    '''
    import os
    import numpy as np
    import triton_python_backend_utils as pb_utils


    class TritonPythonModel:
        def execute(self, requests):
            responses = []
            for request in requests:
                x = pb_utils.get_input_tensor_by_name(request, "INPUT").as_numpy()
                state = pb_utils.get_input_tensor_by_name(request, "STATE_IN").as_numpy()
                total = (state + x).astype(np.int32)
                responses.append(pb_utils.InferenceResponse([
                    pb_utils.Tensor("OUTPUT", total),
                    pb_utils.Tensor("PID", np.full(x.shape, os.getpid(), dtype=np.int64)),
                    pb_utils.Tensor("STATE_OUT", total),
                ]))
            return responses
    '''
)


def state_config(name: str = "state_acc", *, max_batch_size: int = 4, initial: dict | None = None,
                 data_type: str = "TYPE_INT32") -> dict:
    state = {"input_name": "STATE_IN", "output_name": "STATE_OUT", "data_type": data_type, "dims": [1]}
    if initial is not None:
        state["initial_state"] = [initial]
    return {
        "name": name,
        "backend": "python",
        "max_batch_size": max_batch_size,
        "input": [{"name": "INPUT", "data_type": "TYPE_INT32", "dims": [1]}],
        "output": [
            {"name": "OUTPUT", "data_type": "TYPE_INT32", "dims": [1]},
            {"name": "PID", "data_type": "TYPE_INT64", "dims": [1]},
        ],
        "sequence_batching": {"state": [state]},
    }


def request(corr, flags: int, value: int = 1, batched: bool = True) -> BackendRequest:
    shape = (1, 1) if batched else (1,)
    return BackendRequest(
        request_id="", inputs={"INPUT": np.full(shape, value, np.int32)}, datatypes={"INPUT": "INT32"},
        requested_outputs=["OUTPUT"], correlation_id=corr, flags=flags,
    )


def step(store: SequenceStates, req: BackendRequest) -> BackendResponse:
    """What the worker does around execute, with the model above done in numpy."""
    assert store.inject(req) is None
    total = (req.inputs["STATE_IN"] + req.inputs["INPUT"]).astype(np.int32)
    response = BackendResponse([OutputTensor("OUTPUT", "INT32", total), OutputTensor("STATE_OUT", "INT32", total)])
    store.capture([req], [response])
    return response


# --- the store on its own ---------------------------------------------------------------------------------
def test_state_flows_from_one_request_to_the_next(tmp_path):
    store = SequenceStates.from_config(state_config(initial={"data_type": "TYPE_INT32", "dims": [1],
                                                             "zero_data": True, "name": "z"}), tmp_path)
    first = step(store, request(5, START, 2))
    assert [t.name for t in first.outputs] == ["OUTPUT"]  # the state output never reaches the client
    assert int(first.outputs[0].array[0, 0]) == 2
    assert int(step(store, request(5, 0, 3)).outputs[0].array[0, 0]) == 5
    assert int(step(store, request(6, START, 7)).outputs[0].array[0, 0]) == 7  # sequences are separate
    assert int(step(store, request(5, END, 4)).outputs[0].array[0, 0]) == 9
    assert 5 not in store and 6 in store  # END dropped the state
    missing = request(5, 0)
    error = store.inject(missing)
    assert error is not None and "implicit state of sequence 5 is not available" in error.message
    store.drop([6])
    assert len(store) == 0


def test_start_resets_an_existing_state(tmp_path):
    store = SequenceStates.from_config(state_config(), tmp_path)
    step(store, request("s", START, 10))
    assert int(step(store, request("s", START, 1)).outputs[0].array[0, 0]) == 1


def test_initial_state_from_file_and_without_batching(tmp_path):
    (tmp_path / "initial_state").mkdir()
    (tmp_path / "initial_state" / "hundred").write_bytes(np.array([100], np.int32).tobytes())
    cfg = state_config(max_batch_size=0, initial={"data_type": "TYPE_INT32", "dims": [1], "data_file": "hundred",
                                                  "name": "h"})
    store = SequenceStates.from_config(cfg, tmp_path)
    out = step(store, request(1, START, 1, batched=False))
    assert out.outputs[0].array.shape == (1,) and int(out.outputs[0].array[0]) == 101


def test_string_state(tmp_path):
    (tmp_path / "initial_state").mkdir()
    (tmp_path / "initial_state" / "greeting").write_bytes(dtypes.serialize_bytes(np.array([b"hi"], dtype=object)))
    cfg = state_config(data_type="TYPE_STRING", initial={"data_type": "TYPE_STRING", "dims": [1],
                                                         "data_file": "greeting", "name": "g"})
    store = SequenceStates.from_config(cfg, tmp_path)
    req = request(1, START)
    store.inject(req)
    assert req.datatypes["STATE_IN"] == "BYTES" and req.inputs["STATE_IN"].reshape(-1)[0] == b"hi"


def test_state_output_of_the_wrong_type_fails_that_request(tmp_path):
    store = SequenceStates.from_config(state_config(), tmp_path)
    req = request(1, START)
    store.inject(req)
    response = BackendResponse([OutputTensor("STATE_OUT", "FP32", np.zeros((1, 1), np.float32))])
    store.capture([req], [response])
    assert response.error is not None and "STATE_OUT" in response.error.message


@pytest.mark.parametrize(
    "initial, message",
    [
        ({"data_type": "TYPE_FP32", "dims": [1], "zero_data": True, "name": "z"}, "does not match the state data type"),
        ({"data_type": "TYPE_INT32", "dims": [1], "zero_data": True}, "Field 'name' must be set"),
        ({"data_type": "TYPE_INT32", "dims": [1, 1], "zero_data": True, "name": "z"}, "Number of dimensions"),
        ({"data_type": "TYPE_INT32", "dims": [-1], "zero_data": True, "name": "z"}, "contains variable dimensions"),
        ({"data_type": "TYPE_INT32", "dims": [1], "data_file": "nope", "name": "z"}, "unable to read initial_state"),
    ],
)
def test_bad_initial_state_fails_the_load(tmp_path, initial, message):
    with pytest.raises(BackendError, match=message):
        SequenceStates.from_config(state_config(initial=initial), tmp_path)


def test_short_initial_state_file(tmp_path):
    (tmp_path / "initial_state").mkdir()
    (tmp_path / "initial_state" / "short").write_bytes(b"\x01\x00")
    initial = {"data_type": "TYPE_INT32", "dims": [1], "data_file": "short", "name": "s"}
    with pytest.raises(BackendError, match="initial_state setting expects 4 bytes, but the data provided from short"):
        SequenceStates.from_config(state_config(initial=initial), tmp_path)


def test_models_without_state_have_no_store(tmp_path):
    assert SequenceStates.from_config({"name": "m", "sequence_batching": {}}, tmp_path) is None
    assert SequenceStates.from_config({"name": "m"}, tmp_path) is None


# --- in a real worker -------------------------------------------------------------------------------------
def test_worker_keeps_state_and_drops_it_when_told(tmp_path, leak_check):
    model_dir = write_model(tmp_path, "state_acc", files={"model.py": STATE_MODEL})
    with WorkerHarness(tmp_path, model_dir=model_dir, backend="python", config=state_config()) as h:
        h.start()
        assert h.init().ok

        def infer(corr, flags, value):
            msg = h.request({"INPUT": np.full((1, 1), value, np.int32)}, outputs=["OUTPUT"])
            msg.correlation_id, msg.flags = corr, flags
            done = h.execute([msg])
            try:
                response = done.responses[0]
                if response.error is not None:
                    return response.error
                return {name: a.copy() for name, a in h.outputs(response).items()}
            finally:
                h.release(done.batch_id)

        assert int(infer(9, START, 4)["OUTPUT"][0, 0]) == 4
        out = infer(9, 0, 5)
        assert list(out) == ["OUTPUT"] and int(out["OUTPUT"][0, 0]) == 9
        h.send(EndSequences([9]))  # the core's idle timeout
        error = infer(9, 0, 1)
        assert error.code == ErrorCode.INTERNAL and "implicit state of sequence 9 is not available" in error.message
        assert int(infer(9, START, 1)["OUTPUT"][0, 0]) == 1
        h.free_inputs()
        assert h.finalize() == 0


def test_worker_fails_the_load_on_a_bad_initial_state(tmp_path, leak_check):
    model_dir = write_model(tmp_path, "state_acc", files={"model.py": STATE_MODEL})
    config = state_config(initial={"data_type": "TYPE_INT32", "dims": [1], "data_file": "missing", "name": "m"})
    with WorkerHarness(tmp_path, model_dir=model_dir, backend="python", config=config) as h:
        h.start()
        done = h.init()
        assert not done.ok and "unable to read initial_state file" in done.error
        h.wait_exit()


async def test_instance_end_sequences_reaches_the_worker(tmp_path, leak_check):
    """WorkerInstance.end_sequences (what the sequence batcher calls at an idle timeout) drops the
    state in the worker, in order with the batches around it."""
    make_model(tmp_path / "repo", "state_acc", STATE_MODEL)
    inst = WorkerInstance(make_spec(tmp_path, "state_acc", "state_acc_0", config_json=json.dumps(state_config())))

    async def infer(corr, start: bool, value: int):
        req = InferRequest(model_name="state_acc", inputs=[InputTensor("INPUT", "INT32", [1, 1],
                           data=np.full((1, 1), value, np.int32))], sequence_id=corr, sequence_start=start)
        (result,) = (await inst.execute([req], gather=False)).results
        if isinstance(result, ServerError):
            return result
        try:
            return int(result.outputs[0].data[0, 0]), [o.name for o in result.outputs]
        finally:
            result.release()

    try:
        await inst.start()
        assert await infer("a", True, 2) == (2, ["OUTPUT", "PID"])
        assert (await infer("a", False, 3))[0] == 5
        inst.end_sequences(["a"])
        error = await infer("a", False, 1)
        assert isinstance(error, ServerError) and "implicit state of sequence a is not available" in error.message
    finally:
        await inst.stop()


# --- end to end -------------------------------------------------------------------------------------------
def _pbtxt(name: str, *, max_batch_size: int, count: int, initial: str) -> str:
    return textwrap.dedent(
        f'''
        name: "{name}"
        backend: "python"
        max_batch_size: {max_batch_size}
        input [ {{ name: "INPUT" data_type: TYPE_INT32 dims: [ 1 ] }} ]
        output [
          {{ name: "OUTPUT" data_type: TYPE_INT32 dims: [ 1 ] }},
          {{ name: "PID" data_type: TYPE_INT64 dims: [ 1 ] }}
        ]
        sequence_batching {{
          state [ {{
            input_name: "STATE_IN"
            output_name: "STATE_OUT"
            data_type: TYPE_INT32
            dims: [ 1 ]
            initial_state: {{ data_type: TYPE_INT32 dims: [ 1 ] {initial} }}
          }} ]
        }}
        instance_group [ {{ count: {count} kind: KIND_CPU }} ]
        '''
    )


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    repo: Path = tmp_path_factory.mktemp("state_repo")
    for name, mbs, count, initial in (
        ("state_zero", 4, 2, 'zero_data: true name: "zero"'),
        ("state_file", 0, 1, 'data_file: "hundred" name: "hundred"'),
    ):
        (repo / name / "1").mkdir(parents=True)
        (repo / name / "config.pbtxt").write_text(_pbtxt(name, max_batch_size=mbs, count=count, initial=initial))
        (repo / name / "1" / "model.py").write_text(STATE_MODEL)
    (repo / "state_file" / "initial_state").mkdir()
    (repo / "state_file" / "initial_state" / "hundred").write_bytes(np.array([100], np.int32).tobytes())
    with serve(repo) as proc:
        yield proc


def _infer(client, module, model: str, value: int, batched: bool, **kw):
    shape = [1, 1] if batched else [1]
    tensor = module.InferInput("INPUT", shape, "INT32")
    tensor.set_data_from_numpy(np.full(shape, value, np.int32))
    return client.infer(model, [tensor], **kw)


def _sequence(server, protocol: str, corr: int, values: list[int]) -> list[tuple[int, int]]:
    if protocol == "http":
        module, client = httpclient, httpclient.InferenceServerClient(server.http_url)
    else:
        module, client = grpcclient, grpcclient.InferenceServerClient(server.grpc_url)
    out = []
    try:
        for i, value in enumerate(values):
            result = _infer(client, module, "state_zero", value, True, sequence_id=corr,
                            sequence_start=i == 0, sequence_end=i == len(values) - 1)
            assert result.as_numpy("STATE_OUT") is None  # state outputs stay in the worker
            out.append((int(result.as_numpy("OUTPUT")[0, 0]), int(result.as_numpy("PID")[0, 0])))
    finally:
        client.close()
    return out


def test_state_carried_between_requests_across_two_instances(server, leak_check):
    values = {corr: [corr, 1, 2, 3] for corr in range(1, 7)}
    with concurrent.futures.ThreadPoolExecutor(len(values)) as pool:
        futures = {corr: pool.submit(_sequence, server, "http" if corr % 2 else "grpc", corr, v)
                   for corr, v in values.items()}
        results = {corr: f.result(timeout=120) for corr, f in futures.items()}
    pids = set()
    for corr, steps in results.items():
        assert [total for total, _ in steps] == list(np.cumsum(values[corr]))
        assert len({pid for _, pid in steps}) == 1
        pids |= {pid for _, pid in steps}
    assert len(pids) == 2


def test_initial_state_from_file(server):
    with httpclient.InferenceServerClient(server.http_url) as client:
        first = _infer(client, httpclient, "state_file", 1, False, sequence_id="s1", sequence_start=True)
        second = _infer(client, httpclient, "state_file", 2, False, sequence_id="s1", sequence_end=True)
    assert int(first.as_numpy("OUTPUT")[0]) == 101 and int(second.as_numpy("OUTPUT")[0]) == 103


def test_state_tensors_are_not_client_tensors(server):
    with httpclient.InferenceServerClient(server.http_url) as client:
        with pytest.raises(InferenceServerException, match="unexpected inference output 'STATE_OUT'"):
            client.infer("state_file", [_state_in(httpclient, "INPUT")], sequence_id=5, sequence_start=True,
                         outputs=[httpclient.InferRequestedOutput("STATE_OUT")])
        with pytest.raises(InferenceServerException, match="'STATE_IN' for model 'state_file' is a sequence control"):
            client.infer("state_file", [_state_in(httpclient, "INPUT"), _state_in(httpclient, "STATE_IN")],
                         sequence_id=5, sequence_start=True)


def _state_in(module, name: str):
    tensor = module.InferInput(name, [1], "INT32")
    tensor.set_data_from_numpy(np.ones([1], np.int32))
    return tensor


def test_state_lost_in_a_worker_restart_is_a_clear_error(tmp_path, leak_check):
    """The state lives in the worker: when it restarts the sequence's state is gone, and the next
    request of the sequence says so (docs/compatibility.md) instead of silently starting over."""
    crashing = STATE_MODEL.replace(
        "x = pb_utils.get_input_tensor_by_name(request, \"INPUT\").as_numpy()",
        "x = pb_utils.get_input_tensor_by_name(request, \"INPUT\").as_numpy()\n"
        "            if int(x.reshape(-1)[0]) < 0:\n"
        "                os._exit(3)",
    )
    assert "os._exit(3)" in crashing
    (tmp_path / "state_crash" / "1").mkdir(parents=True)
    (tmp_path / "state_crash" / "config.pbtxt").write_text(
        _pbtxt("state_crash", max_batch_size=4, count=1, initial='zero_data: true name: "zero"'))
    (tmp_path / "state_crash" / "1" / "model.py").write_text(crashing)
    with ServerProcess(tmp_path) as proc:
        client = httpclient.InferenceServerClient(proc.http_url)
        assert int(_infer(client, httpclient, "state_crash", 5, True, sequence_id=9,
                          sequence_start=True).as_numpy("OUTPUT")[0, 0]) == 5
        with pytest.raises(InferenceServerException):
            _infer(client, httpclient, "state_crash", -1, True, sequence_id=9)
        import time

        deadline = time.monotonic() + 30
        while not client.is_model_ready("state_crash"):
            assert time.monotonic() < deadline, "the worker did not come back"
            time.sleep(0.05)
        with pytest.raises(InferenceServerException, match="instance restarted since.*start the sequence again"):
            _infer(client, httpclient, "state_crash", 1, True, sequence_id=9)
        again = _infer(client, httpclient, "state_crash", 7, True, sequence_id=9, sequence_start=True)
        assert int(again.as_numpy("OUTPUT")[0, 0]) == 7
        client.close()
