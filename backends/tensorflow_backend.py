"""The tensorflow backend: a SavedModel directory (`model.savedmodel`), one signature, on the CPU.

The signature is `serving_default` unless the config parameter TF_SIGNATURE_DEF names another.
Inputs and outputs are the signature's keyword names, as in Triton's TensorFlow backend, and
auto-complete reads them (types and shapes) from the signature; a variable first dimension on
every tensor makes the model batchable. BYTES tensors are TensorFlow strings.

Threads: TF_NUM_INTRA_THREADS / TF_NUM_INTER_THREADS (default: CPUs / total instances, and 1),
set before TensorFlow starts its runtime in this worker.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from tritonpy.backends import config as cfg
from tritonpy.backends import array_config
from tritonpy.backends.array_backend import ArrayBackend
from tritonpy.backends.base import BackendError
from tritonpy.backends.frameworks import cpu_threads, require
from tritonpy.proto import dtypes
from tritonpy.proto.messages import ErrorCode

log = logging.getLogger("tritonpy.backends.tensorflow")

DEFAULT_SIGNATURE = "serving_default"


def _tf() -> Any:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ info lines flood the log
    return require("tensorflow")


def _model_path(config: dict[str, Any], version_dir: Path) -> Path:
    path = cfg.model_file(config, version_dir, "model.savedmodel")
    if not path.is_dir():
        raise BackendError(f"unable to find SavedModel directory '{path}'", ErrorCode.NOT_FOUND)
    return path


def _signature(tf: Any, config: dict[str, Any], version_dir: Path) -> tuple[Any, Any]:
    path = _model_path(config, version_dir)
    try:
        loaded = tf.saved_model.load(str(path))
    except Exception as exc:  # TensorFlow raises many types for bad directories
        raise BackendError(f"tensorflow cannot load SavedModel '{path.name}': {exc}") from exc
    wanted = cfg.parameters(config).get("TF_SIGNATURE_DEF", "").strip() or DEFAULT_SIGNATURE
    signatures = dict(loaded.signatures)
    if wanted not in signatures:
        raise BackendError(
            f"SavedModel '{path.name}' has no signature '{wanted}'; it has: {', '.join(sorted(signatures)) or 'none'}",
            ErrorCode.INVALID_ARG,
        )
    return loaded, signatures[wanted]


def _info(tf: Any, name: str, spec: Any) -> array_config.TensorInfo:
    if spec.dtype == tf.string:
        datatype = "BYTES"
    elif spec.dtype == tf.bfloat16:
        datatype = "BF16"
    else:
        try:
            datatype = dtypes.numpy_to_wire(np.dtype(spec.dtype.as_numpy_dtype))
        except (TypeError, ValueError, KeyError) as exc:
            raise BackendError(
                f"tensor '{name}' has type {spec.dtype.name}, which tritonpy does not support", ErrorCode.UNSUPPORTED
            ) from exc
    if spec.shape.rank is None:
        raise BackendError(
            f"tensor '{name}' has an unknown rank, which tritonpy cannot describe", ErrorCode.UNSUPPORTED
        )
    dims = tuple(-1 if d is None else int(d) for d in spec.shape.as_list())
    return array_config.TensorInfo(name, datatype, dims)


def describe(tf: Any, signature: Any) -> tuple[list[array_config.TensorInfo], list[array_config.TensorInfo]]:
    """The signature's inputs (keyword arguments) and outputs (the returned dict), sorted by name."""
    args, kwargs = signature.structured_input_signature
    if args:
        raise BackendError(
            "the signature takes positional inputs; tritonpy needs named (keyword) inputs", ErrorCode.UNSUPPORTED
        )
    outputs = signature.structured_outputs
    if not isinstance(outputs, dict):
        raise BackendError("the signature must return a dict of named outputs", ErrorCode.UNSUPPORTED)
    return (
        [_info(tf, name, spec) for name, spec in sorted(kwargs.items())],
        [_info(tf, name, spec) for name, spec in sorted(outputs.items())],
    )


class TensorFlowBackend(ArrayBackend):
    name = "tensorflow"
    _cpu_only = True

    @classmethod
    def auto_complete_config(
        cls, config: dict[str, Any], model_dir: Path, version_dir: Path, *, backend_config: dict[str, str] | None = None
    ) -> dict[str, Any]:
        tf = _tf()
        _, signature = _signature(tf, config, version_dir)
        inputs, outputs = describe(tf, signature)
        return cls._complete_from_model(config, inputs, outputs, backend_config)

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        tf = _tf()
        self._tf = tf
        params = cfg.parameters(self.config)
        intra = cpu_threads(
            params.get("TF_NUM_INTRA_THREADS", ""), cfg.total_instances(self.config), "TF_NUM_INTRA_THREADS"
        )
        inter = 1
        if params.get("TF_NUM_INTER_THREADS", "").strip():
            inter = cpu_threads(params["TF_NUM_INTER_THREADS"], 1, "TF_NUM_INTER_THREADS")
        try:
            tf.config.threading.set_intra_op_parallelism_threads(intra)
            tf.config.threading.set_inter_op_parallelism_threads(inter)
            tf.config.set_visible_devices([], "GPU")
        except RuntimeError as exc:  # the runtime already started (auto-complete ran in this worker)
            log.warning("TensorFlow thread settings not applied: %s", exc)
        self._loaded, self._signature = _signature(tf, self.config, self.version_dir)
        inputs, outputs = describe(tf, self._signature)
        array_config.validate(self.config, inputs, outputs)
        self._input_dtypes = {t.name: t.datatype for t in inputs}
        if not self._input_names:
            self._input_names = [t.name for t in inputs]
        if not self._output_names:
            self._output_names = [t.name for t in outputs]
        log.info("tensorflow model '%s': %d intra-op, %d inter-op threads", self.model_name, intra, inter)

    def _tensor(self, name: str, array: np.ndarray) -> Any:
        tf = self._tf
        if self._input_dtypes.get(name) == "BF16":
            return tf.bitcast(tf.constant(array.view(np.int16)), tf.bfloat16)
        return tf.constant(array)

    def _infer(self, feeds: dict[str, np.ndarray], fetch: list[str]) -> list[np.ndarray]:
        tf = self._tf
        try:
            result = self._signature(**{n: self._tensor(n, a) for n, a in feeds.items()})
        except (tf.errors.InvalidArgumentError, TypeError, ValueError) as exc:
            raise BackendError(f"tensorflow execute failure: {exc}", ErrorCode.INVALID_ARG) from exc
        arrays = []
        for name in fetch:
            value = result[name]
            if value.dtype == tf.bfloat16:
                arrays.append(tf.bitcast(value, tf.int16).numpy().view(np.uint16))
            else:
                arrays.append(value.numpy())
        return arrays

    def finalize(self) -> None:
        self._signature = None
        self._loaded = None
