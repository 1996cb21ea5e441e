"""WorkerInstance against real worker processes (python backend): start, execute, crash, hang, stop."""
from __future__ import annotations

import asyncio
import gc
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import psutil
import pytest

from support.instance_support import expected, make_model, make_spec, request
from tritonpy.core.errors import ErrorCode, ServerError
from tritonpy.core.instance.worker_instance import InstanceState, WorkerInstance
from tritonpy.core.observability.stats import ModelStats
from tritonpy.core.instance.supervisor import RestartBackoff
from tritonpy.core.types import InferRequest, InputTensor, RequestedOutput, ShmRef
from tritonpy.proto.messages import TensorRef
from tritonpy.shm.segment import Segment, unlink_prefix


def _our_segments(inst: WorkerInstance) -> list[str]:
    bare = inst.shm_prefix.lstrip("/")
    return [n for n in os.listdir("/dev/shm") if n.startswith(bare)]


async def _wait_ready(inst: WorkerInstance, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not inst.ready:
        assert time.monotonic() < deadline, f"{inst} did not become ready again"
        await asyncio.sleep(0.02)


@pytest.fixture
def fast_backoff() -> RestartBackoff:
    return RestartBackoff(initial=0.05, maximum=0.2)


async def test_execute_gathered_and_not_then_stop_leaves_nothing(tmp_path, leak_check):
    inst = WorkerInstance(make_spec(tmp_path))
    try:
        assert await inst.start() == ""
        assert inst.ready and await inst.is_ready()
        pid = inst.pid
        reqs = [request(float(k), rows=2, rid=f"r{k}") for k in range(3)] + [request(1.0, rows=512, rid="big")]
        for gather in (False, True):
            outcome = await inst.execute(reqs, gather=gather)
            assert len(outcome.results) == len(reqs)
            for req, res in zip(reqs, outcome.results):
                assert res.id == req.id and res.model_name == "m" and res.model_version == "1"
                (out,) = res.outputs
                assert out.name == "OUT" and out.datatype == "FP32"
                np.testing.assert_array_equal(out.data, expected(req))
                assert not out.data.flags.writeable  # a view of the worker's memory
                res.release()
                res.release()  # idempotent
            assert outcome.compute_infer_ns > 0
        assert _our_segments(inst)  # the input arena and the worker's outputs exist while running
    finally:
        await inst.stop()
    assert inst.state is InstanceState.STOPPED
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert not os.path.exists(inst.socket_path)
    assert _our_segments(inst) == []
    await inst.stop()  # idempotent


@pytest.mark.parametrize(
    "value, how",
    [(-1, "exit code 3"), (-2, "signal 9 (SIGKILL)"), (-3, "signal 11 (SIGSEGV)")],
    ids=["exit", "sigkill", "segfault"],
)
async def test_crash_fails_only_that_batch_then_restarts(tmp_path, leak_check, fast_backoff, value, how):
    stats = ModelStats("m", "1")
    changes: list[bool] = []
    inst = WorkerInstance(
        make_spec(tmp_path), stats=stats, backoff=fast_backoff, on_ready_change=lambda i, r: changes.append(r)
    )
    try:
        await inst.start()
        ok = await inst.execute([request(1.0)], gather=False)
        ok.results[0].release()
        first_pid = inst.pid
        started = time.monotonic()
        with pytest.raises(ServerError) as info:
            await asyncio.wait_for(inst.execute([request(2.0), request(float(value))], gather=True), 10)
        elapsed = time.monotonic() - started
        assert info.value.code == ErrorCode.INTERNAL
        assert info.value.message == f"model 'm' instance 'm_0': backend worker died ({how}) while executing"
        if value == -1:
            assert elapsed < 1.0, f"death noticed after {elapsed:.2f} s"
        assert not inst.ready
        assert _our_segments(inst) == []  # the dead worker's outputs and our inputs are reclaimed
        assert inst.last_exit is not None
        with pytest.raises(ServerError) as not_ready:
            await inst.execute([request(1.0)], gather=False)
        assert not_ready.value.code == ErrorCode.UNAVAILABLE
        assert not await inst.is_ready()
        await _wait_ready(inst)
        assert inst.pid != first_pid
        assert inst.restarts == 1 and stats.worker_restarts == 1
        assert changes == [True, False, True]
        again = await inst.execute([request(5.0)], gather=False)
        np.testing.assert_array_equal(again.results[0].outputs[0].data, expected(request(5.0)))
        again.results[0].release()
    finally:
        await inst.stop()


@pytest.mark.parametrize("value", [-4, -5], ids=["gil-held", "sigstop"])
async def test_hang_detected_by_missing_heartbeats(tmp_path, leak_check, fast_backoff, value):
    inst = WorkerInstance(make_spec(tmp_path, heartbeat_timeout_s=1.0), backoff=fast_backoff)
    try:
        await inst.start()
        with pytest.raises(ServerError) as info:
            await asyncio.wait_for(inst.execute([request(float(value))], gather=False), 15)
        assert "signal 9 (SIGKILL); killed after no heartbeat for" in info.value.message
        assert info.value.message.endswith("while executing")
        await _wait_ready(inst)
        ok = await inst.execute([request(1.0)], gather=False)
        ok.results[0].release()
    finally:
        await inst.stop()


async def test_failing_initialize_is_unavailable_with_reason(tmp_path, leak_check):
    spec = make_spec(tmp_path)
    (tmp_path / "repo" / "m" / "FAIL_INIT").write_text("weights are corrupt")
    inst = WorkerInstance(spec)
    with pytest.raises(ServerError) as info:
        await inst.start()
    assert info.value.code == ErrorCode.UNAVAILABLE
    assert info.value.message.startswith("model 'm' instance 'm_0': failed to initialize:")
    assert "weights are corrupt" in info.value.message
    assert inst.state is InstanceState.STOPPED
    assert not os.path.exists(inst.socket_path) and _our_segments(inst) == []
    await inst.stop()


async def test_worker_that_never_connects_times_out(tmp_path, leak_check):
    spec = make_spec(tmp_path, backend_config={"stub-timeout-seconds": "0.5"})
    inst = WorkerInstance(spec, worker_argv=[sys.executable, "-c", "import time; time.sleep(60)"])
    with pytest.raises(ServerError) as info:
        await inst.start()
    assert info.value.code == ErrorCode.UNAVAILABLE
    assert "did not connect within 0.5 s" in info.value.message
    assert inst.state is InstanceState.STOPPED


async def test_worker_that_exits_at_start_reports_the_exit(tmp_path, leak_check):
    code = "import sys; print('cannot import torch', file=sys.stderr); sys.exit(7)"
    inst = WorkerInstance(make_spec(tmp_path), worker_argv=[sys.executable, "-c", code])
    with pytest.raises(ServerError) as info:
        await inst.start()
    assert info.value.code == ErrorCode.UNAVAILABLE
    assert "exited during start-up (exit code 7); stderr: cannot import torch" in info.value.message


async def test_is_ready_asks_the_model(tmp_path, leak_check):
    inst = WorkerInstance(make_spec(tmp_path))
    try:
        await inst.start()
        assert await inst.is_ready()
        (tmp_path / "repo" / "m" / "NOT_READY").write_text("")
        results = await asyncio.gather(inst.is_ready(), inst.is_ready())
        assert results == [False, False]
        assert inst.ready  # alive: the model just says it cannot serve
    finally:
        await inst.stop()
    assert not await inst.is_ready()


async def test_restart_keeps_retrying_while_initialize_fails(tmp_path, leak_check, fast_backoff, caplog):
    marker = tmp_path / "repo" / "m" / "FAIL_INIT"
    inst = WorkerInstance(make_spec(tmp_path), backoff=fast_backoff)
    try:
        await inst.start()
        marker.write_text("still broken")
        with pytest.raises(ServerError):
            await inst.execute([request(-1.0)], gather=False)
        deadline = time.monotonic() + 20
        while caplog.text.count("restart failed") < 2:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        assert "still broken" in caplog.text
        assert inst.state is InstanceState.RESTARTING
        marker.unlink()
        await _wait_ready(inst)
        assert inst.restarts == 1
    finally:
        await inst.stop()


async def test_stop_while_restarting_and_while_starting(tmp_path, leak_check):
    inst = WorkerInstance(make_spec(tmp_path), backoff=RestartBackoff(initial=30.0))
    await inst.start()
    with pytest.raises(ServerError):
        await inst.execute([request(-2.0)], gather=False)
    assert inst.state is InstanceState.RESTARTING
    await asyncio.wait_for(inst.stop(), 10)  # does not wait out the 30 s backoff
    assert inst.state is InstanceState.STOPPED and _our_segments(inst) == []

    half = WorkerInstance(make_spec(tmp_path, instance="m_1"))
    start = asyncio.create_task(half.start())
    await asyncio.sleep(0.05)
    await asyncio.gather(half.stop(), half.stop())
    with pytest.raises(ServerError):
        await start
    assert half.state is InstanceState.STOPPED and _our_segments(half) == []
    assert not os.path.exists(half.socket_path)

    never = WorkerInstance(make_spec(tmp_path, instance="m_2"))
    await never.stop()
    assert never.state is InstanceState.STOPPED


async def test_stop_drains_inflight_batches(tmp_path, leak_check):
    inst = WorkerInstance(make_spec(tmp_path))
    await inst.start()
    slow = asyncio.create_task(inst.execute([request(-6.0)], gather=False))
    await asyncio.sleep(0.2)
    await inst.stop(timeout=10)
    outcome = slow.result()
    np.testing.assert_array_equal(outcome.results[0].outputs[0].data, expected(request(-6.0)))
    outcome.results[0].release()


async def test_one_failing_request_does_not_sink_the_batch(tmp_path, leak_check):
    inst = WorkerInstance(make_spec(tmp_path))
    try:
        await inst.start()
        reqs = [request(1.0), request(-7.0), request(3.0)]
        outcome = await inst.execute(reqs, gather=True)
        assert isinstance(outcome.results[1], ServerError) and "request -7 refused" in outcome.results[1].message
        for k in (0, 2):
            np.testing.assert_array_equal(outcome.results[k].outputs[0].data, expected(reqs[k]))
            outcome.results[k].release()
    finally:
        await inst.stop()


async def test_arena_grows_for_a_16mb_tensor(tmp_path, leak_check):
    inst = WorkerInstance(make_spec(tmp_path))
    try:
        await inst.start()
        big = request(1.0, rows=4, cols=1 << 20)  # 16 MiB of FP32
        small = request(2.0)
        outcome = await inst.execute([big, small], gather=False)
        np.testing.assert_array_equal(outcome.results[0].outputs[0].data, expected(big))
        np.testing.assert_array_equal(outcome.results[1].outputs[0].data, expected(small))
        assert inst._memory.arena.total_size >= 16 << 20
        for r in outcome.results:
            r.release()
    finally:
        await inst.stop()


async def test_a_refused_request_keeps_its_own_error_when_the_worker_dies(tmp_path, leak_check, fast_backoff):
    inst = WorkerInstance(make_spec(tmp_path), input_arena_max_bytes=1 << 20, backoff=fast_backoff)
    try:
        await inst.start()
        too_big = request(1.0, rows=1, cols=1 << 20)
        outcome = await inst.execute([too_big, request(-2.0, cols=1024)], gather=False)
        refused, died = outcome.results
        assert refused.code == ErrorCode.UNAVAILABLE and "out of shared memory" in refused.message
        assert died.code == ErrorCode.INTERNAL and "backend worker died (signal 9 (SIGKILL))" in died.message
    finally:
        await inst.stop()


@pytest.mark.parametrize("gather", [False, True])
async def test_shm_exhausted_is_a_clear_error(tmp_path, leak_check, gather):
    inst = WorkerInstance(make_spec(tmp_path), input_arena_max_bytes=1 << 20)
    try:
        await inst.start()
        big = request(1.0, rows=1, cols=1 << 20)  # 4 MiB > the 1 MiB arena
        small = request(2.0, cols=1 << 12)  # 16 KiB: fits
        outcome = await inst.execute([small, big], gather=gather)
        err = outcome.results[1]
        assert isinstance(err, ServerError) and err.code == ErrorCode.UNAVAILABLE
        assert "out of shared memory for input 'IN'" in err.message and "1048576" in err.message
        np.testing.assert_array_equal(outcome.results[0].outputs[0].data, expected(small))
        outcome.results[0].release()
    finally:
        await inst.stop()


async def test_client_shared_memory_in_and_out_without_copies(tmp_path, leak_check):
    region = Segment.create("/tp_test_instance_client", 4096)
    try:
        data = np.arange(8, dtype=np.float32).reshape(2, 4)
        region.buf[: data.nbytes] = data.tobytes()
        seen: list[tuple] = []

        def resolve(ref: ShmRef, datatype: str, shape: list, name: str) -> TensorRef:
            seen.append((ref.region, datatype, list(shape), name))
            return TensorRef(name, datatype, list(shape), segment=region.name, offset=ref.offset, nbytes=ref.byte_size)

        inst = WorkerInstance(make_spec(tmp_path), resolve_shm=resolve)
        try:
            await inst.start()
            req = InferRequest(
                model_name="m",
                inputs=[InputTensor("IN", "FP32", [2, 4], shm=ShmRef("client", data.nbytes, 0))],
                outputs=[RequestedOutput("OUT", shm=ShmRef("client", data.nbytes, 1024))],
            )
            outcome = await inst.execute([req, request(3.0)], gather=True)
            (out,) = outcome.results[0].outputs
            assert out.data is None and out.shm is not None and out.shm.offset == 1024
            assert out.shape == [2, 4] and out.datatype == "FP32"
            written = np.frombuffer(bytes(region.buf[1024 : 1024 + data.nbytes]), dtype=np.float32).reshape(2, 4)
            np.testing.assert_array_equal(written, data * 2)
            np.testing.assert_array_equal(outcome.results[1].outputs[0].data, expected(request(3.0)))
            assert ("client", "FP32", [2, 4], "IN") in seen and ("client", "FP32", [], "OUT") in seen
            for r in outcome.results:
                r.release()
        finally:
            await inst.stop()
    finally:
        region.close()
        region.unlink()


async def test_bytes_tensors_and_request_parameters(tmp_path, leak_check):
    source = textwrap.dedent(
        '''
        import json
        import numpy as np
        import triton_python_backend_utils as pb_utils

        class TritonPythonModel:
            def execute(self, requests):
                out = []
                for r in requests:
                    x = pb_utils.get_input_tensor_by_name(r, "IN").as_numpy()
                    tag = json.loads(r.parameters()).get("tag", "")
                    y = np.array([v + tag.encode() for v in x.reshape(-1)], dtype=np.object_).reshape(x.shape)
                    out.append(pb_utils.InferenceResponse([pb_utils.Tensor("OUT", y)]))
                return out
        '''
    )
    make_model(tmp_path / "repo", "b", source)
    cfg = {
        "name": "b", "backend": "python", "max_batch_size": 0,
        "input": [{"name": "IN", "data_type": "TYPE_STRING", "dims": ["-1"]}],
        "output": [{"name": "OUT", "data_type": "TYPE_STRING", "dims": ["-1"]}],
    }
    inst = WorkerInstance(make_spec(tmp_path, name="b", instance="b_0", config_json=json.dumps(cfg)))
    try:
        await inst.start()
        words = np.array([b"a", b"bc" * 3000], dtype=np.object_)  # > inline size: through shared memory
        req = InferRequest(
            model_name="b", inputs=[InputTensor("IN", "BYTES", [2], data=words)], parameters={"tag": "!"}
        )
        outcome = await inst.execute([req], gather=True)
        out = outcome.results[0].outputs[0]
        assert out.datatype == "BYTES" and list(out.data) == [b"a!", b"bc" * 3000 + b"!"]
        outcome.results[0].release()
    finally:
        await inst.stop()


async def test_cancelled_and_forgotten_responses_still_release(tmp_path, leak_check):
    inst = WorkerInstance(make_spec(tmp_path))
    released: list[int] = []
    original = inst._send_release

    def spy(generation: int, batch_id: int) -> None:
        released.append(batch_id)
        original(generation, batch_id)

    inst._send_release = spy  # type: ignore[method-assign]
    try:
        await inst.start()
        # outputs big enough to live in the worker's shared memory (tiny ones travel inline and
        # need no release at all: checked below)
        task = asyncio.create_task(inst.execute([request(-6.0, cols=4096)], gather=False))
        await asyncio.sleep(0.2)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        deadline = time.monotonic() + 10
        while not released:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)
        outcome = await inst.execute([request(1.0, cols=4096)], gather=False)
        assert len(released) == 1
        del outcome
        gc.collect()
        assert len(released) == 2  # the finalizer released the forgotten response
        tiny = await inst.execute([request(1.0)], gather=False)
        tiny.results[0].release()
        del tiny
        gc.collect()
        assert len(released) == 2  # inline outputs: the worker reserved nothing, no Release sent
    finally:
        await inst.stop()


