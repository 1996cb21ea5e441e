"""Implicit state of sequence models, kept in the worker (`sequence_batching.state`).

Triton keeps the state tensors of a sequence next to the instance that runs it: the output state
of request i becomes the input state of request i+1 of the same sequence. The sequence batcher
pins a sequence to one instance for its life, so the worker of that instance is the natural
keeper; no state bytes cross the process boundary.

For each request of a model with states, before `execute`:
* START (or a sequence not seen yet with START): the state starts from `initial_state` (zeros,
  or the file `<model>/initial_state/<data_file>`), or zeros when none is configured (Triton
  leaves it uninitialized; variable dimensions count as 0 there).
* otherwise the state the previous request of the sequence produced; a sequence whose state is
  unknown here (its instance restarted, say) fails that request with a clear error.
The state appears as an ordinary input named `input_name` (shape [1, *dims] for a batching
model, `dims` otherwise). After `execute`, the output named `output_name` is taken out of the
response (clients never see it) and kept for the next request. A response without it keeps the
previous state. The state is dropped after the END request, or when the core says the sequence
ended (`EndSequences`: idle timeout, cancellation).
"""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any, Iterable, Union

import numpy as np

from tritonpy.backends.base import BackendError, BackendRequest, BackendResponse
from tritonpy.proto import dtypes
from tritonpy.proto.messages import ErrorCode, ErrorInfo

__all__ = ["StateSpec", "SequenceStates", "INITIAL_STATE_FOLDER", "SEQUENCE_START", "SEQUENCE_END"]

log = logging.getLogger("tritonpy.backends.worker.state")

INITIAL_STATE_FOLDER = "initial_state"
SEQUENCE_START = 1
SEQUENCE_END = 2

CorrId = Union[int, str]


@dataclasses.dataclass(slots=True)
class StateSpec:
    """One state of the model, with the array a sequence starts from."""

    input_name: str
    output_name: str
    datatype: str  # wire type
    initial: np.ndarray


def _wire(config_type: Any, where: str) -> str:
    wire = dtypes.CONFIG_TO_WIRE.get(str(config_type or ""), "")
    if not wire:
        raise BackendError(f"{where}: unknown data type '{config_type}'")
    return wire


def _zeros(datatype: str, shape: list[int]) -> np.ndarray:
    if datatype == "BYTES":
        array = np.empty(shape, dtype=np.object_)
        array.fill(b"")
        return array
    return np.zeros(shape, dtype=dtypes.wire_to_numpy(datatype))


def _initial_state(state: dict, datatype: str, batched: bool, model_dir: Path) -> np.ndarray:
    """The array a sequence starts from, checked as Triton checks `initial_state` at load."""
    name = str(state.get("input_name", ""))
    dims = [int(d) for d in state.get("dims") or []]
    lead = [1] if batched else []
    initial = state.get("initial_state") or []
    if len(initial) > 1:
        raise BackendError(
            f"initial_state field for state input '{name}' must contain exactly one or zero element. "
            f"Found '{len(initial)}' elements."
        )
    if not initial:
        return _zeros(datatype, lead + [max(d, 0) for d in dims])
    init = initial[0]
    if _wire(init.get("data_type"), f"initial_state of state '{name}'") != datatype:
        raise BackendError(
            f"The data type used for 'initial_state' field of state '{name}' does not match the state data type."
        )
    if not init.get("name"):
        raise BackendError(f"Field 'name' must be set when using initial_state for state input '{name}'.")
    init_dims = [int(d) for d in init.get("dims") or []]
    if len(init_dims) != len(dims):
        raise BackendError(
            "Number of dimensions in 'initial_state' doesn't match the size of 'state' dimensions for state "
            f"input '{name}'. {len(init_dims)} != {len(dims)}"
        )
    for got, want in zip(init_dims, dims):
        if got == -1:
            raise BackendError(f"'initial_state' field for state input name '{name}' contains variable dimensions.")
        if want != -1 and got != want:
            raise BackendError(
                f"'initial_state' dim for input name '{name}' doesn't match 'state' dim description. {got} != {want}"
            )
    shape = lead + init_dims
    count = int(np.prod(init_dims, dtype=np.int64)) if init_dims else 1
    if init.get("data_file"):
        path = model_dir / INITIAL_STATE_FOLDER / str(init["data_file"])
        try:
            raw = path.read_bytes()
        except OSError as exc:
            raise BackendError(f"unable to read initial_state file '{path}': {exc.strerror or exc}") from exc
        if datatype == "BYTES":
            try:
                return dtypes.deserialize_bytes(raw, count).reshape(shape)
            except ValueError as exc:
                raise BackendError(f"initial_state file '{path}' for state '{name}': {exc}") from exc
        needed = count * dtypes.element_size(datatype)
        if len(raw) < needed:
            raise BackendError(
                f"initial_state setting expects {needed} bytes, but the data provided from "
                f"{init['data_file']} only has {len(raw)} bytes."
            )
        return np.frombuffer(raw[:needed], dtype=dtypes.wire_to_numpy(datatype)).reshape(shape).copy()
    return _zeros(datatype, shape)


