"""The shm room: segment names, arenas (first fit, coalescing, growth, limits), reader caches."""
from __future__ import annotations

import os

import numpy as np
import pytest

from tritonpy.shm.arena import Arena, SegmentCache
from tritonpy.shm.segment import (
    Segment, ShmError, ShmExhausted, read_into, sweep_orphans, unlink, valid_name, write_from,
)
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


def _maps_of(name: str) -> int:
    """How many mappings of /dev/shm/<name> this process holds."""
    with open("/proc/self/maps") as fh:
        return sum(1 for line in fh if f"/dev/shm/{name.lstrip('/')}" in line)


def test_segment_cache_is_bounded_by_count_and_bytes_least_recently_used_first(leak_check):
    names = [f"/tp_lru_{os.getpid()}_{i}" for i in range(6)]
    owners = [Segment.create(n, 1 << 16) for n in names]
    cache = SegmentCache(writable=False, max_segments=3, max_bytes=1 << 30)
    try:
        for n in names[:3]:
            cache.view(n, 0, 8).release()
        cache.view(names[0], 0, 8).release()  # names[0] is now the most recently used
        cache.view(names[3], 0, 8).release()  # evicts names[1], the least recently used
        assert cache.mapped_count == 3 and _maps_of(names[1]) == 1  # only the owner's mapping is left
        assert _maps_of(names[0]) == 2 and _maps_of(names[3]) == 2
        # by bytes: two 64 KiB segments fit in 128 KiB, a third pushes the oldest out
        small = SegmentCache(writable=False, max_segments=64, max_bytes=2 << 16)
        held = small.view(names[4], 0, 8)  # a view still in use keeps its mapping valid after eviction
        small.view(names[5], 0, 8).release()
        small.view(names[0], 0, 8).release()
        assert small.mapped_count == 2 and small.mapped_bytes == 2 << 16
        assert bytes(held) == bytes(8)
        held.release()
        small.close()
        assert _maps_of(names[4]) == 1
    finally:
        cache.close()
        for seg in owners:
            seg.close()
            unlink(seg.name)


def test_client_segments_are_read_and_written_through_a_descriptor_and_a_shrink_is_an_error(leak_check):
    """A shrunk segment must fail the access with ShmError, never SIGBUS, and leave nothing mapped."""
    name = f"/tp_fdio_{os.getpid()}"
    owner = Segment.create(name, 4096)
    try:
        write_from(name, 100, memoryview(b"hello"))
        got = bytearray(5)
        read_into(name, 100, memoryview(got))
        assert bytes(got) == b"hello" and bytes(owner.buf[100:105]) == b"hello"
        assert _maps_of(name) == 1  # the owner's own mapping only
        with pytest.raises(ShmError, match="outside its 4096 bytes"):
            read_into(name, 4000, memoryview(bytearray(200)))
        import _posixshmem

        fd = _posixshmem.shm_open(name, os.O_RDWR, mode=0o600)
        os.ftruncate(fd, 64)  # the client shrinks it
        os.close(fd)
        with pytest.raises(ShmError, match="outside its 64 bytes"):
            read_into(name, 100, memoryview(bytearray(5)))
        with pytest.raises(ShmError, match="outside its 64 bytes"):
            write_from(name, 100, memoryview(b"hello"))
        with pytest.raises(ShmError, match="does not exist"):
            read_into(f"/tp_fdio_missing_{os.getpid()}", 0, memoryview(bytearray(1)))
    finally:
        owner.close()
        unlink(name)
