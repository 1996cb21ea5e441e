"""Put numpy tensors into shared memory as `TensorRef`s and read them back as zero-copy views."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from tritonpy.proto import dtypes
from tritonpy.proto.messages import INLINE_MAX_BYTES, TensorRef
from tritonpy.proto.packed_bytes import PackedBytes
from tritonpy.shm.arena import Arena, SegmentCache


def tensor_bytes(datatype: str, array: np.ndarray) -> memoryview | bytes:
    """The wire bytes of a tensor: raw little-endian data, or length-prefixed elements for BYTES."""
    if isinstance(array, PackedBytes):
        return memoryview(array.wire).cast("B")  # checked wire form: copied once, into the arena
    if datatype == "BYTES":
        return dtypes.serialize_bytes(array)
    arr = np.ascontiguousarray(array)
    return memoryview(arr).cast("B")  # type: ignore[arg-type]  # numpy arrays are buffers; its stubs lack __buffer__


def write_tensor(
    arena: Arena | None, name: str, datatype: str, array: np.ndarray, *, inline_max: int = INLINE_MAX_BYTES
) -> tuple[TensorRef, tuple[str, int] | None]:
    """Place `array` inline or in `arena`; returns the ref and the (segment, offset) to free later."""
    data = tensor_bytes(datatype, array)
    shape = [int(d) for d in array.shape]
    n = len(data) if isinstance(data, bytes) else data.nbytes
    if arena is None or n <= inline_max:
        return TensorRef(name, datatype, shape, inline=bytes(data)), None
    seg, off, view = arena.alloc(n)
    view[:] = data
    return TensorRef(name, datatype, shape, segment=seg, offset=off, nbytes=n), (seg, off)


def read_tensor(cache: SegmentCache, ref: TensorRef) -> np.ndarray:
    """A numpy view of the tensor (no copy for shared-memory numeric data); BYTES decode to objects."""
    buf: bytes | memoryview
    if ref.inline is not None:
        buf = ref.inline
    else:
        buf = cache.view(ref.segment, ref.offset, ref.nbytes)
    return decode_array(ref.datatype, ref.shape, buf)


def decode_array(datatype: str, shape: Sequence[int], buf: bytes | memoryview) -> np.ndarray:
    """Interpret a wire buffer as an array of `shape`; ValueError when sizes do not agree."""
    count = 1
    for d in shape:
        count *= int(d)
    if datatype == "BYTES":
        return dtypes.deserialize_bytes(buf, count).reshape(shape)
    np_type = dtypes.wire_to_numpy(datatype)
    expected = count * np_type.itemsize
    nbytes = len(buf) if isinstance(buf, (bytes, bytearray)) else memoryview(buf).nbytes
    if nbytes != expected:
        raise ValueError(
            f"tensor of type {datatype} and shape {list(shape)} needs {expected} bytes, got {nbytes}"
        )
    return np.frombuffer(buf, dtype=np_type, count=count).reshape(shape)
