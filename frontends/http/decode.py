"""Decoding KServe v2 inference requests (JSON, binary tensor extension, raw binary) into InferRequest.

Speed matters here more than anywhere else in the frontend:
- binary tensors become `np.frombuffer` views of the request body (no copy at all);
- JSON numbers go through `np.asarray` once (numpy infers the kind, which is then checked against
  the declared datatype, so "1.5" or true in an INT32 tensor is a 400, not a silent cast);
- nothing allocates from a declared shape: sizes always come from bytes or elements actually sent.
Every malformed input raises `HttpError(400)` with Triton's wording where Triton has one.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
import orjson

from tritonpy.core.types import InferRequest, InputTensor, RequestedOutput, ShmRef
from tritonpy.frontends.http import json_arrays
from tritonpy.frontends.http.errors import bad_request
from tritonpy.frontends.http.params import apply_request_parameters, as_bool, as_object, as_str, as_uint
from tritonpy.proto import dtypes
from tritonpy.proto.packed_bytes import BytesFramingError, PackedBytes, count_elements

_MAX_DIM = (1 << 63) - 1
_SCALARS = (str, int, float, bool)
_INPUT_RESERVED = frozenset(
    {"binary_data_size", "shared_memory_region", "shared_memory_byte_size", "shared_memory_offset"}
)


@dataclasses.dataclass(slots=True)
class DecodedInfer:
    """The core request plus what the frontend needs later to shape the reply."""

    request: InferRequest
    # Output format when an output has no per-output `binary_data` (request `binary_data_output`).
    binary_default: bool = False
    # Per requested output: send as binary?
    binary_outputs: dict[str, bool] = dataclasses.field(default_factory=dict)


def parse_json(buffer: Any) -> Any:
    try:
        return orjson.loads(buffer)
    except orjson.JSONDecodeError as exc:
        raise bad_request(f"failed to parse the request JSON buffer: {exc}") from None


def parse_header_length(value: str | None, body_length: int) -> int | None:
    """`Inference-Header-Content-Length`: None when absent, else an int in [0, body length]."""
    if value is None:
        return None
    text = value.strip()
    digits = text[1:] if text[:1] in "+-" else text
    if not text or not digits.isdigit() or not digits.isascii():
        raise bad_request(f"Unable to parse Inference-Header-Content-Length, got: {value}")
    length = int(text)
    if length < 0 or length > body_length:
        raise bad_request(f"inference header size should be in range (0, {body_length}), got: {value}")
    return length


def parse_shape(value: Any) -> list[int]:
    if type(value) is not list:
        raise bad_request("Unable to parse 'shape'")
    for dim in value:
        if type(dim) is not int or dim < 0 or dim > _MAX_DIM:
            raise bad_request("Unable to parse 'shape'")
    return value


def check_datatype(datatype: str, name: str) -> None:
    if datatype not in dtypes.WIRE_TYPES:
        raise bad_request(f"invalid datatype '{datatype}' for input '{name}'")


def _shaped(arr: np.ndarray, shape: list[int]) -> np.ndarray:
    """reshape, with numpy's "array is too big" (zero elements, huge dims) reported as a 400."""
    try:
        return arr.reshape(shape)
    except ValueError as exc:
        raise bad_request(f"Unable to parse 'shape': {exc}") from None


def _shape_mismatch() -> Exception:
    return bad_request("Unable to parse 'data': Shape does not match true shape of 'data' field")


def _flatten_strings(data: list, name: str) -> list:
    """Row-major leaves of a (possibly nested) JSON list of strings, without recursion."""
    if all(type(x) is str for x in data):
        return data
    flat: list = []
    stack = [iter(data)]
    while stack:
        for item in stack[-1]:
            if type(item) is list:
                stack.append(iter(item))
                break
            if type(item) is not str:
                raise bad_request(f"Unable to parse 'data': expected a string for BYTES input '{name}'")
            flat.append(item)
        else:
            stack.pop()
    return flat


def tensor_from_json(name: str, datatype: str, shape: list[int], data: Any) -> np.ndarray:
    """The array for a JSON `data` field (nested or flat, row-major), checked against datatype and shape."""
    if datatype in ("FP16", "BF16"):
        raise bad_request(
            f"receiving {datatype} data via JSON is not supported. "
            f"Please use the binary data format for input {name}"
        )
    if type(data) is not list:
        raise bad_request("Unable to parse 'data'")
    count = math.prod(shape)
    if datatype == "BYTES":
        flat = _flatten_strings(data, name)
        if len(flat) != count:
            raise _shape_mismatch()
        out = np.empty(count, dtype=np.object_)
        if count:
            out[:] = [s.encode("utf-8", "surrogatepass") for s in flat]
        return _shaped(out, shape)
    target = dtypes.wire_to_numpy(datatype)
    try:
        arr = json_arrays.as_array(data)
    except (ValueError, TypeError, OverflowError) as exc:
        raise bad_request(f"Unable to parse 'data': {exc}") from None
    if arr.size != count:
        raise _shape_mismatch()
    if count == 0:
        return _shaped(np.empty(0, dtype=target), shape)
    kind = arr.dtype.kind
    tkind = target.kind
    if tkind == "b":
        ok = kind == "b"
    elif tkind in "iu":
        ok = kind in "iu"
        if ok:
            info = np.iinfo(target)
            lo, hi = int(arr.min()), int(arr.max())
            if lo < info.min or hi > info.max:
                raise bad_request(f"Unable to parse 'data': value out of range for {datatype} input '{name}'")
    else:
        ok = kind in "iuf"
    if not ok:
        raise bad_request(f"Unable to parse 'data': expected {datatype} values for input '{name}'")
    return _shaped(arr.astype(target, copy=False), shape)