class SequenceStates:
    """The states of every live sequence of this instance, keyed by correlation id."""

    def __init__(self, specs: list[StateSpec]) -> None:
        self.specs = specs
        self.output_names = frozenset(s.output_name for s in specs)
        self._states: dict[CorrId, dict[str, np.ndarray]] = {}

    @classmethod
    def from_config(cls, config: dict, model_dir: Path) -> "SequenceStates | None":
        """None for a model without states. Raises BackendError (the load fails) on a bad
        `initial_state`, with Triton's wording."""
        seq = config.get("sequence_batching")
        states = seq.get("state") if isinstance(seq, dict) else None
        if not states:
            return None
        batched = int(config.get("max_batch_size") or 0) > 0
        specs: list[StateSpec] = []
        seen: set[str] = set()
        for state in states:
            name = str(state.get("input_name", ""))
            if name in seen:
                raise BackendError(f"State input name '{name}' specified more than once.")
            seen.add(name)
            datatype = _wire(state.get("data_type"), f"state '{name}'")
            initial = _initial_state(state, datatype, batched, model_dir)
            initial.setflags(write=False)  # shared by every sequence that starts
            specs.append(StateSpec(name, str(state.get("output_name", "")), datatype, initial))
        return cls(specs)

    # --- around execute ---------------------------------------------------------------------
    def inject(self, request: BackendRequest) -> ErrorInfo | None:
        """Add the state inputs to `request`; an error (for this request only) when the sequence
        has no state here and does not start."""
        key = request.correlation_id
        current = self._states.get(key)
        if request.flags & SEQUENCE_START or current is None:
            if not request.flags & SEQUENCE_START:
                return ErrorInfo(
                    int(ErrorCode.INTERNAL),
                    f"implicit state of sequence {key} is not available on this instance (the sequence did not "
                    "start here, or the instance restarted since); start the sequence again",
                )
            current = {s.input_name: s.initial for s in self.specs}
            self._states[key] = current
        for spec in self.specs:
            request.inputs[spec.input_name] = current[spec.input_name]
            request.datatypes[spec.input_name] = spec.datatype
        return None

    def capture(self, requests: list[BackendRequest], responses: list[BackendResponse]) -> None:
        """Keep each response's output states for its sequence and take them out of the response."""
        for request, response in zip(requests, responses):
            key = request.correlation_id
            outputs = response.outputs
            found = [t for t in outputs if t.name in self.output_names]
            if found:
                response.outputs = [t for t in outputs if t.name not in self.output_names]
            if response.error is None and found:
                problem = self._store(key, found)
                if problem is not None:
                    response.outputs = []
                    response.error = problem
            if request.flags & SEQUENCE_END:
                self._states.pop(key, None)

    def _store(self, key: CorrId, tensors: list) -> ErrorInfo | None:
        current = self._states.get(key)
        if current is None:
            return None  # dropped meanwhile (cannot happen within one batch; be safe)
        by_output = {s.output_name: s for s in self.specs}
        for tensor in tensors:
            spec = by_output[tensor.name]
            if tensor.datatype != spec.datatype:
                return ErrorInfo(
                    int(ErrorCode.INTERNAL),
                    f"output state '{tensor.name}' is {tensor.datatype}, but state '{spec.input_name}' is declared "
                    f"{spec.datatype}",
                )
            # A copy: the model may reuse its array for the next request.
            current[spec.input_name] = np.array(tensor.array, copy=True)
        return None

    def abandon(self, requests: list[BackendRequest]) -> None:
        """The whole batch failed: states stay as they were, except that ending sequences end."""
        for request in requests:
            if request.flags & SEQUENCE_END:
                self._states.pop(request.correlation_id, None)

    def drop(self, correlation_ids: Iterable[CorrId]) -> None:
        for key in correlation_ids:
            self._states.pop(key, None)

    def __len__(self) -> int:
        return len(self._states)

    def __contains__(self, key: CorrId) -> bool:
        return key in self._states
