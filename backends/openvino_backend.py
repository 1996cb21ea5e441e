"""The openvino backend: `model.xml` + `model.bin` (OpenVINO IR, or any file `Core.read_model` reads)
compiled for the CPU, one infer request per model instance.

Inputs go to OpenVINO without a copy (`share_inputs=True` wraps the shared-memory views); outputs
are OpenVINO's own buffers (`share_outputs=True`), which the worker copies into shared memory
before the next call can overwrite them. Auto-complete reads inputs, outputs, types and dims from
the model; a dynamic first dimension on every tensor makes it batchable.

Parameters (Triton's OpenVINO backend names): INFERENCE_NUM_THREADS (default: CPUs / total
instances), COMPILATION_NUM_THREADS, NUM_STREAMS (default 1: one request at a time per instance),
PERFORMANCE_HINT (LATENCY / THROUGHPUT), HINT_BF16 (YES lets OpenVINO compute in bfloat16 on CPUs
that support it; by default inference runs in f32 so results match other frameworks).
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
from tritonpy.backends.frameworks import cpu_threads, require
from tritonpy.proto.messages import ErrorCode

log = logging.getLogger("tritonpy.backends.openvino")

OV_TO_WIRE: dict[str, str] = {
    "boolean": "BOOL",
    "u8": "UINT8",
    "u16": "UINT16",
    "u32": "UINT32",
    "u64": "UINT64",
    "i8": "INT8",
    "i16": "INT16",
    "i32": "INT32",
    "i64": "INT64",
    "f16": "FP16",
    "f32": "FP32",
    "f64": "FP64",
    "bf16": "BF16",
    "string": "BYTES",
}


def _model_path(config: dict, version_dir: Path) -> Path:
    path = cfg.model_file(config, version_dir, "model.xml")
    if not path.is_file():
        raise BackendError(f"unable to find '{path}'", ErrorCode.NOT_FOUND)
    return path


def port_name(port: Any, index: int, kind: str) -> str:
    """A port's tensor name; models converted without names get `<kind>_<index>`."""
    names = port.get_names()
    return port.get_any_name() if names else f"{kind}_{index}"


def tensor_info(port: Any, name: str) -> array_config.TensorInfo:
    type_name = port.get_element_type().get_type_name()
    datatype = OV_TO_WIRE.get(type_name)
    if datatype is None:
        raise BackendError(
            f"tensor '{name}' has OpenVINO type {type_name}, which tritonpy does not support", ErrorCode.UNSUPPORTED
        )
    shape = port.get_partial_shape()
    if shape.rank.is_dynamic:
        raise BackendError(f"tensor '{name}' has a dynamic rank, which tritonpy cannot describe", ErrorCode.UNSUPPORTED)
    dims = tuple(int(d.get_length()) if d.is_static else -1 for d in shape)
    return array_config.TensorInfo(name, datatype, dims)


def _describe(model: Any) -> tuple[list[array_config.TensorInfo], list[array_config.TensorInfo]]:
    inputs = [tensor_info(p, port_name(p, i, "input")) for i, p in enumerate(model.inputs)]
    outputs = [tensor_info(p, port_name(p, i, "output")) for i, p in enumerate(model.outputs)]
    return inputs, outputs


def _read(core: Any, path: Path) -> Any:
    try:
        return core.read_model(str(path))
    except Exception as exc:
        raise BackendError(f"openvino cannot read '{path.name}': {exc}") from exc


class OpenVINOBackend(ArrayBackend):
    name = "openvino"
    _cpu_only = True
    _transient_outputs = True  # share_outputs=True: the next infer overwrites them

    @classmethod
    def auto_complete_config(
        cls, config: dict, model_dir: Path, version_dir: Path, *, backend_config: dict[str, str] | None = None
    ) -> dict:
        ov = require("openvino")
        inputs, outputs = _describe(_read(ov.Core(), _model_path(config, version_dir)))
        return cls._complete_from_model(config, inputs, outputs, backend_config)

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        ov = require("openvino")
        core = ov.Core()
        model = _read(core, _model_path(self.config, self.version_dir))
        inputs, outputs = _describe(model)
        array_config.validate(self.config, inputs, outputs)
        self._in_port = {t.name: i for i, t in enumerate(inputs)}
        self._out_port = {t.name: i for i, t in enumerate(outputs)}
        if not self._input_names:
            self._input_names = [t.name for t in inputs]
        if not self._output_names:
            self._output_names = [t.name for t in outputs]
        properties = self._properties()
        try:
            self._compiled = core.compile_model(model, "CPU", properties)
        except Exception as exc:
            raise BackendError(f"openvino cannot compile the model for CPU: {exc}") from exc
        self._request = self._compiled.create_infer_request()
        log.info("openvino model '%s' compiled for CPU with %s", self.model_name, properties)

    def _properties(self) -> dict[str, str]:
        params = cfg.parameters(self.config)
        threads = cpu_threads(
            params.get("INFERENCE_NUM_THREADS", ""), cfg.total_instances(self.config), "INFERENCE_NUM_THREADS"
        )
        props = {"INFERENCE_NUM_THREADS": str(threads), "NUM_STREAMS": params.get("NUM_STREAMS", "").strip() or "1"}
        for key in ("COMPILATION_NUM_THREADS", "PERFORMANCE_HINT"):
            if params.get(key, "").strip():
                props[key] = params[key].strip()
        bf16 = params.get("HINT_BF16", "").strip().upper() in ("YES", "TRUE", "1")
        props["INFERENCE_PRECISION_HINT"] = "bf16" if bf16 else "f32"
        return props

    def _infer(self, feeds: dict[str, np.ndarray], fetch: list[str]) -> list[np.ndarray]:
        by_port = {self._in_port[n]: a for n, a in feeds.items()}
        try:
            result = self._request.infer(by_port, share_inputs=True, share_outputs=True)
        except Exception as exc:
            raise BackendError(f"openvino execute failure: {exc}", ErrorCode.INVALID_ARG) from exc
        return [result[self._out_port[n]] for n in fetch]

    def finalize(self) -> None:
        self._request = None
        self._compiled = None
