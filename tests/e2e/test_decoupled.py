"""Decoupled Python models through a real server and the real tritonclient: gRPC ModelStreamInfer,
HTTP generate_stream (SSE), responses sent from threads, client cancellation reaching the model,
the empty final response flag, a worker dying mid-stream, and the sender in a default-mode model."""
from __future__ import annotations

import asyncio
import json
import http.client
import queue
import socket
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from tritonpy.core.instance.streams import ResponseStream, StreamTable, run_decoupled
from tritonpy.core.errors import ServerError as CoreError
from tritonpy.core.types import InferRequest, InferResponse
from tritonpy.proto.messages import ErrorInfo, ResponseMsg, ResponseSend, TensorRef

from support.server_process import ServerProcess
from support.servers import serve

IO = """
input [ { name: "IN" data_type: TYPE_INT32 dims: [ 1 ] } ]
output [ { name: "OUT" data_type: TYPE_INT32 dims: [ -1 ] } ]
instance_group [ { count: 1 kind: KIND_CPU } ]
"""
DECOUPLED = "model_transaction_policy { decoupled: true }\n"

HEADER = """
import os, threading, time
import numpy as np
import triton_python_backend_utils as pb_utils

def out(i):
    return pb_utils.InferenceResponse([pb_utils.Tensor("OUT", np.array([i], dtype=np.int32))])

def count(req):
    return int(pb_utils.get_input_tensor_by_name(req, "IN").as_numpy()[0])
"""

MODELS = {
    # N responses from execute, then the bare FINAL flag.
    "repeat": (DECOUPLED, """
    def execute(self, requests):
        for req in requests:
            sender = req.get_response_sender()
            for i in range(count(req)):
                sender.send(out(i))
            sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
            try:
                sender.send(out(99))
            except pb_utils.TritonModelException as exc:
                assert "closed" in str(exc)
            else:
                raise AssertionError("send after FINAL must fail")
        return None
    """),
    # execute returns at once; a thread sends N responses, the last one carrying FINAL.
    "repeat_thread": (DECOUPLED, """
    def execute(self, requests):
        for req in requests:
            threading.Thread(target=self.work, args=(req,), daemon=True).start()
        return None

    def work(self, req):
        sender = req.get_response_sender()
        n = count(req)
        for i in range(n):
            time.sleep(0.02)
            sender.send(out(i), flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL if i == n - 1 else 0)
    """),
    # Streams until the client cancels, then leaves a marker file and closes the request.
    "endless": (DECOUPLED, """
    def execute(self, requests):
        req = requests[0]
        sender = req.get_response_sender()
        marker = req.parameters() and __import__("json").loads(req.parameters()).get("marker")
        for i in range(2000):
            if sender.is_cancelled() and req.is_cancelled():
                open(marker, "w").write(str(i))
                break
            sender.send(out(i))
            time.sleep(0.02)
        sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        return None
    """),
    # One response, then the worker dies.
    "crash_mid": (DECOUPLED, """
    def execute(self, requests):
        sender = requests[0].get_response_sender()
        sender.send(out(7))
        time.sleep(0.3)
        os._exit(3)
    """),
    # Three large responses (arena blocks, released one by one as the frontend sends them).
    "big": (DECOUPLED, """
    def execute(self, requests):
        for req in requests:
            sender = req.get_response_sender()
            for i in range(3):
                sender.send(pb_utils.InferenceResponse([pb_utils.Tensor("OUT", np.full(50000, i, dtype=np.int32))]))
            sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        return None
    """),
    # A default-mode model answering through the sender with FINAL (Triton >= 24.06).
    "sender_unary": ("", """
    def execute(self, requests):
        for req in requests:
            req.get_response_sender().send(out(count(req) * 2), flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        return None
    """),
}


def write_models(repo: Path, only: tuple[str, ...] = ()) -> None:
    for name, (policy, body) in MODELS.items():
        if only and name not in only:
            continue
        d = repo / name
        (d / "1").mkdir(parents=True, exist_ok=True)
        (d / "config.pbtxt").write_text(f'name: "{name}"\nbackend: "python"\n' + IO + policy)
        code = HEADER + "\n\nclass TritonPythonModel:\n" + textwrap.indent(textwrap.dedent(body), "    ")
        (d / "1" / "model.py").write_text(code)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    repo = tmp_path_factory.mktemp("decoupled")
    write_models(repo)
    with serve(repo) as proc:
        yield proc


