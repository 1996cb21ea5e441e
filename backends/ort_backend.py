"""The onnxruntime backend: an InferenceSession per model instance, CPU by default.

Batching: with max_batch_size > 0 a batch of several requests runs as one session call, on the
core's gathered tensors when it sent them (zero copy) or on inputs concatenated here; the outputs
are then split into row views per request, which the worker writes once for the whole batch.
If the batched call fails, each request runs alone so one bad request fails by itself.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from tritonpy.backends import config as cfg
from tritonpy.backends import array_config
from tritonpy.backends.array_backend import ArrayBackend
from tritonpy.backends.base import BackendError, BackendRequest, BackendResponse, OutputTensor
from tritonpy.proto import dtypes
from tritonpy.proto.messages import ErrorCode

log = logging.getLogger("tritonpy.backends.onnxruntime")


def _ort() -> Any:
    import onnxruntime  # heavy: imported only by workers that run ONNX models

    return onnxruntime


def _model_path(config: dict, version_dir: Path) -> Path:
    path = cfg.model_file(config, version_dir, "model.onnx")
    if path.is_dir():  # a directory holding model.onnx and its external data
        path = path / "model.onnx"
    if not path.is_file():
        raise BackendError(f"unable to find '{path}'", ErrorCode.NOT_FOUND)
    return path


def _open(path: Path, options: Any, providers: list[Any]) -> Any:
    ort = _ort()
    try:
        return ort.InferenceSession(str(path), sess_options=options, providers=providers)
    except Exception as exc:
        raise BackendError(str(exc) or type(exc).__name__) from exc


def _io(session: Any) -> tuple[list[array_config.TensorInfo], list[array_config.TensorInfo]]:
    return (
        [array_config.tensor_info(n) for n in session.get_inputs()],
        [array_config.tensor_info(n) for n in session.get_outputs()],
    )


def _error_code(exc: Exception) -> ErrorCode:
    invalid_argument = "INVALID_ARGUMENT" in str(exc) or type(exc).__name__ == "InvalidArgument"
    return ErrorCode.INVALID_ARG if invalid_argument else ErrorCode.INTERNAL


def _to_ort_strings(array: np.ndarray, name: str) -> np.ndarray:
    """onnxruntime wants str elements for string tensors; BYTES arrive as bytes."""
    flat = array.reshape(-1)
    out = np.empty(flat.shape, dtype=np.object_)
    try:
        for i, item in enumerate(flat):
            out[i] = item.decode("utf-8") if isinstance(item, (bytes, bytearray)) else str(item)
    except UnicodeDecodeError as exc:
        raise BackendError(
            f"input '{name}': onnxruntime string tensors must hold UTF-8 text ({exc})", ErrorCode.INVALID_ARG
        ) from exc
    return out.reshape(array.shape)


class OnnxRuntimeBackend(ArrayBackend):
    """Batching, reshape and output selection come from ArrayBackend; this adds the session, string
    tensors, optional inputs and onnxruntime's error codes."""

    name = "onnxruntime"

    @classmethod
    def auto_complete_config(
        cls, config: dict, model_dir: Path, version_dir: Path, *, backend_config: dict[str, str] | None = None
    ) -> dict:
        ort = _ort()
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        options.intra_op_num_threads = 1
        session = _open(_model_path(config, version_dir), options, ["CPUExecutionProvider"])
        inputs, outputs = _io(session)
        return cls._complete_from_model(config, inputs, outputs, backend_config)

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        ort = _ort()
        path = _model_path(self.config, self.version_dir)
        options = ort.SessionOptions()
        intra, inter = array_config.thread_counts(self.config)
        options.intra_op_num_threads = intra
        options.inter_op_num_threads = inter
        # onnxruntime's pool threads spin-wait after each run by default. Here the worker shares the
        # cores with the core process and other workers, so spinning steals the CPU they need; it is
        # off unless the model's config asks for it (parameters { key: "allow_spinning" value: "1" }).
        spin = "1" if cfg.parameters(self.config).get("allow_spinning", "").strip().lower() in ("1", "true") else "0"
        options.add_session_config_entry("session.intra_op.allow_spinning", spin)
        options.add_session_config_entry("session.inter_op.allow_spinning", spin)
        level = array_config.graph_level(self.config)
        options.graph_optimization_level = {
            -1: ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            1: ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        }.get(level, ort.GraphOptimizationLevel.ORT_ENABLE_ALL)
        providers = array_config.providers(self.config, self.kind, self.device_id, ort.get_available_providers())
        self._session = _open(path, options, providers)
        inputs, outputs = _io(self._session)
        array_config.validate(self.config, inputs, outputs)
        self._inputs = {t.name: t for t in inputs}
        # ArrayBackend's batching works on these names: config order, else the model's order
        self._output_names = cfg.io_names(self.config, "output") or [t.name for t in outputs]
        log.info("onnxruntime session for '%s': %d intra-op threads, providers %s", self.model_name, intra, providers)

    # -- feeds and fetches ---------------------------------------------------------------

    def _missing(self, request: BackendRequest) -> list[str]:
        return []  # ONNX inputs may be optional: onnxruntime itself names a missing required one

    def _feed_names(self, request: BackendRequest) -> list[str]:
        return [n for n in request.inputs if n in self._inputs]

    def _feed(self, name: str, array: np.ndarray, rows: int | None) -> np.ndarray:
        array = super()._feed(name, array, rows)
        if self._inputs[name].datatype == "BYTES":
            array = _to_ort_strings(array, name)
        return array

    def _infer(self, feeds: dict[str, np.ndarray], fetch: list[str]) -> list[np.ndarray]:
        try:
            return self._session.run(fetch, feeds)
        except BackendError:
            raise
        except Exception as exc:
            raise BackendError(f"onnxruntime execute failure: {exc}", _error_code(exc)) from exc

    def _response(self, request: BackendRequest, fetch: list[str], arrays: list[np.ndarray]) -> BackendResponse:
        wanted = set(request.requested_outputs)
        outputs = [
            OutputTensor(name, dtypes.numpy_to_wire(arr.dtype), arr)
            for name, arr in zip(fetch, arrays)
            if not wanted or name in wanted
        ]
        return BackendResponse(outputs)

    def finalize(self) -> None:
        self._session = None