def tensor_from_bytes(name: str, datatype: str, shape: list[int], view: memoryview, model: str) -> np.ndarray:
    """A zero-copy view of binary tensor bytes (BYTES stay packed: a checked `PackedBytes`)."""
    count = math.prod(shape)
    if datatype == "BYTES":
        # Kept in wire form (see proto/packed_bytes.py): no Python object per string.
        try:
            found = count_elements(view, count)
        except BytesFramingError as exc:
            raise bad_request(f"unable to parse BYTES data for input '{name}' for model '{model}': {exc}") from None
        if found != count:
            raise bad_request(
                f"unexpected number of string elements {found} for input '{name}' for model '{model}', "
                f"expecting {count}"
            )
        return PackedBytes(view, shape)  # type: ignore[return-value]
    target = dtypes.wire_to_numpy(datatype)
    expected = count * target.itemsize
    if len(view) != expected:
        raise bad_request(
            f"input byte size mismatch for input '{name}' for model '{model}'. Expected {expected}, got {len(view)}"
        )
    return _shaped(np.frombuffer(view, dtype=target, count=count), shape)


def _shm_ref(params: dict, what: str) -> ShmRef:
    region = as_str(params["shared_memory_region"], "shared_memory_region")
    if "shared_memory_byte_size" not in params:
        raise bad_request(f"{what}: 'shared_memory_byte_size' must be given with 'shared_memory_region'")
    size = as_uint(params["shared_memory_byte_size"], "shared_memory_byte_size")
    offset = as_uint(params.get("shared_memory_offset", 0), "shared_memory_offset")
    return ShmRef(region=region, byte_size=size, offset=offset)


def _content_type_error(has_data: bool, has_binary: bool, has_shm: bool) -> Exception:
    text = (
        "Input must set only one of the following fields: 'data', 'binary_data_size' in 'parameters', "
        "'shared_memory_region' in 'parameters'. But"
    )
    if not (has_data or has_binary or has_shm):
        return bad_request(text + " no field is set")
    names = [n for n, on in (("'data'", has_data), ("'binary_data_size'", has_binary),
                              ("'shared_memory_region'", has_shm)) if on]
    return bad_request(text + " set " + " ".join(names))


def _decode_input(item: Any, view: memoryview, offset: int, model: str) -> tuple[InputTensor, int]:
    if type(item) is not dict:
        raise bad_request("Unable to parse 'inputs': each input must be a JSON object")
    params = item.get("parameters")
    params = as_object(params, "parameters") if params is not None else {}
    has_data = "data" in item
    has_binary = "binary_data_size" in params
    has_shm = "shared_memory_region" in params
    if has_data + has_binary + has_shm != 1:
        raise _content_type_error(has_data, has_binary, has_shm)
    name = as_str(item.get("name"), "name")
    datatype = as_str(item.get("datatype"), "datatype")
    shape = parse_shape(item.get("shape"))
    check_datatype(datatype, name)
    if not has_shm and ("shared_memory_byte_size" in params or "shared_memory_offset" in params):
        raise bad_request(f"input '{name}': 'shared_memory_byte_size' given without 'shared_memory_region'")
    # Other input parameters mean nothing to Triton (it ignores them); scalars ride along for the core.
    extra = {k: v for k, v in params.items() if k not in _INPUT_RESERVED and type(v) in _SCALARS}
    tensor = InputTensor(name=name, datatype=datatype, shape=shape, parameters=extra)
    if has_binary:
        size = as_uint(params["binary_data_size"], "binary_data_size")
        end = offset + size
        if end > len(view):
            raise bad_request(
                f"unexpected size for input '{name}', expecting {end - len(view)} additional bytes "
                f"for model '{model}'"
            )
        tensor.data = tensor_from_bytes(name, datatype, shape, view[offset:end], model)
        return tensor, end
    if has_shm:
        tensor.shm = _shm_ref(params, f"input '{name}'")
        return tensor, offset
    tensor.data = tensor_from_json(name, datatype, shape, item["data"])
    return tensor, offset