CORE_SCRIPT = textwrap.dedent(
    '''
    import asyncio, sys
    sys.path.insert(0, {tests!r})
    from pathlib import Path
    from support.instance_support import make_spec
    from tritonpy.core.instance.worker_instance import WorkerInstance

    async def main():
        inst = WorkerInstance(make_spec(Path({tmp!r})))
        await inst.start()
        print(inst.pid, flush=True)
        await asyncio.sleep(60)

    asyncio.run(main())
    '''
)


def test_sigkill_of_the_core_leaves_no_orphan_worker(tmp_path, leak_check):
    script = CORE_SCRIPT.format(tests=os.path.dirname(os.path.dirname(__file__)), tmp=str(tmp_path))
    core = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        line = core.stdout.readline()
        assert line.strip().isdigit(), f"core script failed: {line!r}"
        worker_pid = int(line)
        assert psutil.pid_exists(worker_pid)
        core.send_signal(signal.SIGKILL)
        core.wait(10)
        deadline = time.monotonic() + 3.0
        while psutil.pid_exists(worker_pid):
            try:
                if psutil.Process(worker_pid).status() == psutil.STATUS_ZOMBIE:
                    break
            except psutil.NoSuchProcess:
                break
            assert time.monotonic() < deadline, "the worker outlived its SIGKILLed core by 3 s"
            time.sleep(0.05)
    finally:
        if core.poll() is None:
            core.kill()
            core.wait()
        core.stdout.close()
    # The killed core could not clean up; whoever restarts the server sweeps its segments by prefix.
    unlink_prefix(f"tritonpy_{core.pid}_")
