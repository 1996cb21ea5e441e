"""Tensor arenas: shared memory that grows on demand, carved into blocks by a first-fit allocator.

The side that writes a tensor owns the arena (the core for batch inputs, the worker for outputs);
the other side maps the segments read-mostly through a `SegmentCache`. Segment names carry the
owner's prefix, so whoever cleans up after a dead process can unlink them by prefix.
"""
from __future__ import annotations

import bisect
import collections
import itertools

from tritonpy.shm.segment import Segment, ShmError, ShmExhausted, identity_of, unlink

ALIGN = 64
DEFAULT_INITIAL = 1 << 20  # 1 MiB
DEFAULT_MAX_TOTAL = 1 << 36  # 64 GiB: effectively "whatever /dev/shm allows"
# What a SegmentCache keeps mapped at most; the least recently used mapping goes first.
CACHE_MAX_SEGMENTS = 64
CACHE_MAX_BYTES = 4 << 30


def _align(n: int) -> int:
    return (n + ALIGN - 1) & ~(ALIGN - 1)


class _Pool:
    """Free blocks of one segment: sorted offsets with sizes, coalesced on free."""

    __slots__ = ("segment", "offsets", "sizes", "used")

    def __init__(self, segment: Segment) -> None:
        self.segment = segment
        self.offsets = [0]
        self.sizes = [segment.size]
        self.used: dict[int, int] = {}

    def alloc(self, n: int) -> int | None:
        for i, size in enumerate(self.sizes):
            if size >= n:
                off = self.offsets[i]
                if size == n:
                    del self.offsets[i]
                    del self.sizes[i]
                else:
                    self.offsets[i] = off + n
                    self.sizes[i] = size - n
                self.used[off] = n
                return off
        return None

    def free(self, off: int) -> None:
        n = self.used.pop(off)
        i = bisect.bisect_left(self.offsets, off)
        self.offsets.insert(i, off)
        self.sizes.insert(i, n)
        # merge with the next block, then with the previous one
        if i + 1 < len(self.offsets) and self.offsets[i] + self.sizes[i] == self.offsets[i + 1]:
            self.sizes[i] += self.sizes.pop(i + 1)
            del self.offsets[i + 1]
        if i > 0 and self.offsets[i - 1] + self.sizes[i - 1] == self.offsets[i]:
            self.sizes[i - 1] += self.sizes.pop(i)
            del self.offsets[i]

    @property
    def bytes_used(self) -> int:
        return sum(self.used.values())


class Arena:
    """Allocates blocks in segments named `<prefix>_<n>`; adds a segment when none has room."""

    def __init__(
        self, prefix: str, *, initial_size: int = DEFAULT_INITIAL, max_total: int = DEFAULT_MAX_TOTAL
    ) -> None:
        self.prefix = prefix if prefix.startswith("/") else "/" + prefix
        self.initial_size = max(_align(initial_size), ALIGN)
        self.max_total = max_total
        self._pools: dict[str, _Pool] = {}
        self._counter = itertools.count()
        self._closed = False

    @property
    def total_size(self) -> int:
        return sum(p.segment.size for p in self._pools.values())

    @property
    def bytes_used(self) -> int:
        return sum(p.bytes_used for p in self._pools.values())

    @property
    def segment_names(self) -> list[str]:
        return list(self._pools)

    def alloc(self, nbytes: int) -> tuple[str, int, memoryview]:
        """Reserve `nbytes`; returns (segment name, offset, writable view of exactly nbytes)."""
        if self._closed:
            raise ShmError("arena is closed")
        n = _align(max(nbytes, 1))
        for name, pool in self._pools.items():
            off = pool.alloc(n)
            if off is not None:
                return name, off, pool.segment.buf[off : off + nbytes]
        pool = self._grow(n)
        off = pool.alloc(n)
        assert off is not None
        return pool.segment.name, off, pool.segment.buf[off : off + nbytes]

    def free(self, segment: str, offset: int) -> None:
        pool = self._pools.get(segment)
        if pool is not None and offset in pool.used:
            pool.free(offset)

    def view(self, segment: str, offset: int, nbytes: int) -> memoryview:
        return self._pools[segment].segment.buf[offset : offset + nbytes]

    def _grow(self, needed: int) -> _Pool:
        total = self.total_size
        size = max(self.initial_size, total, needed)
        # round up to a power of two so repeated growth stays logarithmic
        size = 1 << (size - 1).bit_length()
        if total + size > self.max_total:
            size = max(needed, self.max_total - total)
            if size < needed or total + size > self.max_total:
                raise ShmExhausted(
                    f"shared-memory arena '{self.prefix}' is at its limit of {self.max_total} bytes "
                    f"and cannot hold {needed} more"
                )
        name = f"{self.prefix}_{next(self._counter)}"
        segment = Segment.create(name, size)
        pool = _Pool(segment)
        self._pools[name] = pool
        return pool

    def close(self) -> None:
        """Unmap and unlink every segment."""
        self._closed = True
        for name, pool in self._pools.items():
            pool.segment.close()
            unlink(name)
        self._pools.clear()


