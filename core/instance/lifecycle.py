"""Supervision and shutdown of a WorkerInstance: death and hang handling, restart with backoff,
draining stop. A mixin so `instance.py` keeps the spawn/handshake/execute path readable; it works
only on the attributes WorkerInstance sets up."""
from __future__ import annotations

import asyncio
import logging
import os
import signal
import time

import zmq

from tritonpy.core.errors import ErrorCode, ServerError, internal, unavailable
from tritonpy.core.instance.spec import InstanceState
from tritonpy.core.instance.supervisor import WorkerProcess, describe_exit
from tritonpy.proto import messages as m
from tritonpy.shm.arena import Arena
from tritonpy.shm.segment import unlink_prefix

log = logging.getLogger("tritonpy.core.instance")

TERM_GRACE_S = 2.0


class _WorkerExited(ServerError):
    """The worker ended while starting (the message says how; stderr is added when there is any)."""


def _fail_future(fut: asyncio.Future | None, error: BaseException) -> None:
    """Fail a waiter without a 'never retrieved' warning when nobody awaits it any more."""
    if fut is not None and not fut.done():
        fut.set_exception(error)
        fut.exception()



class InstanceLifecycle:
    """Supervision and stop for WorkerInstance (see the module docstring)."""

    # --- supervision -----------------------------------------------------------------------
    def _on_silence(self, seconds: float) -> None:
        proc = self._proc
        if proc is None or not proc.alive:
            return
        self._kill_reason = f"killed after no heartbeat for {seconds:.1f} s"
        log.error("[%s] worker pid %s sent no heartbeat for %.1f s: it hangs; killing it", self._label, proc.pid, seconds)
        proc.signal(signal.SIGKILL)

    def _on_exit(self, generation: int, returncode: int) -> None:
        """The worker of `generation` ended. Runs on the loop as soon as the exit is reported."""
        if generation != self._generation:
            return  # an earlier worker, already discarded
        proc = self._proc
        if proc is not None and proc.pid is not None:
            self._dead_pids.add(proc.pid)
        self.last_exit = returncode
        self._watchdog.stop()
        how = self._launch.note_exit(returncode, describe_exit(returncode), self.stats)
        if self._kill_reason:
            how = f"{how}; {self._kill_reason}"
        # Start-up waiters (first start or a restart attempt) learn why.
        startup_error = _WorkerExited(
            ErrorCode.UNAVAILABLE, f"{self._where()}: the backend worker exited during start-up ({how})"
        )
        for fut in (self._hello, self._init_done):
            _fail_future(fut, startup_error)
        if self._finalize_done is not None and not self._finalize_done.done():
            self._finalize_done.set_result(None)
        self._fail_inflight(internal(f"{self._where()}: backend worker died ({how}) while executing"))
        for fut in self._ready_tokens.values():
            if not fut.done():
                fut.set_result(False)
        self._ready_tokens.clear()
        if self._state is InstanceState.READY:
            tail = "\n".join(proc.stderr_tail) if proc is not None else ""
            log.error(
                "[%s] backend worker (pid %s) died: %s%s",
                self._label, proc.pid if proc else "?", how, f"; last stderr lines:\n{tail}" if tail else "",
            )
            self._reclaim_shm()
            self._state = InstanceState.RESTARTING
            self._notify(False)
            self._restart_task = asyncio.create_task(self._restart_loop(), name=f"tritonpy-restart-{self._label}")

    def _fail_inflight(self, error: ServerError) -> None:
        self._streams.fail_all(error)
        self._bls.abort()
        batches = list(self._inflight.values())
        self._inflight.clear()
        self._drained.set()
        for batch in batches:
            self._free_blocks(batch.packed.blocks)
            if not batch.future.done():
                batch.future.set_result(ServerError(error.code, error.message))

    def _reclaim_shm(self) -> None:
        """Forget the dead worker's segments and ours, unlink them all, start a fresh input arena."""
        self._cache.close()
        if self._arena is not None:
            self._arena.close()
            self._arena = Arena(self.input_prefix, initial_size=self._arena_initial, max_total=self._arena_max)
        unlink_prefix(self.shm_prefix)

    async def _restart_loop(self) -> None:
        while self._state is InstanceState.RESTARTING:
            delay = self._backoff.next_delay(time.monotonic())
            log.warning("[%s] restarting the backend worker in %.2f s", self._label, delay)
            await asyncio.sleep(delay)
            if self._state is not InstanceState.RESTARTING:
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
            if self._state is not InstanceState.RESTARTING:
                return
            self.restarts += 1
            if self.stats is not None:
                self.stats.worker_restarts += 1
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
        self._reclaim_shm()

    # --- stop ------------------------------------------------------------------------------
    async def stop(self, timeout: float = 10.0) -> None:
        """Drain, finalize, stop the worker and release everything. Idempotent; never restarts."""
        if self._state is InstanceState.NEW:
            self._state = InstanceState.STOPPED
            self._names.retire()
            return
        if self._stop_task is None:
            self._stop_task = asyncio.create_task(self._stop(timeout), name=f"tritonpy-stop-{self._label}")
        await asyncio.shield(self._stop_task)

    async def _stop(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        previous = self._state
        self._state = InstanceState.STOPPING
        if previous is InstanceState.READY:
            self._notify(False)
        if self._restart_task is not None:
            self._restart_task.cancel()
            try:
                await self._restart_task
            except BaseException:
                pass
            self._restart_task = None
        proc = self._proc
        if previous is InstanceState.READY and proc is not None and proc.alive:
            await self._graceful(proc, deadline)
        await self._release_everything()
        self._state = InstanceState.STOPPED

    async def _graceful(self, proc: WorkerProcess, deadline: float) -> None:
        def left() -> float:
            return max(0.0, deadline - time.monotonic())

        if self._inflight:
            try:
                await asyncio.wait_for(self._drained.wait(), left())
            except asyncio.TimeoutError:
                log.warning("[%s] %d batch(es) still running at stop", self._label, len(self._inflight))
        if not proc.alive:
            return
        self._finalize_done = asyncio.get_running_loop().create_future()
        try:
            await self._send(m.Finalize())
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
        self._fail_inflight(unavailable(f"{self._where()} was stopped while executing"))
        stopped = unavailable(f"{self._where()} was stopped")
        for fut in (self._hello, self._init_done):
            _fail_future(fut, stopped)
        if self._finalize_done is not None and not self._finalize_done.done():
            self._finalize_done.set_result(None)
        for fut in self._ready_tokens.values():
            if not fut.done():
                fut.set_result(False)
        self._ready_tokens.clear()
        if self._reader is not None:
            self._reader.cancel()
            try:
                await self._reader
            except BaseException:
                pass
            self._reader = None
        self._sync_sock = None  # a shadow: closing the asyncio socket closes it
        if self._sock is not None:
            self._sock.close(linger=0)
            self._sock = None
        try:
            os.unlink(self.socket_path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("[%s] cannot remove %s: %s", self._label, self.socket_path, exc)
        self._cache.close()
        if self._arena is not None:
            self._arena.close()
            self._arena = None
        unlink_prefix(self.shm_prefix)
        self._names.retire()

