"""JSON number lists to numpy without holding the GIL for the whole list.

`np.asarray` on a list of ten million numbers runs in C for about half a second with the GIL held,
so even in a worker thread it stalls the event loop (health checks, heartbeats). A long flat list
is converted in slices instead: the GIL can change hands between slices, and numpy's type
promotion across slices (`np.concatenate`) gives the same dtype as one `np.asarray` call.
Anything unusual (nested lists, mixed kinds that do not promote) falls back to the single call, so
the result and its error cases stay exactly those of `np.asarray(data)`.
"""
from __future__ import annotations

import numpy as np

# Below this many elements one call is short enough (a few ms).
CHUNKED_FROM = 1 << 18
SLICE = 1 << 16
_FLAT = (int, float, bool)


def as_array(data: list) -> np.ndarray:
    """`np.asarray(data)`, converted slice by slice when `data` is a long flat list of numbers."""
    if len(data) < CHUNKED_FROM or type(data[0]) not in _FLAT:
        return np.asarray(data)
    parts: list[np.ndarray] = []
    for start in range(0, len(data), SLICE):
        part = np.asarray(data[start : start + SLICE])
        if part.ndim != 1 or part.dtype.kind not in "biuf":
            return np.asarray(data)  # nested or non-numeric somewhere: let numpy decide as before
        parts.append(part)
    try:
        return np.concatenate(parts)
    except (TypeError, ValueError):
        return np.asarray(data)
