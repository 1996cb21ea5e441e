"""Tensor data types on the wire: Triton names, config enum names, numpy types, and BYTES encoding.

Shared by every room (proto imports nothing of ours), so the core, the frontends and the workers
agree on one table.
"""
from __future__ import annotations

import struct
from collections.abc import Sequence

import numpy as np

from tritonpy.proto.packed_bytes import PackedBytes, uniform_elements

# wire name -> (config enum name, numpy dtype or None, element size or 0 for variable)
_TABLE: dict[str, tuple[str, object, int]] = {
    "BOOL": ("TYPE_BOOL", np.dtype(np.bool_), 1),
    "UINT8": ("TYPE_UINT8", np.dtype(np.uint8), 1),
    "UINT16": ("TYPE_UINT16", np.dtype(np.uint16), 2),
    "UINT32": ("TYPE_UINT32", np.dtype(np.uint32), 4),
    "UINT64": ("TYPE_UINT64", np.dtype(np.uint64), 8),
    "INT8": ("TYPE_INT8", np.dtype(np.int8), 1),
    "INT16": ("TYPE_INT16", np.dtype(np.int16), 2),
    "INT32": ("TYPE_INT32", np.dtype(np.int32), 4),
    "INT64": ("TYPE_INT64", np.dtype(np.int64), 8),
    "FP16": ("TYPE_FP16", np.dtype(np.float16), 2),
    "FP32": ("TYPE_FP32", np.dtype(np.float32), 4),
    "FP64": ("TYPE_FP64", np.dtype(np.float64), 8),
    "BYTES": ("TYPE_STRING", np.dtype(np.object_), 0),
    # numpy has no bfloat16: BF16 tensors travel as raw 2-byte words (uint16) inside the server.
    "BF16": ("TYPE_BF16", np.dtype(np.uint16), 2),
}

WIRE_TYPES: frozenset[str] = frozenset(_TABLE)
CONFIG_TO_WIRE: dict[str, str] = {cfg: wire for wire, (cfg, _, _) in _TABLE.items()}
WIRE_TO_CONFIG: dict[str, str] = {wire: cfg for wire, (cfg, _, _) in _TABLE.items()}
# Numbers of the DataType enum in model_config.proto.
CONFIG_ENUM_NUMBER: dict[str, int] = {
    "TYPE_INVALID": 0, "TYPE_BOOL": 1, "TYPE_UINT8": 2, "TYPE_UINT16": 3, "TYPE_UINT32": 4,
    "TYPE_UINT64": 5, "TYPE_INT8": 6, "TYPE_INT16": 7, "TYPE_INT32": 8, "TYPE_INT64": 9,
    "TYPE_FP16": 10, "TYPE_FP32": 11, "TYPE_FP64": 12, "TYPE_STRING": 13, "TYPE_BF16": 14,
}
NUMBER_TO_CONFIG: dict[int, str] = {v: k for k, v in CONFIG_ENUM_NUMBER.items()}


def wire_to_numpy(datatype: str) -> np.dtype:
    """numpy dtype for a wire type name; KeyError for an unknown name."""
    return _TABLE[datatype][1]  # type: ignore[return-value]


def element_size(datatype: str) -> int:
    """Bytes per element; 0 for BYTES (variable length)."""
    return _TABLE[datatype][2]


def numpy_to_wire(dtype: np.dtype) -> str:
    """Wire name for a numpy dtype (object, bytes_ and str_ map to BYTES)."""
    dtype = np.dtype(dtype)
    if dtype.kind in ("O", "S", "U"):
        return "BYTES"
    for wire, (_, np_type, _) in _TABLE.items():
        if wire in ("BYTES", "BF16"):
            continue
        if np_type == dtype:
            return wire
    raise KeyError(f"no Triton data type for numpy dtype {dtype}")


def serialize_bytes(array: np.ndarray) -> bytes:
    """Encode a BYTES tensor: each element as a 4-byte little-endian length then its bytes, row-major."""
    if isinstance(array, PackedBytes):  # already in wire form (checked when it was parsed)
        return array.tobytes_wire()
    parts: list[bytes] = []
    pack = struct.Struct("<I").pack
    for item in array.reshape(-1):
        if isinstance(item, str):
            item = item.encode("utf-8")
        elif not isinstance(item, (bytes, bytearray, memoryview)):
            item = str(item).encode("utf-8")
        parts.append(pack(len(item)))
        parts.append(bytes(item))
    return b"".join(parts)


class BytesDecodeError(ValueError):
    """The buffer is not a valid sequence of length-prefixed elements."""


def deserialize_bytes(buffer: bytes | bytearray | memoryview, count: int | None = None) -> np.ndarray:
    """Decode length-prefixed BYTES elements into a 1-D object array of bytes.

    With `count`, exactly that many elements must fill the buffer; otherwise the whole buffer is read.
    """
    view = memoryview(buffer).cast("B")
    total = len(view)
    # One copy into a bytes object, then plain slices: cheaper per element than memoryview slices.
    data = view.tobytes()
    if count is not None and uniform_elements(view, count):
        stride = total // count
        out = [data[i : i + stride - 4] for i in range(4, 4 + count * stride, stride)]
        return _object_array(out)
    out = []
    append = out.append
    pos = 0
    unpack_from = struct.Struct("<I").unpack_from
    while pos < total:
        if count is not None and len(out) == count:
            break
        if pos + 4 > total:
            raise BytesDecodeError("truncated BYTES element length")
        (length,) = unpack_from(data, pos)
        pos += 4
        if pos + length > total:
            raise BytesDecodeError("BYTES element runs past the end of its buffer")
        append(data[pos : pos + length])
        pos += length
    if count is not None and (len(out) != count or pos != total):
        raise BytesDecodeError(
            f"expected {count} BYTES elements in {total} bytes, found {len(out)} using {pos} bytes"
        )
    return _object_array(out)


# Elements copied into an object array per numpy call: each call holds the GIL, and a worker's
# heartbeat thread must get it back within milliseconds even for ten million strings.
_OBJECT_CHUNK = 1 << 16


def _object_array(items: list[bytes]) -> np.ndarray:
    result = np.empty(len(items), dtype=np.object_)
    for start in range(0, len(items), _OBJECT_CHUNK):
        result[start : start + _OBJECT_CHUNK] = items[start : start + _OBJECT_CHUNK]
    return result


def byte_size(datatype: str, shape: Sequence[int]) -> int | None:
    """Byte size of a fixed-size tensor, None for BYTES."""
    size = element_size(datatype)
    if size == 0:
        return None
    n = 1
    for d in shape:
        n *= int(d)
    return n * size