def _inp(n: int) -> list:
    inp = grpcclient.InferInput("IN", [1], "INT32")
    inp.set_data_from_numpy(np.array([n], dtype=np.int32))
    return [inp]


class Stream:
    """A tritonclient gRPC stream whose results land in a queue."""

    def __init__(self, url: str) -> None:
        self.client = grpcclient.InferenceServerClient(url)
        self.results: queue.Queue = queue.Queue()
        self.client.start_stream(callback=lambda result, error: self.results.put((result, error)))

    def get(self, timeout: float = 20.0):
        return self.results.get(timeout=timeout)

    def close(self, cancel: bool = False) -> None:
        self.client.stop_stream(cancel_requests=cancel)
        self.client.close()


def _final(result) -> bool:
    return result.get_response().parameters["triton_final_response"].bool_param


def test_grpc_stream_three_responses_then_final(server, leak_check):
    s = Stream(server.grpc_url)
    try:
        s.client.async_stream_infer("repeat", _inp(3), request_id="r1")
        got = []
        for _ in range(3):
            result, error = s.get()
            assert error is None
            assert result.get_response().id == "r1"
            assert not _final(result)
            got.append(int(result.as_numpy("OUT")[0]))
        assert got == [0, 1, 2]
        # Without the flag, the bare FINAL sends nothing; with it, an empty final response arrives.
        s.client.async_stream_infer("repeat", _inp(2), request_id="r2", enable_empty_final_response=True)
        seen = []
        while True:
            result, error = s.get()
            assert error is None
            if _final(result):
                assert result.get_response().outputs == [] and result.get_response().id == "r2"
                break
            seen.append(int(result.as_numpy("OUT")[0]))
        assert seen == [0, 1]
        assert s.results.empty()
    finally:
        s.close()


def test_grpc_zero_responses_and_thread_sender(server, leak_check):
    s = Stream(server.grpc_url)
    try:
        s.client.async_stream_infer("repeat", _inp(0), request_id="none", enable_empty_final_response=True)
        result, error = s.get()
        assert error is None and _final(result) and result.get_response().outputs == []
        s.client.async_stream_infer("repeat_thread", _inp(4), request_id="t")
        values = []
        while True:
            result, error = s.get()
            assert error is None
            values.append(int(result.as_numpy("OUT")[0]))
            if _final(result):
                break
        assert values == [0, 1, 2, 3]
    finally:
        s.close()


def test_unary_infer_refuses_decoupled(server, leak_check):
    client = grpcclient.InferenceServerClient(server.grpc_url)
    with pytest.raises(InferenceServerException, match="decoupled"):
        client.infer("repeat", _inp(1))
    client.close()
    hclient = httpclient.InferenceServerClient(server.http_url)
    inp = httpclient.InferInput("IN", [1], "INT32")
    inp.set_data_from_numpy(np.array([1], dtype=np.int32))
    with pytest.raises(InferenceServerException, match="decoupled"):
        hclient.infer("repeat", [inp])
    hclient.close()


def _sse(url: str, model: str, body: dict) -> list[dict]:
    host, port = url.split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=20)
    conn.request("POST", f"/v2/models/{model}/generate_stream", json.dumps(body), {"Content-Type": "application/json"})
    resp = conn.getresponse()
    assert resp.status == 200
    assert resp.getheader("Content-Type").startswith("text/event-stream")
    text = resp.read().decode()
    conn.close()
    return [json.loads(chunk[len("data: "):]) for chunk in text.split("\n\n") if chunk.strip()]


def test_http_generate_stream_sse(server, leak_check):
    events = _sse(server.http_url, "repeat", {"IN": [3]})
    assert [e["OUT"] for e in events] == [0, 1, 2]
    assert all(e["model_name"] == "repeat" for e in events)
    events = _sse(server.http_url, "repeat_thread", {"IN": [2]})
    assert [e["OUT"] for e in events] == [0, 1]


def test_default_mode_model_may_answer_through_the_sender(server, leak_check):
    client = grpcclient.InferenceServerClient(server.grpc_url)
    result = client.infer("sender_unary", _inp(21))
    assert int(result.as_numpy("OUT")[0]) == 42
    client.close()


