"""WorkerConnection: the dispatch table (frames in, handler called) and a real ROUTER/DEALER pair."""
from __future__ import annotations

import asyncio
import logging
import os

import pytest
import zmq
import zmq.asyncio

from tritonpy.core.errors import ServerError
from tritonpy.core.instance.connection import WorkerConnection
from tritonpy.proto import messages as m


def _conn(tmp_path, name: str = "inst_0") -> WorkerConnection:
    path = str(tmp_path / f"{name}.sock")
    return WorkerConnection(
        label=f"model/{name}", where=f"model 'model' instance '{name}'", instance_name=name,
        endpoint=f"ipc://{path}", socket_path=path,
    )


class _Recorder:
    def __init__(self, conn: WorkerConnection) -> None:
        self.beats = 0
        self.got: list[object] = []
        conn.on_traffic = self._beat

    def _beat(self) -> None:
        self.beats += 1

    def __call__(self, msg: object) -> None:
        self.got.append(msg)


def test_each_kind_goes_to_its_handler_from_the_control_and_io_sockets(tmp_path):
    conn = _conn(tmp_path)
    done, bls = _Recorder(conn), []
    conn.handle(m.ExecuteDone, done)
    conn.handle(m.BlsCall, bls.append)
    conn.dispatch([b"inst_0", *m.encode(m.ExecuteDone(batch_id=7, responses=[]))])
    call = m.BlsCall(1, "other", "", m.RequestMsg("r", [], []))
    conn.dispatch([b"inst_0#io", *m.encode(call)])
    assert [msg.batch_id for msg in done.got] == [7]
    assert bls == [call]
    assert done.beats == 2


def test_heartbeats_count_as_traffic_and_reach_no_handler(tmp_path):
    conn = _conn(tmp_path)
    rec = _Recorder(conn)
    conn.handle(m.Heartbeat, rec)
    conn.dispatch([b"inst_0#hb", *m.encode(m.Heartbeat())])
    assert rec.beats == 1 and rec.got == []


def test_unknown_peer_malformed_and_unhandled_messages_are_dropped(tmp_path, caplog):
    conn = _conn(tmp_path)
    rec = _Recorder(conn)
    conn.handle(m.ExecuteDone, rec)
    with caplog.at_level(logging.DEBUG, logger="tritonpy.core.instance"):
        conn.dispatch([b"someone_else", *m.encode(m.ExecuteDone(batch_id=1, responses=[]))])
        conn.dispatch([b"inst_0", b"\x42", b"junk"])  # unknown kind
        conn.dispatch([b"inst_0", *m.encode(m.IsReadyDone(token=3, ready=True))])  # nobody handles it
    assert rec.got == [] and rec.beats == 3
    text = caplog.text
    assert "unknown peer" in text and "malformed message" in text and "unexpected IsReadyDone" in text


def test_worker_log_records_are_logged_under_the_instance_label(tmp_path, caplog):
    conn = _conn(tmp_path)
    with caplog.at_level(logging.INFO, logger="tritonpy.core.instance"):
        conn.dispatch([b"inst_0", *m.encode(m.LogRecord(level="WARNING", message="model says hi"))])
    record = next(r for r in caplog.records if "model says hi" in r.getMessage())
    assert record.levelno == logging.WARNING and "[model/inst_0]" in record.getMessage()


async def test_real_sockets_send_receive_and_close(tmp_path, leak_check):
    conn = _conn(tmp_path)
    received: asyncio.Queue = asyncio.Queue()
    conn.handle(m.Hello, received.put_nowait)
    conn.handle(m.BlsRelease, received.put_nowait)
    with pytest.raises(ServerError, match="instance is stopped"):
        await conn.send(m.IsReady(1))  # not opened yet
    conn.open()
    ctx = zmq.asyncio.Context.instance()
    dealer = ctx.socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    dealer.setsockopt(zmq.IDENTITY, b"inst_0")
    io = ctx.socket(zmq.DEALER)
    io.setsockopt(zmq.LINGER, 0)
    io.setsockopt(zmq.IDENTITY, b"inst_0#io")
    try:
        dealer.connect(conn.endpoint)
        io.connect(conn.endpoint)
        await dealer.send_multipart(m.encode(m.Hello(pid=123, instance_name="inst_0")))
        await io.send_multipart(m.encode(m.BlsRelease(5)))  # also makes the io peer known to the ROUTER
        got = [await asyncio.wait_for(received.get(), 5) for _ in range(2)]
        assert sorted(got, key=repr) == sorted([m.Hello(pid=123, instance_name="inst_0"), m.BlsRelease(5)], key=repr)
        await conn.send(m.IsReady(9))
        conn.send_nowait(m.Release(4))
        assert m.decode(await asyncio.wait_for(dealer.recv_multipart(), 5)) == m.IsReady(9)
        assert m.decode(await asyncio.wait_for(dealer.recv_multipart(), 5)) == m.Release(4)
        conn.send_io(m.CancelRequest(1, 0))
        assert m.decode(await asyncio.wait_for(io.recv_multipart(), 5)) == m.CancelRequest(1, 0)
    finally:
        dealer.close()
        io.close()
        await conn.close()
    assert conn.closed and not os.path.exists(conn.socket_path)
    conn.send_nowait(m.Release(5))  # closed: dropped quietly
    await conn.close()  # twice is fine
