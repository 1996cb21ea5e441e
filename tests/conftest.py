"""Shared fixtures: leak probes for shared memory and child processes, free ports."""
from __future__ import annotations

import psutil
import pytest

from support.leaks import _settle, child_pids, free_port, shm_names


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
