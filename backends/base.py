"""The interface every backend implements, and the request/response types the worker hands it.

A backend is a class; the worker makes exactly one instance of it per model instance (one worker
process = one model instance), calls `execute` for each batch the core sends, and turns what comes
back into shared-memory tensors. Backends never see sockets, shared memory or the core: they get
numpy arrays and return numpy arrays, so they are easy to write and to test in-process.

Writing one is documented with a worked example in docs/backends.md.
"""
from __future__ import annotations

import dataclasses
import os
import traceback
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np

from tritonpy.proto import dtypes
from tritonpy.proto.messages import ErrorCode, ErrorInfo

__all__ = [
    "Backend",
    "BackendError",
    "BackendRequest",
    "BackendResponse",
    "OutputTensor",
    "describe_exception",
    "error_info",
]

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


class BackendError(Exception):
    """An error with a Triton error code; raise it from a backend to choose the code clients see.

    Raised from `execute` it fails the whole batch with this code; put it (as `ErrorInfo`) in one
    `BackendResponse` to fail only that request.
    """

    def __init__(self, message: str, code: ErrorCode | int = ErrorCode.INTERNAL) -> None:
        super().__init__(message)
        self.code = ErrorCode(int(code))
        self.message = message

    def info(self) -> ErrorInfo:
        return ErrorInfo(int(self.code), self.message)


def error_info(exc: BaseException, *, default_code: ErrorCode = ErrorCode.INTERNAL) -> ErrorInfo:
    """An `ErrorInfo` for any exception, keeping a Triton code when the exception carries one.

    Understands `BackendError` and anything shaped like the Python backend's `TritonError`
    (`.code()` and `.message()` methods), so pb_utils errors keep their code across the boundary.
    """
    if isinstance(exc, BackendError):
        return exc.info()
    code_attr = getattr(exc, "code", None)
    message_attr = getattr(exc, "message", None)
    if callable(code_attr) and callable(message_attr):
        try:
            code = int(code_attr())
            ErrorCode(code)
            return ErrorInfo(code, str(message_attr()))
        except (TypeError, ValueError):
            pass
    text = str(exc)
    return ErrorInfo(int(default_code), f"{type(exc).__name__}: {text}" if text else type(exc).__name__)


def describe_exception(exc: BaseException, *, frames: int = 3) -> str:
    """`Type: message` plus the innermost traceback lines of user code, as Triton shows model errors.

    Frames of the import machinery and of tritonpy's own backends are left out: the reader wants
    the line in their model.py, not ours.
    """
    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    tb = [
        f
        for f in traceback.extract_tb(exc.__traceback__)
        if not f.filename.startswith("<frozen") and not os.path.abspath(f.filename).startswith(_PACKAGE_DIR + os.sep)
    ]
    if not tb:
        return text
    lines = [f"  {f.filename}({f.lineno}): {f.name}" for f in reversed(tb[-frames:])]
    return text + "\n\nAt:\n" + "\n".join(lines)


@dataclasses.dataclass(slots=True, kw_only=True)
class BackendRequest:
    """One inference request as a backend sees it.

    `inputs` are numpy arrays; numeric ones are read-only views straight onto shared memory (copy
    with `np.array(x)` before modifying). `datatypes` gives each input's Triton wire type, which
    matters where numpy cannot tell (BF16 travels as uint16; BYTES as an object array).
    """

    request_id: str
    inputs: dict[str, np.ndarray]
    datatypes: dict[str, str]
    requested_outputs: list[str]
    parameters: dict[str, Any] = dataclasses.field(default_factory=dict)
    correlation_id: int | str = 0
    flags: int = 0
    # Decoupled models only: where responses go as the model makes them. An object with
    # `send(BackendResponse | None, final: bool)` (any thread) and a `cancelled` property
    # (backends/worker/channel.py RequestStream); None for one-response-per-request models.
    stream: Any = None

    @property
    def batch_size(self) -> int:
        """Rows in the first input's first dimension (1 for scalars or a request without inputs)."""
        for array in self.inputs.values():
            return int(array.shape[0]) if array.ndim > 0 else 1
        return 1


@dataclasses.dataclass(slots=True)
class OutputTensor:
    """One output: its name, Triton wire type (FP32, BYTES, …) and data."""

    name: str
    datatype: str
    array: np.ndarray


