"""Worker liveness: heartbeats, parent death, finalize and exit paths."""
from __future__ import annotations

import os
import signal
import textwrap
import time

import numpy as np
import psutil
import pytest

from tritonpy.proto.messages import Execute, ExecuteDone, Hello
from support.worker_harness import WorkerHarness, write_model

SLOW_MODEL = textwrap.dedent(
    '''
    import time
    import numpy as np
    import triton_python_backend_utils as pb_utils

    class TritonPythonModel:
        def execute(self, requests):
            seconds = float(pb_utils.get_input_tensor_by_name(requests[0], "SECONDS").as_numpy()[0])
            time.sleep(seconds)
            return [pb_utils.InferenceResponse([]) for _ in requests]
    '''
)
SLOW_CONFIG = {
    "name": "slow",
    "backend": "python",
    "input": [{"name": "SECONDS", "data_type": "TYPE_FP32", "dims": [1]}],
    "output": [],
}


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _wait_gone(pid: int, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _gone(pid):
            return True
        time.sleep(0.02)
    return _gone(pid)


@pytest.fixture
def slow_model(tmp_path):
    return write_model(tmp_path, "slow", files={"model.py": SLOW_MODEL})


def test_heartbeats_arrive_from_the_hb_identity(tmp_path, slow_model, leak_check):
    with WorkerHarness(tmp_path, model_dir=slow_model, backend="python", config=SLOW_CONFIG, heartbeat_interval_s=0.05) as h:
        h.start()
        assert h.init().ok
        assert h.wait_heartbeats(5) >= 5  # the harness checks they come from b"slow_0#hb"-style ids
        assert h.finalize() == 0


def test_heartbeats_keep_flowing_during_a_long_execute(tmp_path, slow_model, leak_check):
    with WorkerHarness(tmp_path, model_dir=slow_model, backend="python", config=SLOW_CONFIG, heartbeat_interval_s=0.05) as h:
        h.start()
        assert h.init().ok
        before = h.heartbeats
        done = h.execute([h.request({"SECONDS": np.array([0.6], np.float32)})])
        assert done.error is None
        # 0.6 s inside execute at one beat per 0.05 s: far more than 3 even on a loaded machine.
        assert h.heartbeats - before >= 3
        assert h.finalize() == 0


@pytest.mark.parametrize("death_signal", [True, False], ids=["pdeathsig", "watchdog-thread"])
def test_worker_exits_when_its_parent_dies(tmp_path, slow_model, leak_check, death_signal):
    extra = [] if death_signal else ["--no-death-signal"]
    with WorkerHarness(tmp_path, model_dir=slow_model, backend="python", config=SLOW_CONFIG, extra_args=extra) as h:
        intermediate, worker_pid = h.start_via_intermediate()
        try:
            assert h.init().ok
            # Keep the main thread busy inside the model, so only the heartbeat thread (or the
            # kernel's death signal) can notice the parent's death.
            h.send(Execute(1, [h.request({"SECONDS": np.array([30.0], np.float32)})]))
            time.sleep(0.3)
            assert not _gone(worker_pid)
            intermediate.kill()
            intermediate.wait(10)
            assert _wait_gone(worker_pid), "worker outlived its parent"
        finally:
            if not _gone(worker_pid):
                os.kill(worker_pid, signal.SIGKILL)
            if intermediate.poll() is None:
                intermediate.kill()
                intermediate.wait(10)
        if not death_signal:
            assert "parent process" in h.stderr_text()


def test_worker_exits_when_parent_dies_before_init(tmp_path, slow_model, leak_check):
    with WorkerHarness(tmp_path, model_dir=slow_model, backend="python", config=SLOW_CONFIG, extra_args=["--no-death-signal"]) as h:
        intermediate, worker_pid = h.start_via_intermediate()
        intermediate.kill()
        intermediate.wait(10)
        assert _wait_gone(worker_pid)


def test_hello_then_finalize_before_init(tmp_path, slow_model, leak_check):
    with WorkerHarness(tmp_path, model_dir=slow_model, backend="python", config=SLOW_CONFIG) as h:
        h.start()
        assert isinstance(h.hello, Hello) and h.hello.pid == h.proc.pid
        assert h.finalize() == 0


def test_sigterm_while_idle_exits_cleanly(tmp_path, slow_model, leak_check):
    with WorkerHarness(tmp_path, model_dir=slow_model, backend="python", config=SLOW_CONFIG) as h:
        h.start()
        assert h.init().ok
        h.proc.send_signal(signal.SIGTERM)
        assert h.wait_exit() == 0


def test_sigterm_during_execute_answers_first(tmp_path, slow_model, leak_check):
    with WorkerHarness(tmp_path, model_dir=slow_model, backend="python", config=SLOW_CONFIG) as h:
        h.start()
        assert h.init().ok
        h.send(Execute(7, [h.request({"SECONDS": np.array([0.5], np.float32)})]))
        time.sleep(0.2)
        h.proc.send_signal(signal.SIGTERM)
        done = h.recv(timeout=10)
        assert isinstance(done, ExecuteDone) and done.batch_id == 7 and done.error is None
        assert h.wait_exit() == 0

