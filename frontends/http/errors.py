"""HTTP error bodies: Triton answers every failure with `{"error": "<message>"}` and a status code.

One exception type (`HttpError`) carries the status and message from deep inside the decoders up to
the dispatcher, which turns it (and any `ServerError` from the core) into that body. Keeping the
mapping here means every route reports errors the same way.
"""
from __future__ import annotations

import orjson
from aiohttp import web

from tritonpy.core.errors import ServerError

JSON_CONTENT_TYPE = "application/json"


class HttpError(Exception):
    """A request the frontend rejects before (or instead of) asking the core."""

    def __init__(self, status: int, message: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


def bad_request(message: str) -> HttpError:
    """400: what Triton answers for every malformed request."""
    return HttpError(400, message)


def error_body(message: str) -> bytes:
    return orjson.dumps({"error": message})


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    """The JSON error reply, `{"error": message}`."""
    resp = web.Response(status=status, body=error_body(message), content_type=JSON_CONTENT_TYPE)
    if headers:
        resp.headers.update(headers)
    return resp


def response_for(exc: Exception) -> web.Response:
    """The reply for an HttpError or a core ServerError (its code decides the status)."""
    if isinstance(exc, HttpError):
        return error_response(exc.status, exc.message, exc.headers)
    if isinstance(exc, ServerError):
        retry_after = getattr(exc, "retry_after", None)  # a tenant over quota (core.quota)
        return error_response(exc.http_status, exc.message,
                              {"Retry-After": str(retry_after)} if retry_after else None)
    raise TypeError(f"not an error we map: {exc!r}")


NOT_FOUND = "Not Found"
METHOD_NOT_ALLOWED = "Method Not Allowed"
