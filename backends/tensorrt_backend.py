"""The tensorrt backend: a serialized engine (`model.plan`) on one GPU, through the `tensorrt` and
`cuda-python` packages (the `gpu` extra). Both are imported only here, inside the worker.

Per batch: each input is copied from its shared-memory view to a device buffer owned by this
instance (buffers grow on demand and are reused), its shape is set on the execution context
(dynamic shapes), the engine runs on the instance's stream, and outputs are copied back into host
arrays that the worker writes to shared memory. The optimization profile is the first one the
config's instance groups list (`profile: ["1"]`), else profile 0.

On a machine without the packages or without a GPU the model becomes UNAVAILABLE with a reason
naming `pip install 'tritonpy[gpu]'`.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from tritonpy.backends import config as cfg
from tritonpy.backends import array_config
from tritonpy.backends.array_backend import ArrayBackend
from tritonpy.backends.base import BackendError
from tritonpy.backends.frameworks import require
from tritonpy.proto import dtypes
from tritonpy.proto.messages import ErrorCode

log = logging.getLogger("tritonpy.backends.tensorrt")

GPU_HINT = "pip install 'tritonpy[gpu]'"


def _model_path(config: dict[str, Any], version_dir: Path) -> Path:
    path = cfg.model_file(config, version_dir, "model.plan")
    if not path.is_file():
        raise BackendError(f"unable to find '{path}'", ErrorCode.NOT_FOUND)
    return path


def _libraries() -> tuple[Any, Any]:
    """(tensorrt, cuda runtime), or UNAVAILABLE naming the gpu extra; also checks for a GPU."""
    trt = require("tensorrt")
    runtime = require("cuda.bindings.runtime")
    err, count = runtime.cudaGetDeviceCount()
    if int(err) != 0 or count <= 0:
        raise BackendError(
            f"TensorRT engines need an NVIDIA GPU, and the CUDA runtime finds none "
            f"({getattr(err, 'name', err)}); install the driver and {GPU_HINT} on a GPU machine",
            ErrorCode.UNAVAILABLE,
        )
    return trt, runtime


def _check(result: Any, what: str) -> Any:
    err = result[0]
    if int(err) != 0:
        raise BackendError(f"{what} failed: {getattr(err, 'name', err)}")
    return result[1] if len(result) == 2 else (result[1:] if len(result) > 2 else None)


def _deserialize(trt: Any, path: Path) -> Any:
    logger = trt.Logger(trt.Logger.WARNING)
    engine = trt.Runtime(logger).deserialize_cuda_engine(path.read_bytes())
    if engine is None:
        raise BackendError(f"TensorRT cannot deserialize '{path.name}' (built for another TensorRT version or GPU?)")
    return engine


def _wire_type(trt: Any, name: str, trt_dtype: Any) -> str:
    bf16 = getattr(trt.DataType, "BF16", None)
    if bf16 is not None and trt_dtype == bf16:
        return "BF16"
    try:
        return dtypes.numpy_to_wire(np.dtype(trt.nptype(trt_dtype)))
    except (TypeError, KeyError, ValueError) as exc:
        raise BackendError(
            f"tensor '{name}' has TensorRT type {trt_dtype}, which tritonpy does not support", ErrorCode.UNSUPPORTED
        ) from exc


def describe(trt: Any, engine: Any) -> tuple[list[array_config.TensorInfo], list[array_config.TensorInfo], int]:
    """(inputs, outputs, largest batch every input's profile-0 range allows; 0 when not batchable)."""
    inputs: list[array_config.TensorInfo] = []
    outputs: list[array_config.TensorInfo] = []
    max_batch = 1 << 30
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        dims = tuple(int(d) for d in engine.get_tensor_shape(name))
        info = array_config.TensorInfo(name, _wire_type(trt, name, engine.get_tensor_dtype(name)), dims)
        if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
            inputs.append(info)
            if dims and dims[0] == -1:
                max_batch = min(max_batch, int(engine.get_tensor_profile_shape(name, 0)[2][0]))
        else:
            outputs.append(info)
    batchable = array_config.supports_batching(inputs, outputs)
    return inputs, outputs, (max_batch if batchable and max_batch < (1 << 30) else 0)


def _profile(config: dict[str, Any]) -> int:
    for group in config.get("instance_group") or []:
        for entry in group.get("profile") or []:
            return int(entry)
    return 0


class TensorRTBackend(ArrayBackend):
    name = "tensorrt"

    @classmethod
    def auto_complete_config(
        cls, config: dict[str, Any], model_dir: Path, version_dir: Path, *, backend_config: dict[str, str] | None = None
    ) -> dict[str, Any]:
        trt, _ = _libraries()
        inputs, outputs, max_batch = describe(trt, _deserialize(trt, _model_path(config, version_dir)))
        return array_config.auto_complete(config, inputs, outputs, default_max_batch_size=max_batch)

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        trt, rt = _libraries()
        if self.kind != "KIND_GPU":
            raise BackendError(
                f"TensorRT engines run on a GPU; instance kind {self.kind} is not supported (use KIND_GPU)",
                ErrorCode.INVALID_ARG,
            )
        self._trt, self._rt = trt, rt
        self._buffers: dict[str, tuple[int, int]] = {}  # name -> (device pointer, bytes)
        self._stream: Any = None  # cuda-python's cudaStream_t (the module is loaded at run time)
        _check(rt.cudaSetDevice(self.device_id), "cudaSetDevice")
        self._engine = _deserialize(trt, _model_path(self.config, self.version_dir))
        inputs, outputs, _ = describe(trt, self._engine)
        array_config.validate(self.config, inputs, outputs)
        if not self._input_names:
            self._input_names = [t.name for t in inputs]
        if not self._output_names:
            self._output_names = [t.name for t in outputs]
        self._types = {t.name: t.datatype for t in inputs + outputs}
        self._context = self._engine.create_execution_context()
        if self._context is None:
            raise BackendError(
                "TensorRT could not create an execution context (out of GPU memory?)", ErrorCode.UNAVAILABLE
            )
        self._stream = _check(rt.cudaStreamCreate(), "cudaStreamCreate")
        profile = _profile(self.config)
        if profile >= self._engine.num_optimization_profiles:
            raise BackendError(
                f"optimization profile {profile} does not exist; the engine has "
                f"{self._engine.num_optimization_profiles}",
                ErrorCode.INVALID_ARG,
            )
        self._context.set_optimization_profile_async(profile, int(self._stream))
        log.info("tensorrt engine for '%s' on GPU %d, profile %d", self.model_name, self.device_id, profile)

    def _buffer(self, name: str, nbytes: int) -> int:
        pointer, size = self._buffers.get(name, (0, 0))
        if size >= max(nbytes, 1):
            return pointer
        if pointer:
            _check(self._rt.cudaFree(pointer), "cudaFree")
        pointer = _check(self._rt.cudaMalloc(max(nbytes, 1)), "cudaMalloc")
        self._buffers[name] = (int(pointer), max(nbytes, 1))
        return int(pointer)

    def _infer(self, feeds: dict[str, np.ndarray], fetch: list[str]) -> list[np.ndarray]:
        rt, ctx = self._rt, self._context
        h2d, d2h = rt.cudaMemcpyKind.cudaMemcpyHostToDevice, rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        for name, array in feeds.items():
            host = np.ascontiguousarray(array)
            if not ctx.set_input_shape(name, tuple(host.shape)):
                raise BackendError(
                    f"input '{name}': shape {list(host.shape)} is outside the optimization profile",
                    ErrorCode.INVALID_ARG,
                )
            pointer = self._buffer(name, host.nbytes)
            _check(rt.cudaMemcpyAsync(pointer, host.ctypes.data, host.nbytes, h2d, self._stream), "cudaMemcpyAsync")
            ctx.set_tensor_address(name, pointer)
        results: dict[str, np.ndarray] = {}
        for name in self._output_names:
            shape = tuple(int(d) for d in ctx.get_tensor_shape(name))
            if any(d < 0 for d in shape):
                raise BackendError(f"output '{name}' has an unresolved shape {list(shape)}", ErrorCode.INVALID_ARG)
            out = np.empty(shape, dtype=dtypes.wire_to_numpy(self._types[name]))
            results[name] = out
            ctx.set_tensor_address(name, self._buffer(name, out.nbytes))
        if not ctx.execute_async_v3(int(self._stream)):
            raise BackendError("TensorRT execution failed (see the instance log)")
        for name in fetch:
            out = results[name]
            pointer, _ = self._buffers[name]
            _check(rt.cudaMemcpyAsync(out.ctypes.data, pointer, out.nbytes, d2h, self._stream), "cudaMemcpyAsync")
        _check(rt.cudaStreamSynchronize(self._stream), "cudaStreamSynchronize")
        return [results[n] for n in fetch]

    def finalize(self) -> None:
        rt = getattr(self, "_rt", None)
        if rt is None:
            return
        for pointer, _ in self._buffers.values():
            rt.cudaFree(pointer)
        self._buffers.clear()
        if self._stream is not None:
            rt.cudaStreamDestroy(self._stream)
            self._stream = None
        self._context = None
        self._engine = None
