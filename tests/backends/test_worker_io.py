"""Tensor traffic through a real worker: shared memory, inline tensors, gathered batches, client regions."""
from __future__ import annotations

import os
import uuid

import numpy as np
import pytest

from tritonpy.proto.messages import INLINE_MAX_BYTES, ErrorCode, TensorRef
from tritonpy.shm.segment import Segment, unlink
from support.worker_harness import WorkerHarness, write_model

IDENTITY_CONFIG = {
    "name": "ident",
    "backend": "identity",
    "max_batch_size": 8,
    "input": [
        {"name": "IN0", "data_type": "TYPE_FP32", "dims": ["-1"]},
        {"name": "IN1", "data_type": "TYPE_STRING", "dims": ["-1"]},
    ],
    "output": [
        {"name": "OUT0", "data_type": "TYPE_FP32", "dims": ["-1"]},
        {"name": "OUT1", "data_type": "TYPE_STRING", "dims": ["-1"]},
    ],
}


def _shm_exists(segment: str) -> bool:
    return os.path.exists("/dev/shm/" + segment.lstrip("/"))


@pytest.fixture
def ident(tmp_path, leak_check):
    model_dir = write_model(tmp_path, "ident", files={})
    with WorkerHarness(tmp_path, model_dir=model_dir, backend="identity", config=IDENTITY_CONFIG) as h:
        h.start()
        assert h.init().ok
        yield h


def test_large_tensor_through_worker_arena_and_release(ident):
    x = np.random.default_rng(0).standard_normal((4, 50000)).astype(np.float32)
    done = ident.execute([ident.request({"IN0": x}, outputs=["OUT0"])])
    ref = done.responses[0].outputs[0]
    assert ref.inline is None and ref.segment.startswith(ident.output_prefix) and ref.nbytes == x.nbytes
    np.testing.assert_array_equal(ident.outputs(done.responses[0])["OUT0"], x)
    ident.release(done.batch_id)
    # After release the block is reused by the next batch: the same place is handed out again.
    again = ident.execute([ident.request({"IN0": x}, outputs=["OUT0"])])
    assert (again.responses[0].outputs[0].segment, again.responses[0].outputs[0].offset) == (ref.segment, ref.offset)
    ident.release(again.batch_id)
    assert _shm_exists(ref.segment)
    assert ident.finalize() == 0
    assert not _shm_exists(ref.segment)  # the worker unlinks its own segments on exit


def test_small_tensors_travel_inline(ident):
    x = np.arange(4, dtype=np.float32)
    done = ident.execute([ident.request({"IN0": x, "IN1": np.array([b"a", b"bc"], dtype=object)}, inline=True)])
    refs = {r.name: r for r in done.responses[0].outputs}
    assert refs["OUT0"].inline is not None and refs["OUT1"].inline is not None
    out = ident.outputs(done.responses[0])
    np.testing.assert_array_equal(out["OUT0"], x)
    assert out["OUT1"].tolist() == [b"a", b"bc"]
    ident.release(done.batch_id)


def test_gathered_batch_is_written_once(ident):
    rows = [2, 1, 3]
    width = 2000  # 8000-byte rows: above the inline limit
    per_request = [{"IN0": np.full((n, width), i, dtype=np.float32)} for i, n in enumerate(rows)]
    requests, gathered = ident.gathered_batch(per_request)
    done = ident.execute(requests, gathered=gathered)
    assert done.error is None
    refs = [r.outputs[0] for r in done.responses]
    assert len({r.segment for r in refs}) == 1, "one block for the whole batch"
    row_bytes = width * 4
    assert refs[0].offset + 2 * row_bytes == refs[1].offset
    assert refs[1].offset + 1 * row_bytes == refs[2].offset
    for i, (response, n) in enumerate(zip(done.responses, rows)):
        out = ident.outputs(response)["OUT0"]
        assert out.shape == (n, width) and np.all(out == i)
    ident.release(done.batch_id)


