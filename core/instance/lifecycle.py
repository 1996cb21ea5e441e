"""Supervision of one instance's worker process: spawn and handshake, death and hang handling,
restart with backoff, draining stop (STYLE.md pattern 7).

`InstanceSupervisor` is composed into `WorkerInstance`, not mixed in: it owns the process, its
generation and the instance's `InstanceState`, and reaches the instance only through the
`SupervisedInstance` protocol (its batches and readiness listeners), the `WorkerConnection` and
the `InstanceMemory` it is handed. A dead worker is noticed from its process handle at once, a hung
one from missing heartbeats (then killed). Only the batches in flight on it fail; its shared memory
is reclaimed by name prefix; it restarts with exponential backoff while the instance reports not
ready. `stop()` releases everything, also after a half-finished start.
"""
from __future__ import annotations

import asyncio
import functools
import logging
import os
import signal
import sys
import time
from typing import Any, Protocol, Sequence

import zmq

from tritonpy.core.errors import ErrorCode, ServerError, internal, unavailable
from tritonpy.core.instance.connection import WorkerConnection
from tritonpy.core.instance.memory import InstanceMemory
from tritonpy.core.instance.limits import WorkerLaunch, prepare_launch
from tritonpy.core.instance.spec import InstanceSpec, InstanceState, ResourceNames, float_setting
from tritonpy.core.instance.supervisor import HeartbeatWatchdog, RestartBackoff, WorkerProcess, describe_exit
from tritonpy.core.observability.stats import ModelStats
from tritonpy.proto import messages as m

__all__ = ["InstanceSupervisor", "SupervisedInstance", "WORKER_MODULE"]

log = logging.getLogger("tritonpy.core.instance")

WORKER_MODULE = "tritonpy.backends.worker"
TERM_GRACE_S = 2.0
INIT_FAILED_EXIT_GRACE_S = 2.0
# How long importing the model and its initialize() may take (backend config `load-timeout-seconds`).
# Heartbeats keep flowing while model code sleeps or loops, so without this a hang keeps the load open.
LOAD_TIMEOUT_S = 600.0


class SupervisedInstance(Protocol):
    """What the supervisor needs from the instance it supervises."""

    @property
    def config_json(self) -> str: ...

    def init_message(self) -> m.Init:
        """The Init for a freshly connected worker."""

    def adopt_init(self, done: m.InitDone) -> None:
        """The worker initialized (`done.ok`): take over a completed config."""

    def fail_work(self, error: ServerError) -> None:
        """Fail what waits on the worker: batches in flight, streams, BLS calls, readiness questions."""

    def notify(self, ready: bool) -> None:
        """Tell the readiness listeners."""

    async def drain(self, timeout: float) -> None:
        """Wait (at most `timeout`) until no batch is in flight."""


class _WorkerExited(ServerError):
    """The worker ended while starting (the message says how; stderr is added when there is any)."""


def _fail_future(fut: asyncio.Future[Any] | None, error: BaseException) -> None:
    """Fail a waiter without a 'never retrieved' warning when nobody awaits it any more."""
    if fut is not None and not fut.done():
        fut.set_exception(error)
        fut.exception()


def _settle(fut: asyncio.Future[Any] | None, value: object) -> None:
    if fut is not None and not fut.done():
        fut.set_result(value)


