"""`pb_utils.Tensor`: a named numpy array, with DLPack import and export (CPU only).

Request inputs are read-only views onto shared memory: `as_numpy()` returns that view without a
copy. DLPack cannot mark memory read-only for most consumers, so exporting an input through
`to_dlpack()`/`__dlpack__` makes one private writable copy (kept, so later exports reuse it).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from tritonpy.backends.python.pb_types import TritonModelException, numpy_to_triton_type, triton_to_numpy_type

_BF16 = 14
_KDLCPU = 1


class _CapsuleHolder:
    """Lets numpy import a bare DLPack capsule (numpy only accepts objects with __dlpack__)."""

    def __init__(self, capsule: Any) -> None:
        self._capsule = capsule

    def __dlpack__(self, **kwargs: Any) -> Any:
        return self._capsule

    def __dlpack_device__(self) -> tuple[int, int]:
        return (_KDLCPU, 0)


class Tensor:
    """A named tensor, as in Triton's Python backend: `Tensor(name, numpy_array)`."""

    __slots__ = ("_name", "_array", "_dtype", "_export")

    def __init__(self, name: str, numpy_array: Any, triton_dtype: int | None = None) -> None:
        if not isinstance(name, str):
            raise TritonModelException(f"tensor name must be a string, got {type(name).__name__}")
        array = numpy_array if isinstance(numpy_array, np.ndarray) else np.asarray(numpy_array)
        if array.dtype.kind == "V":
            raise TritonModelException(
                f"tensor '{name}': numpy dtype {array.dtype} is not supported; use a numeric dtype or np.object_"
            )
        if triton_dtype is None:
            number = numpy_to_triton_type(array.dtype)
            if number is None:
                raise TritonModelException(f"tensor '{name}': numpy dtype {array.dtype} has no Triton data type")
        else:
            number = int(triton_dtype)
            if number != _BF16:
                wanted = triton_to_numpy_type(number)
                if wanted is None:
                    raise TritonModelException(f"tensor '{name}': unknown Triton data type {number}")
                if wanted is not np.object_ and array.dtype != np.dtype(wanted):
                    array = array.view(wanted)  # reinterpret the bytes, like Triton does
        self._name = name
        self._array = array
        self._dtype = number
        self._export: np.ndarray | None = None

    # -- Triton's methods -------------------------------------------------------------------
    def name(self) -> str:
        return self._name

    def as_numpy(self) -> np.ndarray:
        if self._dtype == _BF16:
            raise TritonModelException(
                f"tensor '{self._name}' is BF16, which numpy cannot hold; use to_dlpack() instead"
            )
        return self._array

    def shape(self) -> list[int]:
        return [int(d) for d in self._array.shape]

    def triton_dtype(self) -> int:
        return self._dtype

    def is_cpu(self) -> bool:
        return True

    def to_dlpack(self) -> Any:
        """A DLPack capsule over the tensor's memory (CPU)."""
        return self._exportable().__dlpack__()

    @staticmethod
    def from_dlpack(name: str, dlpack_tensor: Any) -> "Tensor":
        """A Tensor sharing memory with a DLPack capsule or any object with `__dlpack__` (CPU, C-contiguous)."""
        source = dlpack_tensor if hasattr(dlpack_tensor, "__dlpack__") else _CapsuleHolder(dlpack_tensor)
        device = getattr(dlpack_tensor, "__dlpack_device__", None)
        if callable(device):
            kind = int(device()[0])
            if kind not in (_KDLCPU, 3):  # CPU or CUDA-pinned host memory
                raise TritonModelException(
                    f"tensor '{name}': only CPU tensors are supported by tritonpy's Python backend "
                    f"(got DLPack device type {kind}); move it to the CPU first"
                )
        try:
            array = np.from_dlpack(source)
        except (BufferError, TypeError, RuntimeError, ValueError) as exc:
            raise TritonModelException(f"tensor '{name}': cannot import DLPack tensor: {exc}") from exc
        if not array.flags.c_contiguous:
            raise TritonModelException(f"tensor '{name}': DLPack tensor must be C-contiguous")
        return Tensor(name, array)

    # -- DLPack protocol ---------------------------------------------------------------------
    def __dlpack__(self, stream: Any = None, **kwargs: Any) -> Any:
        return self._exportable().__dlpack__(stream=stream, **kwargs)

    def __dlpack_device__(self) -> tuple[int, int]:
        return (_KDLCPU, 0)

    def _exportable(self) -> np.ndarray:
        if self._dtype == 13:
            raise TritonModelException(f"tensor '{self._name}': BYTES tensors cannot be exported through DLPack")
        if self._dtype == _BF16:
            raise TritonModelException(f"tensor '{self._name}': BF16 DLPack export is not supported yet in tritonpy")
        if self._array.flags.writeable and self._array.flags.c_contiguous:
            return self._array
        if self._export is None:
            self._export = np.ascontiguousarray(self._array).copy()
        return self._export

    def __repr__(self) -> str:
        return f"Tensor(name={self._name!r}, dtype={self._dtype}, shape={self.shape()})"