def test_client_cancel_reaches_the_model(server, tmp_path, leak_check):
    marker = tmp_path / "cancelled"
    s = Stream(server.grpc_url)
    try:
        s.client.async_stream_infer("endless", _inp(1), request_id="c", parameters={"marker": str(marker)})
        for _ in range(3):
            result, error = s.get()
            assert error is None
    finally:
        s.close(cancel=True)
    deadline = time.monotonic() + 20
    while not marker.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert marker.exists(), "the model never saw is_cancelled()"
    # The instance is free again: a new stream on the same model works.
    marker.unlink()
    s = Stream(server.grpc_url)
    try:
        s.client.async_stream_infer("endless", _inp(1), request_id="c2", parameters={"marker": str(marker)})
        result, error = s.get()
        assert error is None
    finally:
        s.close(cancel=True)
    deadline = time.monotonic() + 20
    while not marker.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert marker.exists()


def test_worker_crash_mid_stream_ends_the_stream_with_an_error(tmp_path, leak_check):
    # A server of its own: the restarted worker is a new process, which the leak probe must see go.
    write_models(tmp_path, only=("crash_mid", "repeat"))
    with ServerProcess(tmp_path) as server:
        s = Stream(server.grpc_url)
        try:
            s.client.async_stream_infer("crash_mid", _inp(1), request_id="x")
            result, error = s.get()
            assert error is None and int(result.as_numpy("OUT")[0]) == 7
            result, error = s.get()
            assert error is not None
            assert "died" in str(error) or "exited" in str(error)
        finally:
            s.close()
        # Other models are untouched, and the worker comes back.
        events = _sse(server.http_url, "repeat", {"IN": [1]})
        assert [e["OUT"] for e in events] == [0]
        client = grpcclient.InferenceServerClient(server.grpc_url)
        deadline = time.monotonic() + 30
        while not client.is_model_ready("crash_mid") and time.monotonic() < deadline:
            time.sleep(0.1)
        assert client.is_model_ready("crash_mid")
        client.close()
    assert server.proc.returncode == 0, server.output()


def shm_bytes() -> int:
    total = 0
    for p in Path("/dev/shm").iterdir():
        if p.name.startswith("tritonpy"):
            total += p.stat().st_size
    return total


def _run_big(s: "Stream") -> None:
    s.client.async_stream_infer("big", _inp(0), enable_empty_final_response=True)
    seen = []
    while True:
        result, error = s.get()
        assert error is None
        if _final(result):
            break
        arr = result.as_numpy("OUT")
        assert arr.shape == (50000,)
        seen.append(int(arr[0]))
    assert seen == [0, 1, 2]


@pytest.fixture
def big_warm(server):
    """One run first, so the arenas the server grows on demand exist before the leak snapshot."""
    s = Stream(server.grpc_url)
    try:
        _run_big(s)
    finally:
        s.close()


def test_large_streamed_responses_are_released(server, big_warm, leak_check):
    s = Stream(server.grpc_url)
    try:
        def run() -> None:
            s.client.async_stream_infer("big", _inp(0), enable_empty_final_response=True)
            seen = []
            while True:
                result, error = s.get()
                assert error is None
                if _final(result):
                    break
                arr = result.as_numpy("OUT")
                assert arr.shape == (50000,)
                seen.append(int(arr[0]))
            assert seen == [0, 1, 2]

        run()
        settled = shm_bytes()
        for _ in range(10):
            run()
        assert shm_bytes() <= settled  # blocks were reused: every response was released
    finally:
        s.close()


def test_response_stats_of_a_decoupled_model(server, leak_check):
    events = _sse(server.http_url, "repeat", {"IN": [2]})
    assert len(events) == 2
    client = httpclient.InferenceServerClient(server.http_url)
    stats = client.get_inference_statistics("repeat")["model_stats"][0]["response_stats"]
    client.close()
    assert stats["0"]["success"]["count"] >= 1 and stats["1"]["success"]["count"] >= 1
    assert sum(r["empty_response"]["count"] for r in stats.values()) >= 1  # the bare FINAL flags
    gclient = grpcclient.InferenceServerClient(server.grpc_url)
    gstats = gclient.get_inference_statistics("repeat").model_stats[0].response_stats
    gclient.close()
    assert gstats["0"].success.count == stats["0"]["success"]["count"]


