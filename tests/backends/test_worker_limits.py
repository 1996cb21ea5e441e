"""Worker limits from model config parameters: parsing (pure), then a real worker that dies at its
memory ceiling alone, is restarted, and is reported as "out of memory"; CPU affinity and thread caps."""
from __future__ import annotations

import json
import os
import sys
import urllib.request

import numpy as np
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from support.model_builders import FP32_IO, python_model
from support.servers import serve
from tritonpy.core.instance.limits import (EXIT_OUT_OF_MEMORY, WorkerLaunch, WorkerLimits, parse_cpus,
                                         worker_command)

MODULE = "tritonpy.backends.worker"


def config_json(**params: str) -> str:
    return json.dumps({"parameters": {k: {"string_value": v} for k, v in params.items()}})


def test_parse_limits_and_reject_bad_values():
    limits = WorkerLimits.from_config_json(config_json(TRITONPY_MEMORY_LIMIT_MB="512", TRITONPY_CPU_AFFINITY="0",
                                                       TRITONPY_NUM_THREADS="2"))
    assert limits == WorkerLimits(memory_bytes=512 << 20, cpus=(0,), threads=2)
    assert not WorkerLimits.from_config_json("{}")
    assert parse_cpus("0, 2-3") == (0, 2, 3)
    for bad in ({"TRITONPY_MEMORY_LIMIT_MB": "-1"}, {"TRITONPY_NUM_THREADS": "two"},
                {"TRITONPY_CPU_AFFINITY": "3-1"}, {"TRITONPY_CPU_AFFINITY": "4096"}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            WorkerLimits.from_config_json(config_json(**bad))


def test_command_and_environment():
    argv = [sys.executable, "-m", MODULE, "--endpoint", "ipc://x"]
    assert worker_command(argv, MODULE, limits=WorkerLimits()) == argv  # nothing to apply: unchanged
    limited = worker_command(argv, MODULE, limits=WorkerLimits(memory_bytes=1 << 30, cpus=(0,)))
    assert limited[0] == sys.executable and limited[1] == "-c" and limited[-2:] == ["--endpoint", "ipc://x"]
    assert json.loads(limited[3]) == {"module": MODULE, "as_bytes": 1 << 30, "cpus": [0]}
    custom = ["/bin/true"]
    assert worker_command(custom, MODULE, limits=WorkerLimits(threads=1)) == custom
    env = WorkerLaunch(limits=WorkerLimits(memory_bytes=1, threads=3)).env()
    assert env["OMP_NUM_THREADS"] == "3" and env["TRITONPY_OOM_EXIT_CODE"] == str(EXIT_OUT_OF_MEMORY)
    assert WorkerLaunch().env() is None


HOG = """
if float(x.reshape(-1)[0]) < 0:
    hog = np.ones(8 << 30, dtype=np.uint8)  # 8 GiB: far past the ceiling
out = x.copy()
"""
PROBE = """
import os
out = np.array([len(os.sched_getaffinity(0)), int(os.environ.get("OMP_NUM_THREADS", "0"))], dtype=np.float32)
"""


@pytest.fixture
def server(tmp_path):
    repo = tmp_path / "repo"
    limited = FP32_IO + 'parameters { key: "TRITONPY_MEMORY_LIMIT_MB" value { string_value: "2048" } }\n' \
        'parameters { key: "TRITONPY_NUM_THREADS" value { string_value: "1" } }\n'
    python_model(repo, "hog", HOG, config=limited)
    python_model(repo, "neighbor", "out = x + 1", config=FP32_IO)
    python_model(repo, "pinned", PROBE.replace("\n", "\n"), config=FP32_IO +
                 'parameters { key: "TRITONPY_CPU_AFFINITY" value { string_value: "0" } }\n'
                 'parameters { key: "TRITONPY_NUM_THREADS" value { string_value: "3" } }\n')
    with serve(repo) as proc:
        yield proc


def infer(client, model: str, value: float):
    inp = httpclient.InferInput("INPUT0", [2], "FP32")
    inp.set_data_from_numpy(np.full(2, value, dtype=np.float32))
    return client.infer(model, [inp]).as_numpy("OUTPUT0")


def metric(server, name: str, model: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=10) as r:
        for line in r.read().decode().splitlines():
            if line.startswith(name + "{") and f'model="{model}"' in line:
                return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} for {model} not found")


def test_worker_over_its_memory_ceiling_dies_alone_and_is_restarted(leak_check, server):
    client = httpclient.InferenceServerClient(server.http_url)
    assert infer(client, "hog", 1.0).tolist() == [1.0, 1.0]
    neighbor_pid_before = _worker_pids(server)
    with pytest.raises(InferenceServerException) as info:
        infer(client, "hog", -1.0)
    assert "out of memory" in info.value.message()
    # The neighbor never noticed; the hog's worker comes back.
    assert infer(client, "neighbor", 1.0).tolist() == [2.0, 2.0]
    _eventually(lambda: client.is_model_ready("hog"))
    assert infer(client, "hog", 2.0).tolist() == [2.0, 2.0]
    assert metric(server, "tritonpy_worker_out_of_memory", "hog") == 1
    assert metric(server, "tritonpy_worker_restarts", "hog") == 1
    assert metric(server, "tritonpy_worker_out_of_memory", "neighbor") == 0
    rows = {r["name"]: r for r in client.get_model_repository_index()}
    assert "out of memory" in rows["hog"]["reason"] and not rows["neighbor"].get("reason")
    assert neighbor_pid_before & _worker_pids(server)  # at least the untouched workers kept their pid
    assert "out of memory" in server.output()


def test_cpu_affinity_and_thread_caps(server):
    client = httpclient.InferenceServerClient(server.http_url)
    cpus, threads = infer(client, "pinned", 0.0).tolist()
    assert cpus == 1 and threads == 3


def _worker_pids(server) -> set[int]:
    import psutil

    return {p.pid for p in psutil.Process(server.proc.pid).children(recursive=True)}


def _eventually(check, timeout: float = 20.0) -> None:
    import time

    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.1)
