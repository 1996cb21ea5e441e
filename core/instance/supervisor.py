"""Supervising one backend worker process: spawning it, watching it, and deciding when to restart it.

Three small pieces, each testable on its own:

* `RestartBackoff` - the restart policy as a pure object (no clock of its own): 0.1 s doubling to
  10 s, back to 0.1 s once a worker has run fine for 30 s. A crash loop therefore costs little CPU,
  while an occasional crash is repaired almost at once.
* `WorkerProcess` - one OS process in its own session (so a Ctrl-C on the terminal reaches the
  server first, and the server decides how workers stop), its stdout/stderr forwarded line by line
  to our log, and its exit read from the pid itself (pidfd, or a `waitid` thread). That is the
  primary death detector: it fires as soon as the kernel reports the exit, no polling, and it does
  not wait for the output pipes, which a model's helper process may hold open.
* `HeartbeatWatchdog` - the hang detector. A worker stuck in C code while holding the GIL stays
  alive but stops sending heartbeats; after `timeout_s` of silence the watchdog calls back and the
  owner kills the process, which then goes through the normal death path.
"""
from __future__ import annotations

import asyncio
import functools
import collections
import contextlib
import logging
import os
import signal
import subprocess
import threading
import time
from typing import Callable, Sequence

from tritonpy.core.observability import worker_lines

log = logging.getLogger("tritonpy.core.instance")

# Lines of worker stderr kept to explain a crash or a failed start.
STDERR_TAIL_LINES = 20
# How long kill() waits after SIGKILL before it gives up waiting (the exit stays watched).
KILL_WAIT_S = 10.0
# Linux >= 5.3; elsewhere (or where seccomp forbids it) exits are waited for in a thread.
_pidfd_open = getattr(os, "pidfd_open", None)


class RestartBackoff:
    """Exponential restart delays, reset after a worker stayed up long enough.

    Call `started(now)` when a worker became ready and `next_delay(now)` when it died or a restart
    attempt failed; the returned delay is how long to wait before the next attempt.
    """

    __slots__ = ("initial", "factor", "maximum", "stable_after", "_delay", "_started_at")

    def __init__(
        self, *, initial: float = 0.1, factor: float = 2.0, maximum: float = 10.0, stable_after: float = 30.0
    ) -> None:
        self.initial = initial
        self.factor = factor
        self.maximum = maximum
        self.stable_after = stable_after
        self._delay = initial
        self._started_at: float | None = None

    def started(self, now: float) -> None:
        self._started_at = now

    def next_delay(self, now: float) -> float:
        if self._started_at is not None and now - self._started_at >= self.stable_after:
            self._delay = self.initial
        self._started_at = None
        delay = self._delay
        self._delay = min(self._delay * self.factor, self.maximum)
        return delay


def describe_exit(returncode: int | None) -> str:
    """'exit code 3' or 'signal 9 (SIGKILL)', the way the error messages show a worker's end."""
    if returncode is None:
        return "still running"
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = "unknown signal"
        return f"signal {-returncode} ({name})"
    return f"exit code {returncode}"