def _as_output(name: str, value: Any) -> OutputTensor:
    if isinstance(value, OutputTensor):
        return value
    if isinstance(value, tuple) and len(value) == 2 and isinstance(value[0], str):
        datatype, array = value
        return OutputTensor(name, datatype, np.asarray(array))
    array = np.asarray(value)
    return OutputTensor(name, dtypes.numpy_to_wire(array.dtype), array)


def _normalize_outputs(outputs: Any) -> list[OutputTensor]:
    if outputs is None:
        return []
    if isinstance(outputs, Mapping):
        return [_as_output(name, value) for name, value in outputs.items()]
    result: list[OutputTensor] = []
    for item in outputs:
        if isinstance(item, OutputTensor):
            result.append(item)
        elif isinstance(item, tuple) and len(item) == 3:
            name, datatype, array = item
            result.append(OutputTensor(name, datatype, np.asarray(array)))
        elif isinstance(item, tuple) and len(item) == 2:
            result.append(_as_output(item[0], item[1]))
        else:
            raise TypeError(f"cannot interpret {type(item).__name__} as an output tensor")
    return result


@dataclasses.dataclass(slots=True)
class BackendResponse:
    """The result for one request: outputs, or an error that fails only this request.

    `outputs` accepts, for convenience, a dict `name -> (datatype, array)` or `name -> array` (the
    type is then taken from the numpy dtype), or a list of `(name, datatype, array)`; it is always
    a list of `OutputTensor` afterwards. An output may be a slice of a larger array shared with
    other responses of the same batch: the worker then writes the shared bytes once.
    """

    outputs: list[OutputTensor] = dataclasses.field(default_factory=list)
    error: ErrorInfo | None = None
    parameters: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        self.outputs = _normalize_outputs(self.outputs)

    @classmethod
    def failure(cls, message: str, code: ErrorCode | int = ErrorCode.INTERNAL) -> "BackendResponse":
        return cls(error=ErrorInfo(int(code), message))


class Backend:
    """Base class of a backend; one object per model instance (= per worker process).

    Subclasses set `name` and override `execute`; the rest is optional. Construction is the
    model's initialization: load weights there and raise (any exception) to fail the load; the
    message reaches the user as the model's UNAVAILABLE reason.
    """

    name: str = ""

    @classmethod
    def auto_complete_config(
        cls, config: dict[str, Any], model_dir: Path, version_dir: Path, *, backend_config: dict[str, str] | None = None
    ) -> dict[str, Any]:
        """Fill in what the model file knows (inputs, outputs, max_batch_size); default: unchanged.

        Called before `__init__`, only when the server runs with auto-complete on. Return the
        completed config dict (mutating and returning `config` is fine). `backend_config` holds
        the server's --backend-config keys for this backend (e.g. default-max-batch-size); an
        override may leave the keyword out of its signature if it does not need it.
        """
        return config

    def __init__(
        self,
        *,
        config: dict[str, Any],
        model_dir: Path,
        version_dir: Path,
        instance_name: str,
        kind: str,
        device_id: int,
        backend_config: dict[str, str],
    ) -> None:
        self.config = config
        self.model_dir = model_dir
        self.version_dir = version_dir
        self.instance_name = instance_name
        self.kind = kind
        self.device_id = device_id
        self.backend_config = backend_config

    @property
    def model_name(self) -> str:
        return str(self.config.get("name") or self.model_dir.name)

    def execute(
        self, requests: list[BackendRequest], gathered: dict[str, np.ndarray] | None
    ) -> list[BackendResponse]:
        """Run one batch; return exactly one response per request, in order.

        `gathered`, when given, holds each input of the whole batch as one array whose rows are
        the requests' inputs back to back (request i's arrays are slices of it); a batching
        backend can run on it without concatenating. Raising fails the whole batch.
        """
        raise BackendError(f"backend '{self.name or type(self).__name__}' does not implement execute")

    def is_ready(self) -> bool:
        """Whether the instance can serve; the model-ready endpoint asks this."""
        return True

    def finalize(self) -> None:
        """Release what `__init__` acquired; called once before the worker exits."""


def split_rows(array: np.ndarray, sizes: Iterable[int]) -> list[np.ndarray]:
    """Views of consecutive row ranges of `array` (no copies), one per size."""
    views: list[np.ndarray] = []
    start = 0
    for n in sizes:
        views.append(array[start : start + n])
        start += n
    return views
