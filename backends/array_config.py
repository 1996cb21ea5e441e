"""onnxruntime backend helpers: type names, auto-complete, threads and execution providers.

Kept apart from the backend class so the rules (which are what users argue about) are pure
functions of the config and the model's declared inputs/outputs, testable without a session.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any

from tritonpy.backends import config as cfg
from tritonpy.backends.base import BackendError
from tritonpy.proto import dtypes
from tritonpy.proto.messages import ErrorCode

ORT_TO_WIRE: dict[str, str] = {
    "tensor(bool)": "BOOL",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(float16)": "FP16",
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(string)": "BYTES",
    "tensor(bfloat16)": "BF16",
}

# Triton accelerator names -> onnxruntime provider names.
_ACCELERATORS = {
    "tensorrt": "TensorrtExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "openvino": "OpenVINOExecutionProvider",
}


@dataclasses.dataclass(slots=True, frozen=True)
class TensorInfo:
    """One model input or output as the ONNX file declares it (dims with -1 for variable)."""

    name: str
    datatype: str  # wire name
    dims: tuple[int, ...]


def tensor_info(node: Any) -> TensorInfo:
    """From an onnxruntime NodeArg (name, type, shape with str/None for symbolic dims)."""
    datatype = ORT_TO_WIRE.get(node.type)
    if datatype is None:
        raise BackendError(
            f"tensor '{node.name}' has type {node.type}, which tritonpy does not support", ErrorCode.UNSUPPORTED
        )
    shape = node.shape or []
    dims = tuple(int(d) if isinstance(d, int) and d >= 0 else -1 for d in shape)
    return TensorInfo(node.name, datatype, dims)


def _config_dims(dims: tuple[int, ...], batching: bool) -> tuple[list[int], dict | None]:
    """Config dims (and a reshape, for tensors with nothing left after the batch dim)."""
    body = list(dims[1:] if batching else dims)
    if not body:
        return [1], {"shape": []}
    return body, None


def supports_batching(inputs: list[TensorInfo], outputs: list[TensorInfo]) -> bool:
    """Every input and output has a variable first dimension."""
    tensors = inputs + outputs
    return bool(tensors) and all(len(t.dims) >= 1 and t.dims[0] == -1 for t in tensors)


# Triton's default for --backend-config=<backend>,default-max-batch-size.
DEFAULT_MAX_BATCH_SIZE = 4


def default_max_batch_size(backend_config: dict[str, str] | None) -> int:
    """The backend's `default-max-batch-size` setting; Triton's default when unset or not a number."""
    text = (backend_config or {}).get("default-max-batch-size", str(DEFAULT_MAX_BATCH_SIZE))
    try:
        return int(text)
    except ValueError:
        return DEFAULT_MAX_BATCH_SIZE


def auto_complete(
    config: dict, inputs: list[TensorInfo], outputs: list[TensorInfo], *, default_max_batch_size: int
) -> dict:
    """Fill max_batch_size, inputs and outputs from the model; what the config says wins.

    max_batch_size: a config value > 0 is kept. Otherwise, when every tensor has a variable first
    dimension and the config does not list full-rank dims for any of them, it becomes
    `default_max_batch_size`; else 0. Whether to add `dynamic_batching` is the core's decision.
    """
    config = dict(config)
    max_batch = int(config.get("max_batch_size") or 0)
    listed = {e.get("name"): e for e in list(config.get("input") or []) + list(config.get("output") or [])}
    if max_batch == 0 and default_max_batch_size > 0 and supports_batching(inputs, outputs):
        full_rank = any(
            listed.get(t.name, {}).get("dims") and len(listed[t.name]["dims"]) == len(t.dims)
            for t in inputs + outputs
        )
        if not full_rank:
            max_batch = default_max_batch_size
    config["max_batch_size"] = max_batch
    batching = max_batch > 0
    for key, tensors in (("input", inputs), ("output", outputs)):
        entries = [dict(e) for e in config.get(key) or []]
        by_name = {e.get("name"): e for e in entries}
        for t in tensors:
            dims, reshape = _config_dims(t.dims, batching)
            entry = by_name.get(t.name)
            if entry is None:
                entry = {"name": t.name}
                entries.append(entry)
            if entry.get("data_type") in (None, "", "TYPE_INVALID"):
                entry["data_type"] = dtypes.WIRE_TO_CONFIG[t.datatype]
            if not entry.get("dims"):
                entry["dims"] = dims
                if reshape is not None and "reshape" not in entry:
                    entry["reshape"] = reshape
        config[key] = entries
    return config


def validate(config: dict, inputs: list[TensorInfo], outputs: list[TensorInfo]) -> None:
    """Config tensors must exist in the model with the same type (a clear load error otherwise)."""
    model_name = config.get("name", "")
    for key, tensors in (("input", inputs), ("output", outputs)):
        known = {t.name: t for t in tensors}
        for entry in config.get(key) or []:
            name = entry.get("name")
            t = known.get(name)
            if t is None:
                allowed = ", ".join(sorted(known)) or "none"
                raise BackendError(
                    f"unexpected inference {key} '{name}', allowed {key}s are: {allowed}", ErrorCode.INVALID_ARG
                )
            wanted = entry.get("data_type")
            have = dtypes.WIRE_TO_CONFIG[t.datatype]
            if wanted and wanted != "TYPE_INVALID" and wanted != have:
                raise BackendError(
                    f"unable to load model '{model_name}', configuration expects datatype {wanted} "
                    f"for {key} '{name}', model provides {have}",
                    ErrorCode.INVALID_ARG,
                )


def thread_counts(config: dict) -> tuple[int, int]:
    """(intra_op, inter_op). intra_op: the config's value, else the CPUs shared by all instances."""
    params = cfg.parameters(config)
    intra = 0
    for key in ("intra_op_thread_count", "intra_op_num_threads"):
        if params.get(key, "").strip():
            intra = _positive_int(params[key], key)
            break
    if intra <= 0:
        intra = max(1, (os.cpu_count() or 1) // cfg.total_instances(config))
    inter = 1
    for key in ("inter_op_thread_count", "inter_op_num_threads"):
        if params.get(key, "").strip():
            inter = max(1, _positive_int(params[key], key))
            break
    return intra, inter


def _positive_int(text: str, key: str) -> int:
    try:
        value = int(text)
    except ValueError as exc:
        raise BackendError(f"parameter {key} must be an integer, got '{text}'", ErrorCode.INVALID_ARG) from exc
    return max(0, value)


def providers(config: dict, kind: str, device_id: int, available: list[str]) -> list[Any]:
    """Execution providers in priority order, CPU last; a clear error for one this build lacks."""
    chosen: list[Any] = []
    accel = (config.get("optimization") or {}).get("execution_accelerators") or {}
    gpu_accels = accel.get("gpu_execution_accelerator") or []
    cpu_accels = accel.get("cpu_execution_accelerator") or []
    if kind == "KIND_GPU":
        for a in gpu_accels:
            chosen.append(_accelerator(a, device_id))
        chosen.append(("CUDAExecutionProvider", {"device_id": int(device_id)}))
    for a in cpu_accels:
        chosen.append(_accelerator(a, device_id))
    seen: set[str] = set()
    result: list[Any] = []
    for entry in chosen:
        name = entry[0]
        if name in seen:
            continue
        seen.add(name)
        if name not in available:
            gpu_provider = name in ("CUDAExecutionProvider", "TensorrtExecutionProvider")
            hint = " (install onnxruntime-gpu for CUDA and TensorRT)" if gpu_provider else ""
            raise BackendError(
                f"execution provider '{name}' is not available in this onnxruntime build; "
                f"available: {', '.join(available)}{hint}",
                ErrorCode.UNAVAILABLE,
            )
        result.append(entry)
    result.append("CPUExecutionProvider")
    return result


def _accelerator(entry: dict, device_id: int) -> tuple[str, dict]:
    name = str(entry.get("name", "")).lower()
    provider = _ACCELERATORS.get(name)
    if provider is None:
        raise BackendError(
            f"unknown execution accelerator '{entry.get('name')}'; known: {', '.join(sorted(_ACCELERATORS))}",
            ErrorCode.INVALID_ARG,
        )
    options: dict[str, Any] = {}
    params = entry.get("parameters") or {}
    if provider in ("CUDAExecutionProvider", "TensorrtExecutionProvider"):
        options["device_id"] = int(device_id)
    if provider == "TensorrtExecutionProvider":
        if str(params.get("precision_mode", "")).upper() == "FP16":
            options["trt_fp16_enable"] = True
        if params.get("max_workspace_size_bytes"):
            options["trt_max_workspace_size"] = int(params["max_workspace_size_bytes"])
    return provider, options


def graph_level(config: dict) -> int:
    """Triton's optimization.graph.level: -1 basic, 1 extended, otherwise everything."""
    level = ((config.get("optimization") or {}).get("graph") or {}).get("level", 0)
    try:
        return int(level)
    except (TypeError, ValueError):
        return 0
