"""Errors the core raises, with Triton's codes; frontends turn them into HTTP/gRPC status."""
from __future__ import annotations

from tritonpy.proto.messages import ErrorCode, ErrorInfo

__all__ = ["ErrorCode", "ServerError", "http_status", "invalid", "not_found", "unavailable", "internal", "unsupported"]

# Triton's mapping (http_server.cc); everything else is 400.
_HTTP = {
    ErrorCode.INTERNAL: 500,
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.UNAVAILABLE: 503,
    ErrorCode.UNSUPPORTED: 501,
    ErrorCode.UNAUTHENTICATED: 401,
    ErrorCode.PERMISSION_DENIED: 403,
    ErrorCode.RESOURCE_EXHAUSTED: 429,
}


class ServerError(Exception):
    """An error with a Triton code; the message is what the client sees."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = ErrorCode(code)
        self.message = message

    def __repr__(self) -> str:
        return f"ServerError({self.code.name}, {self.message!r})"

    @property
    def http_status(self) -> int:
        return http_status(self.code)

    @classmethod
    def from_info(cls, info: ErrorInfo) -> "ServerError":
        try:
            code = ErrorCode(info.code)
        except ValueError:
            code = ErrorCode.INTERNAL
        return cls(code, info.message)


def http_status(code: ErrorCode) -> int:
    return _HTTP.get(code, 400)


def invalid(message: str) -> ServerError:
    return ServerError(ErrorCode.INVALID_ARG, message)


def not_found(message: str) -> ServerError:
    return ServerError(ErrorCode.NOT_FOUND, message)


def unavailable(message: str) -> ServerError:
    return ServerError(ErrorCode.UNAVAILABLE, message)


def internal(message: str) -> ServerError:
    return ServerError(ErrorCode.INTERNAL, message)


def unsupported(message: str) -> ServerError:
    return ServerError(ErrorCode.UNSUPPORTED, message)