class SegmentCache:
    """The reading side: segments mapped on first use, by name, at most `max_segments` of them and
    `max_bytes` in all (least recently used unmapped first). Without a bound, a long-lived process
    would keep every segment it ever read mapped, including ones long unlinked (memory pinned)."""

    def __init__(
        self, writable: bool = True, *, max_segments: int = CACHE_MAX_SEGMENTS, max_bytes: int = CACHE_MAX_BYTES
    ) -> None:
        self._segments: collections.OrderedDict[str, Segment] = collections.OrderedDict()
        self._writable = writable
        self.max_segments = max(1, max_segments)
        self.max_bytes = max_bytes
        self._bytes = 0

    @property
    def mapped_bytes(self) -> int:
        return self._bytes

    @property
    def mapped_count(self) -> int:
        return len(self._segments)

    def view(self, name: str, offset: int, nbytes: int, *, revalidate: bool = False) -> memoryview:
        """A view of `nbytes` at `offset`. With `revalidate` (for segments someone else may unlink
        and re-create, like client regions), a cached mapping is reused only while the name still
        names the same object of the same size; that costs one open+fstat, far less than mapping
        and faulting in the pages again."""
        seg = self._segments.get(name)
        if seg is not None and revalidate:
            now = identity_of(name)
            if now is None:
                self.forget(name)
                raise ShmError(f"shared memory '{name}' does not exist")
            if (now[0], now[1]) != seg.identity or now[2] != seg.size:
                self.forget(name)
                seg = None
        if seg is None:
            seg = Segment.attach(name, writable=self._writable)
            self._segments[name] = seg
            self._bytes += seg.size
            self._evict(keep=name)
        else:
            self._segments.move_to_end(name)
        if offset < 0 or nbytes < 0 or offset + nbytes > seg.size:
            raise ShmError(
                f"shared memory '{name}': range [{offset}, {offset + nbytes}) is outside its {seg.size} bytes"
            )
        return seg.buf[offset : offset + nbytes]

    def _evict(self, keep: str) -> None:
        """Unmap least recently used segments until within bounds. A view still held elsewhere keeps
        its mapping alive until it is dropped (Segment.close), so eviction never invalidates one."""
        while len(self._segments) > 1 and (len(self._segments) > self.max_segments or self._bytes > self.max_bytes):
            oldest = next(iter(self._segments))
            if oldest == keep:
                break
            self.forget(oldest)

    def forget(self, name: str) -> None:
        seg = self._segments.pop(name, None)
        if seg is not None:
            self._bytes -= seg.size
            seg.close()

    def close(self) -> None:
        for seg in self._segments.values():
            seg.close()
        self._segments.clear()
        self._bytes = 0
