"""ModelStreamInfer with `tritonclient.grpc` streaming (start_stream / async_stream_infer) and raw stubs."""
from __future__ import annotations

import queue
import time

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from support.fake_facade import FakeFacade
from support.frontend_servers import ThreadedGrpc
from tritonpy.core.errors import ErrorCode, ServerError
from tritonpy.proto import grpc_service_pb2 as pb
from tritonpy.proto import grpc_service_pb2_grpc as pb_grpc

TIMEOUT = 10


@pytest.fixture
def env():
    fake = FakeFacade(real_shm=False)
    srv = ThreadedGrpc(fake).start()
    client = grpcclient.InferenceServerClient(srv.url)
    results: queue.Queue = queue.Queue()
    yield fake, srv, client, results
    client.stop_stream(cancel_requests=True)
    client.close()
    srv.stop()


def _collect(results: queue.Queue, n: int) -> list:
    return [results.get(timeout=TIMEOUT) for _ in range(n)]


def _simple_inputs(value: int) -> list[grpcclient.InferInput]:
    out = []
    for name in ("INPUT0", "INPUT1"):
        i = grpcclient.InferInput(name, [1, 16], "INT32")
        i.set_data_from_numpy(np.full((1, 16), value, dtype=np.int32))
        out.append(i)
    return out


def _repeat_input(value: int) -> list[grpcclient.InferInput]:
    i = grpcclient.InferInput("IN", [1], "INT32")
    i.set_data_from_numpy(np.array([value], dtype=np.int32))
    return [i]


def _final(result) -> bool:
    return result.get_response().parameters["triton_final_response"].bool_param


def test_one_to_one_responses_come_in_request_order(env):
    _, _, client, results = env
    client.start_stream(callback=lambda result, error: results.put((result, error)))
    for k in range(6):
        client.async_stream_infer("simple", _simple_inputs(k), request_id=str(k))
    got = _collect(results, 6)
    assert all(err is None for _, err in got)
    assert [r.get_response().id for r, _ in got] == [str(k) for k in range(6)]
    assert [int(r.as_numpy("OUTPUT0")[0, 0]) for r, _ in got] == [2 * k for k in range(6)]
    assert all(_final(r) for r, _ in got)


def test_decoupled_model_streams_three_responses(env):
    fake, _, client, results = env
    client.start_stream(callback=lambda result, error: results.put((result, error)))
    client.async_stream_infer("repeat_int32", _repeat_input(10), request_id="d")
    got = _collect(results, 3)
    assert [int(r.as_numpy("OUT")[0]) for r, _ in got] == [10, 11, 12]
    assert [_final(r) for r, _ in got] == [False, False, False]
    # the model's final flag came without a response and no empty final response was asked for
    client.async_stream_infer("simple", _simple_inputs(1), request_id="after")
    (r, err), = _collect(results, 1)
    assert err is None and r.get_response().id == "after"
    assert fake.responses_released == 4


def test_empty_final_response_on_request(env):
    _, _, client, results = env
    client.start_stream(callback=lambda result, error: results.put((result, error)))
    client.async_stream_infer("repeat_int32", _repeat_input(0), request_id="e", enable_empty_final_response=True)
    got = _collect(results, 4)
    assert [_final(r) for r, _ in got] == [False, False, False, True]
    last = got[-1][0].get_response()
    assert last.id == "e" and last.model_name == "repeat_int32" and len(last.outputs) == 0


def test_errors_stay_in_the_stream_by_default(env):
    fake, _, client, results = env
    client.start_stream(callback=lambda result, error: results.put((result, error)))
    client.async_stream_infer("nope", _simple_inputs(0), request_id="bad")
    fake.stream_fail_after = 1
    client.async_stream_infer("repeat_int32", _repeat_input(5), request_id="half")
    (r0, e0), (r1, e1), (r2, e2) = _collect(results, 3)
    errors = [e for e in (e0, e1, e2) if e is not None]
    assert sorted(e.message() for e in errors) == [
        "Request for unknown model: 'nope' is not found",
        "decoupled model failed after 1 responses",
    ]
    assert [int(r.as_numpy("OUT")[0]) for r in (r0, r1, r2) if r is not None] == [5]
    fake.stream_fail_after = None
    client.async_stream_infer("simple", _simple_inputs(2), request_id="ok")
    (r, err), = _collect(results, 1)
    assert err is None and int(r.as_numpy("OUTPUT0")[0, 0]) == 4


def test_stream_error_message_carries_request_id(env):
    _, srv, _, _ = env
    with grpc.insecure_channel(srv.url) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        req = pb.ModelInferRequest(model_name="simple", id="x1")
        req.inputs.add(name="INPUT0", datatype="INT32", shape=[1, 16])
        responses = list(stub.ModelStreamInfer(iter([req])))
    assert len(responses) == 1
    assert responses[0].error_message == "unable to find data for input tensor 'INPUT0' for model 'simple' in request."
    assert responses[0].infer_response.id == "x1"
    assert responses[0].infer_response.parameters["triton_final_response"].bool_param


def test_grpc_error_header_ends_the_stream_with_a_status(env):
    fake, _, client, results = env
    client.start_stream(callback=lambda result, error: results.put((result, error)),
                        headers={"triton_grpc_error": "true"})
    client.async_stream_infer("simple", _simple_inputs(1), request_id="ok")
    (r, err), = _collect(results, 1)
    assert err is None
    fake.fail_next = ServerError(ErrorCode.INVALID_ARG, "bad things")
    client.async_stream_infer("simple", _simple_inputs(1), request_id="bad")
    (r, err), = _collect(results, 1)
    assert r is None and err.status() == "StatusCode.INVALID_ARGUMENT" and err.message() == "bad things"
    with pytest.raises(Exception, match="no longer in valid state"):
        client.async_stream_infer("simple", _simple_inputs(1))


def test_grpc_error_header_unknown_model_is_not_found(env):
    _, srv, _, _ = env
    with grpc.insecure_channel(srv.url) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        call = stub.ModelStreamInfer(iter([pb.ModelInferRequest(model_name="nope")]),
                                     metadata=[("triton_grpc_error", "true")])
        with pytest.raises(grpc.RpcError) as info:
            list(call)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    assert info.value.details() == "Request for unknown model: 'nope' is not found"


def test_cancelling_the_stream_cancels_queued_requests(env):
    fake, srv, client, results = env
    client.start_stream(callback=lambda result, error: results.put((result, error)))
    i = grpcclient.InferInput("INPUT0", [1], "INT32")
    i.set_data_from_numpy(np.array([1], dtype=np.int32))
    client.async_stream_infer("slow", [i])
    client.async_stream_infer("slow", [i])
    deadline = time.monotonic() + TIMEOUT
    while fake.started < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    client.stop_stream(cancel_requests=True)
    deadline = time.monotonic() + TIMEOUT
    while fake.cancelled < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert fake.cancelled == 2


def test_grpc_error_header_with_decoupled_failure_mid_stream(env):
    fake, _, client, results = env
    fake.stream_fail_after = 1
    client.start_stream(callback=lambda result, error: results.put((result, error)),
                        headers={"triton_grpc_error": "true"})
    client.async_stream_infer("repeat_int32", _repeat_input(3), request_id="d")
    (r0, e0), (r1, e1) = _collect(results, 2)
    assert e0 is None and int(r0.as_numpy("OUT")[0]) == 3
    assert r1 is None and e1.status() == "StatusCode.INTERNAL"
    assert e1.message() == "decoupled model failed after 1 responses"