def _decode_output(item: Any, binary_default: bool) -> tuple[RequestedOutput, bool]:
    if type(item) is not dict:
        raise bad_request("Unable to parse 'outputs': each output must be a JSON object")
    name = as_str(item.get("name"), "name")
    params = item.get("parameters")
    params = as_object(params, "parameters") if params is not None else {}
    has_shm = "shared_memory_region" in params
    if has_shm and "classification" in params:
        raise bad_request("Output can't set both 'shared_memory_region' and 'classification'")
    binary = binary_default
    if "binary_data" in params:
        binary = as_bool(params["binary_data"], "binary_data")
        if binary and has_shm:
            raise bad_request("Output can't set both 'shared_memory_region' and 'binary_data'")
    if not has_shm and ("shared_memory_byte_size" in params or "shared_memory_offset" in params):
        raise bad_request(f"output '{name}': 'shared_memory_byte_size' given without 'shared_memory_region'")
    classification = 0
    if "classification" in params:
        value = params["classification"]
        if type(value) is not int or value < 0:
            raise bad_request("Unable to set 'classification'")
        classification = value
    shm = _shm_ref(params, f"output '{name}'") if has_shm else None
    out = RequestedOutput(name=name, classification=classification, shm=shm, parameters={"binary_data": binary})
    return out, binary


def decode_infer(model: str, version: str, body: Any, header_length: int | None, io: Any = None) -> DecodedInfer:
    """Decode an /infer body. `header_length`: None = all JSON, 0 = raw binary, N = JSON then tensors."""
    if header_length == 0:
        return decode_raw(model, version, body, io)
    view = body if isinstance(body, memoryview) else memoryview(body)
    json_end = len(view) if header_length is None else header_length
    doc = parse_json(view[:json_end] if json_end != len(view) else body)
    if type(doc) is not dict:
        raise bad_request("Unable to parse the request: the inference header must be a JSON object")
    request = InferRequest(model_name=model, model_version=version)
    if "id" in doc:
        request.id = as_str(doc["id"], "id")
    binary_default = False
    if "parameters" in doc:
        binary_default = apply_request_parameters(request, doc["parameters"])
    inputs = doc.get("inputs")
    if type(inputs) is not list:
        raise bad_request("Unable to parse 'inputs'")
    offset = json_end
    for item in inputs:
        tensor, offset = _decode_input(item, view, offset, model)
        request.inputs.append(tensor)
    if offset != len(view):
        raise bad_request(f"unexpected additional input data for model '{model}'")
    decoded = DecodedInfer(request=request, binary_default=binary_default)
    outputs = doc.get("outputs")
    if outputs is not None:
        if type(outputs) is not list:
            raise bad_request("Unable to parse 'outputs'")
        if outputs:
            request.outputs = []
            for item in outputs:
                out, binary = _decode_output(item, binary_default)
                request.outputs.append(out)
                decoded.binary_outputs[out.name] = binary
    return decoded


def decode_raw(model: str, version: str, body: Any, io: Any) -> DecodedInfer:
    """`Inference-Header-Content-Length: 0`: the body is the one input's bytes, batch 1, binary replies."""
    names = list(getattr(io, "input_order", None) or io.inputs)
    if len(names) != 1:
        raise bad_request(
            f"Raw request must only have 1 input (found 1) to be deduced but got {len(names)} inputs "
            f"in '{model}' model configuration"
        )
    name = names[0]
    datatype, dims_with_batch = io.inputs[name]
    batched = io.max_batch_size > 0
    dims = list(dims_with_batch[1:] if batched else dims_with_batch)
    shape: list[int] = [1] if batched else []
    dynamic = -1
    fixed = 1
    for dim in dims:
        if dim == -1:
            if dynamic != -1:
                raise bad_request(
                    f"The shape of the raw input '{name}' can not be deduced because there are more than one "
                    "variable-sized dimension"
                )
            dynamic = len(shape)
        else:
            fixed *= dim
        shape.append(dim)
    view = body if isinstance(body, memoryview) else memoryview(body)
    request = InferRequest(model_name=model, model_version=version)
    if datatype == "BYTES":
        if dynamic != -1 or fixed != 1:
            raise bad_request("For BYTE datatype raw input, the model must have input shape [1]")
        data = np.empty(1, dtype=np.object_)
        data[0] = bytes(view)
        tensor = InputTensor(name=name, datatype=datatype, shape=shape, data=data.reshape(shape))
    else:
        if dynamic != -1:
            unit = fixed * dtypes.element_size(datatype)
            if unit == 0 or len(view) % unit:
                raise bad_request(
                    f"input byte size mismatch for input '{name}' for model '{model}': {len(view)} bytes is not "
                    f"a whole number of {unit}-byte rows"
                )
            shape[dynamic] = len(view) // unit
        tensor = InputTensor(name=name, datatype=datatype, shape=shape,
                             data=tensor_from_bytes(name, datatype, shape, view, model))
    request.inputs.append(tensor)
    return DecodedInfer(request=request, binary_default=True)
