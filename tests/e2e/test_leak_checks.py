"""The leak checks themselves: a deliberately leaked segment or process fails the check that owns it.

The checks kill the processes they report and a server's check unlinks the segments named after
it; segments a plain probe reports are removed here, so these tests still end clean.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid

import psutil
import pytest

from support.leaks import SHM_DIR, LeakProbe
from support.model_builders import FP32_IO, python_model
from support.server_process import ServerProcess
from support.servers import ServerStarter, serve

# A model that leaves a process behind: a forked copy of its worker (same command line, so it still
# names the server as its parent), in its own session so the worker's process-group kill misses it.
FORK_AND_STAY = """
if os.fork() == 0:
    os.setsid()
    while True:
        time.sleep(1)
"""
# A model that leaves a segment named after the server behind (the worker's parent is the server).
SEGMENT_AND_GO = """
open(f"/dev/shm/tritonpy_{os.getppid()}_left_by_the_model", "wb").close()
"""


@pytest.fixture(autouse=True)
def quick_settle(monkeypatch):
    """These tests leak on purpose: give cleanup 1 s, not the usual 10 s, before calling it a leak."""
    monkeypatch.setattr("support.leaks.SETTLE_S", 1.0)


def _segment(prefix: str = "tp_leakcheck_") -> str:
    name = f"{prefix}{uuid.uuid4().hex[:8]}"
    open(os.path.join(SHM_DIR, name), "wb").close()
    return name


def _sleeper() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])


def test_probe_fails_on_a_leaked_segment(leak_check):
    probe = LeakProbe()
    name = _segment()
    try:
        with pytest.raises(AssertionError, match=f"shared memory leaked by the test: \\['{name}'\\]"):
            probe.check("the test", timeout=0.2)
    finally:
        os.unlink(os.path.join(SHM_DIR, name))


def test_probe_ignores_a_segment_another_run_holds(tmp_path, leak_check):
    """A segment with our prefix, held open by a process outside this test run (another person's
    tests on the same machine), is not this run's leak."""
    name = f"tp_leakcheck_{uuid.uuid4().hex[:8]}"
    ready = tmp_path / "ready"
    probe = LeakProbe()
    # The holder runs in its own session and its parent exits at once: init adopts it.
    holder = (f"import time; f = open('/dev/shm/{name}', 'wb'); open('{ready}', 'w').close(); time.sleep(30)")
    subprocess.run([sys.executable, "-c", "import subprocess, sys; subprocess.Popen([sys.executable, '-c', "
                    f"{holder!r}], start_new_session=True)"], check=True)
    try:
        deadline = time.monotonic() + 10
        while not ready.exists():
            assert time.monotonic() < deadline, "the holder did not start"
            time.sleep(0.05)
        probe.check(timeout=0.2)
    finally:
        for proc in psutil.process_iter(["cmdline"]):
            if name in " ".join(proc.info["cmdline"] or []):
                proc.kill()
        os.unlink(os.path.join(SHM_DIR, name))


def test_probe_fails_on_a_leaked_child_process_and_kills_it(leak_check):
    probe = LeakProbe()
    proc = _sleeper()
    with pytest.raises(AssertionError, match=f"child processes leaked: \\['{proc.pid} \\("):
        probe.check(timeout=0.2)
    assert proc.wait(5) == -9


def test_probe_passes_when_what_appeared_is_gone_again(leak_check):
    probe = LeakProbe()
    name = _segment()
    os.unlink(os.path.join(SHM_DIR, name))
    proc = _sleeper()
    proc.kill()
    proc.wait()
    probe.check()


def test_server_fails_its_stop_when_a_worker_process_outlives_it(tmp_path, leak_check):
    python_model(tmp_path, "forker", "out = x", config=FP32_IO, initialize=FORK_AND_STAY)
    server = ServerProcess(tmp_path).wait()
    with pytest.raises(AssertionError, match=r"processes outlived the server .*--parent-pid"):
        server.stop()
    assert server.proc.returncode == 0
    survivors = [p for p in psutil.process_iter(["cmdline"])
                 if "--parent-pid" in (p.info["cmdline"] or []) and str(server.proc.pid) in p.info["cmdline"]]
    assert not survivors  # the check killed the forked copy


def test_server_fails_its_stop_when_a_segment_named_after_it_survives(tmp_path, leak_check):
    python_model(tmp_path, "litter", "out = x", config=FP32_IO, initialize=SEGMENT_AND_GO)
    server = ServerProcess(tmp_path).wait()
    name = f"tritonpy_{server.proc.pid}_left_by_the_model"
    assert os.path.exists(os.path.join(SHM_DIR, name))
    with pytest.raises(AssertionError, match=f"shared memory outlived the server .*{name}"):
        server.stop()
    assert not os.path.exists(os.path.join(SHM_DIR, name))


def test_a_sigkilled_server_is_checked_for_processes_only(tmp_path, leak_check):
    import signal

    python_model(tmp_path, "litter", "out = x", config=FP32_IO, initialize=SEGMENT_AND_GO)
    server = ServerProcess(tmp_path).wait()
    name = f"tritonpy_{server.proc.pid}_left_by_the_model"
    server.stop(signal.SIGKILL)  # no error: a killed server cannot unlink; the next start sweeps
    assert os.path.exists(os.path.join(SHM_DIR, name))
    (tmp_path / "other").mkdir()
    with ServerProcess(tmp_path / "other"):
        pass
    assert not os.path.exists(os.path.join(SHM_DIR, name))


def test_a_module_scoped_server_fails_its_teardown_on_a_leak_during_its_life(tmp_path, leak_check):
    python_model(tmp_path, "plain", "out = x", config=FP32_IO)
    name = f"tp_leakcheck_{uuid.uuid4().hex[:8]}"
    try:
        with pytest.raises(AssertionError, match=f"shared memory leaked by the server on .*{name}"):
            with serve(tmp_path):
                open(os.path.join(SHM_DIR, name), "wb").close()  # a client region a test forgot
    finally:
        os.unlink(os.path.join(SHM_DIR, name))


def test_a_module_scoped_server_must_exit_cleanly(tmp_path, leak_check):
    python_model(tmp_path, "plain", "out = x", config=FP32_IO)
    with pytest.raises(AssertionError, match="server exited with -9"):
        with serve(tmp_path) as server:
            server.proc.kill()
            server.proc.wait()
    # What the killed server could not unlink (the next start would sweep it).
    for name in os.listdir(SHM_DIR):
        if name.startswith(f"tritonpy_{server.proc.pid}_"):
            os.unlink(os.path.join(SHM_DIR, name))


def test_start_server_stops_every_server_and_checks_the_test(tmp_path, leak_check):
    python_model(tmp_path, "plain", "out = x", config=FP32_IO)
    starter = ServerStarter()
    first, second = starter(tmp_path), starter(tmp_path, "--log-verbose=1")
    assert first.proc.poll() is None and second.proc.poll() is None
    proc = _sleeper()
    with pytest.raises(AssertionError, match="child processes leaked by servers of this test"):
        starter.close()
    assert first.proc.returncode == 0 and second.proc.returncode == 0
    assert proc.wait(5) == -9
