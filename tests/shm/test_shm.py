"""The shm room: segment names, arenas (first fit, coalescing, growth, limits), reader caches."""
from __future__ import annotations

import os

import numpy as np
import pytest

from tritonpy.shm.arena import Arena, SegmentCache
from tritonpy.shm.segment import Segment, ShmError, ShmExhausted, sweep_orphans, unlink, valid_name
from tritonpy.shm.tensors import decode_array, read_tensor, write_tensor


@pytest.mark.parametrize("name, ok", [
    ("/region", True), ("region_1", True), ("/a.b-c", True),
    ("", False), ("/", False), ("/..", False), ("/../etc/passwd", False), ("/a/b", False),
    ("/dev/shm/x", False), ("a" * 300, False), ("/with space", False),
])
def test_valid_names(name, ok):
    assert valid_name(name) is ok


def test_arena_reuses_and_coalesces_freed_blocks(leak_check):
    arena = Arena(f"tp_arena_{os.getpid()}", initial_size=4096)
    try:
        a = arena.alloc(1000)
        b = arena.alloc(1000)
        c = arena.alloc(1000)
        assert len(arena.segment_names) == 1
        arena.free(a[0], a[1])
        arena.free(b[0], b[1])
        d = arena.alloc(2000)  # fits only because a and b merged
        assert d[1] == a[1] and len(arena.segment_names) == 1
        arena.free(c[0], c[1])
        arena.free(d[0], d[1])
        assert arena.bytes_used == 0
    finally:
        arena.close()


def test_arena_grows_for_large_tensors_and_honours_its_limit(leak_check):
    arena = Arena(f"tp_grow_{os.getpid()}", initial_size=4096, max_total=1 << 20)
    try:
        name, off, view = arena.alloc(300_000)
        assert len(view) == 300_000 and arena.total_size >= 300_000
        with pytest.raises(ShmExhausted, match="limit"):
            arena.alloc(900_000)
    finally:
        arena.close()


def test_tensor_round_trip_inline_and_shared(leak_check):
    arena = Arena(f"tp_tens_{os.getpid()}", initial_size=4096)
    cache = SegmentCache()
    try:
        for n in (3, 100_000):
            x = np.arange(n, dtype=np.float64)
            ref, block = write_tensor(arena, "x", "FP64", x)
            assert (ref.inline is not None) == (block is None)
            np.testing.assert_array_equal(read_tensor(cache, ref), x)
        s = np.array([b"a", b"", "\u00e9".encode()], dtype=object)
        ref, _ = write_tensor(arena, "s", "BYTES", s)
        assert list(read_tensor(cache, ref)) == list(s)
        with pytest.raises(ValueError, match="needs 16 bytes"):
            decode_array("FP32", [4], b"\x00" * 12)
    finally:
        cache.close()
        arena.close()


def test_revalidated_view_notices_a_recreated_segment(leak_check):
    name = f"/tp_reval_{os.getpid()}"
    first = Segment.create(name, 4096)
    first.buf[:4] = b"old!"
    cache = SegmentCache(writable=True)
    try:
        assert bytes(cache.view(name, 0, 4, revalidate=True)) == b"old!"
        first.close()
        unlink(name)
        second = Segment.create(name, 4096)  # same name, same size, another object
        second.buf[:4] = b"new!"
        assert bytes(cache.view(name, 0, 4, revalidate=True)) == b"new!"
        second.close()
        unlink(name)
        with pytest.raises(ShmError, match="does not exist"):
            cache.view(name, 0, 4, revalidate=True)
    finally:
        cache.close()
        unlink(name)


def test_attach_errors_are_clear():
    with pytest.raises(ShmError, match="does not exist"):
        Segment.attach(f"/tp_missing_{os.getpid()}")


def test_sweep_removes_only_segments_of_dead_servers(leak_check):
    import subprocess
    import sys

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True).stdout.strip()
    orphan = Segment.create(f"/tritonpy_{dead}_abc_model_0_i_0", 4096)
    mine = Segment.create(f"/tritonpy_{os.getpid()}_abc_model_0_i_0", 4096)
    try:
        removed = sweep_orphans()
        assert orphan.name in removed and mine.name not in removed
    finally:
        orphan.close()
        mine.close()
        unlink(orphan.name)
        unlink(mine.name)
