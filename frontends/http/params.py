"""Type checks for JSON values and the request-level `parameters` object.

Reserved parameters (`sequence_id`, `sequence_start`, `sequence_end`, `priority`, `timeout`,
`binary_data_output`, `headers`) are parsed into typed InferRequest fields here; any other key
starting with `triton_` is refused (except the ones the protocol defines), and the remaining
user parameters must be scalars. Error texts follow Triton's ("Unable to parse 'priority'").
"""
from __future__ import annotations

import re
from typing import Any, Mapping

from tritonpy.core.types import InferRequest
from tritonpy.frontends.http.errors import bad_request

UINT64_MAX = (1 << 64) - 1
INT64_MIN = -(1 << 63)
INT64_MAX = (1 << 63) - 1

# `triton_` keys a client may send (they go on to the core as ordinary parameters).
ALLOWED_TRITON_KEYS = frozenset({"triton_enable_empty_final_response"})


def is_uint(value: Any) -> bool:
    return type(value) is int and 0 <= value <= UINT64_MAX


def is_int(value: Any) -> bool:
    return type(value) is int and INT64_MIN <= value <= UINT64_MAX


def as_uint(value: Any, what: str) -> int:
    if not is_uint(value):
        raise bad_request(f"Unable to parse '{what}'")
    return value


def as_bool(value: Any, what: str) -> bool:
    if type(value) is not bool:
        raise bad_request(f"Unable to parse '{what}'")
    return value


def as_str(value: Any, what: str) -> str:
    if type(value) is not str:
        raise bad_request(f"Unable to parse '{what}'")
    return value


def as_object(value: Any, what: str) -> dict:
    if type(value) is not dict:
        raise bad_request(f"Unable to parse '{what}': expected a JSON object")
    return value


def scalar_parameter(key: str, value: Any) -> Any:
    """A user parameter value: string, integer, boolean or number (Triton's InferParameter kinds)."""
    kind = type(value)
    if kind is str or kind is bool:
        return value
    if kind is int:
        if not is_int(value):
            raise bad_request(f"parameter '{key}' is out of range for a 64-bit integer")
        return value
    if kind is float:
        return value
    raise bad_request(
        f"parameter '{key}' has invalid type. It should be either 'int', 'double', 'bool', or 'string'."
    )


def apply_request_parameters(request: InferRequest, params: Any) -> bool:
    """Fill `request` from the JSON `parameters` object; returns the `binary_data_output` default."""
    params = as_object(params, "parameters")
    binary_default = False
    user = request.parameters
    for key, value in params.items():
        if key == "sequence_id":
            if is_uint(value):
                request.sequence_id = value
            elif type(value) is str:
                request.sequence_id = value
            else:
                raise bad_request("Unable to parse 'sequence_id'")
        elif key == "sequence_start":
            request.sequence_start = as_bool(value, key)
        elif key == "sequence_end":
            request.sequence_end = as_bool(value, key)
        elif key == "priority":
            request.priority = as_uint(value, key)
        elif key == "timeout":
            request.timeout_us = as_uint(value, key)
        elif key == "binary_data_output":
            binary_default = as_bool(value, key)
        elif key == "headers":
            # Forwarded headers travel as an object of strings; each becomes a string parameter.
            for hkey, hvalue in as_object(value, key).items():
                user[hkey] = as_str(hvalue, f"headers.{hkey}")
        elif key.startswith("triton_") and key not in ALLOWED_TRITON_KEYS:
            raise bad_request(
                "parameter keys starting with 'triton_' are reserved for Triton usage and should not be specified."
            )
        else:
            user[key] = scalar_parameter(key, value)
    return binary_default


def compile_forward_pattern(pattern: str) -> re.Pattern[str] | None:
    """`--http-header-forward-pattern`: case-insensitive unless it starts with `(?-i)` (RE2 syntax)."""
    if not pattern:
        return None
    if pattern.startswith("(?-i)"):
        return re.compile(pattern[5:])
    return re.compile(pattern, re.IGNORECASE)


def forward_headers(request: InferRequest, pattern: re.Pattern[str] | None, headers: Mapping[str, str]) -> None:
    """Copy headers whose name matches the pattern into the request parameters as strings."""
    if pattern is None:
        return
    for key, value in headers.items():
        if pattern.search(key):
            request.parameters[key] = value
