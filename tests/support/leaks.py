"""Leak probes (shared memory, child processes) and free ports, shared by fixtures and helpers."""
from __future__ import annotations

import os
import socket
import time

import psutil

SHM_DIR = "/dev/shm"
OUR_SHM_PREFIXES = ("tritonpy", "tp_")


def _foreign(name: str) -> bool:
    """A server segment (`tritonpy_<pid>_...`) owned by a live process outside this test run.

    Segments of this process, of its descendants, or of processes that are gone are ours to
    account for; another server running on the same machine is not.
    """
    if not name.startswith("tritonpy_"):
        return False
    pid_text = name[len("tritonpy_"):].split("_", 1)[0]
    if not pid_text.isdigit():
        return False
    pid = int(pid_text)
    if pid == os.getpid():
        return False
    try:
        proc = psutil.Process(pid)
        return os.getpid() not in {p.pid for p in proc.parents()}
    except psutil.Error:
        return False


def shm_names() -> set[str]:
    try:
        return {n for n in os.listdir(SHM_DIR) if n.startswith(OUR_SHM_PREFIXES) and not _foreign(n)}
    except OSError:
        return set()


def child_pids() -> set[int]:
    try:
        return {p.pid for p in psutil.Process().children(recursive=True) if p.status() != psutil.STATUS_ZOMBIE}
    except psutil.Error:
        return set()


def _settle(probe, before: set, timeout: float = 10.0) -> set:
    """New entries that are still there after giving cleanup up to `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        extra = probe() - before
        if not extra or time.monotonic() > deadline:
            return extra
        time.sleep(0.05)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
