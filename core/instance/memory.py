"""The shared memory of one instance: the input arena the core writes batches (and BLS answers)
into, and the read-only mappings of the worker's output segments.

Every segment of the instance, ours and the worker's, starts with the instance's `shm_prefix`
(spec.py), so what a dead worker leaves behind is swept by that prefix.
"""
from __future__ import annotations

from tritonpy.shm.arena import Arena, SegmentCache
from tritonpy.shm.segment import unlink_prefix

__all__ = ["InstanceMemory"]


class InstanceMemory:
    """`arena` is None until `open()` and after `release()`."""

    __slots__ = ("arena", "cache", "_prefix", "_input_prefix", "_initial", "_max_total")

    def __init__(self, *, shm_prefix: str, input_prefix: str, initial_size: int, max_total: int) -> None:
        self.arena: Arena | None = None
        self.cache = SegmentCache(writable=False)
        self._prefix = shm_prefix
        self._input_prefix = input_prefix
        self._initial = initial_size
        self._max_total = max_total

    def open(self) -> None:
        self.arena = Arena(self._input_prefix, initial_size=self._initial, max_total=self._max_total)

    def reclaim(self) -> None:
        """The worker is gone: forget its segments and ours, unlink them all, start a fresh arena."""
        self.cache.close()
        if self.arena is not None:
            self.arena.close()
            self.open()
        unlink_prefix(self._prefix)

    def release(self) -> None:
        """Stopped for good: close and unlink every segment of the instance."""
        self.cache.close()
        if self.arena is not None:
            self.arena.close()
            self.arena = None
        unlink_prefix(self._prefix)

    def free_blocks(self, blocks: list[tuple[str, int]]) -> None:
        """Give a batch's input blocks back to the arena (and empty the list)."""
        arena = self.arena
        if arena is not None:
            for seg, off in blocks:
                arena.free(seg, off)
        blocks.clear()
