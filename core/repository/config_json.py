"""Model configuration and metadata as Triton renders them in JSON.

Triton prints the ModelConfig protobuf with field names preserved and every field without
presence included (scalars at their defaults, empty lists and maps), enums by name, messages only
when set, then rewrites the 64-bit integers that protobuf renders as strings back into numbers.
We walk the descriptor ourselves to produce the same document in one pass: keys in declaration
order, 64-bit integers as numbers, map keys as strings (JSON allows nothing else).
"""
from __future__ import annotations

import base64
import math
import struct
from typing import TYPE_CHECKING, Any, Union

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from tritonpy.proto import dtypes
from tritonpy.proto import model_config_pb2 as mc

__all__ = ["config_to_json", "message_to_json", "model_metadata", "tensor_metadata"]

_FD = FieldDescriptor

if TYPE_CHECKING:
    from google._upb._message import FieldDescriptor as _UpbFieldDescriptor
# `Message.DESCRIPTOR` is typed as the pure-Python or the upb descriptor; both have what is read here.
AnyField = Union[FieldDescriptor, "_UpbFieldDescriptor"]


def _shortest_float32(value: float) -> float | str:
    """The shortest decimal that reads back as the same 32-bit float (0.1, not 0.10000000149)."""
    if math.isnan(value) or math.isinf(value):
        return _non_finite(value)
    packed = struct.pack("<f", value)
    for digits in range(6, 10):
        candidate = float(f"{value:.{digits}g}")
        if struct.pack("<f", candidate) == packed:
            return candidate
    return value


def _non_finite(value: float) -> str:
    # protobuf's JSON mapping for values JSON cannot hold
    if math.isnan(value):
        return "NaN"
    return "Infinity" if value > 0 else "-Infinity"


def _scalar(field: AnyField, value: Any) -> Any:
    enum_type = field.enum_type
    if field.type == _FD.TYPE_ENUM and enum_type is not None:
        enum_value = enum_type.values_by_number.get(value)
        return enum_value.name if enum_value is not None else value
    if field.type == _FD.TYPE_FLOAT:
        return _shortest_float32(value)
    if field.type == _FD.TYPE_DOUBLE:
        return value if math.isfinite(value) else _non_finite(value)
    if field.type == _FD.TYPE_BYTES:
        return base64.b64encode(value).decode("ascii")
    return value  # str, bool, and every integer width as a JSON number


def _value(field: AnyField, value: Any) -> Any:
    if field.type == _FD.TYPE_MESSAGE:
        return message_to_json(value)
    return _scalar(field, value)


def _map_key(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def message_to_json(message: Message) -> dict[str, Any]:
    """Any protobuf message as Triton's config JSON (see the module docstring)."""
    out: dict[str, Any] = {}
    for field in message.DESCRIPTOR.fields:
        name = field.name
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            value_field = field.message_type.fields_by_name["value"]
            entries = getattr(message, name)
            out[name] = {_map_key(k): _value(value_field, entries[k]) for k in sorted(entries)}
        elif field.is_repeated:
            out[name] = [_value(field, v) for v in getattr(message, name)]
        elif field.has_presence:
            # sub-messages and members of a oneof: only when set
            if message.HasField(name):
                out[name] = _value(field, getattr(message, name))
        else:
            out[name] = _scalar(field, getattr(message, name))
    return out


def config_to_json(config: mc.ModelConfig) -> dict[str, Any]:
    """The model configuration as GET /v2/models/{m}/config returns it."""
    return message_to_json(config)


def tensor_metadata(config: mc.ModelConfig, io: mc.ModelInput | mc.ModelOutput) -> dict[str, Any]:
    """{name, datatype, shape} of one input or output; -1 leads the shape when the model batches."""
    config_type = mc.DataType.Name(io.data_type) if io.data_type in mc.DataType.values() else "TYPE_INVALID"
    shape = ([-1] if config.max_batch_size > 0 else []) + [int(d) for d in io.dims]
    return {"name": io.name, "datatype": dtypes.CONFIG_TO_WIRE.get(config_type, "INVALID"), "shape": shape}


def model_metadata(config: mc.ModelConfig, versions: list[str]) -> dict[str, Any]:
    """GET /v2/models/{m}[/versions/{v}]: platform is the config's platform, else its backend."""
    return {
        "name": config.name,
        "versions": [str(v) for v in versions],
        "platform": config.platform or config.backend,
        "inputs": [tensor_metadata(config, io) for io in config.input],
        "outputs": [tensor_metadata(config, io) for io in config.output],
    }
