"""The supervision pieces on their own: restart backoff, exit descriptions, heartbeat watchdog,
and the worker process wrapper (real processes)."""
from __future__ import annotations

import asyncio
import logging
import signal
import sys
import textwrap
import time

import psutil
import pytest

from tritonpy.core.instance.supervisor import HeartbeatWatchdog, RestartBackoff, WorkerProcess, describe_exit


def test_backoff_doubles_to_the_cap_and_resets_after_a_stable_run():
    b = RestartBackoff()
    now = 1000.0
    delays = [b.next_delay(now) for _ in range(10)]
    assert delays == [0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 6.4, 10.0, 10.0, 10.0]
    b.started(now)
    assert b.next_delay(now + 5.0) == 10.0  # crashed again soon: keep backing off
    b.started(now + 10.0)
    assert b.next_delay(now + 40.0) == 0.1  # ran fine for 30 s: start over
    assert b.next_delay(now + 40.1) == 0.2


def test_describe_exit():
    assert describe_exit(0) == "exit code 0"
    assert describe_exit(3) == "exit code 3"
    assert describe_exit(-9) == "signal 9 (SIGKILL)"
    assert describe_exit(-11) == "signal 11 (SIGSEGV)"
    assert describe_exit(None) == "still running"


async def test_watchdog_fires_once_on_silence_and_not_while_beating():
    fired: list[float] = []
    dog = HeartbeatWatchdog(label="t", timeout_s=0.3, on_silence=fired.append)
    dog.start()
    end = time.monotonic() + 0.8
    while time.monotonic() < end:
        dog.beat()
        await asyncio.sleep(0.05)
    assert fired == []
    deadline = time.monotonic() + 5
    while not fired:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.5)
    assert len(fired) == 1 and fired[0] >= 0.3
    dog.start(timeout_s=0.2)  # re-armed with a new limit
    dog.stop()
    await asyncio.sleep(0.4)
    assert len(fired) == 1


async def test_watchdog_does_not_blame_the_worker_for_a_blocked_core_loop():
    """Issue 18 item 5: a big request decoding on the loop kept the worker's beats unread for
    seconds, and the healthy worker was killed. The loop's own lateness must not count."""
    fired: list[float] = []
    dog = HeartbeatWatchdog(label="t", timeout_s=1.0, on_silence=fired.append)
    dog.start()
    reading = True

    async def worker_beats() -> None:  # beats as the core reads them, every 50 ms
        while True:
            if reading:
                dog.beat()
            await asyncio.sleep(0.05)

    beats = asyncio.create_task(worker_beats())
    try:
        for _ in range(2):
            await asyncio.sleep(0.2)
            reading = False
            time.sleep(1.5)  # the core loop is busy for longer than the timeout ...
            await asyncio.sleep(0.1)  # ... and reads the queued beats a moment after it wakes
            reading = True
        await asyncio.sleep(0.2)
        assert fired == []
    finally:
        beats.cancel()
    # A really silent worker is still caught.
    deadline = time.monotonic() + 5
    while not fired:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    dog.stop()


async def test_process_exit_is_reported_with_output_forwarded(leak_check, caplog):
    caplog.set_level(logging.INFO, logger="tritonpy.core.instance")
    exits: list[int] = []
    code = "import sys; print('hello out'); print('trouble', file=sys.stderr); sys.exit(5)"
    proc = WorkerProcess([sys.executable, "-c", code], label="m/i0", on_exit=exits.append)
    await proc.spawn()
    assert await proc.wait(20)
    await proc.close()
    assert exits == [5] and proc.returncode == 5 and not proc.alive
    assert list(proc.stderr_tail) == ["trouble"]
    assert "[m/i0] stdout: hello out" in caplog.text
    assert "[m/i0] stderr: trouble" in caplog.text


