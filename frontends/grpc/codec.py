"""ModelInferRequest -> InferRequest and InferResponse -> ModelInferResponse.

Tensor bytes are converted with numpy, never element by element in Python: raw contents go through
`np.frombuffer`, typed contents through `np.fromiter` on the repeated field. Only BYTES tensors need a
per-element walk, because each element carries its own length. The messages of the checks follow
Triton's (`infer_handler.cc` and the core's input validation), since clients match on them.
"""
from __future__ import annotations

import struct
from typing import Any, Mapping

import numpy as np

from tritonpy.core.errors import ServerError, invalid
from tritonpy.core.types import InferRequest, InferResponse, InputTensor, RequestedOutput
from tritonpy.frontends.grpc.params import (
    SHM_KEYS,
    other_params,
    parse_classification,
    parse_request_params,
    parse_shm,
    set_param,
)
from tritonpy.proto import dtypes, grpc_service_pb2 as pb

INT32_MAX = (1 << 31) - 1
_OUTPUT_SKIP = SHM_KEYS | {"classification"}
_LEN = struct.Struct("<I")

# Which InferTensorContents field carries each datatype. INT8/INT16 (UINT8/UINT16) travel widened to
# 32 bits in int_contents (uint_contents); FP16 and BF16 have no typed field and must be sent raw.
_FIELD_OF = {
    "BOOL": "bool_contents",
    "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents", "UINT16": "uint_contents", "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}
_CONTENT_FIELDS = (
    ("bool_contents", "BOOL", np.bool_),
    ("int_contents", "INT32", np.int32),
    ("int64_contents", "INT64", np.int64),
    ("uint_contents", "UINT32", np.uint32),
    ("uint64_contents", "UINT64", np.uint64),
    ("fp32_contents", "FP32", np.float32),
    ("fp64_contents", "FP64", np.float64),
    ("bytes_contents", "BYTES", None),
)


def _element_count(shape: list[int]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _check_input_header(name: str, datatype: str, shape: list[int], model: str) -> None:
    if datatype not in dtypes.WIRE_TYPES:
        raise invalid(f"invalid datatype '{datatype}' for input tensor '{name}' for model '{model}'")
    for d in shape:
        if d < 0:
            raise invalid(
                f"unexpected shape for input '{name}' for model '{model}': every dimension must be >= 0, got {shape}"
            )


def decode_bytes_tensor(buf: bytes, count: int, name: str, model: str) -> np.ndarray:
    """Length-prefixed BYTES elements -> 1-D object array of exactly `count` elements."""
    view = memoryview(buf)
    total = len(view)
    out: list[bytes] = []
    pos = 0
    while total - pos >= 4:
        if len(out) >= count:
            raise invalid(
                f"unexpected number of string elements {len(out) + 1} for inference input '{name}' for model "
                f"'{model}', expecting {count}"
            )
        (length,) = _LEN.unpack_from(view, pos)
        pos += 4
        if total - pos < length:
            raise invalid(
                f"incomplete string data for inference input '{name}' for model '{model}', expecting string of "
                f"length {length} but only {total - pos} bytes available"
            )
        out.append(bytes(view[pos : pos + length]))
        pos += length
    if pos != total:
        raise invalid(
            f"incomplete string data for inference input '{name}' for model '{model}', {total - pos} trailing bytes "
            "cannot hold a 4-byte element length"
        )
    if len(out) != count:
        raise invalid(
            f"expected {count} string elements for inference input '{name}' for model '{model}', got {len(out)}"
        )
    arr = np.empty(count, dtype=np.object_)
    arr[:] = out
    return arr


def _raw_to_array(buf: bytes, name: str, datatype: str, shape: list[int], model: str) -> np.ndarray:
    count = _element_count(shape)
    if datatype == "BYTES":
        return decode_bytes_tensor(buf, count, name, model).reshape(shape)
    expected = count * dtypes.element_size(datatype)
    if len(buf) != expected:
        raise invalid(
            f"input byte size mismatch for input '{name}' for model '{model}'. Expected {expected}, got {len(buf)}"
        )
    return np.frombuffer(buf, dtype=dtypes.wire_to_numpy(datatype)).reshape(shape)


def _contents_to_array(contents: Any, name: str, datatype: str, shape: list[int], model: str) -> np.ndarray:
    """Typed `contents` -> array. Exactly one field may be filled, and it must match the datatype."""
    found: tuple[str, str, Any] | None = None
    for field, field_type, np_type in _CONTENT_FIELDS:
        values = getattr(contents, field)
        if not len(values):
            continue
        if field == "int_contents" and datatype in ("INT8", "INT16"):
            field_type = datatype
        elif field == "uint_contents" and datatype in ("UINT8", "UINT16"):
            field_type = datatype
        if found is not None:
            raise invalid(
                f"unexpected explicit tensor data for input tensor '{name}' for model '{model}', binary data was "
                "already supplied."
            )
        if field_type != datatype:
            raise invalid(
                f"unexpected explicit tensor data for input tensor '{name}' for model '{model}' of type "
                f"'{field_type}', expected datatype '{datatype}'"
            )
        found = (field, field_type, np_type)
    count = _element_count(shape)
    if found is None:
        values_len = 0
        field = _FIELD_OF.get(datatype, "")
    else:
        field = found[0]
        values_len = len(getattr(contents, field))
    if datatype == "BYTES":
        if values_len != count:
            if values_len > count:
                raise invalid(
                    f"unexpected number of string elements {count + 1} for inference input '{name}' for model "
                    f"'{model}', expecting {count}"
                )
            raise invalid(
                f"expected {count} string elements for inference input '{name}' for model '{model}', got {values_len}"
            )
        arr = np.empty(count, dtype=np.object_)
        if count:
            arr[:] = list(getattr(contents, field))
        return arr.reshape(shape)
    size = dtypes.element_size(datatype)
    if values_len != count:
        raise invalid(
            f"input byte size mismatch for input '{name}' for model '{model}'. Expected {count * size}, got "
            f"{values_len * size}"
        )
    target = dtypes.wire_to_numpy(datatype)
    if found is None:
        return np.zeros(shape, dtype=target)
    wide = np.fromiter(getattr(contents, field), dtype=found[2], count=values_len)
    # INT8/INT16 (and unsigned) keep the low bytes of each 32-bit value, as Triton does.
    arr = wide if wide.dtype == target else wide.astype(target)
    return arr.reshape(shape)


def decode_request(
    msg: Any, forwarded: Mapping[str, str] | None = None
) -> tuple[InferRequest, bool]:
    """A ModelInferRequest as the core's InferRequest, plus its `triton_enable_empty_final_response` flag."""
    model = msg.model_name
    rp = parse_request_params(msg.parameters)
    if forwarded:
        rp.custom.update(forwarded)
    raw = msg.raw_input_contents
    n_raw = len(raw)
    raw_index = 0
    inputs: list[InputTensor] = []
    for tensor in msg.inputs:
        name = tensor.name
        datatype = tensor.datatype
        shape = list(tensor.shape)
        tparams = tensor.parameters
        shm = parse_shm(tparams, name) if tparams else None
        has_contents = tensor.HasField("contents")
        data: np.ndarray | None = None
        if shm is not None:
            if has_contents:
                raise invalid(
                    f"unexpected 'content' provided when using shared memory for input tensor '{name}' for model "
                    f"'{model}'"
                )
        elif has_contents and n_raw:
            raise invalid(
                f"contents field must not be specified when using raw_input_contents for '{name}' for model "
                f"'{model}'"
            )
        elif has_contents:
            _check_input_header(name, datatype, shape, model)
            data = _contents_to_array(tensor.contents, name, datatype, shape, model)
        elif raw_index < n_raw:
            _check_input_header(name, datatype, shape, model)
            data = _raw_to_array(raw[raw_index], name, datatype, shape, model)
            raw_index += 1
        else:
            raise invalid(f"unable to find data for input tensor '{name}' for model '{model}' in request.")
        inputs.append(
            InputTensor(
                name=name, datatype=datatype, shape=shape, data=data, shm=shm,
                parameters=other_params(tparams, SHM_KEYS),
            )
        )
    outputs = _requested_outputs(msg.outputs) if len(msg.outputs) else None
    request = InferRequest(
        model_name=model, model_version=msg.model_version, id=msg.id, inputs=inputs, outputs=outputs,
        parameters=rp.custom, sequence_id=rp.sequence_id, sequence_start=rp.sequence_start,
        sequence_end=rp.sequence_end, priority=rp.priority, timeout_us=rp.timeout_us,
    )
    return request, rp.enable_empty_final_response


def _requested_outputs(requested: Any) -> list[RequestedOutput]:
    """The request's `outputs` entries: name, classification and an optional client shm region."""
    outputs: list[RequestedOutput] = []
    for out in requested:
        oparams = out.parameters
        shm = parse_shm(oparams, out.name) if oparams else None
        classification = parse_classification(oparams) if oparams else 0
        if shm is not None and classification:
            raise invalid("output can't set both 'shared_memory_region' and 'classification'")
        outputs.append(
            RequestedOutput(
                name=out.name, classification=classification, shm=shm,
                parameters=other_params(oparams, _OUTPUT_SKIP),
            )
        )
    return outputs


def _tensor_bytes(datatype: str, data: np.ndarray) -> bytes:
    if datatype == "BYTES":
        return dtypes.serialize_bytes(data)
    if data.dtype.byteorder == ">":
        data = data.astype(data.dtype.newbyteorder("<"))
    return data.tobytes()  # tobytes() is C-order whatever the array's layout


def encode_response(response: InferResponse, out: Any | None = None) -> Any:
    """Fill (or create) a ModelInferResponse: one raw_output_contents entry per output, in output order.

    Outputs that went to client shared memory get an empty entry so the indices stay aligned.
    """
    if out is None:
        out = pb.ModelInferResponse()
    out.model_name = response.model_name
    out.model_version = response.model_version
    out.id = response.id
    for key, value in response.parameters.items():
        set_param(out.parameters[key], value)
    raw: list[bytes] = []
    total = 0
    for tensor in response.outputs:
        item = out.outputs.add()
        item.name = tensor.name
        item.datatype = tensor.datatype
        item.shape.extend(tensor.shape)
        blob = b"" if tensor.data is None else _tensor_bytes(tensor.datatype, tensor.data)
        total += len(blob)
        raw.append(blob)
    out.raw_output_contents.extend(raw)
    if total > INT32_MAX - (1 << 20):
        size = out.ByteSize()
        if size > INT32_MAX:
            raise invalid(
                f"Response has byte size {size} which exceeds gRPC's byte size limit {INT32_MAX}."
            )
    return out


def empty_stream_response(request_id: str, model: str, version: str, final: bool) -> Any:
    """A stream response with no outputs: the empty final response, or the shell of an error response."""
    msg = pb.ModelStreamInferResponse()
    inner = msg.infer_response
    inner.id = request_id
    inner.model_name = model
    inner.model_version = version
    inner.parameters["triton_final_response"].bool_param = final
    return msg


def stream_error(err: ServerError, request_id: str, model: str, version: str) -> Any:
    """Per-request error inside a stream (the stream stays open)."""
    msg = empty_stream_response(request_id, model, version, True)
    msg.error_message = err.message
    return msg
