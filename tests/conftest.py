"""Shared fixtures: leak probes for shared memory and child processes, free ports."""
from __future__ import annotations

import os
import socket
import time

import psutil
import pytest

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


@pytest.fixture
def leak_check():
    """Fails the test if it leaves shared-memory segments or child processes behind."""
    # tritonclient's shared-memory helpers start multiprocessing's resource tracker, a long-lived
    # helper process of the test runner itself: start it before the snapshot so it is not a "leak".
    from multiprocessing import resource_tracker

    resource_tracker.ensure_running()
    shm_before = shm_names()
    kids_before = child_pids()
    yield
    leaked_kids = _settle(child_pids, kids_before)
    leaked_shm = _settle(shm_names, shm_before)
    described = []
    for pid in sorted(leaked_kids):
        try:
            proc = psutil.Process(pid)
            described.append(f"{pid} ({' '.join(proc.cmdline())[:200]})")
            proc.kill()
        except psutil.Error:
            described.append(str(pid))
    assert not leaked_kids, f"child processes leaked: {described}"
    assert not leaked_shm, f"shared memory leaked: {sorted(leaked_shm)}"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def free_ports():
    """Three distinct free TCP ports on 127.0.0.1 (http, grpc, metrics)."""
    ports: set[int] = set()
    while len(ports) < 3:
        ports.add(free_port())
    return sorted(ports)


def _gpu_count() -> int:
    """GPUs the CUDA runtime sees; 0 without cuda-python, a driver or a device."""
    try:
        from cuda.bindings import runtime  # type: ignore[import-not-found]
    except ImportError:
        return 0
    try:
        err, count = runtime.cudaGetDeviceCount()
    except Exception:  # noqa: BLE001 - a broken driver counts as no GPU
        return 0
    return int(count) if int(err) == 0 else 0


def pytest_collection_modifyitems(config, items):
    """Tests marked `gpu` are skipped on machines without an NVIDIA GPU."""
    gpu_items = [item for item in items if item.get_closest_marker("gpu") is not None]
    if gpu_items and _gpu_count() == 0:
        skip = pytest.mark.skip(reason="needs an NVIDIA GPU (and cuda-python)")
        for item in gpu_items:
            item.add_marker(skip)
