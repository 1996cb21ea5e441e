"""Long JSON number lists are converted slice by slice (the GIL changes hands in between), with
exactly the dtype, values and errors of one `np.asarray` call."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tritonpy.frontends.http import json_arrays

numbers = st.one_of(st.booleans(), st.integers(-(2 ** 70), 2 ** 70), st.floats(allow_nan=False))
odd = st.one_of(numbers, st.text(max_size=2), st.lists(st.integers(), max_size=2), st.none())


def outcome(fn, data):
    try:
        arr = fn(data)
    except Exception as exc:  # noqa: BLE001 - the error type is part of what must match
        return type(exc), None
    return arr.dtype, arr.tolist()


@pytest.fixture(autouse=True)
def small_slices(monkeypatch):
    # Tiny slices so that hypothesis' short lists cross many slice boundaries.
    monkeypatch.setattr(json_arrays, "CHUNKED_FROM", 4)
    monkeypatch.setattr(json_arrays, "SLICE", 3)


@settings(max_examples=400, deadline=None)
@given(st.lists(numbers, min_size=1, max_size=20))
def test_same_as_one_asarray_call_for_numbers(data):
    assert outcome(json_arrays.as_array, data) == outcome(np.asarray, data)


@settings(max_examples=300, deadline=None)
@given(st.lists(numbers, min_size=1, max_size=8), odd, st.lists(numbers, max_size=8))
def test_same_as_one_asarray_call_with_an_odd_element(head, middle, tail):
    data = head + [middle] + tail
    got_type, got = outcome(json_arrays.as_array, data)
    want_type, want = outcome(np.asarray, data)
    assert got_type == want_type
    assert got == want
