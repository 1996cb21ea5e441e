"""Client CUDA shared memory (cudaIpc handles), opened lazily with cuda-python.

A registered CUDA region travels to the worker inside a `TensorRef` whose segment is
`cuda:<device_id>:<base64 IPC handle>`. The worker opens each handle once and caches the device
pointer. CPU backends get the bytes copied device-to-host (as Triton does for CPU models) and
outputs are copied host-to-device into the client's region. Nothing here imports CUDA until a
CUDA region is actually used.
"""
from __future__ import annotations

import base64
import ctypes
from collections.abc import Sequence
from typing import Any

import numpy as np

from tritonpy.shm.segment import ShmError

PREFIX = "cuda:"
HANDLE_SIZE = 64


def encode_segment(device_id: int, raw_handle: bytes) -> str:
    return f"{PREFIX}{int(device_id)}:{base64.b64encode(bytes(raw_handle)).decode()}"


def is_cuda_segment(segment: str) -> bool:
    return segment.startswith(PREFIX)


def decode_segment(segment: str) -> tuple[int, bytes]:
    try:
        device_text, handle_text = segment[len(PREFIX):].split(":", 1)
        raw = base64.b64decode(handle_text, validate=True)
        device = int(device_text)
    except (ValueError, TypeError) as exc:
        raise ShmError(f"malformed CUDA shared memory reference: {exc}") from exc
    if len(raw) != HANDLE_SIZE or device < 0:
        raise ShmError(f"CUDA IPC handles are {HANDLE_SIZE} bytes, got {len(raw)}")
    return device, raw


def _runtime() -> Any:
    try:
        from cuda.bindings import runtime
    except ImportError as exc:
        raise ShmError(
            "CUDA shared memory needs the 'cuda-python' package and an NVIDIA GPU (pip install 'tritonpy[gpu]')"
        ) from exc
    return runtime


def _check(result: Sequence[Any], what: str) -> Any:
    err = result[0]
    if int(err) != 0:
        raise ShmError(f"{what} failed: {getattr(err, 'name', err)}")
    return result[1] if len(result) == 2 else result[1:]


class CudaRegions:
    """Device pointers of opened IPC handles, by segment string; closed on `close()`."""

    def __init__(self, runtime: Any = None) -> None:
        self._rt = runtime
        self._pointers: dict[str, tuple[int, int]] = {}

    def _lib(self) -> Any:
        if self._rt is None:
            self._rt = _runtime()
        return self._rt

    def pointer(self, segment: str) -> tuple[int, int]:
        """(device_id, device pointer) for a region, opening its handle on first use."""
        found = self._pointers.get(segment)
        if found is not None:
            return found
        device, raw = decode_segment(segment)
        rt = self._lib()
        _check(rt.cudaSetDevice(device), "cudaSetDevice")
        handle = rt.cudaIpcMemHandle_t()
        ctypes.memmove(handle.getPtr(), raw, HANDLE_SIZE)
        ptr = _check(rt.cudaIpcOpenMemHandle(handle, rt.cudaIpcMemLazyEnablePeerAccess), "cudaIpcOpenMemHandle")
        found = (device, int(ptr))
        self._pointers[segment] = found
        return found

    def read(self, segment: str, offset: int, nbytes: int) -> np.ndarray:
        """A host copy of `nbytes` at `offset` of the region (uint8)."""
        device, ptr = self.pointer(segment)
        host = np.empty(nbytes, dtype=np.uint8)
        if nbytes:
            rt = self._lib()
            _check(rt.cudaSetDevice(device), "cudaSetDevice")
            _check(rt.cudaMemcpy(host.ctypes.data, ptr + offset, nbytes, rt.cudaMemcpyKind.cudaMemcpyDeviceToHost),
                   "cudaMemcpy (device to host)")
        return host

    def write(self, segment: str, offset: int, data: bytes | memoryview | np.ndarray) -> None:
        device, ptr = self.pointer(segment)
        src = np.frombuffer(data, dtype=np.uint8)
        if src.size:
            rt = self._lib()
            _check(rt.cudaSetDevice(device), "cudaSetDevice")
            _check(rt.cudaMemcpy(ptr + offset, src.ctypes.data, src.size, rt.cudaMemcpyKind.cudaMemcpyHostToDevice),
                   "cudaMemcpy (host to device)")

    def close(self) -> None:
        if not self._pointers:
            return
        rt = self._lib()
        for _, ptr in self._pointers.values():
            rt.cudaIpcCloseMemHandle(ptr)
        self._pointers.clear()
