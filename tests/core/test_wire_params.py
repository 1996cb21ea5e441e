"""Request/response parameters travel as a typed msgspec field: `wire_params` makes any dict fit."""
from __future__ import annotations

import enum

import numpy as np

from tritonpy.proto import messages as m


class _Level(enum.IntEnum):
    HIGH = 2


def _round_trip(params: dict) -> dict:
    msg = m.ExecuteDone(batch_id=1, responses=[m.ResponseMsg(parameters=params)])
    request = m.Execute(batch_id=1, requests=[m.RequestMsg("r", [], [], parameters=params)])
    back = m.decode(m.encode(msg))
    assert m.decode(m.encode(request)).requests[0].parameters == back.responses[0].parameters
    return back.responses[0].parameters


def test_fitting_parameters_pass_as_they_are_without_a_copy():
    params = {"flag": True, "n": -3, "big": 2**64 - 1, "x": 1.5, "s": "text"}
    assert m.wire_params(params) is params
    back = _round_trip(params)
    assert back == params
    assert type(back["flag"]) is bool and type(back["n"]) is int and type(back["x"]) is float


def test_other_values_are_converted_instead_of_breaking_the_message():
    params = {
        "b": b"caf\xc3\xa9", "i64": np.int64(7), "f32": np.float32(0.5), "flag": np.bool_(True),
        "f64": np.float64(2.5), "level": _Level.HIGH, "nested": [1, 2], "none": None,
    }
    fitted = m.wire_params(params)
    assert fitted == {
        "b": "café", "i64": 7, "f32": 0.5, "flag": True, "f64": 2.5, "level": 2, "nested": "[1, 2]", "none": "None",
    }
    assert type(fitted["level"]) is int and type(fitted["f64"]) is float and type(fitted["flag"]) is bool
    assert _round_trip(fitted) == fitted


def test_not_a_dict_means_no_parameters():
    assert m.wire_params(None) == {}
    assert m.wire_params([1, 2]) == {}
    assert m.wire_params({}) == {}
