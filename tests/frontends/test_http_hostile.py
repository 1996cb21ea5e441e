"""Hostile HTTP clients against a real server (issue 18, items 4, 5 and 7): lying Content-Length,
huge BYTES tensors, huge JSON, slowloris, idle floods, oversized or malformed load overrides.

Each test reproduces the attack with raw sockets on 127.0.0.1 and asserts the clean outcome: a
clear status, health answering promptly throughout, server memory bounded, the worker untouched.
"""
from __future__ import annotations

import base64
import http.client
import json
import socket
import threading
import time
from pathlib import Path

import psutil
import pytest

from support.leaks import _settle, child_pids, shm_names
from support.model_builders import python_model
from support.server_process import ServerProcess

IDLE_TIMEOUT = 2.0
BODY_TIMEOUT = 2.0
LINGER = 10.0  # aiohttp's lingering_time: how long it drains an unread body before closing
MB = 1 << 20

COUNT_BYTES = """
input [ { name: "INPUT0" data_type: TYPE_STRING dims: [ -1 ] } ]
output [ { name: "OUTPUT0" data_type: TYPE_INT64 dims: [ 1 ] } ]
instance_group [ { count: 1 kind: KIND_CPU } ]
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """One server for the module; it checks for stray processes and /dev/shm after shutdown (its
    input arena grows a segment for the big tensors, so a per-test shm probe would misfire)."""
    repo: Path = tmp_path_factory.mktemp("hostile_repo")
    python_model(repo, "count_bytes", "out = np.array([x.size], dtype=np.int64)", config=COUNT_BYTES)
    from multiprocessing import resource_tracker

    resource_tracker.ensure_running()  # leak_check starts it; it is the test runner's, not a leak
    shm_before, kids_before = shm_names(), child_pids()
    proc = ServerProcess(
        repo, "--model-control-mode=explicit", "--load-model=count_bytes",
        f"--http-idle-timeout={IDLE_TIMEOUT}", f"--http-body-timeout={BODY_TIMEOUT}",
    )
    with proc:
        yield proc
    assert proc.proc.returncode == 0, proc.output()
    assert not _settle(child_pids, kids_before), "processes left behind"
    assert not _settle(shm_names, shm_before), "shared memory left behind"


def rss(server: ServerProcess) -> int:
    return psutil.Process(server.proc.pid).memory_info().rss


def workers(server: ServerProcess) -> set[int]:
    return {p.pid for p in psutil.Process(server.proc.pid).children(recursive=True)}


class HealthProbe(threading.Thread):
    """Polls /v2/health/live every 50 ms; records the slowest answer and the peak server RSS."""

    def __init__(self, server: ServerProcess) -> None:
        super().__init__(daemon=True)
        self.server = server
        self.stop = threading.Event()
        self.slowest = 0.0
        self.failures: list[str] = []
        self.peak_rss = rss(server)

    def run(self) -> None:
        while not self.stop.is_set():
            t0 = time.monotonic()
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.server.http_port, timeout=5)
                conn.request("GET", "/v2/health/live")
                status = conn.getresponse().status
                conn.close()
                if status != 200:
                    self.failures.append(f"status {status}")
            except OSError as exc:
                self.failures.append(repr(exc))
            self.slowest = max(self.slowest, time.monotonic() - t0)
            self.peak_rss = max(self.peak_rss, rss(self.server))
            time.sleep(0.05)

    def __enter__(self) -> HealthProbe:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.join(10)


def connect(server: ServerProcess) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.http_port), timeout=10)


def read_reply(sock: socket.socket, timeout: float) -> bytes:
    """Everything the server sends until it closes (or `timeout`)."""
    sock.settimeout(timeout)
    data = b""
    try:
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    except (TimeoutError, ConnectionResetError):
        pass
    return data


def infer_head(length: int, model: str = "count_bytes", extra: str = "") -> bytes:
    return (f"POST /v2/models/{model}/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"{extra}Content-Length: {length}\r\n\r\n").encode()


def post(server: ServerProcess, path: str, body: bytes, headers: dict | None = None) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", server.http_port, timeout=120)
    conn.request("POST", path, body=body, headers=headers or {})
    resp = conn.getresponse()
    out = (resp.status, resp.read())
    conn.close()
    return out


def test_a_lying_content_length_costs_only_the_bytes_sent(server):
    """12 clients announce 60 MB and send 1 KB: before the fix +690 MB; now memory follows the data,
    and each stalled upload is answered 408 after the body timeout."""
    before = rss(server)
    socks = [connect(server) for _ in range(12)]
    try:
        for s in socks:
            s.sendall(infer_head(60 * MB) + b"{" + b" " * 1023)
        time.sleep(0.5)
        assert rss(server) - before < 30 * MB
        start = time.monotonic()
        for s in socks:
            reply = read_reply(s, BODY_TIMEOUT + 8)
            assert reply.startswith(b"HTTP/1.1 408"), reply[:200]
            assert b"--http-body-timeout" in reply
        # Answered at the body timeout, closed at the latest after aiohttp's 10 s lingering close.
        assert time.monotonic() - start < BODY_TIMEOUT + LINGER + 3
    finally:
        for s in socks:
            s.close()
    assert rss(server) - before < 30 * MB
    assert post(server, "/v2/health/live", b"")[0] in (200, 405)


def test_a_declared_gigabyte_body_is_refused_at_once(server):
    before = rss(server)
    with connect(server) as s:
        s.sendall(infer_head(1 << 30) + b"x" * 4096)
        reply = read_reply(s, 15)
    assert reply.startswith(b"HTTP/1.1 400"), reply[:200]
    assert b"exceeds the maximum allowed value" in reply
    assert rss(server) - before < 20 * MB


def test_a_big_bytes_tensor_stays_compact_and_leaves_health_alone(server):
    """Item 5: 2 M two-byte strings (12 MB): once 50x the wire size in Python objects and seconds
    of a blocked loop; now the server keeps the wire form and the worker is not restarted."""
    count = 2_000_000
    header = json.dumps({"inputs": [{"name": "INPUT0", "datatype": "BYTES", "shape": [count],
                                     "parameters": {"binary_data_size": count * 6}}]}).encode()
    body = header + b"\x02\x00\x00\x00ab" * count
    pids = workers(server)
    before = rss(server)
    with HealthProbe(server) as probe:
        status, reply = post(server, "/v2/models/count_bytes/infer", body,
                             {"Inference-Header-Content-Length": str(len(header))})
        time.sleep(0.3)
    assert status == 200, reply[:300]
    assert json.loads(reply)["outputs"][0]["data"] == [count]
    assert not probe.failures and probe.slowest < 1.0, (probe.failures, probe.slowest)
    # The body and one copy into shared memory, not a Python object per string.
    assert probe.peak_rss - before < 4 * len(body) + 30 * MB, (probe.peak_rss - before) / MB
    assert workers(server) == pids


def test_a_huge_json_document_is_parsed_off_the_loop(server):
    """Item 7: 3 M JSON numbers used to stall health for seconds while parsing on the loop."""
    body = json.dumps({"inputs": [{"name": "INPUT0", "datatype": "BYTES", "shape": [3_000_000],
                                   "data": list(range(3_000_000))}]}).encode()
    with HealthProbe(server) as probe:
        status, reply = post(server, "/v2/models/count_bytes/infer", body)
        time.sleep(0.3)
    assert status == 400 and b"expected a string" in reply, reply[:300]
    assert not probe.failures and probe.slowest < 1.0, (probe.failures, probe.slowest)


def test_slowloris_headers_are_cut_off(server):
    """Clients that trickle header lines forever are closed after the idle/header timeout."""
    socks = [connect(server) for _ in range(50)]
    closed_at: dict[int, float] = {}
    start = time.monotonic()
    try:
        for s in socks:
            s.sendall(b"POST /v2/models/count_bytes/infer HTTP/1.1\r\nHost: x\r\n")
            s.setblocking(False)
        while len(closed_at) < len(socks) and time.monotonic() - start < IDLE_TIMEOUT + 10:
            for i, s in enumerate(socks):
                if i in closed_at:
                    continue
                try:
                    s.sendall(b"X-Slow: 1\r\n")
                    if s.recv(4096) == b"":
                        closed_at[i] = time.monotonic() - start
                except BlockingIOError:
                    pass
                except OSError:
                    closed_at[i] = time.monotonic() - start
            time.sleep(0.25)
    finally:
        for s in socks:
            s.close()
    assert len(closed_at) == len(socks)
    assert max(closed_at.values()) < IDLE_TIMEOUT + 5


def test_two_thousand_idle_connections_are_bounded_and_closed(server):
    before = rss(server)
    socks = [connect(server) for _ in range(2000)]
    try:
        with HealthProbe(server) as probe:
            time.sleep(0.5)
        assert not probe.failures and probe.slowest < 1.0, (probe.failures, probe.slowest)
        assert rss(server) - before < 60 * MB
        deadline = time.monotonic() + IDLE_TIMEOUT + 10
        for s in socks:
            assert read_reply(s, max(0.1, deadline - time.monotonic())) == b""
            assert time.monotonic() < deadline
    finally:
        for s in socks:
            s.close()


def _load(server: ServerProcess, parameters: dict) -> tuple[int, bytes]:
    return post(server, "/v2/repository/models/count_bytes/load",
                json.dumps({"parameters": parameters}).encode())


def test_an_oversized_config_override_is_refused(server):
    before = rss(server)
    config = json.dumps({"name": "count_bytes", "backend": "python", "parameters": {"pad": {"string_value": "x" * (4 * MB)}}})
    status, reply = _load(server, {"config": config})
    assert status == 400 and b"exceeds the maximum" in reply, reply[:300]
    assert rss(server) - before < 40 * MB


@pytest.mark.parametrize("key", ["file:1", "file:a\0b/model.py", "file:", "file:../x", "file:/etc/x", "file:1//x"])
def test_bad_override_paths_are_client_errors(server, key):
    config = json.dumps({"name": "count_bytes", "backend": "python"})
    status, reply = _load(server, {"config": config, key: base64.b64encode(b"data").decode()})
    assert status == 400, reply[:300]
    assert b"override path" in reply
    status, _ = post(server, "/v2/models/count_bytes/infer",
                     json.dumps({"inputs": [{"name": "INPUT0", "datatype": "BYTES", "shape": [1],
                                             "data": ["a"]}]}).encode())
    assert status == 200


def test_a_flood_of_malformed_requests_does_not_flood_the_log(server):
    """aiohttp logs each malformed request with a traceback; 200 of them must cost one line."""
    for i in range(200):
        with connect(server) as s:
            s.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nX-Bad: \x00" + str(i).encode() + b"\r\n\r\n")
            assert read_reply(s, 5).split(b" ")[1] == b"400"
    time.sleep(0.5)
    log = server.output()
    assert log.count("malformed HTTP request") <= 1, log[-3000:]
    assert "Error handling request" not in log and "Traceback" not in log, log[-3000:]
    assert post(server, "/v2/health/live", b"")[0] in (200, 405)


@pytest.mark.parametrize("module", ["tritonclient.http", "tritonclient.http.aio"])
def test_clients_survive_their_idle_connection_being_closed(server, module):
    """The idle timeout closes pooled keep-alive connections; the real tritonclient must simply
    reconnect on its next call, sync and asyncio."""
    import asyncio
    import importlib

    import numpy as np

    httpclient = importlib.import_module(module)
    data = np.array([b"a", b"bc"], dtype=np.object_)

    def inputs():
        t = httpclient.InferInput("INPUT0", [2], "BYTES")
        t.set_data_from_numpy(data, binary_data=True)
        return [t]

    if module.endswith("aio"):
        async def run() -> list:
            client = httpclient.InferenceServerClient(server.http_url)
            try:
                first = (await client.infer("count_bytes", inputs())).as_numpy("OUTPUT0").tolist()
                await asyncio.sleep(IDLE_TIMEOUT + 1.5)
                second = (await client.infer("count_bytes", inputs())).as_numpy("OUTPUT0").tolist()
            finally:
                await client.close()
            return [first, second]
        results = asyncio.run(run())
    else:
        client = httpclient.InferenceServerClient(server.http_url)
        try:
            results = [client.infer("count_bytes", inputs()).as_numpy("OUTPUT0").tolist()]
            time.sleep(IDLE_TIMEOUT + 1.5)
            results.append(client.infer("count_bytes", inputs()).as_numpy("OUTPUT0").tolist())
        finally:
            client.close()
    assert results == [[2], [2]]
