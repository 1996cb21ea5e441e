"""Shared fixtures: leak probes for shared memory and child processes, free ports, and the server
fixture family for end-to-end tests (helpers in support/servers.py, imported only by the fixtures
that need them: unit tests keep a small test process, whose forks stay fast)."""
from __future__ import annotations

from pathlib import Path

import pytest

from support.leaks import LeakProbe, free_port


@pytest.fixture
def leak_check():
    """Fails the test if it leaves shared-memory segments or child processes behind."""
    probe = LeakProbe()
    yield
    probe.check("this test")


@pytest.fixture(scope="session")
def resource_tracker():
    """tritonclient's shm helpers use multiprocessing.shared_memory, whose resource tracker is a
    long-lived child of this test process: start it before any leak probe takes its snapshot."""
    from multiprocessing import resource_tracker as tracker

    tracker.ensure_running()


@pytest.fixture(scope="session")
def example_repo(tmp_path_factory) -> Path:
    """The quick-start repository from examples/build_examples.py, built once per run (read-only)."""
    from support.servers import build_example_repository

    return build_example_repository(tmp_path_factory.mktemp("examples") / "model_repository")


@pytest.fixture(scope="session")
def example_server(example_repo):
    """One server on the example repository (client shared memory allowed), shared by every test
    that only sends it requests; leak-checked and required to exit 0 when the run ends."""
    from support.servers import serve

    with serve(example_repo, "--allow-client-shm=true") as server:
        yield server


@pytest.fixture
def start_server():
    """Factory `start_server(repo, *flags, wait_ready=True, wait=True) -> ServerProcess` for servers
    on a test's own repository; all are stopped and leak-checked when the test ends."""
    from support.servers import ServerStarter

    starter = ServerStarter()
    yield starter
    starter.close()


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
