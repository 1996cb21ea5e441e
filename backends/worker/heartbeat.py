"""Liveness in both directions: heartbeats to the core, and watching that the core is still there.

The heartbeat thread has its own DEALER socket (routing id `<instance>#hb`), so heartbeats keep
flowing while the main thread is busy inside a model's execute: the core tells "busy" from
"hung" by them. The same thread checks the parent; an orphaned worker would otherwise hold a
GPU and shared memory forever. On Linux the kernel also kills us when the parent dies
(PR_SET_PDEATHSIG), which works even if the core was SIGKILLed and the model is stuck in C code.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import signal
import sys
import threading
from typing import Callable

import zmq

from tritonpy.proto.messages import Heartbeat, encode

log = logging.getLogger("tritonpy.backends.worker.heartbeat")

_PR_SET_PDEATHSIG = 1


def set_parent_death_signal(sig: int = signal.SIGKILL) -> bool:
    """Ask the kernel to send `sig` when our parent thread exits (Linux only); False elsewhere.

    Note the kernel's rule: the signal fires when the *thread* that spawned us ends, so the core
    must spawn workers from a long-lived thread (its event-loop thread).
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        return libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def parent_alive(parent_pid: int) -> bool:
    """True while `parent_pid` is still our parent (a pid <= 0 disables the check)."""
    if parent_pid <= 0:
        return True
    if os.getppid() != parent_pid:
        return False
    try:
        os.kill(parent_pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class HeartbeatThread:
    """Sends `Heartbeat()` every `interval_s` and exits the process when the parent is gone."""

    def __init__(
        self,
        context: zmq.Context,
        endpoint: str,
        instance_name: str,
        *,
        interval_s: float,
        parent_pid: int,
        on_parent_death: Callable[[], None],
    ) -> None:
        self._context = context
        self._endpoint = endpoint
        self._identity = instance_name.encode() + b"#hb"
        self._interval = max(0.01, float(interval_s))
        self._parent_pid = parent_pid
        self._on_parent_death = on_parent_death
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{instance_name}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def stop(self, timeout: float = 1.0) -> None:
        self._stop.set()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    def _run(self) -> None:
        sock = self._context.socket(zmq.DEALER)
        try:
            sock.setsockopt(zmq.ROUTING_ID, self._identity)
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.SNDHWM, 16)
            sock.connect(self._endpoint)
            frames = encode(Heartbeat())
            while True:
                if not parent_alive(self._parent_pid):
                    log.error("parent process %d died; worker exiting", self._parent_pid)
                    try:
                        self._on_parent_death()
                    finally:
                        os._exit(1)
                try:
                    sock.send_multipart(frames, flags=zmq.NOBLOCK)
                except zmq.Again:
                    pass  # the core is not reading; it will notice missing heartbeats
                if self._stop.wait(self._interval):
                    break
        except zmq.ZMQError as exc:
            if not self._stop.is_set():
                log.error("heartbeat socket failed: %s", exc)
        finally:
            sock.close(linger=0)
