"""BYTES tensors kept in their wire form (4-byte little-endian length, then the bytes, row-major).

A BYTES tensor decoded into a numpy object array costs a Python `bytes` object per element: ten
million two-byte strings (57 MB on the wire) become about 2.5 GB, and building them holds the GIL
for seconds. The server never looks at the strings themselves: it only checks the element count
and copies the tensor into shared memory, where the worker decodes it for the model. So a frontend
checks the framing once (vectorised when every element has the same length, a tight integer walk
otherwise) and hands the core a `PackedBytes`: the wire buffer plus a shape. It quacks like the
small part of ndarray the core uses (`shape`, `size`, `ndim`, `dtype`, `reshape`, `nbytes`), is
written to shared memory as one copy (`dtypes.serialize_bytes` returns its buffer), and turns into
a real object array through `np.asarray` wherever one is really needed.
"""
from __future__ import annotations

import math
import struct
from typing import Any

import numpy as np

__all__ = ["BytesFramingError", "PackedBytes", "count_elements", "uniform_elements"]

_OBJECT = np.dtype(np.object_)
_U32 = np.dtype("<u4")


class BytesFramingError(ValueError):
    """The buffer is not a sequence of length-prefixed elements."""


def uniform_elements(view: memoryview, expected: int) -> bool:
    """True when `view` is exactly `expected` elements of one common length (checked vectorised)."""
    total = len(view)
    if expected <= 0 or total % expected:
        return False
    stride = total // expected
    if stride < 4:
        return False
    # A strided view over the length prefixes: no copy, no per-element Python object.
    prefixes = np.ndarray((expected,), dtype=_U32, buffer=view, strides=(stride,))
    return bool((prefixes == stride - 4).all())


def _walk(view: memoryview, stop_after: int | None) -> tuple[int, int]:
    """(elements, bytes used) walking the prefixes; stops once `stop_after` elements were seen."""
    total = len(view)
    unpack_from = struct.Struct("<I").unpack_from
    pos = 0
    n = 0
    while pos < total:
        if stop_after is not None and n == stop_after:
            break
        if pos + 4 > total:
            raise BytesFramingError("truncated BYTES element length")
        pos += 4 + unpack_from(view, pos)[0]
        if pos > total:
            raise BytesFramingError("BYTES element runs past the end of its buffer")
        n += 1
    return n, pos


def count_elements(buffer: Any, expected: int | None = None) -> int:
    """How many length-prefixed elements fill `buffer` exactly (BytesFramingError when none fit).

    With `expected`, the common case (every element the same length) is checked without a Python
    loop; otherwise the prefixes are walked once, creating no objects beyond integers.
    """
    view = memoryview(buffer).cast("B")
    if expected is not None and uniform_elements(view, expected):
        return expected
    n, _ = _walk(view, None)
    return n


class PackedBytes:
    """A BYTES tensor as its wire buffer and a shape; see the module docstring."""

    __slots__ = ("shape", "wire")
    dtype = _OBJECT
    # numpy defers to us in mixed operations instead of converting element-wise.
    __array_priority__ = 100

    def __init__(self, wire: Any, shape: tuple[int, ...] | list[int]) -> None:
        self.wire = wire if isinstance(wire, (bytes, memoryview)) else memoryview(wire)
        self.shape = tuple(int(d) for d in shape)

    @classmethod
    def parse(cls, buffer: Any, shape: list[int] | tuple[int, ...]) -> PackedBytes:
        """Check that `buffer` holds exactly prod(shape) elements; BytesFramingError otherwise."""
        view = memoryview(buffer).cast("B")
        count = math.prod(shape)
        found = count_elements(view, count)
        if found != count:
            raise BytesFramingError(f"found {found} BYTES elements, expecting {count}")
        return cls(view, shape)

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def nbytes(self) -> int:
        return len(self.wire) if isinstance(self.wire, bytes) else self.wire.nbytes

    def __len__(self) -> int:
        if not self.shape:
            raise TypeError("len() of unsized object")
        return self.shape[0]

    def reshape(self, *shape: Any) -> PackedBytes:
        dims = list(shape[0]) if len(shape) == 1 and isinstance(shape[0], (list, tuple)) else list(shape)
        dims = [int(d) for d in dims]
        if dims.count(-1) == 1:
            known = math.prod(d for d in dims if d != -1)
            if known == 0 or self.size % known:
                raise ValueError(f"cannot reshape array of size {self.size} into shape {tuple(dims)}")
            dims[dims.index(-1)] = self.size // known
        if any(d < 0 for d in dims) or math.prod(dims) != self.size:
            raise ValueError(f"cannot reshape array of size {self.size} into shape {tuple(dims)}")
        return PackedBytes(self.wire, dims)

    def tobytes_wire(self) -> bytes:
        """The length-prefixed wire bytes (one copy)."""
        return bytes(self.wire)

    def to_objects(self) -> np.ndarray:
        """The object array of `bytes` a model sees (costs one object per element)."""
        view = memoryview(self.wire).cast("B")
        unpack_from = struct.Struct("<I").unpack_from
        data = bytes(view)
        out: list[bytes] = []
        append = out.append
        pos = 0
        for _ in range(self.size):
            length = unpack_from(data, pos)[0]
            pos += 4
            append(data[pos : pos + length])
            pos += length
        result = np.empty(len(out), dtype=_OBJECT)
        result[:] = out
        return result.reshape(self.shape)

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        array = self.to_objects()
        return array if dtype is None else array.astype(dtype)

    def __repr__(self) -> str:
        return f"PackedBytes(shape={self.shape}, nbytes={self.nbytes})"
