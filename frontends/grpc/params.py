"""`InferParameter` (a protobuf oneof) to and from Python values, and the parameters Triton reserves.

Triton's gRPC frontend type-checks the reserved request parameters (sequence, priority, timeout) and
the per-tensor shared-memory and classification parameters itself, with fixed messages that clients
and tests match on; this module reproduces those checks as pure functions so they are easy to test.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from tritonpy.core.errors import invalid
from tritonpy.core.types import ShmRef

_UINT64_MASK = (1 << 64) - 1
_INT64_MAX = (1 << 63) - 1

# Request parameters starting with "triton_" that a client may send (Triton's TRITON_RESERVED_REQUEST_PARAMS).
ALLOWED_TRITON_PARAMS: tuple[str, ...] = ("triton_enable_empty_final_response",)
SHM_KEYS = frozenset({"shared_memory_region", "shared_memory_byte_size", "shared_memory_offset"})


def param_value(param: Any) -> Any:
    """The Python value of an InferParameter / ModelRepositoryParameter / log SettingValue; None when unset."""
    which = param.WhichOneof("parameter_choice")
    return None if which is None else getattr(param, which)


def set_param(param: Any, value: Any) -> None:
    """Store a Python value into an InferParameter, picking the oneof member from the value's type."""
    if isinstance(value, bool):
        param.bool_param = value
    elif isinstance(value, int):
        if value > _INT64_MAX:
            param.uint64_param = value
        else:
            param.int64_param = value
    elif isinstance(value, float):
        param.double_param = value
    elif isinstance(value, (bytes, bytearray)):
        param.string_param = bytes(value).decode("utf-8", "replace")
    else:
        param.string_param = str(value)


@dataclasses.dataclass(slots=True)
class RequestParams:
    """Request-level parameters after Triton's checks: the reserved ones parsed, the rest kept as values."""

    sequence_id: int | str = 0
    sequence_start: bool = False
    sequence_end: bool = False
    priority: int = 0
    timeout_us: int = 0
    enable_empty_final_response: bool = False
    custom: dict[str, Any] = dataclasses.field(default_factory=dict)


def _kind(param: Any) -> str | None:
    return param.WhichOneof("parameter_choice")


def parse_request_params(params: Mapping[str, Any]) -> RequestParams:
    """Check and split `ModelInferRequest.parameters`; raises INVALID_ARG with Triton's messages."""
    out = RequestParams()
    for key, param in params.items():
        kind = _kind(param)
        if key == "sequence_id":
            if kind in ("int64_param", "uint64_param"):
                # Triton stores correlation ids as uint64: a negative int64 wraps around.
                out.sequence_id = getattr(param, kind) & _UINT64_MASK
            elif kind == "string_param":
                out.sequence_id = param.string_param
            else:
                raise invalid("invalid value type for 'sequence_id' parameter, expected int64_param or string_param.")
        elif key in ("sequence_start", "sequence_end"):
            if kind != "bool_param":
                raise invalid(f"invalid value type for '{key}' parameter, expected bool_param.")
            setattr(out, key, param.bool_param)
        elif key == "priority":
            if kind == "int64_param":
                if param.int64_param < 0:
                    raise invalid("invalid value for 'priority', expected value >= 0.")
                out.priority = param.int64_param
            elif kind == "uint64_param":
                out.priority = param.uint64_param
            else:
                raise invalid("invalid value type for 'priority' parameter, expected int64_param or uint64_param.")
        elif key == "timeout":
            if kind != "int64_param":
                raise invalid("invalid value type for 'timeout' parameter, expected int64_param.")
            out.timeout_us = max(param.int64_param, 0)
        elif key.startswith("triton_"):
            if key not in ALLOWED_TRITON_PARAMS:
                raise invalid(
                    "parameter keys starting with 'triton_' are reserved for Triton usage. Only the following keys "
                    "starting with 'triton_' are allowed: " + " ".join(ALLOWED_TRITON_PARAMS)
                )
            if kind != "bool_param":
                raise invalid(f"invalid value type for '{key}' parameter, expected bool_param.")
            out.enable_empty_final_response = param.bool_param
        else:
            if kind is None:
                raise invalid(
                    f"invalid value type for '{key}' parameter, expected int64_param, bool_param, or string_param."
                )
            # double_param and uint64_param are accepted too: tritonclient sends Python floats as doubles.
            out.custom[key] = getattr(param, kind)
    return out


def parse_shm(params: Mapping[str, Any], tensor: str) -> ShmRef | None:
    """The shared-memory reference of an input or requested output, None when it has none.

    Region and byte size go together; the offset needs a region (Triton's ParseSharedMemoryParams).
    """
    region = params.get("shared_memory_region") if "shared_memory_region" in params else None
    has_region = region is not None
    name = ""
    if region is not None:
        if _kind(region) != "string_param":
            raise invalid(
                f"invalid value type for 'shared_memory_region' parameter for tensor '{tensor}', expected string_param."
            )
        name = region.string_param
    offset = 0
    if "shared_memory_offset" in params:
        if not has_region:
            raise invalid(
                f"'shared_memory_offset' can not be specified without 'shared_memory_region' parameter for tensor "
                f"'{tensor}'"
            )
        param = params["shared_memory_offset"]
        if _kind(param) != "int64_param":
            raise invalid(
                f"invalid value type for 'shared_memory_offset' parameter for tensor '{tensor}', expected int64_param."
            )
        offset = param.int64_param
    if "shared_memory_byte_size" in params:
        if not has_region:
            raise invalid(
                f"'shared_memory_byte_size' can not be specified without 'shared_memory_region' parameter for tensor "
                f"'{tensor}'"
            )
        param = params["shared_memory_byte_size"]
        if _kind(param) != "int64_param":
            raise invalid(
                f"invalid value type for 'shared_memory_byte_size' parameter for tensor '{tensor}', expected "
                "int64_param."
            )
        byte_size = param.int64_param
    elif has_region:
        raise invalid(
            f"'shared_memory_byte_size' must be specified along with 'shared_memory_region' parameter for tensor "
            f"'{tensor}'"
        )
    else:
        return None
    return ShmRef(region=name, byte_size=byte_size, offset=offset)


def parse_classification(params: Mapping[str, Any]) -> int:
    """Top-N classification count of a requested output; 0 when not asked for."""
    if "classification" not in params:
        return 0
    param = params["classification"]
    if _kind(param) != "int64_param":
        raise invalid("invalid value type for 'classification' parameter, expected int64_param")
    if param.int64_param <= 0:
        raise invalid("invalid value for 'classification' parameter, expected >= 1")
    return param.int64_param


def other_params(params: Mapping[str, Any], skip: frozenset[str]) -> dict[str, Any]:
    """Tensor parameters that are not protocol-defined, as plain values (kept for the model)."""
    if not params:
        return {}
    return {k: param_value(v) for k, v in params.items() if k not in skip}