def test_http_disconnect_cancels_the_request(server, tmp_path, leak_check):
    marker = tmp_path / "cancelled-http"
    host, port = server.http_url.split(":")
    body = json.dumps({"IN": [1], "parameters": {"marker": str(marker)}}).encode()
    with socket.create_connection((host, int(port)), timeout=20) as sock:
        sock.sendall(
            b"POST /v2/models/endless/generate_stream HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode() + body
        )
        received = b""
        while b"data: " not in received:
            chunk = sock.recv(4096)
            assert chunk, "the server closed the stream"
            received += chunk
        assert received.startswith(b"HTTP/1.1 200")
    # The client went away mid-stream.
    deadline = time.monotonic() + 20
    while not marker.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert marker.exists(), "the model never saw is_cancelled() after the HTTP client left"


# --- the core's pure plumbing, in process ----------------------------------------------------------


def _tracked(released: list, name: str) -> InferResponse:
    return InferResponse("m", "1", _release=lambda: released.append(name))


def _table(sent: list) -> StreamTable:
    return StreamTable(
        model_name="m", model_version="1", read=lambda ref: np.frombuffer(ref.inline, dtype=np.int32),
        send_release=lambda gen, rid: sent.append(("release", rid)),
        send_cancel=lambda gen, b, i: sent.append(("cancel", b, i)),
    )


async def test_run_decoupled_yields_until_final_and_releases_the_placeholder():
    released: list = []
    sent: list = []
    table = _table(sent)
    request = InferRequest("m", id="r")
    request.stream = ResponseStream()
    table.register(5, 0, request, generation=1)

    async def infer():
        return _tracked(released, "placeholder")

    one = TensorRef("OUT", "INT32", [1], inline=np.array([4], np.int32).tobytes())
    table.on_response(ResponseSend(5, 0, ResponseMsg(outputs=[one]), False, release_id=-3), 1)
    table.on_response(ResponseSend(5, 0, None, True), 1)
    got = [(r if r is None else int(r.outputs[0].data[0]), final)
           async for r, final in run_decoupled(infer(), request.stream, "t")]
    assert got == [(4, False), (None, True)]
    for _ in range(3):  # the execution may finish after the final response: it still releases
        await asyncio.sleep(0)
    assert released == ["placeholder"] and len(table) == 0
    # The first response was never released by anyone: dropping it releases its blocks.
    import gc
    gc.collect()
    assert ("release", -3) in sent


async def test_closing_early_cancels_in_the_worker_and_releases_unread_responses():
    released: list = []
    sent: list = []
    table = _table(sent)
    request = InferRequest("m")
    request.stream = ResponseStream()
    table.register(7, 2, request, generation=1)

    async def infer():
        return _tracked(released, "placeholder")

    request.stream.push(_tracked(released, "a"), False)
    request.stream.push(_tracked(released, "b"), False)
    stream = run_decoupled(infer(), request.stream, "t")
    first, final = await stream.__anext__()
    assert not final
    first.release()
    await stream.aclose()
    assert ("cancel", 7, 2) in sent and len(table) == 0
    assert sorted(released[:2]) == ["a", "b"]
    # A response arriving after the cancel is released at once.
    table.on_response(ResponseSend(7, 2, ResponseMsg(), False, release_id=-9), 1)
    assert ("release", -9) in sent


async def test_worker_error_and_error_responses():
    """A non-final error response is delivered and the request goes on (as Triton); a final one,
    or the worker's failure, ends it."""
    sent: list = []
    table = _table(sent)
    request = InferRequest("m")
    request.stream = ResponseStream()
    table.register(1, 0, request, generation=1)

    async def infer():
        return InferResponse("m", "1")

    table.on_response(ResponseSend(1, 0, ResponseMsg(error=ErrorInfo(3, "bad input")), False), 1)
    table.on_response(ResponseSend(1, 0, ResponseMsg(error=ErrorInfo(3, "worse input")), True), 1)
    seen = []
    with pytest.raises(CoreError, match="worse input"):
        async for item, final in run_decoupled(infer(), request.stream, "t"):
            seen.append((item.message, final))
    assert seen == [("bad input", False)]
    assert ("cancel", 1, 0) not in sent

    request = InferRequest("m")
    request.stream = ResponseStream()
    table.register(2, 0, request, generation=1)
    table.fail_all(CoreError(1, "worker died"))
    with pytest.raises(CoreError, match="worker died"):
        async for _ in run_decoupled(infer(), request.stream, "t"):
            pass
