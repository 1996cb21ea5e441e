"""The protocol-neutral request and response objects that frontends build and the core serves.

Frontends decode their wire format into these (numpy arrays, BYTES as object arrays of `bytes`);
the core validates, schedules and answers with the same kinds of objects.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable

import numpy as np


@dataclasses.dataclass(slots=True)
class ShmRef:
    """A client-registered shared-memory region slice (system or CUDA)."""

    region: str
    byte_size: int
    offset: int = 0


@dataclasses.dataclass(slots=True)
class InputTensor:
    name: str
    datatype: str  # wire name: FP32, BYTES, ...
    shape: list[int]
    # The data, or None when it lives in client shared memory (`shm`).
    data: np.ndarray | None = None
    shm: ShmRef | None = None
    parameters: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(slots=True)
class RequestedOutput:
    name: str
    # Top-N classification instead of the raw tensor (0 = off).
    classification: int = 0
    shm: ShmRef | None = None
    # Protocol details the frontend keeps for itself (e.g. binary_data); the core ignores them.
    parameters: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(slots=True)
class InferRequest:
    model_name: str
    model_version: str = ""  # "" = chosen by the version policy
    id: str = ""
    inputs: list[InputTensor] = dataclasses.field(default_factory=list)
    # None = every output of the model.
    outputs: list[RequestedOutput] | None = None
    # Request parameters other than the reserved ones below (strings, ints, bools, floats).
    parameters: dict[str, Any] = dataclasses.field(default_factory=dict)
    # Reserved parameters, already parsed and type-checked by the frontend.
    sequence_id: int | str = 0
    sequence_start: bool = False
    sequence_end: bool = False
    priority: int = 0
    timeout_us: int = 0
    # Set by the core.
    arrival_ns: int = dataclasses.field(default_factory=time.monotonic_ns)
    # Decoupled models: the core's sink for this request's responses (core/decoupled.ResponseStream).
    stream: Any = None


@dataclasses.dataclass(slots=True)
class ResponseTensor:
    name: str
    datatype: str
    shape: list[int]
    # None when the output was written into client shared memory (`shm`).
    data: np.ndarray | None = None
    shm: ShmRef | None = None


@dataclasses.dataclass(slots=True)
class InferResponse:
    model_name: str
    model_version: str
    id: str = ""
    outputs: list[ResponseTensor] = dataclasses.field(default_factory=list)
    parameters: dict[str, Any] = dataclasses.field(default_factory=dict)
    # Output arrays may be views of a worker's shared memory: call release() once they are
    # serialized (idempotent). Until then the space stays reserved.
    _release: Callable[[], None] | None = None

    def release(self) -> None:
        cb, self._release = self._release, None
        if cb is not None:
            cb()
