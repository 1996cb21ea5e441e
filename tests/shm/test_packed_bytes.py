"""BYTES tensors in wire form (proto/packed_bytes.py): the packed and the object decoders agree on
every buffer, a PackedBytes behaves like the ndarray surface the core uses, and it reaches shared
memory as the very same bytes."""
from __future__ import annotations

import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tritonpy.core.instance.batch_codec import _as_array
from tritonpy.core.types import InputTensor
from tritonpy.proto import dtypes
from tritonpy.proto.packed_bytes import BytesFramingError, PackedBytes, count_elements
from tritonpy.shm.tensors import decode_array, tensor_bytes


def wire(elements: list[bytes]) -> bytes:
    return b"".join(struct.pack("<I", len(e)) + e for e in elements)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=6), max_size=20), st.binary(max_size=3))
def test_packed_and_object_decoders_agree(elements, tail):
    buf = wire(elements) + tail
    try:
        objects = list(dtypes.deserialize_bytes(buf))
    except dtypes.BytesDecodeError:
        objects = None
    try:
        n = count_elements(buf)
    except BytesFramingError:
        n = None
    assert (objects is None) == (n is None)
    if not tail:
        assert objects == elements and n == len(elements)
        packed = PackedBytes.parse(buf, [len(elements)])
        assert list(packed.to_objects()) == elements
        assert list(dtypes.deserialize_bytes(buf, len(elements))) == elements


@given(st.integers(0, 5), st.integers(1, 30))
def test_equal_length_fast_path(length, count):
    elements = [bytes([65 + i % 26]) * length for i in range(count)]
    buf = wire(elements)
    assert count_elements(buf, count) == count
    assert list(dtypes.deserialize_bytes(buf, count)) == elements
    # A lying prefix in the middle breaks the uniform shape: the walk must notice.
    bad = bytearray(buf)
    bad[(count // 2) * (4 + length)] = length + 1
    with pytest.raises((BytesFramingError, AssertionError)):
        assert count_elements(bytes(bad), count) == count


def test_count_mismatch_and_truncation_are_errors():
    with pytest.raises(BytesFramingError):
        PackedBytes.parse(wire([b"a", b"b"]), [3])
    with pytest.raises(BytesFramingError):
        count_elements(b"\x05\x00\x00\x00ab")
    with pytest.raises(BytesFramingError):
        count_elements(b"\x01\x00")


def test_the_core_surface():
    packed = PackedBytes.parse(wire([b"a", b"", b"ccc", b"d"]), [4])
    assert packed.size == 4 and packed.ndim == 1 and packed.dtype == np.object_ and len(packed) == 4
    two = _as_array(InputTensor("S", "BYTES", [2, 2], data=packed))
    assert isinstance(two, PackedBytes) and two.shape == (2, 2)
    assert np.asarray(two).tolist() == [[b"a", b""], [b"ccc", b"d"]]
    assert packed.reshape(-1, 2).shape == (2, 2)
    with pytest.raises(ValueError):
        packed.reshape(3)
    # To shared memory as the same bytes (one copy), and back as objects in the worker.
    raw = bytes(tensor_bytes("BYTES", two))
    assert raw == wire([b"a", b"", b"ccc", b"d"]) == dtypes.serialize_bytes(two)
    assert decode_array("BYTES", [2, 2], raw).tolist() == [[b"a", b""], [b"ccc", b"d"]]