def test_batch_without_gathered_tensors(ident):
    reqs = [ident.request({"IN0": np.full((1, 3000), i, np.float32)}) for i in range(3)]
    done = ident.execute(reqs)
    assert done.error is None and len(done.responses) == len(reqs)
    for i, response in enumerate(done.responses):
        assert np.all(ident.outputs(response)["OUT0"] == i)
    ident.release(done.batch_id)


@pytest.fixture
def client_region():
    name = f"/tritonpy_client_{uuid.uuid4().hex[:8]}"
    seg = Segment.create(name, 64 * 1024)
    try:
        yield seg
    finally:
        seg.close()
        unlink(name)


def test_output_into_client_shared_memory(ident, client_region):
    x = np.arange(1000, dtype=np.float32)
    dest = TensorRef("OUT0", "FP32", [], segment=client_region.name, offset=128, nbytes=16 * 1024)
    done = ident.execute([ident.request({"IN0": x}, outputs=["OUT0"], output_shm={"OUT0": dest})])
    ref = done.responses[0].outputs[0]
    assert (ref.segment, ref.offset, ref.nbytes, ref.shape) == (client_region.name, 128, x.nbytes, [1000])
    got = np.frombuffer(client_region.buf[128 : 128 + x.nbytes], dtype=np.float32).copy()
    np.testing.assert_array_equal(got, x)
    ident.release(done.batch_id)


def test_client_region_too_small_fails_that_request(ident, client_region):
    x = np.arange(1000, dtype=np.float32)
    dest = TensorRef("OUT0", "FP32", [], segment=client_region.name, offset=0, nbytes=100)
    ok = ident.request({"IN0": x}, outputs=["OUT0"])
    bad = ident.request({"IN0": x}, outputs=["OUT0"], output_shm={"OUT0": dest})
    done = ident.execute([ok, bad])
    assert done.responses[0].error is None
    err = done.responses[1].error
    assert err.code == ErrorCode.INVALID_ARG
    assert err.message == "shared memory region too small for output 'OUT0': needs 4000 bytes, has 100"
    ident.release(done.batch_id)


def test_unreadable_input_fails_only_its_request(ident):
    good = ident.request({"IN0": np.ones(3, np.float32)})
    missing = ident.request({"IN0": np.ones(3, np.float32)})
    missing.inputs[0] = TensorRef("IN0", "FP32", [3], segment="/tritonpy_no_such_segment", offset=0, nbytes=12)
    done = ident.execute([good, missing])
    assert done.error is None
    assert done.responses[0].error is None
    assert done.responses[1].error.code == ErrorCode.INVALID_ARG
    assert "tritonpy_no_such_segment" in done.responses[1].error.message
    ident.release(done.batch_id)


def test_undecodable_frames_are_ignored(ident):
    ident.send_raw([b"\xff", b"junk"])
    ident.send_raw([b"only-one-frame"])
    ident.send_raw([b"\x02", b"\x00\x01not msgpack"])
    out = ident.infer({"IN0": np.ones(2, np.float32)}, outputs=["OUT0"])
    np.testing.assert_array_equal(out["OUT0"], [1, 1])
    assert "undecodable" in ident.stderr_text()


def test_identity_inline_limit_boundary(ident):
    n = INLINE_MAX_BYTES // 4
    for size, inline in ((n, True), (n + 1, False)):
        done = ident.execute([ident.request({"IN0": np.ones(size, np.float32)}, outputs=["OUT0"])])
        assert (done.responses[0].outputs[0].inline is not None) is inline
        ident.release(done.batch_id)


def test_unknown_backend_names_the_known_ones(tmp_path, leak_check):
    model_dir = write_model(tmp_path, "m", files={})
    with WorkerHarness(tmp_path, model_dir=model_dir, backend="tensorflow_magic", config={"name": "m"}) as h:
        h.start()
        done = h.init()
        assert not done.ok
        assert "unknown backend 'tensorflow_magic'" in done.error
        assert "identity" in done.error and "onnxruntime" in done.error and "python" in done.error
        assert h.wait_exit() == 0
