"""Triton error codes -> gRPC status codes, restricted-protocol checks, and forwarded headers."""
from __future__ import annotations

import re
from typing import Any, Iterable

import grpc

from tritonpy.core.errors import ErrorCode

# Triton's GrpcStatusUtil::CodeToStatus.
STATUS_OF: dict[ErrorCode, grpc.StatusCode] = {
    ErrorCode.UNKNOWN: grpc.StatusCode.UNKNOWN,
    ErrorCode.INTERNAL: grpc.StatusCode.INTERNAL,
    ErrorCode.NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    ErrorCode.INVALID_ARG: grpc.StatusCode.INVALID_ARGUMENT,
    ErrorCode.UNAVAILABLE: grpc.StatusCode.UNAVAILABLE,
    ErrorCode.UNSUPPORTED: grpc.StatusCode.UNIMPLEMENTED,
    ErrorCode.ALREADY_EXISTS: grpc.StatusCode.ALREADY_EXISTS,
    ErrorCode.CANCELLED: grpc.StatusCode.CANCELLED,
    ErrorCode.UNAUTHENTICATED: grpc.StatusCode.UNAUTHENTICATED,
    ErrorCode.PERMISSION_DENIED: grpc.StatusCode.PERMISSION_DENIED,
    ErrorCode.RESOURCE_EXHAUSTED: grpc.StatusCode.RESOURCE_EXHAUSTED,
}

PROTOCOL_HEADER_PREFIX = "triton-grpc-protocol-"


def grpc_status(code: ErrorCode) -> grpc.StatusCode:
    return STATUS_OF.get(code, grpc.StatusCode.UNKNOWN)


class Restrictions:
    """`--grpc-restricted-protocol` groups as category -> (metadata key, expected value)."""

    __slots__ = ("_by_category",)

    def __init__(self, groups: Iterable[tuple[Iterable[str], str, str]]) -> None:
        self._by_category: dict[str, tuple[str, str]] = {}
        for categories, key, value in groups:
            key = key.lower()
            if not key.startswith(PROTOCOL_HEADER_PREFIX):
                key = PROTOCOL_HEADER_PREFIX + key
            for category in categories:
                self._by_category[category] = (key, value)

    def __bool__(self) -> bool:
        return bool(self._by_category)

    def denied(self, category: str, metadata: Iterable[Any] | None) -> str | None:
        """None when the call may go ahead, otherwise the UNAVAILABLE message Triton sends."""
        rule = self._by_category.get(category)
        if rule is None:
            return None
        key, value = rule
        for item in metadata or ():
            if item[0] == key and item[1] == value:
                return None
        return f"This protocol is restricted, expecting header '{key}'"


class HeaderForwarder:
    """`--grpc-header-forward-pattern`: metadata whose key matches becomes a string request parameter.

    Like Triton's RE2 pattern it is case-insensitive unless it starts with `(?-i)`.
    """

    __slots__ = ("_regex",)

    def __init__(self, pattern: str) -> None:
        self._regex: re.Pattern[str] | None = None
        if pattern:
            if pattern.startswith("(?-i)"):
                self._regex = re.compile(pattern[len("(?-i)"):])
            else:
                self._regex = re.compile(pattern, re.IGNORECASE)

    def __bool__(self) -> bool:
        return self._regex is not None

    def params(self, metadata: Iterable[Any] | None) -> dict[str, str]:
        regex = self._regex
        if regex is None:
            return {}
        out: dict[str, str] = {}
        for item in metadata or ():
            key, value = item[0], item[1]
            if isinstance(value, bytes):  # "-bin" keys carry bytes
                continue
            if regex.search(key):  # RE2::PartialMatch, as Triton
                out[key] = value
        return out
