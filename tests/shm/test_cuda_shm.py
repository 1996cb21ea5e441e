"""CUDA shared memory: the path from a registered IPC handle to the worker's host copy and back.

Without a GPU, the CUDA runtime is replaced by a stand-in that keeps "device memory" in host
buffers and checks every call's arguments, so the routing, bounds and copies are exercised for real.
On a GPU machine the `gpu` test below runs against real device memory.
"""
from __future__ import annotations

import ctypes

import numpy as np
import pytest

from tritonpy.core.errors import ServerError
from tritonpy.core.shm_registry import ShmRegistry
from tritonpy.shm import cuda
from tritonpy.shm.segment import ShmError


class _Err:
    def __init__(self, name: str) -> None:
        self.name = name

    def __int__(self) -> int:
        return 1


class FakeRuntime:
    """Device memory in host bytearrays; IPC handles are 64 bytes naming an allocation."""

    class cudaMemcpyKind:
        cudaMemcpyDeviceToHost = "d2h"
        cudaMemcpyHostToDevice = "h2d"

    cudaIpcMemLazyEnablePeerAccess = 1

    class cudaIpcMemHandle_t:
        def __init__(self) -> None:
            self._buf = ctypes.create_string_buffer(64)

        def getPtr(self) -> int:
            return ctypes.addressof(self._buf)

    def __init__(self, memory: dict[bytes, ctypes.Array]) -> None:
        self.memory = memory  # handle bytes -> device buffer
        self.opened: list[int] = []
        self.closed: list[int] = []
        self.device = None

    def cudaSetDevice(self, device):
        self.device = device
        return (0,)

    def cudaIpcOpenMemHandle(self, handle, flags):
        raw = bytes(handle._buf.raw)
        buf = self.memory.get(raw)
        if buf is None:
            return (_Err("cudaErrorInvalidValue"), 0)
        self.opened.append(ctypes.addressof(buf))
        return (0, ctypes.addressof(buf))

    def cudaMemcpy(self, dst, src, count, kind):
        ctypes.memmove(dst, src, count)
        return (0,)

    def cudaIpcCloseMemHandle(self, ptr):
        self.closed.append(ptr)
        return (0,)


def test_segment_round_trip_and_malformed_refs():
    raw = bytes(range(64))
    seg = cuda.encode_segment(1, raw)
    assert cuda.is_cuda_segment(seg) and cuda.decode_segment(seg) == (1, raw)
    for bad in ("cuda:x:AAAA", "cuda:0:not-base64!", "cuda:0:" + "QUFB", "cuda:-1:" + cuda.encode_segment(0, raw)[7:]):
        with pytest.raises(ShmError):
            cuda.decode_segment(bad)


def test_read_and_write_through_an_opened_handle():
    handle = b"h" * 64
    device = ctypes.create_string_buffer(64)
    data = np.arange(8, dtype=np.float32)
    ctypes.memmove(device, data.ctypes.data, 32)
    rt = FakeRuntime({handle: device})
    regions = cuda.CudaRegions(runtime=rt)
    seg = cuda.encode_segment(0, handle)
    host = regions.read(seg, 8, 16)
    np.testing.assert_array_equal(host.view(np.float32), data[2:6])
    regions.write(seg, 32, np.full(4, 7, np.float32).tobytes())
    assert np.frombuffer(device.raw[32:48], np.float32).tolist() == [7, 7, 7, 7]
    regions.read(seg, 0, 4)
    assert len(rt.opened) == 1  # opened once, cached
    regions.close()
    assert rt.closed == rt.opened


def test_unknown_handle_is_a_clear_error():
    regions = cuda.CudaRegions(runtime=FakeRuntime({}))
    with pytest.raises(ShmError, match="cudaIpcOpenMemHandle"):
        regions.read(cuda.encode_segment(0, b"z" * 64), 0, 4)


def test_missing_cuda_python_is_a_clear_error(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "cuda.bindings", None)
    regions = cuda.CudaRegions()
    with pytest.raises(ShmError, match="cuda-python"):
        regions.read(cuda.encode_segment(0, b"q" * 64), 0, 4)


def test_registry_resolves_cuda_regions_with_bounds(monkeypatch):
    from tritonpy.core import shm_registry

    monkeypatch.setattr(shm_registry, "_cuda_device_count", lambda: 2)
    reg = ShmRegistry(allow_client_shm=True)
    reg.register_cuda("c", b"k" * 64, 1, 128)
    ref, region = reg.resolve("c", 64, 32, tensor="x")
    assert ref.offset == 64 and ref.nbytes == 32 and cuda.decode_segment(ref.segment) == (1, b"k" * 64)
    assert region.name == "c"
    with pytest.raises(ServerError, match="out of bounds"):
        reg.resolve("c", 100, 64, tensor="x")
    with pytest.raises(ServerError, match="does not exist"):
        reg.register_cuda("d", b"k" * 64, 5, 16)
    with pytest.raises(ServerError, match="already in manager"):
        reg.register_cuda("c", b"k" * 64, 0, 16)


def _has_gpu() -> bool:
    from tritonpy.core.shm_registry import _cuda_device_count

    return _cuda_device_count() > 0


@pytest.mark.gpu
@pytest.mark.skipif(not _has_gpu(), reason="needs an NVIDIA GPU")
def test_real_cuda_region_end_to_end(tmp_path, leak_check):
    import tritonclient.http as httpclient
    import tritonclient.utils.cuda_shared_memory as cudashm

    from support.model_builders import FP32_IO, python_model
    from support.server_process import ServerProcess

    python_model(tmp_path, "identity", "out = x.copy()", config=FP32_IO)
    data = np.arange(16, dtype=np.float32)
    with ServerProcess(tmp_path, "--allow-client-shm=true") as server:
        client = httpclient.InferenceServerClient(server.http_url)
        ih = cudashm.create_shared_memory_region("in", 64, 0)
        oh = cudashm.create_shared_memory_region("out", 64, 0)
        try:
            cudashm.set_shared_memory_region(ih, [data])
            client.register_cuda_shared_memory("in", cudashm.get_raw_handle(ih), 0, 64)
            client.register_cuda_shared_memory("out", cudashm.get_raw_handle(oh), 0, 64)
            inp = httpclient.InferInput("INPUT0", [16], "FP32")
            inp.set_shared_memory("in", 64)
            out = httpclient.InferRequestedOutput("OUTPUT0")
            out.set_shared_memory("out", 64)
            client.infer("identity", [inp], outputs=[out])
            np.testing.assert_array_equal(cudashm.get_contents_as_numpy(oh, np.float32, [16]), data)
            client.unregister_cuda_shared_memory()
        finally:
            cudashm.destroy_shared_memory_region(ih)
            cudashm.destroy_shared_memory_region(oh)