class WorkerProcess:
    """One spawned worker process with its output forwarding and its exit watcher.

    `on_exit(returncode)` is called once, from the loop, when the process has ended.

    The exit is read from the pid itself (a pidfd the loop watches, or a thread blocked in
    `waitid` where pidfds are missing), never from the end of the output pipes: a helper process
    the model started inherits those pipes and may keep them open for ever. When the worker has
    ended, but before it is reaped (so its pid, and with it its process-group id, cannot have been
    handed to anybody else), whatever is left of its process group is killed: a model's helper
    processes do not outlive the worker that started them.
    """

    def __init__(
        self,
        argv: Sequence[str],
        *,
        label: str,
        on_exit: Callable[[int], None],
        env: dict[str, str] | None = None,
        cwd: str | None = None,
    ) -> None:
        self.argv = list(argv)
        self.label = label
        self._on_exit = on_exit
        self._env = env
        self._cwd = cwd
        self._proc: subprocess.Popen[bytes] | None = None
        self._returncode: int | None = None
        self._reaped = False
        self._pidfd = -1
        self._tasks: list[asyncio.Task[None]] = []
        self._transports: list[asyncio.BaseTransport] = []
        self._exited = asyncio.Event()
        self.stderr_tail: collections.deque[str] = collections.deque(maxlen=STDERR_TAIL_LINES)

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def returncode(self) -> int | None:
        return self._returncode

    @property
    def alive(self) -> bool:
        return self._proc is not None and not self._exited.is_set()

    async def spawn(self) -> None:
        loop = asyncio.get_running_loop()
        env = dict(os.environ if self._env is None else self._env)
        env.setdefault("PYTHONUNBUFFERED", "1")  # forward lines as they are printed
        # Its own session: a Ctrl-C on our terminal does not reach it, and its process group
        # (pgid = its pid) holds everything it starts, so one killpg ends them all.
        # Popen on the loop, as asyncio's own subprocess support does: fork+exec returns at once.
        self._proc = proc = subprocess.Popen(  # noqa: ASYNC220
            self.argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env=env, cwd=self._cwd, start_new_session=True, close_fds=True,
        )
        self._watch_exit(loop)
        assert proc.stdout is not None and proc.stderr is not None
        for pipe, what, keep_tail in ((proc.stdout, "stdout", False), (proc.stderr, "stderr", True)):
            reader = asyncio.StreamReader(limit=1 << 16)
            transport, _ = await loop.connect_read_pipe(functools.partial(asyncio.StreamReaderProtocol, reader), pipe)
            self._transports.append(transport)
            self._tasks.append(asyncio.create_task(
                self._forward(reader, what, keep_tail), name=f"tritonpy-worker-{what}-{self.label}"
            ))

    def _watch_exit(self, loop: asyncio.AbstractEventLoop) -> None:
        assert self._proc is not None
        pid = self._proc.pid
        try:
            if _pidfd_open is not None:
                self._pidfd = _pidfd_open(pid)
                loop.add_reader(self._pidfd, self._exit_seen)
                return
        except (OSError, NotImplementedError, RuntimeError):
            if self._pidfd >= 0:
                os.close(self._pidfd)
                self._pidfd = -1

        def wait_in_thread() -> None:
            # WNOWAIT: learn of the exit without reaping, so the group can still be killed safely.
            while True:
                try:
                    os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)
                    break
                except InterruptedError:
                    continue
                except ChildProcessError:
                    break
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting any more
                loop.call_soon_threadsafe(self._exit_seen)

        threading.Thread(target=wait_in_thread, name=f"tritonpy-worker-wait-{self.label}", daemon=True).start()

    def _exit_seen(self) -> None:
        """The worker has ended (it is a zombie until reaped here). Runs on the loop, once."""
        if self._reaped or self._proc is None:
            return
        if self._pidfd >= 0:
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_reader(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = -1
        pid = self._proc.pid
        # Still unreaped: the group id cannot have been reused, so this reaches only its leftovers.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
        try:
            _, status = os.waitpid(pid, 0)
            rc = os.waitstatus_to_exitcode(status)
        except ChildProcessError:  # somebody else reaped it; the exit status is lost
            rc = -int(signal.SIGKILL)
        self._reaped = True
        self._returncode = rc
        self._proc.returncode = rc  # so Popen neither warns nor tries to reap it again
        self._exited.set()
        try:
            self._on_exit(rc)
        except Exception:  # the owner's bug must not hide the exit
            log.exception("[%s] exit handler failed", self.label)

    async def _forward(self, stream: asyncio.StreamReader, what: str, keep_tail: bool) -> None:
        while True:
            try:
                line = await stream.readline()
            except ValueError:  # a line longer than the stream limit: take what is there
                line = await stream.read(65536)
            if not line:
                return
            text = line.decode("utf-8", "replace").rstrip("\r\n")
            if keep_tail:
                self.stderr_tail.append(text)
            worker_lines.forward(log, self.label, what, text)  # the worker's own log lines stay unquoted

    def signal(self, sig: int) -> None:
        """Send `sig` to the worker's whole process group while its leader has not been reaped.

        Before the reap the group id cannot belong to anybody else, so this never hits a stranger.
        """
        if self._proc is None or self._reaped:
            return
        try:
            os.killpg(self._proc.pid, sig)
        except ProcessLookupError:
            pass
        except PermissionError:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._proc.pid, sig)

    async def wait(self, timeout: float | None) -> bool:
        """True once the process has ended (and its exit was reported), False on timeout."""
        if self._proc is None:
            return True
        try:
            await asyncio.wait_for(self._exited.wait(), timeout)
        except asyncio.TimeoutError:
            return False
        return True

    async def terminate(self, grace: float = 2.0) -> None:
        """SIGTERM, then SIGKILL after `grace` seconds; returns when the process is gone (or, should
        even SIGKILL not end it within KILL_WAIT_S, say so and return: its exit is still watched)."""
        if not self.alive:
            return
        self.signal(signal.SIGTERM)
        if await self.wait(grace):
            return
        log.warning("[%s] worker did not stop within %.1f s of SIGTERM; killing it", self.label, grace)
        await self.kill()

    async def kill(self) -> None:
        if not self.alive:
            return
        self.signal(signal.SIGKILL)
        if not await self.wait(KILL_WAIT_S):
            # Only a process stuck in the kernel (uninterruptible sleep) survives SIGKILL this long.
            log.error("[%s] worker pid %s did not end within %.0f s of SIGKILL", self.label, self.pid, KILL_WAIT_S)

    async def close(self) -> None:
        """Kill if still running, then wait for the forwarders to finish and close the pipes."""
        if self.alive:
            await self.kill()
        for task in self._tasks:
            if not task.done():
                # forwarders end at EOF; a process that left the group may keep the pipes open
                try:
                    await asyncio.wait_for(asyncio.shield(task), 1.0)
                except (asyncio.TimeoutError, asyncio.CancelledError):
                    task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks = []
        for transport in self._transports:
            transport.close()
        self._transports = []


