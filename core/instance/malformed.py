"""What to do with a message from a worker that does not decode.

A worker message that fails its typed decode (a model put bytes where a string belongs, a field
of the wrong type) still names, in its first field, the call it belongs to: every message that
answers or starts a call is an `array_like` struct whose first element is that call's id. We read
the payload untyped, take that id, and build a well-formed stand-in that fails the call with a
clear INTERNAL error, so the client gets an answer instead of waiting until it times out.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgspec

from tritonpy.core.errors import ErrorCode
from tritonpy.proto import messages as m


def _fields(frames: Sequence[bytes]) -> tuple[int, list[Any]] | None:
    if len(frames) != 2 or len(frames[0]) != 1:
        return None
    try:
        payload = msgspec.msgpack.decode(frames[1])
    except msgspec.DecodeError:
        return None
    if not isinstance(payload, list) or not payload or not isinstance(payload[0], int):
        return None
    return bytes(frames[0])[0], payload


def stand_in(frames: Sequence[bytes], reason: str) -> m.ExecuteDone | m.ResponseSend | m.BlsResult | None:
    """A message that fails the call a malformed message belonged to, or None when it names none.

    ExecuteDone and ResponseSend stand-ins are handled as if the worker had sent them; a BlsResult
    stand-in goes back to the worker, answering its model's BLS call with an error response.
    """
    found = _fields(frames)
    if found is None:
        return None
    kind, fields = found
    error = m.ErrorInfo(int(ErrorCode.INTERNAL), f"the worker sent a malformed message: {reason}")
    if kind == m._KINDS[m.ExecuteDone]:
        return m.ExecuteDone(batch_id=fields[0], responses=[], error=error)
    if kind == m._KINDS[m.ResponseSend] and len(fields) > 1 and isinstance(fields[1], int):
        # Its output blocks (release_id, the fifth field) must still go back to the worker.
        release = fields[4] if len(fields) > 4 and isinstance(fields[4], int) else 0
        return m.ResponseSend(batch_id=fields[0], index=fields[1], response=m.ResponseMsg(error=error), final=True,
                              release_id=release)
    if kind == m._KINDS[m.BlsCall]:
        return m.BlsResult(bls_id=fields[0], response=m.ResponseMsg(error=error), final=True)
    return None


__all__ = ["stand_in"]
