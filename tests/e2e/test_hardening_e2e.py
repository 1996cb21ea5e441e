"""Attacks from the hardening review (issue "Hardening"), each against a real server: a model that
starts a helper process, client shared-memory churn, a client that shrinks its segment while a
request runs, and a model that hangs while loading. Each asserts the clean outcome: the status code,
a healthy server, bounded memory, nothing left in /dev/shm and no stray process (leak_check)."""
from __future__ import annotations

import _posixshmem
import os
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import tritonclient.http as httpclient
import tritonclient.utils.shared_memory as shm
from support.model_builders import FP32_IO, PB_HEADER, python_model
from support.server_process import ServerProcess
from tritonclient.utils import InferenceServerException


def workers(server: ServerProcess, model: str) -> list[psutil.Process]:
    """The backend worker processes of `model` (instance names are '<model>_<n>')."""
    found = []
    for child in psutil.Process(server.proc.pid).children():
        try:
            cmd = child.cmdline()
        except psutil.Error:
            continue
        if "tritonpy.backends.worker" in cmd and f"{model}_0" in cmd:
            found.append(child)
    return found


def wait_until(predicate, timeout: float, what: str) -> float:
    start = time.monotonic()
    while not predicate():
        assert time.monotonic() - start < timeout, f"{what} not within {timeout}s"
        time.sleep(0.05)
    return time.monotonic() - start


def infer(client, model: str, values) -> np.ndarray:
    data = np.asarray(values, dtype=np.float32)
    inp = httpclient.InferInput("INPUT0", list(data.shape), "FP32")
    inp.set_data_from_numpy(data, binary_data=True)
    return client.infer(model, [inp]).as_numpy("OUTPUT0")


# --- 1. a helper process does not disable crash recovery ------------------------------------------

def test_a_model_helper_process_does_not_disable_crash_recovery(tmp_path, leak_check):
    python_model(tmp_path, "helper", "out = x.copy()", config=FP32_IO,
                 initialize='import subprocess\nself.helper = subprocess.Popen(["sleep", "1000"])')
    python_model(tmp_path, "bystander", "out = x * 2", config=FP32_IO)
    with ServerProcess(tmp_path, "--model-control-mode=explicit", "--load-model=*") as server:
        client = httpclient.InferenceServerClient(server.http_url, network_timeout=60)
        assert infer(client, "helper", [1, 2]).tolist() == [1, 2]
        (worker,) = workers(server, "helper")
        helpers = worker.children()
        assert [h.name() for h in helpers] == ["sleep"]
        worker.kill()  # the worker alone, as a crash would; its helper keeps the worker's pipes open
        wait_until(lambda: [w.pid for w in workers(server, "helper")] not in ([], [worker.pid])
                   and client.is_model_ready("helper"), 15, "the model back with a new worker")
        assert infer(client, "helper", [3]).tolist() == [3]
        _, alive = psutil.wait_procs(helpers, timeout=5)
        assert not alive, "the dead worker's helper process lives on"
        (worker,) = workers(server, "helper")
        helpers = worker.children()
        started = time.monotonic()
        client.unload_model("helper")
        wait_until(lambda: not workers(server, "helper"), 15, "the worker gone after unload")
        assert time.monotonic() - started < 10
        _, alive = psutil.wait_procs(helpers, timeout=5)
        assert not alive, "the helper process outlived the unload"
        assert infer(client, "bystander", [2]).tolist() == [4] and client.is_server_ready()


# --- 2. client shared-memory churn leaves nothing mapped ------------------------------------------

def _client_maps(pid: int, prefix: str) -> int:
    with open(f"/proc/{pid}/maps") as fh:
        return sum(1 for line in fh if f"/dev/shm/{prefix}" in line)


def test_shm_register_infer_unregister_cycles_leave_no_mapping_in_the_worker(tmp_path, leak_check):
    python_model(tmp_path, "ident", "out = x.copy()", config=FP32_IO)
    nbytes = 32 << 20
    count = nbytes // 4
    prefix = f"tp_churn_{os.getpid()}_"
    with ServerProcess(tmp_path, "--allow-client-shm=true") as server:
        client = httpclient.InferenceServerClient(server.http_url, network_timeout=120)
        assert infer(client, "ident", [1]).tolist() == [1]
        (worker,) = workers(server, "ident")
        fds_before = worker.num_fds()
        core_fds_before = psutil.Process(server.proc.pid).num_fds()
        for cycle in range(40):
            key = f"/{prefix}{cycle}"
            handle = shm.create_shared_memory_region(f"r{cycle}", key, nbytes)
            try:
                if cycle % 10 == 0:
                    shm.set_shared_memory_region(handle, [np.full(count, cycle, dtype=np.float32)])
                client.register_system_shared_memory(f"r{cycle}", key, nbytes)
                inp = httpclient.InferInput("INPUT0", [count], "FP32")
                inp.set_shared_memory(f"r{cycle}", nbytes)
                out = httpclient.InferRequestedOutput("OUTPUT0", binary_data=True)
                out.set_shared_memory(f"r{cycle}", nbytes)
                client.infer("ident", [inp], outputs=[out])
                if cycle % 10 == 0:
                    got = shm.get_contents_as_numpy(handle, np.float32, [count])
                    assert got[0] == cycle and got[-1] == cycle
                client.unregister_system_shared_memory(f"r{cycle}")
            finally:
                shm.destroy_shared_memory_region(handle)
        # No deleted client segment stays mapped (1.28 GB pinned before the fix), and no fd is kept.
        assert _client_maps(worker.pid, prefix) == 0
        assert _client_maps(server.proc.pid, prefix) == 0
        assert worker.num_fds() - fds_before <= 2
        assert psutil.Process(server.proc.pid).num_fds() - core_fds_before <= 4
        assert client.is_server_ready() and workers(server, "ident")[0].pid == worker.pid


