"""Sequence batching end to end: a real tritonpy-server, real Python-backend workers, the real
tritonclient (HTTP and gRPC) sending `sequence_id` / `sequence_start` / `sequence_end`.

The accumulator model keeps a running sum per correlation id, reads the control inputs the core
injects (START/END/READY/CORRID) and checks them against `request.flags()` and
`request.correlation_id()`; it answers the sum, its own pid (which instance ran it), the flags
and the number of requests in its batch.
"""
from __future__ import annotations

import concurrent.futures
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from support.server_process import ServerProcess
from support.servers import serve

ACCUMULATOR = textwrap.dedent(
    '''
    import os
    import numpy as np
    import triton_python_backend_utils as pb_utils


    def scalar(request, name):
        value = pb_utils.get_input_tensor_by_name(request, name).as_numpy().reshape(-1)[0]
        return value.decode() if isinstance(value, bytes) else value


    class TritonPythonModel:
        def initialize(self, args):
            self.sums = {}

        def execute(self, requests):
            responses = []
            for request in requests:
                x = pb_utils.get_input_tensor_by_name(request, "INPUT").as_numpy()
                start, end, ready = (int(scalar(request, n)) for n in ("START", "END", "READY"))
                corrid = scalar(request, "CORRID")
                flags = request.flags()
                problems = []
                if bool(start) != bool(flags & 1) or bool(end) != bool(flags & 2):
                    problems.append(f"controls START={start} END={end} but flags={flags}")
                if not ready:
                    problems.append("READY is false")
                expected = request.correlation_id()
                if (corrid if isinstance(corrid, str) else int(corrid)) != expected:
                    problems.append(f"CORRID {corrid!r} != correlation_id() {expected!r}")
                if start:
                    self.sums[expected] = 0
                if expected not in self.sums:
                    problems.append(f"sequence {expected!r} was never started here")
                if problems:
                    responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError("; ".join(problems))))
                    continue
                self.sums[expected] += int(x.reshape(-1)[0])
                total = self.sums[expected]
                if end:
                    del self.sums[expected]
                responses.append(pb_utils.InferenceResponse([
                    pb_utils.Tensor("OUTPUT", np.full(x.shape, total, dtype=np.int32)),
                    pb_utils.Tensor("PID", np.full(x.shape, os.getpid(), dtype=np.int64)),
                    pb_utils.Tensor("FLAGS", np.full(x.shape, flags, dtype=np.int32)),
                    pb_utils.Tensor("BATCH", np.full(x.shape, len(requests), dtype=np.int32)),
                ]))
            return responses
    '''
)


def _config(name: str, *, max_batch_size: int, count: int, corrid_type: str = "TYPE_UINT64", strategy: str = "",
            idle_us: int = 10_000_000) -> str:
    return textwrap.dedent(
        f'''
        name: "{name}"
        backend: "python"
        max_batch_size: {max_batch_size}
        input [ {{ name: "INPUT" data_type: TYPE_INT32 dims: [ 1 ] }} ]
        output [
          {{ name: "OUTPUT" data_type: TYPE_INT32 dims: [ 1 ] }},
          {{ name: "PID" data_type: TYPE_INT64 dims: [ 1 ] }},
          {{ name: "FLAGS" data_type: TYPE_INT32 dims: [ 1 ] }},
          {{ name: "BATCH" data_type: TYPE_INT32 dims: [ 1 ] }}
        ]
        sequence_batching {{
          max_sequence_idle_microseconds: {idle_us}
          {strategy}
          control_input [
            {{ name: "START" control [ {{ kind: CONTROL_SEQUENCE_START int32_false_true: [ 0, 1 ] }} ] }},
            {{ name: "END" control [ {{ kind: CONTROL_SEQUENCE_END fp32_false_true: [ 0, 1 ] }} ] }},
            {{ name: "READY" control [ {{ kind: CONTROL_SEQUENCE_READY bool_false_true: [ false, true ] }} ] }},
            {{ name: "CORRID" control [ {{ kind: CONTROL_SEQUENCE_CORRID data_type: {corrid_type} }} ] }}
          ]
        }}
        instance_group [ {{ count: {count} kind: KIND_CPU }} ]
        '''
    )


def _model(repo: Path, name: str, config: str) -> None:
    (repo / name / "1").mkdir(parents=True)
    (repo / name / "config.pbtxt").write_text(config)
    (repo / name / "1" / "model.py").write_text(ACCUMULATOR)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    repo = tmp_path_factory.mktemp("sequence_repo")
    # 2 instances x 4 slots: interleaved sequences, more of them than slots (some wait in the backlog).
    _model(repo, "accum", _config("accum", max_batch_size=4, count=2))
    _model(repo, "accum_str", _config("accum_str", max_batch_size=0, count=1, corrid_type="TYPE_STRING"))
    _model(repo, "accum_idle", _config("accum_idle", max_batch_size=0, count=1, idle_us=200_000))
    oldest = "oldest { max_candidate_sequences: 8 preferred_batch_size: [ 4 ] max_queue_delay_microseconds: 5000000 }"
    _model(repo, "accum_oldest", _config("accum_oldest", max_batch_size=8, count=1, strategy=oldest))
    with serve(repo) as proc:
        yield proc


def _inputs(module, value: int, batched: bool):
    shape = [1, 1] if batched else [1]
    tensor = module.InferInput("INPUT", shape, "INT32")
    tensor.set_data_from_numpy(np.full(shape, value, dtype=np.int32))
    return [tensor]


def _client(server, protocol: str):
    if protocol == "http":
        return httpclient, httpclient.InferenceServerClient(server.http_url, concurrency=1)
    return grpcclient, grpcclient.InferenceServerClient(server.grpc_url)