# Loop lateness below this is ordinary scheduling jitter and still counts as silence.
LOOP_LAG_GRACE_S = 0.05


class HeartbeatWatchdog:
    """Calls `on_silence(seconds)` once when no `beat()` arrived for `timeout_s` seconds."""

    def __init__(self, *, label: str, timeout_s: float, on_silence: Callable[[float], None]) -> None:
        self.label = label
        self.timeout_s = timeout_s
        self._on_silence = on_silence
        self._last = time.monotonic()
        self._task: asyncio.Task[None] | None = None

    def beat(self) -> None:
        self._last = time.monotonic()

    @property
    def silent_for(self) -> float:
        return time.monotonic() - self._last

    def start(self, timeout_s: float | None = None) -> None:
        """(Re)arm with a fresh clock; `timeout_s` changes the limit (start-up gets a longer one)."""
        if timeout_s is not None:
            self.timeout_s = timeout_s
        self._last = time.monotonic()
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name=f"tritonpy-heartbeat-watchdog-{self.label}")

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None

    async def _run(self) -> None:
        while True:
            remaining = self.timeout_s - self.silent_for
            if remaining <= 0:
                silent = self.silent_for
                self._task = None
                self._on_silence(silent)
                return
            nap = min(remaining, 0.25) + 0.01
            asked = time.monotonic()
            await asyncio.sleep(nap)
            late = time.monotonic() - asked - nap
            if late > LOOP_LAG_GRACE_S:
                # Our own loop was busy (a big request decoding, a GC pause): the worker's beats sat
                # unread in the socket meanwhile. That time says nothing about the worker, so it
                # does not count; the next pass sees the beats the loop reads first.
                self._last = min(self._last + late, time.monotonic())