# --- 6. a segment shrunk mid-request fails that request alone ------------------------------------

def _shrink(key: str, size: int) -> None:
    fd = _posixshmem.shm_open(key, os.O_RDWR, mode=0o600)
    try:
        os.ftruncate(fd, size)
    finally:
        os.close(fd)


def test_a_segment_shrunk_mid_request_fails_only_that_request(tmp_path, leak_check):
    # The model touches its input only after a pause, while the client has shrunk the segment.
    python_model(tmp_path, "slow", "time.sleep(1.0)\nout = x * 1.0", config=FP32_IO)
    nbytes = 1 << 20
    count = nbytes // 4
    key_in, key_out = f"/tp_shrink_in_{os.getpid()}", f"/tp_shrink_out_{os.getpid()}"
    with ServerProcess(tmp_path, "--allow-client-shm=true") as server:
        client = httpclient.InferenceServerClient(server.http_url, network_timeout=60)
        (worker,) = workers(server, "slow")
        h_in = shm.create_shared_memory_region("in", key_in, nbytes)
        h_out = shm.create_shared_memory_region("out", key_out, nbytes)
        results: dict[str, object] = {}

        def attacker() -> None:
            c = httpclient.InferenceServerClient(server.http_url, network_timeout=60)
            inp = httpclient.InferInput("INPUT0", [count], "FP32")
            inp.set_shared_memory("in", nbytes)
            out = httpclient.InferRequestedOutput("OUTPUT0", binary_data=True)
            out.set_shared_memory("out", nbytes)
            try:
                results["attacker"] = c.infer("slow", [inp], outputs=[out])
            except InferenceServerException as exc:
                results["attacker"] = exc

        def bystander() -> None:
            c = httpclient.InferenceServerClient(server.http_url, network_timeout=60)
            try:
                results["bystander"] = infer(c, "slow", [5, 6])
            except InferenceServerException as exc:
                results["bystander"] = exc

        try:
            shm.set_shared_memory_region(h_in, [np.ones(count, dtype=np.float32)])
            client.register_system_shared_memory("in", key_in, nbytes)
            client.register_system_shared_memory("out", key_out, nbytes)
            threads = [threading.Thread(target=attacker)]
            threads[0].start()
            time.sleep(0.5)  # the attacker's request is executing (the model sleeps)
            threads.append(threading.Thread(target=bystander))
            threads[1].start()  # queued behind it on the same worker
            _shrink(key_in, 0)
            _shrink(key_out, 0)
            for t in threads:
                t.join(60)
            attacked = results["attacker"]
            assert isinstance(attacked, InferenceServerException), attacked
            assert attacked.status() == "400" and "OUTPUT0" in attacked.message(), attacked.message()
            assert isinstance(results["bystander"], np.ndarray), results["bystander"]
            assert results["bystander"].tolist() == [5, 6]
            # Shrunk before the request: the input cannot be read, a clear 400 again.
            inp = httpclient.InferInput("INPUT0", [count], "FP32")
            inp.set_shared_memory("in", nbytes)
            with pytest.raises(InferenceServerException) as info:
                client.infer("slow", [inp])
            assert info.value.status() == "400" and "outside its 0 bytes" in info.value.message()
            # The worker never died: same process, no restart, the server healthy.
            assert workers(server, "slow")[0].pid == worker.pid and client.is_server_ready()
            client.unregister_system_shared_memory()
        finally:
            shm.destroy_shared_memory_region(h_in)
            shm.destroy_shared_memory_region(h_out)


# --- 7. a model that hangs while loading -----------------------------------------------------------

def _hang_at_import(repo: Path, name: str) -> None:
    python_model(repo, name, "out = x.copy()", config=FP32_IO)
    code = (repo / name / "1" / "model.py").read_text()
    (repo / name / "1" / "model.py").write_text(PB_HEADER + "\ntime.sleep(1000)\n" + code)


def test_a_model_that_hangs_while_loading_times_out_cleanly(tmp_path, leak_check):
    _hang_at_import(tmp_path, "hang_import")
    python_model(tmp_path, "hang_init", "out = x.copy()", config=FP32_IO, initialize="time.sleep(1000)")
    python_model(tmp_path, "fine", "out = x * 2", config=FP32_IO)
    with ServerProcess(tmp_path, "--model-control-mode=explicit", "--load-model=fine",
                       "--backend-config=python,load-timeout-seconds=2") as server:
        client = httpclient.InferenceServerClient(server.http_url, network_timeout=60)
        for name in ("hang_import", "hang_init"):
            started = time.monotonic()
            with pytest.raises(InferenceServerException) as info:
                client.load_model(name)
            assert time.monotonic() - started < 15
            assert info.value.status() == "400", info.value
            assert "load-timeout-seconds" in info.value.message(), info.value.message()
            assert not client.is_model_ready(name)
            (row,) = [r for r in client.get_model_repository_index() if r["name"] == name]
            assert row["state"] == "UNAVAILABLE" and "load-timeout-seconds" in row["reason"], row
            wait_until(lambda name=name: not workers(server, name), 10, f"{name}'s worker gone")
        # (strict readiness is false while a model is UNAVAILABLE, as in Triton; the server is live)
        assert infer(client, "fine", [1]).tolist() == [2] and client.is_server_live()