def _run_sequence(server, model: str, protocol: str, corr, values: list[int], batched: bool) -> list[dict]:
    """One client thread driving one sequence, request after request."""
    module, client = _client(server, protocol)
    results = []
    try:
        for step, value in enumerate(values):
            result = client.infer(
                model, _inputs(module, value, batched), sequence_id=corr,
                sequence_start=step == 0, sequence_end=step == len(values) - 1,
            )
            results.append({name: int(result.as_numpy(name).reshape(-1)[0]) for name in ("OUTPUT", "PID", "FLAGS")})
    finally:
        client.close()
    return results


def test_interleaved_sequences_across_two_instances(server, leak_check):
    """10 sequences x 5 steps from concurrent clients (half HTTP, half gRPC) on 2 instances with 4 slots
    each: every running sum is right, each sequence stays on one instance, both instances work."""
    values = {corr: [corr * 10 + step for step in range(5)] for corr in range(1, 11)}
    with concurrent.futures.ThreadPoolExecutor(len(values)) as pool:
        futures = {
            corr: pool.submit(_run_sequence, server, "accum", "http" if corr % 2 else "grpc", corr, vals, True)
            for corr, vals in values.items()
        }
        results = {corr: fut.result(timeout=120) for corr, fut in futures.items()}
    pids_used = set()
    for corr, steps in results.items():
        assert [s["OUTPUT"] for s in steps] == list(np.cumsum(values[corr])), f"sequence {corr}"
        assert [s["FLAGS"] for s in steps] == [1, 0, 0, 0, 2]
        pids = {s["PID"] for s in steps}
        assert len(pids) == 1, f"sequence {corr} moved between instances: {pids}"
        pids_used |= pids
    assert len(pids_used) == 2


def test_start_and_end_in_one_request(server):
    module, client = _client(server, "grpc")
    with client:
        result = client.infer("accum", _inputs(module, 5, True), sequence_id=999, sequence_start=True, sequence_end=True)
    assert int(result.as_numpy("OUTPUT")[0, 0]) == 5 and int(result.as_numpy("FLAGS")[0, 0]) == 3


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_string_sequence_ids(server, protocol):
    steps = _run_sequence(server, "accum_str", protocol, f"user-{protocol}", [1, 2, 3], False)
    assert [s["OUTPUT"] for s in steps] == [1, 3, 6]


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_missing_start_is_refused_clearly(server, protocol):
    module, client = _client(server, protocol)
    try:
        with pytest.raises(InferenceServerException) as err:
            client.infer("accum", _inputs(module, 1, True), sequence_id=4242)
        assert (
            "inference request for sequence 4242 to model 'accum' must specify the START flag on the first "
            "request of the sequence" in str(err.value)
        )
        assert err.value.status() in ("400", "StatusCode.INVALID_ARGUMENT")
        with pytest.raises(InferenceServerException, match="must specify a non-zero or non-empty correlation ID"):
            client.infer("accum", _inputs(module, 1, True))
    finally:
        client.close()


def test_sequence_over_a_grpc_stream(server):
    """The usual way to drive a sequence: one bidirectional stream, responses in order."""
    results: list = []
    client = grpcclient.InferenceServerClient(server.grpc_url)
    try:
        client.start_stream(callback=lambda result, error: results.append(error or result))
        for step, value in enumerate([4, 5, 6]):
            client.async_stream_infer("accum", _inputs(grpcclient, value, True), sequence_id=31337,
                                      sequence_start=step == 0, sequence_end=step == 2, request_id=str(step))
        client.stop_stream()  # waits for the outstanding responses
    finally:
        client.close()
    assert all(not isinstance(r, Exception) for r in results), results
    assert [int(r.as_numpy("OUTPUT")[0, 0]) for r in results] == [4, 9, 15]


def test_idle_sequence_expires(server):
    """max_sequence_idle_microseconds 200 ms: after a much longer pause the sequence is gone."""
    module, client = _client(server, "http")
    try:
        first = client.infer("accum_idle", _inputs(module, 3, False), sequence_id=77, sequence_start=True)
        assert int(first.as_numpy("OUTPUT")[0]) == 3
        time.sleep(1.5)
        with pytest.raises(InferenceServerException, match="sequence 77 to model 'accum_idle' must specify the START"):
            client.infer("accum_idle", _inputs(module, 4, False), sequence_id=77)
        again = client.infer("accum_idle", _inputs(module, 4, False), sequence_id=77, sequence_start=True,
                             sequence_end=True)
        assert int(again.as_numpy("OUTPUT")[0]) == 4  # a new sequence under the same id starts from 0
    finally:
        client.close()


def test_oldest_batches_requests_of_different_sequences(server):
    """preferred_batch_size 4 with a long delay: four sequences starting together run as one batch."""
    def first_step(corr: int) -> int:
        module, client = _client(server, "grpc")
        with client:
            result = client.infer("accum_oldest", _inputs(module, corr, True), sequence_id=corr,
                                  sequence_start=True, sequence_end=True)
        return int(result.as_numpy("BATCH")[0, 0])

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        sizes = list(pool.map(first_step, [101, 102, 103, 104]))
    assert sizes == [4, 4, 4, 4]


def test_server_stops_cleanly(tmp_path, leak_check):
    """A server with sequence models (backlog, idle timers) shuts down without leaks."""
    _model(tmp_path, "accum", _config("accum", max_batch_size=4, count=1, idle_us=100_000))
    with ServerProcess(tmp_path) as proc:
        module, client = _client(proc, "http")
        with client:
            client.infer("accum", _inputs(module, 1, True), sequence_id=1, sequence_start=True)
    assert proc.proc.returncode == 0, proc.output()
