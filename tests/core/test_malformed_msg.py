"""A worker message that fails its typed decode still fails the call it belongs to (issue 19)."""
from __future__ import annotations

import msgspec

from tritonpy.core.instance.malformed import stand_in
from tritonpy.proto import messages as m


def _frames(msg, **broken):
    """Frames of `msg` with some fields replaced by values of the wrong type."""
    fields = list(msgspec.to_builtins(msg))
    names = msg.__struct_fields__
    for key, value in broken.items():
        fields[names.index(key)] = value
    return [bytes((m._KINDS[type(msg)],)), msgspec.msgpack.encode(fields)]


def test_execute_done_with_a_bad_field_fails_its_batch():
    frames = _frames(m.ExecuteDone(7, []), responses="not a list")
    try:
        m.decode(frames)
    except m.MessageError as exc:
        reason = str(exc)
    else:
        raise AssertionError("expected a decode failure")
    msg = stand_in(frames, reason)
    assert isinstance(msg, m.ExecuteDone) and msg.batch_id == 7
    assert msg.error is not None and "malformed message" in msg.error.message


def test_response_send_fails_its_request_finally():
    frames = _frames(m.ResponseSend(3, 2, release_id=17), response=12)
    msg = stand_in(frames, "bad")
    assert isinstance(msg, m.ResponseSend) and (msg.batch_id, msg.index, msg.final) == (3, 2, True)
    assert msg.release_id == 17  # the worker's output blocks are still released
    assert msg.response.error is not None


def test_bls_call_is_answered_with_an_error_result():
    call = m.BlsCall(5, "x", "", m.RequestMsg("", [], []))
    msg = stand_in(_frames(call, model_name=b"x"), "bad")
    assert isinstance(msg, m.BlsResult) and msg.bls_id == 5 and msg.final
    assert msg.response.error.code == int(m.ErrorCode.INTERNAL)


def test_messages_that_name_no_call_get_none():
    assert stand_in([b"\x46", msgspec.msgpack.encode(["INFO", 3])], "bad") is None  # LogRecord
    assert stand_in([b"\x42", b"\xc1"], "bad") is None  # not msgpack
    assert stand_in([b"\x42"], "bad") is None