async def test_terminate_escalates_to_sigkill_and_kills_the_process_group(leak_check):
    script = textwrap.dedent(
        """
        import signal, subprocess, sys, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        print(child.pid, flush=True)
        time.sleep(60)
        """
    )
    exits: list[int] = []
    proc = WorkerProcess([sys.executable, "-c", script], label="g", on_exit=exits.append)
    await proc.spawn()
    assert proc._proc is not None and proc._proc.stdout is not None
    # the forwarder reads stdout; find the grandchild through psutil instead
    deadline = time.monotonic() + 20
    grandchildren: list[psutil.Process] = []
    while not grandchildren:
        assert time.monotonic() < deadline
        grandchildren = psutil.Process(proc.pid).children()
        await asyncio.sleep(0.05)
    await proc.terminate(grace=0.3)
    await proc.close()
    assert exits == [-signal.SIGKILL]
    gone, alive = psutil.wait_procs(grandchildren, timeout=5)
    assert not alive, "the worker's own child survived the kill of its process group"


async def test_signal_after_exit_is_a_no_op(leak_check):
    proc = WorkerProcess([sys.executable, "-c", "pass"], label="n", on_exit=lambda rc: None)
    await proc.spawn()
    assert await proc.wait(20)
    proc.signal(signal.SIGKILL)  # reaped: must not touch any other process
    await proc.terminate()
    await proc.close()
    unstarted = WorkerProcess([sys.executable, "-c", "pass"], label="u", on_exit=lambda rc: None)
    assert await unstarted.wait(0.1) and unstarted.pid is None
    await unstarted.close()


@pytest.mark.parametrize("rc", [0, 1])
async def test_on_exit_errors_do_not_hide_the_exit(leak_check, rc):
    def boom(code: int) -> None:
        raise RuntimeError("owner bug")

    proc = WorkerProcess([sys.executable, "-c", f"raise SystemExit({rc})"], label="b", on_exit=boom)
    await proc.spawn()
    assert await proc.wait(20)
    await proc.close()
    assert proc.returncode == rc


@pytest.mark.parametrize("pidfd", [True, False], ids=["pidfd", "waitid-thread"])
async def test_exit_is_seen_while_a_helper_holds_the_pipes_and_the_helper_dies_with_it(leak_check, monkeypatch, pidfd):
    """A model's helper process (here `sleep`) inherits the worker's stdout/stderr. The worker's
    death must still be reported at once, the helper must not outlive it, and close() returns.
    Both exit detectors: the pidfd, and the waitid thread used where pidfds are missing."""
    if not pidfd:
        def no_pidfd(pid: int, flags: int = 0) -> int:
            raise OSError(38, "Function not implemented")

        monkeypatch.setattr("tritonpy.core.instance.supervisor._pidfd_open", no_pidfd)
    script = textwrap.dedent(
        """
        import subprocess, time
        subprocess.Popen(["sleep", "1000"])
        print("ready", flush=True)
        time.sleep(1000)
        """
    )
    exits: list[int] = []
    proc = WorkerProcess([sys.executable, "-c", script], label="h", on_exit=exits.append)
    await proc.spawn()
    deadline = time.monotonic() + 20
    helpers: list[psutil.Process] = []
    while not helpers:
        assert time.monotonic() < deadline
        helpers = psutil.Process(proc.pid).children()
        await asyncio.sleep(0.05)
    pid = proc.pid
    assert pid is not None
    import os

    os.kill(pid, signal.SIGKILL)  # the worker alone, as a crash or the OOM killer would
    started = time.monotonic()
    assert await proc.wait(5), "the worker's exit was not noticed while its helper held the pipes"
    assert time.monotonic() - started < 2.0
    assert exits == [-signal.SIGKILL] and proc.returncode == -signal.SIGKILL and not proc.alive
    gone, alive = psutil.wait_procs(helpers, timeout=5)
    assert not alive, "the helper process outlived its worker"
    started = time.monotonic()
    await proc.kill()  # after the exit: returns at once, touches nothing
    await proc.terminate()
    await proc.close()
    assert time.monotonic() - started < 3.0


async def test_kill_waits_for_the_exit_and_terminate_does_not_return_early(leak_check):
    exits: list[int] = []
    code = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('x', flush=True); time.sleep(60)"
    proc = WorkerProcess([sys.executable, "-c", code], label="k", on_exit=exits.append)
    await proc.spawn()
    await asyncio.sleep(0.5)
    await proc.terminate(grace=0.2)
    # terminate() returned: the process is gone and its exit was reported (not merely signalled)
    assert not proc.alive and exits == [-signal.SIGKILL]
    assert not psutil.pid_exists(proc.pid) or psutil.Process(proc.pid).status() != psutil.STATUS_ZOMBIE
    await proc.close()
