"""tritonpy's `triton_python_backend_utils`: the module Python-backend models import as `pb_utils`.

The worker registers this module in `sys.modules` under the name `triton_python_backend_utils`
before it imports a model's `model.py`, so `import triton_python_backend_utils as pb_utils` works
unchanged. Every name of Triton's module is here (see TRITON_REFERENCE.md, section D); the ones
whose feature tritonpy does not have yet (model control from a model) raise
`TritonModelException` with a message saying so. BLS lives in pb_bls.py, decoupled sending in
pb_request.py (InferenceResponseSender) and the worker's I/O channel.
"""
from __future__ import annotations

import enum
import sys

from tritonpy.backends.worker import logfmt
from tritonpy.backends.python.pb_config import (
    ModelConfig,
    get_input_config_by_name,
    get_output_config_by_name,
    using_decoupled_model_transaction_policy,
)
from tritonpy.backends.python.pb_metrics import Metric, MetricFamily
from tritonpy.backends.python.pb_request import (
    InferenceRequest,
    InferenceResponse,
    InferenceResponseSender,
    InferenceTrace,
    PreferredMemory,
)
from tritonpy.backends.python.pb_tensor import Tensor
from tritonpy.backends.python.pb_types import (
    TRITON_STRING_TO_NUMPY,
    TRITONSERVER_MEMORY_CPU,
    TRITONSERVER_MEMORY_GPU,
    TRITONSERVER_REQUEST_FLAG_SEQUENCE_END,
    TRITONSERVER_REQUEST_FLAG_SEQUENCE_START,
    TRITONSERVER_REQUEST_RELEASE_ALL,
    TRITONSERVER_REQUEST_RELEASE_RESCHEDULE,
    TRITONSERVER_RESPONSE_COMPLETE_FINAL,
    TritonError,
    TritonModelException,
    deserialize_bytes_tensor,
    numpy_to_triton_type,
    serialize_byte_tensor,
    triton_string_to_numpy,
    triton_to_numpy_type,
)

__all__ = [
    "TRITON_STRING_TO_NUMPY", "TRITONSERVER_MEMORY_CPU", "TRITONSERVER_MEMORY_GPU",
    "TRITONSERVER_REQUEST_FLAG_SEQUENCE_END", "TRITONSERVER_REQUEST_FLAG_SEQUENCE_START",
    "TRITONSERVER_REQUEST_RELEASE_ALL", "TRITONSERVER_REQUEST_RELEASE_RESCHEDULE",
    "TRITONSERVER_RESPONSE_COMPLETE_FINAL", "InferenceRequest", "InferenceResponse",
    "InferenceResponseSender", "InferenceTrace", "Logger", "Metric", "MetricFamily", "ModelConfig",
    "PreferredMemory", "Tensor", "TritonError", "TritonModelException", "deserialize_bytes_tensor",
    "get_input_config_by_name", "get_input_tensor_by_name", "get_output_config_by_name",
    "get_output_tensor_by_name", "is_model_ready", "load_model", "numpy_to_triton_type",
    "serialize_byte_tensor", "triton_string_to_numpy", "triton_to_numpy_type", "unload_model",
    "using_decoupled_model_transaction_policy",
]

_MODEL_CONTROL_UNSUPPORTED = "model control from inside a Python model ({}) is not supported yet in tritonpy"


def get_input_tensor_by_name(inference_request: InferenceRequest, name: str) -> Tensor | None:
    """The request's input called `name`, or None."""
    for tensor in inference_request.inputs():
        if tensor.name() == name:
            return tensor
    return None


def get_output_tensor_by_name(inference_response: InferenceResponse, name: str) -> Tensor | None:
    """The response's output called `name`, or None."""
    for tensor in inference_response.output_tensors():
        if tensor.name() == name:
            return tensor
    return None


def load_model(model_name: str, config: str = "", files: dict | None = None) -> None:
    raise TritonModelException(_MODEL_CONTROL_UNSUPPORTED.format("load_model"))


def unload_model(model_name: str, unload_dependents: bool = False) -> None:
    raise TritonModelException(_MODEL_CONTROL_UNSUPPORTED.format("unload_model"))


def is_model_ready(model_name: str, model_version: str = "") -> bool:
    raise TritonModelException(_MODEL_CONTROL_UNSUPPORTED.format("is_model_ready"))


class _LogLevel(enum.IntEnum):
    INFO = 0
    WARNING = 1
    ERROR = 2
    VERBOSE = 3


class Logger:
    """Model logging into the server log, in Triton's line format (`I… model.py:12] "msg"`)."""

    LogLevel = _LogLevel
    INFO = _LogLevel.INFO
    WARNING = _LogLevel.WARNING
    ERROR = _LogLevel.ERROR
    VERBOSE = _LogLevel.VERBOSE

    @staticmethod
    def _emit(level: _LogLevel, message: object, depth: int) -> None:
        frame = sys._getframe(depth + 1)
        logfmt.emit(level.name, str(message), frame.f_code.co_filename, frame.f_lineno)

    @staticmethod
    def log(message: object, level: _LogLevel = _LogLevel.INFO) -> None:
        Logger._emit(_LogLevel(int(level)), message, 1)

    @staticmethod
    def log_info(message: object) -> None:
        Logger._emit(_LogLevel.INFO, message, 1)

    @staticmethod
    def log_warn(message: object) -> None:
        Logger._emit(_LogLevel.WARNING, message, 1)

    @staticmethod
    def log_error(message: object) -> None:
        Logger._emit(_LogLevel.ERROR, message, 1)

    @staticmethod
    def log_verbose(message: object) -> None:
        Logger._emit(_LogLevel.VERBOSE, message, 1)
