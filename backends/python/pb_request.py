"""`pb_utils.InferenceRequest`, `InferenceResponse` and friends.

A request built by the worker carries the client's request; one built by a model is a BLS call,
whose `exec()`/`async_exec()` are not available yet in tritonpy and say so. Decoupled sending
through the response sender is not available yet either.
"""
from __future__ import annotations

import json
from typing import Any

from tritonpy.backends.python.pb_tensor import Tensor
from tritonpy.backends.python.pb_types import (
    TRITONSERVER_MEMORY_CPU,
    TRITONSERVER_REQUEST_RELEASE_ALL,
    TritonError,
    TritonModelException,
)

_BLS_UNSUPPORTED = (
    "BLS (calling another model from execute with InferenceRequest.exec/async_exec) "
    "is not supported yet in tritonpy"
)
_DECOUPLED_UNSUPPORTED = (
    "sending responses through InferenceResponseSender (decoupled models) is not supported yet in tritonpy; "
    "return one InferenceResponse per request from execute instead"
)


class PreferredMemory:
    """Where a BLS caller would like outputs placed (kept for API compatibility)."""

    def __init__(self, preferred_memory_type: int = TRITONSERVER_MEMORY_CPU, preferred_device_id: int = 0) -> None:
        self.preferred_memory_type = preferred_memory_type
        self.preferred_device_id = preferred_device_id


class InferenceTrace:
    """Trace context of a request; tritonpy does not propagate traces to models yet."""

    def __init__(self, context: str | None = None) -> None:
        self._context = context

    def get_context(self) -> str | None:
        return self._context


class InferenceResponseSender:
    """The per-request sender of decoupled models."""

    def __init__(self, request: "InferenceRequest") -> None:
        self._request = request

    def send(self, response: "InferenceResponse | None" = None, flags: int = 0) -> None:
        raise TritonModelException(_DECOUPLED_UNSUPPORTED)

    def is_cancelled(self) -> bool:
        return self._request.is_cancelled()


def _parameters_json(parameters: Any) -> str:
    if parameters is None:
        return "{}"
    if isinstance(parameters, str):
        json.loads(parameters)  # must be valid JSON
        return parameters
    if not isinstance(parameters, dict):
        raise TritonModelException("parameters must be a dict or a JSON string")
    for key, value in parameters.items():
        if not isinstance(key, str) or not isinstance(value, (str, int, bool)):
            raise TritonModelException("parameters keys must be strings and values str, int or bool")
    return json.dumps(parameters)


class InferenceRequest:
    """A request: the client's (inside execute) or a BLS request a model builds."""

    def __init__(
        self,
        model_name: str = "",
        inputs: list[Tensor] | None = None,
        requested_output_names: list[str] | None = None,
        request_id: str = "",
        correlation_id: int | str = 0,
        model_version: int = -1,
        flags: int = 0,
        timeout: int = 0,
        preferred_memory: PreferredMemory | None = None,
        trace: InferenceTrace | None = None,
        parameters: dict | str | None = None,
    ) -> None:
        self._model_name = model_name
        self._inputs = list(inputs or [])
        self._requested = list(requested_output_names or [])
        self._request_id = request_id
        self._correlation_id = correlation_id
        self._model_version = model_version
        self._flags = int(flags)
        self._timeout = int(timeout)
        self._preferred_memory = preferred_memory or PreferredMemory()
        self._trace = trace or InferenceTrace()
        self._parameters = _parameters_json(parameters)
        self._release_flags = TRITONSERVER_REQUEST_RELEASE_ALL
        self._sender: InferenceResponseSender | None = None

    def inputs(self) -> list[Tensor]:
        return self._inputs

    def request_id(self) -> str:
        return self._request_id

    def correlation_id(self) -> int | str:
        return self._correlation_id

    def model_name(self) -> str:
        return self._model_name

    def model_version(self) -> int:
        return self._model_version

    def flags(self) -> int:
        return self._flags

    def set_flags(self, flags: int) -> None:
        self._flags = int(flags)

    def timeout(self) -> int:
        return self._timeout

    def parameters(self) -> str:
        return self._parameters

    def trace(self) -> InferenceTrace:
        return self._trace

    def requested_output_names(self) -> list[str]:
        return self._requested

    def get_response_sender(self) -> InferenceResponseSender:
        if self._sender is None:
            self._sender = InferenceResponseSender(self)
        return self._sender

    def is_cancelled(self) -> bool:
        return False

    def set_release_flags(self, flags: int) -> None:
        self._release_flags = int(flags)

    def release_flags(self) -> int:
        return self._release_flags

    def exec(self, decoupled: bool = False) -> "InferenceResponse":
        raise TritonModelException(_BLS_UNSUPPORTED)

    async def async_exec(self, decoupled: bool = False) -> "InferenceResponse":
        raise TritonModelException(_BLS_UNSUPPORTED)


class InferenceResponse:
    """The answer to one request: output tensors, or an error that fails only this request."""

    def __init__(
        self,
        output_tensors: list[Tensor] | None = None,
        error: TritonError | str | None = None,
        parameters: dict | str | None = None,
    ) -> None:
        if output_tensors is None:
            output_tensors = []
        if not isinstance(output_tensors, (list, tuple)):
            raise TritonModelException('"output_tensors" must be a list.')
        for tensor in output_tensors:
            if not isinstance(tensor, Tensor):
                raise TritonModelException(
                    f"output_tensors must hold pb_utils.Tensor objects, got {type(tensor).__name__}"
                )
        if isinstance(error, str):
            error = TritonError(error)
        self._outputs = list(output_tensors)
        self._error = error
        self._parameters = _parameters_json(parameters) if parameters is not None else ""

    def output_tensors(self) -> list[Tensor]:
        return self._outputs

    def has_error(self) -> bool:
        return self._error is not None

    def error(self) -> TritonError | None:
        return self._error

    def parameters(self) -> str:
        return self._parameters
