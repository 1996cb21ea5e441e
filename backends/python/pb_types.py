"""Errors, flag constants and data-type helpers of `triton_python_backend_utils`.

Names, codes and numbering follow Triton's Python backend so existing models run unchanged. The
data-type numbers are TRITONSERVER_DataType's (the same numbering as model_config's TYPE_* enum).
"""
from __future__ import annotations

import struct

import numpy as np

from tritonpy.proto import dtypes

# ---- flags ---------------------------------------------------------------------------------
TRITONSERVER_REQUEST_FLAG_SEQUENCE_START = 1
TRITONSERVER_REQUEST_FLAG_SEQUENCE_END = 2
TRITONSERVER_RESPONSE_COMPLETE_FINAL = 1
TRITONSERVER_REQUEST_RELEASE_ALL = 1
TRITONSERVER_REQUEST_RELEASE_RESCHEDULE = 2
# PreferredMemory kinds (the Python backend's MemoryType enum).
TRITONSERVER_MEMORY_GPU = 0
TRITONSERVER_MEMORY_CPU = 1


class TritonError(Exception):
    """An error with a Triton code. Put it in `InferenceResponse(error=...)` to fail one request.

    Unlike Triton's (which is not an exception) it may also be raised; from `execute` it then
    fails the whole batch and keeps its code.
    """

    UNKNOWN = 0
    INTERNAL = 1
    NOT_FOUND = 2
    INVALID_ARG = 3
    UNAVAILABLE = 4
    UNSUPPORTED = 5
    ALREADY_EXISTS = 6
    CANCELLED = 7

    def __init__(self, message: str = "", code: int = INTERNAL, *, msg: str | None = None) -> None:
        # Triton's keyword is `message`; `msg=` is what earlier tritonpy accepted.
        if msg is not None:
            message = msg
        if isinstance(message, (bytes, bytearray)):
            message = bytes(message).decode("utf-8", "replace")
        msg = str(message)
        super().__init__(msg)
        self._msg = msg
        if int(code) not in range(8):
            raise ValueError(f"invalid TritonError code {code}")
        self._code = int(code)

    def __str__(self) -> str:
        return self._msg or ""

    def message(self) -> str:
        return self._msg

    def code(self) -> int:
        return self._code


class TritonModelException(Exception):
    """Raise from a model to fail the current call (the whole batch, or the load)."""

    def __init__(self, msg: str = "") -> None:
        super().__init__(msg)
        self._msg = msg

    def __str__(self) -> str:
        return self._msg or ""

    def message(self) -> str:
        return self._msg

    def code(self) -> int:
        return TritonError.INTERNAL


# ---- data types ----------------------------------------------------------------------------
TRITON_STRING_TO_NUMPY: dict[str, type] = {
    "TYPE_BOOL": bool,
    "TYPE_UINT8": np.uint8,
    "TYPE_UINT16": np.uint16,
    "TYPE_UINT32": np.uint32,
    "TYPE_UINT64": np.uint64,
    "TYPE_INT8": np.int8,
    "TYPE_INT16": np.int16,
    "TYPE_INT32": np.int32,
    "TYPE_INT64": np.int64,
    "TYPE_FP16": np.float16,
    "TYPE_FP32": np.float32,
    "TYPE_FP64": np.float64,
    "TYPE_STRING": np.object_,
}

_NUMBER_TO_NUMPY: dict[int, type] = {
    1: np.bool_, 2: np.uint8, 3: np.uint16, 4: np.uint32, 5: np.uint64, 6: np.int8, 7: np.int16,
    8: np.int32, 9: np.int64, 10: np.float16, 11: np.float32, 12: np.float64, 13: np.object_,
}
_BF16 = 14


def triton_string_to_numpy(triton_type_string: str) -> type:
    """numpy type for a config type name such as "TYPE_FP32"."""
    return TRITON_STRING_TO_NUMPY[triton_type_string]


def triton_to_numpy_type(data_type: int) -> type | None:
    """numpy type for a TRITONSERVER_DataType number (None for BF16 and unknown numbers)."""
    return _NUMBER_TO_NUMPY.get(int(data_type))


def numpy_to_triton_type(data_type) -> int | None:
    """TRITONSERVER_DataType number for a numpy dtype or type (None when there is none)."""
    try:
        dtype = np.dtype(data_type)
    except TypeError:
        return None
    if dtype.kind in ("O", "S", "U"):
        return 13
    for number, np_type in _NUMBER_TO_NUMPY.items():
        if number != 13 and np.dtype(np_type) == dtype:
            return number
    return None


def wire_to_number(datatype: str) -> int:
    """TRITONSERVER_DataType number for a wire name (FP32 -> 11, BYTES -> 13, BF16 -> 14)."""
    return dtypes.CONFIG_ENUM_NUMBER[dtypes.WIRE_TO_CONFIG[datatype]]


def number_to_wire(number: int) -> str:
    return dtypes.CONFIG_TO_WIRE[dtypes.NUMBER_TO_CONFIG[int(number)]]


def serialize_byte_tensor(input_tensor: np.ndarray):
    """Length-prefixed (4-byte little-endian) elements in C order, as one `bytes`.

    Returns `()` for an empty tensor and None for a tensor that is not of object/bytes type,
    like Triton's helper. Non-bytes objects are written as their `str()` in UTF-8.
    """
    if input_tensor.size == 0:
        return ()
    if input_tensor.dtype != np.object_ and input_tensor.dtype.type != np.bytes_:
        return None
    pack = struct.Struct("<I").pack
    parts: list[bytes] = []
    for item in input_tensor.reshape(-1, order="C"):
        if isinstance(item, (bytes, bytearray)):
            data = bytes(item)
        else:
            data = str(item).encode("utf-8")
        parts.append(pack(len(data)))
        parts.append(data)
    return b"".join(parts)


def deserialize_bytes_tensor(encoded_tensor) -> np.ndarray:
    """Inverse of `serialize_byte_tensor`: a 1-D object array of `bytes`."""
    return dtypes.deserialize_bytes(encoded_tensor)
