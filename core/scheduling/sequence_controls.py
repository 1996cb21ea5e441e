"""The control tensors a sequence model asks for (`sequence_batching.control_input`).

The core adds them to every request it sends, as Triton's sequence batcher does with its
"override inputs": START, END and READY as the configured false/true values (int32, fp32 or
bool), and CORRID as the request's correlation id in the configured type. Each is one value per
request: shape [1] for a model without batching, [1, 1] (batch dimension + dims [1]) for a
batching one, so a batch of n gathered requests carries an [n, 1] tensor, one row per request.

Values follow Triton: READY is true for every request sent (batches hold only real requests
here; Triton pads empty slots with "not ready" null requests, which tritonpy does not send).
A numeric correlation id is written as uint64 bits and truncated for 32-bit types; a string
id needs a TYPE_STRING CORRID (a numeric id is written as its decimal text there).
"""
from __future__ import annotations

import dataclasses
from typing import Union

import numpy as np

from tritonpy.core.errors import invalid
from tritonpy.core.types import InputTensor
from tritonpy.proto import dtypes
from tritonpy.proto import model_config_pb2 as mc

__all__ = ["ControlSpec", "Controls"]

_KIND = mc.ModelSequenceBatching.Control
CorrId = Union[int, str]


@dataclasses.dataclass(frozen=True, slots=True)
class ControlSpec:
    """One control tensor: its name, kind, wire type and (for the boolean kinds) false/true values."""

    name: str
    kind: mc.ModelSequenceBatching.Control.Kind
    datatype: str
    false_value: object = None
    true_value: object = None


def _bool_values(control: mc.ModelSequenceBatching.Control) -> tuple[str, object, object]:
    if len(control.int32_false_true) == 2:
        return "INT32", int(control.int32_false_true[0]), int(control.int32_false_true[1])
    if len(control.fp32_false_true) == 2:
        return "FP32", float(control.fp32_false_true[0]), float(control.fp32_false_true[1])
    if len(control.bool_false_true) == 2:
        return "BOOL", bool(control.bool_false_true[0]), bool(control.bool_false_true[1])
    raise invalid(
        f"sequence batching control '{_KIND.Kind.Name(control.kind)}' must specify exactly one of "
        "'int32_false_true', 'fp32_false_true' or 'bool_false_true' with 2 values"
    )


class Controls:
    """Builds the control inputs of one model's requests."""

    def __init__(self, specs: list[ControlSpec], *, batched: bool, model_name: str = "") -> None:
        self.specs = specs
        self.batched = batched
        self.model_name = model_name
        self.names = frozenset(s.name for s in specs)
        corrid = [s for s in specs if s.kind == _KIND.CONTROL_SEQUENCE_CORRID]
        self.corrid_type = corrid[0].datatype if corrid else ""

    @classmethod
    def from_config(cls, config: mc.ModelConfig) -> "Controls":
        specs: list[ControlSpec] = []
        for ci in config.sequence_batching.control_input:
            for control in ci.control:
                if control.kind == _KIND.CONTROL_SEQUENCE_CORRID:
                    type_name = mc.DataType.Name(control.data_type)
                    wire = dtypes.CONFIG_TO_WIRE.get(type_name, "")
                    if wire not in ("UINT64", "INT64", "UINT32", "INT32", "BYTES"):
                        raise invalid(
                            f"unexpected control data type, expected TYPE_UINT64, TYPE_INT64, TYPE_UINT32, "
                            f"TYPE_INT32, or TYPE_STRING for CONTROL_SEQUENCE_CORRID for {config.name}"
                        )
                    specs.append(ControlSpec(ci.name, control.kind, wire))
                else:
                    wire, false_value, true_value = _bool_values(control)
                    specs.append(ControlSpec(ci.name, control.kind, wire, false_value, true_value))
        return cls(specs, batched=int(config.max_batch_size) > 0, model_name=config.name)

    def check_id(self, corr_id: CorrId) -> None:
        """A string id cannot go into a numeric CORRID tensor: refuse it before it is queued."""
        if isinstance(corr_id, str) and self.corrid_type and self.corrid_type != "BYTES":
            raise invalid(
                f"inference request to model '{self.model_name}' has string sequence id '{corr_id}', but the "
                f"model's CONTROL_SEQUENCE_CORRID input is {self.corrid_type}; use an integer sequence id"
            )

    def tensors(self, corr_id: CorrId, *, start: bool, end: bool) -> list[InputTensor]:
        """The control inputs of one request."""
        shape = [1, 1] if self.batched else [1]
        out: list[InputTensor] = []
        for spec in self.specs:
            if spec.kind == _KIND.CONTROL_SEQUENCE_CORRID:
                data = _corrid_array(corr_id, spec.datatype)
            else:
                on = {
                    _KIND.CONTROL_SEQUENCE_START: start,
                    _KIND.CONTROL_SEQUENCE_END: end,
                    _KIND.CONTROL_SEQUENCE_READY: True,
                }[spec.kind]
                value = spec.true_value if on else spec.false_value
                data = np.array([value], dtype=dtypes.wire_to_numpy(spec.datatype))
            out.append(InputTensor(spec.name, spec.datatype, list(shape), data=data.reshape(shape)))
        return out


def _corrid_array(corr_id: CorrId, datatype: str) -> np.ndarray:
    if datatype == "BYTES":
        text = corr_id if isinstance(corr_id, str) else str(int(corr_id))
        array = np.empty(1, dtype=np.object_)
        array[0] = text.encode("utf-8")
        return array
    bits = np.array([int(corr_id) & 0xFFFFFFFFFFFFFFFF], dtype=np.uint64)
    if datatype == "UINT64":
        return bits
    if datatype == "INT64":
        return bits.view(np.int64)
    low = np.array([int(bits[0]) & 0xFFFFFFFF], dtype=np.uint32)
    return low if datatype == "UINT32" else low.view(np.int32)
