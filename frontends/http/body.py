"""Reading request bodies under `--http-max-input-size`, and gzip/deflate in both directions.

A body that arrives in one piece is handed back as-is; otherwise one bytearray grows with the bytes
actually received (never preallocated from the declared Content-Length, which a hostile client
can set to anything), so `np.frombuffer` views it without a further copy. The
size limit applies to the bytes on the wire and again after decompression (a small gzip body
must not expand past the limit). Large (de)compression runs in a worker thread so one big request
does not stall every other connection on the loop.
"""
from __future__ import annotations

import asyncio
import zlib
from typing import Any

from aiohttp import web

from tritonpy.frontends.http.errors import HttpError, bad_request

# Bodies bigger than this are (de)compressed off the event loop.
THREAD_THRESHOLD = 1 << 20
# Triton's zlib level for responses is the library default.
COMPRESS_LEVEL = 6


def too_large(limit: int, size: int | None = None, *, json_only: bool = True) -> HttpError:
    what = "Request JSON size" if json_only else "Request size"
    of = f" of {size} bytes" if size is not None else ""
    return bad_request(
        f"{what}{of} exceeds the maximum allowed value of {limit} bytes. "
        "Use --http-max-input-size to increase the limit."
    )


class BodyTimeout(HttpError):
    """No body bytes arrived for the body timeout: answered 408; aiohttp then drains the rest of the
    body for at most its lingering time (10 s) and closes the connection."""


async def _next_chunk(content: Any, timeout: float | None) -> bytes:
    if not timeout:
        return await content.readany()
    try:
        return await asyncio.wait_for(content.readany(), timeout)
    except asyncio.TimeoutError:
        raise BodyTimeout(
            408, f"timed out after {timeout:g} s waiting for the rest of the request body "
            "(--http-body-timeout)",
        ) from None


async def read_body(
    request: web.Request, limit: int, *, json_only: bool = True, timeout: float | None = None
) -> bytes | bytearray:
    """The raw request body, at most `limit` bytes (400 past that).

    Memory follows the bytes actually received, never the declared Content-Length: a client that
    announces 60 MB and sends 1 KB costs about 1 KB (plus aiohttp's read buffer). `timeout` bounds
    the silence between two pieces of the body (408 after it).
    """
    expected = request.content_length
    content = request.content
    if expected is not None:
        if expected > limit:
            raise too_large(limit, expected, json_only=json_only)
        if expected == 0:
            return b""
    first = await _next_chunk(content, timeout)
    if expected is not None and len(first) == expected:
        return first  # the common case: the whole body arrived in one piece, no copy
    cap = limit if expected is None else expected
    if len(first) > cap:
        raise _overrun(limit, expected, json_only)
    # bytearray grows geometrically with what arrives, so a stalled or lying client costs only
    # what it sent; the one extra copy per resize is amortised.
    buf = bytearray(first)
    while first:
        first = await _next_chunk(content, timeout)
        if len(buf) + len(first) > cap:
            raise _overrun(limit, expected, json_only)
        buf += first
    if expected is not None and len(buf) != expected:
        raise bad_request(f"request body ended after {len(buf)} of {expected} bytes")
    return buf


def _overrun(limit: int, expected: int | None, json_only: bool) -> HttpError:
    if expected is None:
        return too_large(limit, json_only=json_only)
    return bad_request("request body is longer than its Content-Length")


def request_encoding(request: web.Request) -> str:
    """'identity', 'gzip' or 'deflate'; anything else is rejected (400, like Triton's check)."""
    value = request.headers.get("Content-Encoding", "").strip().lower()
    if value in ("", "identity"):
        return "identity"
    if value in ("gzip", "deflate"):
        return value
    raise HttpError(400, "Unsupported compression type", headers={"Accept-Encoding": "gzip, deflate"})


def _inflate(data: bytes | bytearray, encoding: str, limit: int) -> bytes:
    """Decompress with a hard cap on the output size (zip bombs stop at `limit` + 1 bytes)."""
    wbits_options: tuple[int, ...]
    if encoding == "gzip":
        wbits_options = (16 + zlib.MAX_WBITS,)
    else:
        # "deflate" means the zlib format; some clients send raw deflate, accept that too.
        wbits_options = (zlib.MAX_WBITS, -zlib.MAX_WBITS)
    last_error: Exception | None = None
    for wbits in wbits_options:
        try:
            return _inflate_members(data, wbits, limit)
        except zlib.error as exc:
            last_error = exc
    raise bad_request(f"failed to decompress the request body ({encoding}): {last_error}")


def _inflate_members(data: bytes | bytearray, wbits: int, limit: int) -> bytes:
    out: list[bytes] = []
    size = 0
    remaining: bytes | bytearray | memoryview = data
    while True:
        d = zlib.decompressobj(wbits)
        piece = d.decompress(remaining, limit + 1 - size)
        out.append(piece)
        size += len(piece)
        while d.unconsumed_tail and size <= limit:
            piece = d.decompress(d.unconsumed_tail, limit + 1 - size)
            if not piece:
                break
            out.append(piece)
            size += len(piece)
        if size > limit:
            raise too_large(limit)
        if not d.eof:
            raise zlib.error("incomplete or truncated stream")
        # gzip allows several members one after the other.
        if d.unused_data and wbits > zlib.MAX_WBITS:
            remaining = d.unused_data
            continue
        if d.unused_data:
            raise zlib.error("trailing data after the compressed stream")
        return b"".join(out)


async def decompress(data: bytes | bytearray, encoding: str, limit: int) -> bytes | bytearray:
    if encoding == "identity":
        return data
    if len(data) >= THREAD_THRESHOLD:
        return await asyncio.to_thread(_inflate, data, encoding, limit)
    return _inflate(data, encoding, limit)


def response_encoding(request: web.Request) -> str:
    """Pick gzip/deflate/identity from Accept-Encoding by q-weight, as Triton does."""
    header = request.headers.get("Accept-Encoding")
    if not header:
        return "identity"
    best, weight = "identity", 0.0
    for item in header.split(","):
        name, _, params = item.strip().partition(";")
        name = name.strip().lower()
        q = 1.0
        params = params.strip()
        if params.startswith("q="):
            try:
                q = float(params[2:])
            except ValueError:
                continue
        if name in ("identity", "gzip", "deflate") and q > weight:
            best, weight = name, q
    return best


def _deflate(data: bytes, encoding: str) -> bytes:
    wbits = 16 + zlib.MAX_WBITS if encoding == "gzip" else zlib.MAX_WBITS
    c = zlib.compressobj(COMPRESS_LEVEL, zlib.DEFLATED, wbits)
    return c.compress(data) + c.flush()


async def compress(data: bytes, encoding: str) -> bytes:
    if len(data) >= THREAD_THRESHOLD:
        return await asyncio.to_thread(_deflate, data, encoding)
    return _deflate(data, encoding)
