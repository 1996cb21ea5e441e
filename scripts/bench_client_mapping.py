"""Writing an output into a client's shared-memory region: mapping it afresh for every batch (what
the worker did) versus keeping the mapping and revalidating it by identity (what it does now).
One run, side by side; prints ms per write and the ratio."""
from __future__ import annotations

import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from tritonpy.shm.arena import SegmentCache
from tritonpy.shm.segment import Segment, unlink


def run(size: int, rounds: int = 15) -> tuple[float, float]:
    name = f"/tp_bench_map_{os.getpid()}"
    region = Segment.create(name, size)
    data = np.random.default_rng(0).random(size // 4, dtype=np.float32)
    src = memoryview(data).cast("B")
    fresh, kept = [], []
    cache = SegmentCache(writable=True)
    try:
        for _ in range(rounds):
            t = time.perf_counter()
            c = SegmentCache(writable=True)
            view = c.view(name, 0, size)
            view[:] = src
            view.release()
            c.close()
            fresh.append(time.perf_counter() - t)
            t = time.perf_counter()
            view = cache.view(name, 0, size, revalidate=True)
            view[:] = src
            view.release()
            kept.append(time.perf_counter() - t)
    finally:
        cache.close()
        region.close()
        unlink(name)
    return statistics.median(fresh) * 1e3, statistics.median(kept) * 1e3


if __name__ == "__main__":
    print(f"{'size':>8} {'fresh map ms':>13} {'kept+revalidate ms':>19} {'speed-up':>9}")
    for mb in (1, 16, 64):
        f, k = run(mb << 20)
        print(f"{mb:>6}MB {f:>13.2f} {k:>19.2f} {f / k:>8.1f}x")