class InstanceSupervisor:
    """Owns one instance's worker process and state (see the module docstring)."""

    # long: one worker's whole life (spawn, handshake, watch, restart, stop) shares the process handle,
    # its generation and the handshake futures; split further, each piece would reach into the others.

    __slots__ = (
        "state", "generation", "restarts", "last_exit", "startup_timeout_s", "heartbeat_timeout_s", "load_timeout_s",
        "_owner", "_conn", "_memory", "_spec", "_names", "_label", "_where", "_stats", "_worker_argv", "_backoff",
        "_watchdog", "_launch", "_proc", "_dead_pids", "_kill_reason",
        "_hello", "_init_done", "_finalize_done", "_restart_task", "_stop_task",
    )

    def __init__(
        self,
        *,
        owner: SupervisedInstance,
        connection: WorkerConnection,
        memory: InstanceMemory,
        spec: InstanceSpec,
        names: ResourceNames,
        label: str,
        where: str,
        stats: ModelStats | None,
        worker_argv: Sequence[str] | None,
        backoff: RestartBackoff | None,
        startup_timeout_s: float,
        heartbeat_timeout_s: float,
    ) -> None:
        self.state = InstanceState.NEW
        self.generation = 0  # of the current worker process; 1 for the first
        self.restarts = 0
        self.last_exit: int | None = None
        self.startup_timeout_s = startup_timeout_s
        self.heartbeat_timeout_s = heartbeat_timeout_s
        self.load_timeout_s = float_setting(spec.backend_config, "load-timeout-seconds", LOAD_TIMEOUT_S)
        self._owner = owner
        self._conn = connection
        self._memory = memory
        self._spec = spec
        self._names = names
        self._label = label
        self._where = where
        self._stats = stats
        self._worker_argv = list(worker_argv) if worker_argv is not None else [sys.executable, "-m", WORKER_MODULE]
        self._backoff = backoff or RestartBackoff()
        self._watchdog = HeartbeatWatchdog(label=label, timeout_s=heartbeat_timeout_s, on_silence=self._on_silence)
        self._launch = WorkerLaunch()  # limits and interpreter, decided in start()
        self._proc: WorkerProcess | None = None
        self._dead_pids: set[int] = set()
        self._kill_reason = ""
        self._hello: asyncio.Future[m.Hello] | None = None
        self._init_done: asyncio.Future[m.InitDone] | None = None
        self._finalize_done: asyncio.Future[None] | None = None
        self._restart_task: asyncio.Task[None] | None = None
        self._stop_task: asyncio.Task[None] | None = None
        connection.on_traffic = self._watchdog.beat
        connection.handle(m.Hello, self._on_hello)
        connection.handle(m.InitDone, lambda msg: _settle(self._init_done, msg))
        connection.handle(m.FinalizeDone, lambda msg: _settle(self._finalize_done, None))

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None and self._proc.alive else None

    @property
    def worker_alive(self) -> bool:
        return self._proc is not None and self._proc.alive

    # --- start -----------------------------------------------------------------------------
    async def start(self) -> str:
        """Spawn the worker and initialize the model; returns the completed config JSON ('' if none).

        Raises ServerError(UNAVAILABLE) with the reason when the worker cannot start; everything
        opened so far is released again before the error propagates.
        """
        if self.state is not InstanceState.NEW:
            raise unavailable(f"{self._where}: instance cannot be started twice")
        self.state = InstanceState.STARTING
        try:
            self._conn.open()
            self._memory.open()
            self._launch = await _prepare_launch(self._spec, self._owner.config_json, self._label, self._where)
            completed = await self._spawn_and_init()
            if self.state is not InstanceState.STARTING:
                raise unavailable(f"{self._where}: stopped while starting")
        except BaseException:
            if self._stop_task is None:
                self.state = InstanceState.STOPPING
                await self._release_everything()
                self.state = InstanceState.STOPPED
            else:
                # stop() ran while this start was under way: it may have looked before the worker was
                # spawned and found nothing to kill. Whatever came up since must not outlive us.
                await self._kill_late_worker()
            raise
        self._set_ready()
        return completed

    async def _kill_late_worker(self) -> None:
        proc = self._proc
        if proc is not None and proc.alive:
            await proc.kill()
            await proc.close()

    async def _spawn_and_init(self) -> str:
        """One spawn + handshake. Raises ServerError(UNAVAILABLE); the caller cleans up the worker."""
        loop = asyncio.get_running_loop()
        self.generation += 1
        gen = self.generation
        self._kill_reason = ""
        self._hello = loop.create_future()
        self._init_done = None
        args = _worker_args(self._worker_argv, self._conn.endpoint, self._spec.instance_name)
        proc = WorkerProcess(
            self._launch.argv(args, WORKER_MODULE), label=self._label,
            on_exit=functools.partial(self._on_exit, gen), env=self._launch.env(),
        )
        self._proc = proc
        try:
            await proc.spawn()
        except OSError as exc:
            raise unavailable(f"{self._where}: cannot start the backend worker: {exc}") from exc
        self._launch.spawned(proc.pid)  # into its cgroup, if it has one (core/instance/cgroups.py)
        log.info("[%s] worker started (pid %d)", self._label, proc.pid)
        try:
            return await self._handshake(proc)
        except _WorkerExited as exc:
            # It died: its last words on stderr usually say why (an ImportError, an OOM message).
            await proc.close()
            tail = "; ".join(line.strip() for line in list(proc.stderr_tail)[-3:] if line.strip())
            if not tail:
                raise
            raise unavailable(f"{exc.message}; stderr: {tail}") from exc

    async def _handshake(self, proc: WorkerProcess) -> str:
        """Hello -> Init -> InitDone on a freshly spawned worker; returns the completed config."""
        assert self._hello is not None
        try:
            hello = await asyncio.wait_for(asyncio.shield(self._hello), self.startup_timeout_s)
        except asyncio.TimeoutError:
            raise unavailable(
                f"{self._where}: the backend worker did not connect within {self.startup_timeout_s:g} s "
                "(stub-timeout-seconds)"
            ) from None
        log.debug("[%s] hello from pid %d", self._label, hello.pid)
        # Initialization may legitimately take long (model loading), so until InitDone a silence only
        # counts as a hang after the start-up timeout; afterwards the heartbeat timeout applies.
        self._watchdog.start(max(self.startup_timeout_s, self.heartbeat_timeout_s))
        self._init_done = asyncio.get_running_loop().create_future()
        await self._conn.send(self._owner.init_message())
        try:
            done: m.InitDone = await asyncio.wait_for(asyncio.shield(self._init_done), self.load_timeout_s)
        except asyncio.TimeoutError:  # the caller stops the worker (and its process group)
            raise unavailable(
                f"{self._where}: the model did not finish loading (import and initialize) within "
                f"{self.load_timeout_s:g} s (load-timeout-seconds)"
            ) from None
        if not done.ok:
            # The worker exits by itself after a failed initialize; make sure of it.
            if not await proc.wait(INIT_FAILED_EXIT_GRACE_S):
                await proc.kill()
            raise unavailable(f"{self._where}: failed to initialize: {done.error}")
        self._watchdog.start(self.heartbeat_timeout_s)
        self._owner.adopt_init(done)
        return done.config_json

    def _set_ready(self) -> None:
        self.state = InstanceState.READY
        self._backoff.started(time.monotonic())
        self._owner.notify(True)

    def _on_hello(self, msg: m.Hello) -> None:
        if msg.pid not in self._dead_pids:  # else left over from a worker that is gone
            _settle(self._hello, msg)

    # --- death, hang, restart ----------------------------------------------------------------
    def _on_silence(self, seconds: float) -> None:
        proc = self._proc
        if proc is None or not proc.alive:
            return
        self._kill_reason = f"killed after no heartbeat for {seconds:.1f} s"
        log.error(
            "[%s] worker pid %s sent no heartbeat for %.1f s: it hangs; killing it", self._label, proc.pid, seconds
        )
        proc.signal(signal.SIGKILL)

    def _on_exit(self, generation: int, returncode: int) -> None:
        """The worker of `generation` ended. Runs on the loop as soon as the exit is reported."""
        if generation != self.generation:
            return  # an earlier worker, already discarded
        proc = self._proc
        if proc is not None and proc.pid is not None:
            self._dead_pids.add(proc.pid)
        self.last_exit = returncode
        self._watchdog.stop()
        how = self._launch.note_exit(returncode, describe_exit(returncode), self._stats)
        if self._kill_reason:
            how = f"{how}; {self._kill_reason}"
        # Start-up waiters (first start or a restart attempt) learn why.
        startup_error = _WorkerExited(
            ErrorCode.UNAVAILABLE, f"{self._where}: the backend worker exited during start-up ({how})"
        )
        for fut in (self._hello, self._init_done):
            _fail_future(fut, startup_error)
        _settle(self._finalize_done, None)
        self._owner.fail_work(internal(f"{self._where}: backend worker died ({how}) while executing"))
        if self.state is InstanceState.READY:
            tail = "\n".join(proc.stderr_tail) if proc is not None else ""
            log.error(
                "[%s] backend worker (pid %s) died: %s%s",
                self._label, proc.pid if proc else "?", how, f"; last stderr lines:\n{tail}" if tail else "",
            )
            self._memory.reclaim()
            self.state = InstanceState.RESTARTING
            self._owner.notify(False)
            self._restart_task = asyncio.create_task(self._restart_loop(), name=f"tritonpy-restart-{self._label}")

    async def _restart_loop(self) -> None:
        while self.state is InstanceState.RESTARTING:
            delay = self._backoff.next_delay(time.monotonic())
            log.warning("[%s] restarting the backend worker in %.2f s", self._label, delay)
            await asyncio.sleep(delay)
            if self.state is not InstanceState.RESTARTING:
                return
            try:
                await self._spawn_and_init()
            except ServerError as exc:
                log.error("[%s] restart failed: %s", self._label, exc.message)
                await self._discard_worker()
                continue
            except asyncio.CancelledError:
                await self._discard_worker()
                raise
            except Exception:
                log.exception("[%s] restart failed", self._label)
                await self._discard_worker()
                continue
            if self.state is not InstanceState.RESTARTING:
                return
            self.restarts += 1
            if self._stats is not None:
                self._stats.worker_restarts += 1
            log.info("[%s] backend worker restarted (pid %s, restart #%d)", self._label, self.pid, self.restarts)
            self._set_ready()
            return

    async def _discard_worker(self) -> None:
        """After a failed start attempt: the process gone, its memory reclaimed."""
        self._watchdog.stop()
        proc = self._proc
        if proc is not None:
            await proc.close()
            if proc.pid is not None:
                self._dead_pids.add(proc.pid)
        self._memory.reclaim()

    # --- stop ------------------------------------------------------------------------------
    async def stop(self, timeout: float = 10.0) -> None:
        """Drain, finalize, stop the worker and release everything. Idempotent; never restarts."""
        if self.state is InstanceState.NEW:
            self.state = InstanceState.STOPPED
            self._names.retire()
            return
        if self._stop_task is None:
            self._stop_task = asyncio.create_task(self._stop(timeout), name=f"tritonpy-stop-{self._label}")
        await asyncio.shield(self._stop_task)

    async def _stop(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        previous = self.state
        self.state = InstanceState.STOPPING
        if previous is InstanceState.READY:
            self._owner.notify(False)
        if self._restart_task is not None:
            self._restart_task.cancel()
            # Waits for the cancelled restart loop; its own end (cancelled or failed) is not an error here.
            await asyncio.gather(self._restart_task, return_exceptions=True)
            self._restart_task = None
        proc = self._proc
        if previous is InstanceState.READY and proc is not None and proc.alive:
            await self._graceful(proc, deadline)
        await self._release_everything()
        self.state = InstanceState.STOPPED

    async def _graceful(self, proc: WorkerProcess, deadline: float) -> None:
        def left() -> float:
            return max(0.0, deadline - time.monotonic())

        await self._owner.drain(left())
        if not proc.alive:
            return
        self._finalize_done = asyncio.get_running_loop().create_future()
        try:
            await self._conn.send(m.Finalize())
            await asyncio.wait_for(asyncio.shield(self._finalize_done), left())
        except (asyncio.TimeoutError, zmq.ZMQError, ServerError):
            log.warning("[%s] worker did not finalize in time", self._label)
            return
        # The worker exits by itself after FinalizeDone.
        await proc.wait(min(left(), TERM_GRACE_S))

    async def _release_everything(self) -> None:
        """The guaranteed cleanup path: safe on a half-started instance and when called twice."""
        self._watchdog.stop()
        proc = self._proc
        if proc is not None:
            if proc.alive:
                await proc.terminate(TERM_GRACE_S)
            await proc.close()
        self._owner.fail_work(unavailable(f"{self._where} was stopped while executing"))
        stopped = unavailable(f"{self._where} was stopped")
        for fut in (self._hello, self._init_done):
            _fail_future(fut, stopped)
        _settle(self._finalize_done, None)
        await self._conn.close()
        self._memory.release()
        self._launch.close()  # the worker's cgroup
        self._names.retire()


def _worker_args(base: Sequence[str], endpoint: str, instance_name: str) -> list[str]:
    return [*base, "--endpoint", endpoint, "--instance-name", instance_name, "--parent-pid", str(os.getpid())]


async def _prepare_launch(spec: InstanceSpec, config_json: str, label: str, where: str) -> WorkerLaunch:
    """Worker limits and the model's own Python environment (built once, cached), from its config."""
    try:
        return await prepare_launch(spec.model_dir, config_json, spec.backend_config, label=label)
    except Exception as exc:  # ValueError, EnvironmentBuildError: the model's load failure reason
        raise unavailable(f"{where}: {exc}") from exc
