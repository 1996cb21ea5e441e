"""Checking an inference request against its model's configuration before it is queued.

The rules and the wording follow Triton's `InferenceRequest::Normalize` and its input byte-size
checks, because clients (and their tests) match on these messages. Every failure is INVALID_ARG
(HTTP 400). The checks are pure: nothing here touches shared memory or the data itself beyond
its element count.
"""
from __future__ import annotations

import math
from typing import Sequence

from tritonpy.core.errors import invalid
from tritonpy.core.types import InferRequest, InputTensor
from tritonpy.proto import dtypes
from tritonpy.proto import model_config_pb2 as mc

__all__ = ["validate_request", "dims_to_string", "sequence_reserved_inputs"]

_BATCH_NOTE = (
    "NOTE: Setting a non-zero max_batch_size in the model config requires a batch dimension to be "
    "prepended to each input shape. If you want to specify the full shape including the batch dim in "
    "your input dims config, try setting max_batch_size to zero. See the model configuration docs for "
    "more info on max_batch_size."
)


def dims_to_string(dims: Sequence[int]) -> str:
    """Triton's DimsListToString: `[1,3,224,224]`."""
    return "[" + ",".join(str(int(d)) for d in dims) + "]"


def _wire_type(data_type: int) -> str:
    name = mc.DataType.Name(data_type) if data_type in mc.DataType.values() else "TYPE_INVALID"
    return dtypes.CONFIG_TO_WIRE.get(name, "INVALID")


def validate_request(config: mc.ModelConfig, request: InferRequest) -> int:
    """Raise ServerError(INVALID_ARG) if the request does not fit the model; return its batch size.

    The batch size is the shared first dimension of the inputs when max_batch_size > 0 (it may be
    0 for an empty batch), and 1 for a model that does not batch.
    """
    model = config.name
    reserved = sequence_reserved_inputs(config)
    by_name = {io.name: io for io in config.input if io.name not in reserved}

    seen: set[str] = set()
    for tensor in request.inputs:
        if tensor.name in seen:
            raise invalid(f"input '{tensor.name}' already exists in request")
        seen.add(tensor.name)
    for tensor in request.inputs:
        if tensor.name in reserved:
            raise invalid(
                f"inference input '{tensor.name}' for model '{model}' is a sequence control or state input; "
                "the server provides it"
            )
        if tensor.name not in by_name:
            raise invalid(f"unexpected inference input '{tensor.name}' for model '{model}'")
    _check_input_count(config, request, seen, reserved)
    if request.outputs is not None:
        outputs = {io.name for io in config.output}
        for out in request.outputs:
            if out.name not in outputs:
                raise invalid(f"unexpected inference output '{out.name}' for model '{model}'")

    batch_size = _batch_size(config, request, by_name)
    for tensor in request.inputs:
        _check_input(config, tensor, by_name[tensor.name])
    if config.max_batch_size == 0:
        return 1
    return 1 if batch_size is None else batch_size


def sequence_reserved_inputs(config: mc.ModelConfig) -> frozenset[str]:
    """Inputs the sequence batcher fills in (control inputs, implicit state inputs): never sent by
    a client, even when the configuration also lists them under `input`."""
    if config.WhichOneof("scheduling_choice") != "sequence_batching":
        return frozenset()
    seq = config.sequence_batching
    return frozenset([c.name for c in seq.control_input] + [s.input_name for s in seq.state])


def _check_input_count(
    config: mc.ModelConfig, request: InferRequest, given: set[str], reserved: frozenset[str] = frozenset()
) -> None:
    inputs = [io for io in config.input if io.name not in reserved]
    required = [io.name for io in inputs if not io.optional]
    missing = [name for name in required if name not in given]
    if not missing:
        return
    model = config.name
    got = "[" + ",".join(f"'{t.name}'" for t in request.inputs) + "]"
    lacking = "[" + ",".join(f"'{name}'" for name in missing) + "]"
    n_given, n_all = len(request.inputs), len(inputs)
    if len(required) == n_all:
        head = f"expected {n_all} inputs but got {n_given} inputs for model '{model}'"
    else:
        head = (
            f"expected number of inputs between {len(required)} and {n_all} but got {n_given} inputs "
            f"for model '{model}'"
        )
    raise invalid(
        f"{head}. Got inputs {got}, but missing required inputs {lacking}. Please provide all required inputs."
    )


def _batch_size(config: mc.ModelConfig, request: InferRequest, by_name: dict[str, mc.ModelInput]) -> int | None:
    """The shared first dimension (max_batch_size > 0), or None when nothing carries one."""
    if config.max_batch_size == 0:
        return None
    model = config.name
    batch: int | None = None
    for tensor in request.inputs:
        if by_name[tensor.name].is_shape_tensor:
            continue
        if len(tensor.shape) == 0:
            raise invalid(f"input '{tensor.name}' has no shape but model requires batch dimension for '{model}'")
        first = int(tensor.shape[0])
        if first < 0:
            raise invalid(
                f"All input dimensions should be specified for input '{tensor.name}' for model '{model}', "
                f"got {dims_to_string(tensor.shape)}"
            )
        if batch is None:
            batch = first
        elif first != batch:
            raise invalid(f"input '{tensor.name}' batch size does not match other inputs for '{model}'")
    if batch is not None and batch > config.max_batch_size:
        raise invalid(f"inference request batch-size must be <= {config.max_batch_size} for '{model}'")
    return batch


def _check_input(config: mc.ModelConfig, tensor: InputTensor, io: mc.ModelInput) -> None:
    model = config.name
    expected_type = _wire_type(io.data_type)
    if tensor.datatype != expected_type:
        raise invalid(
            f"inference input '{tensor.name}' data-type is '{tensor.datatype}', but model '{model}' "
            f"expects '{expected_type}'"
        )
    full = [int(d) for d in tensor.shape]
    # Shape tensors keep their whole shape; other inputs lose the batch dimension.
    shape = full[1:] if (config.max_batch_size > 0 and not io.is_shape_tensor) else full
    if any(d < 0 for d in shape):
        raise invalid(
            f"All input dimensions should be specified for input '{tensor.name}' for model '{model}', "
            f"got {dims_to_string(full)}"
        )
    dims = list(io.dims)
    if len(dims) != len(shape) or any(c != -1 and c != s for c, s in zip(dims, shape)):
        expected = ([-1] if config.max_batch_size > 0 else []) + dims
        note = _BATCH_NOTE if config.max_batch_size > 0 else ""
        raise invalid(
            f"unexpected shape for input '{tensor.name}' for model '{model}'. Expected "
            f"{dims_to_string(expected)}, got {dims_to_string(full)}. {note}"
        )
    _check_data_size(model, tensor, full)


def _check_data_size(model: str, tensor: InputTensor, shape: list[int]) -> None:
    count = math.prod(shape)
    size = dtypes.element_size(tensor.datatype)
    if size == 0:  # BYTES: count elements; in shared memory they are checked when read
        if tensor.shm is not None:
            return
        got = 0 if tensor.data is None else int(tensor.data.size)
        if got != count:
            raise invalid(
                f"expected {count} string elements for inference input '{tensor.name}' for model '{model}', got {got}"
            )
        return
    expected = count * size
    if tensor.shm is not None:
        got = int(tensor.shm.byte_size)
    elif tensor.data is not None:
        got = int(tensor.data.size) * size
    else:
        got = 0
    if got != expected:
        raise invalid(
            f"input byte size mismatch for input '{tensor.name}' for model '{model}'. Expected {expected}, got {got}"
        )
