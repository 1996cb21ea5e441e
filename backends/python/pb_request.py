"""`pb_utils.InferenceRequest`, `InferenceResponse` and friends.

A request built by the worker carries the client's request, and its response sender; one built
by a model is a BLS call, run by `exec()`/`async_exec()` (backends/python/pb_bls.py).
"""
from __future__ import annotations

import json
import threading
from typing import Any, Callable

from tritonpy.backends.python.pb_tensor import Tensor
from tritonpy.backends.python.pb_types import (
    TRITONSERVER_MEMORY_CPU,
    TRITONSERVER_REQUEST_RELEASE_ALL,
    TRITONSERVER_RESPONSE_COMPLETE_FINAL,
    TritonError,
    TritonModelException,
)

_CLOSED = "Unable to send response. Response sender has been closed."
_NO_SENDER = "this request has no response sender (only requests given to execute() have one)"

# What the backend installs on a request it hands to execute(): called as hook(response, final).
SendHook = Callable[["InferenceResponse | None", bool], None]


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
    """The per-request sender: decoupled models send 0..N responses, then the FINAL flag.

    Thread-safe: a model may send from threads it started, also after execute() returned.
    """

    def __init__(self, request: "InferenceRequest") -> None:
        self._request = request
        self._lock = threading.Lock()
        self._closed = False

    def send(self, response: "InferenceResponse | None" = None, flags: int = 0) -> None:
        if response is not None and not isinstance(response, InferenceResponse):
            raise TritonModelException(f"send() expects an InferenceResponse or None, got {type(response).__name__}")
        final = bool(int(flags) & TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        with self._lock:
            if self._closed:
                raise TritonModelException(_CLOSED)
            hook = self._request._send_hook
            if hook is None:
                raise TritonModelException(_NO_SENDER)
            if response is None and not final:
                return  # nothing to send (Triton accepts and ignores this)
            hook(response, final)
            if final:
                self._closed = True

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


def _text(value: Any, what: str) -> str:
    """Triton takes `bytes` wherever a string goes (a name read from a BYTES tensor, say)."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        try:
            return bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            raise TritonModelException(f"{what} must be UTF-8 text, got {bytes(value)!r}") from None
    if not isinstance(value, str):
        raise TritonModelException(f"{what} must be a string, got {type(value).__name__}")
    return value


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
        self._model_name = _text(model_name, "model_name")
        self._inputs = list(inputs or [])
        self._requested = [_text(n, "requested_output_names") for n in requested_output_names or []]
        self._request_id = _text(request_id, "request_id")
        if isinstance(correlation_id, (bytes, bytearray)):
            correlation_id = _text(correlation_id, "correlation_id")
        self._correlation_id = correlation_id
        self._model_version = model_version
        self._flags = int(flags)
        self._timeout = int(timeout)
        self._preferred_memory = preferred_memory or PreferredMemory()
        self._trace = trace or InferenceTrace()
        self._parameters = _parameters_json(parameters)
        self._release_flags = TRITONSERVER_REQUEST_RELEASE_ALL
        self._sender: InferenceResponseSender | None = None
        # Installed by the backend on the requests it gives to execute().
        self._send_hook: SendHook | None = None
        self._is_cancelled: Callable[[], bool] | None = None

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
        """True once the client gave up on this request (decoupled models: stream closed)."""
        check = self._is_cancelled
        return bool(check()) if check is not None else False

    def set_release_flags(self, flags: int) -> None:
        self._release_flags = int(flags)

    def release_flags(self) -> int:
        return self._release_flags

    def exec(self, decoupled: bool = False) -> Any:
        """BLS: run this request on `model_name`; a response (an iterator of them when decoupled)."""
        from tritonpy.backends.python import pb_bls

        return pb_bls.exec_request(self, decoupled)

    async def async_exec(self, decoupled: bool = False) -> Any:
        """BLS from an `async def execute`; several calls may be awaited together."""
        from tritonpy.backends.python import pb_bls

        return await pb_bls.async_exec_request(self, decoupled)


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
