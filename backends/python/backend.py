"""The python backend: runs Triton Python-backend models (`model.py` with `TritonPythonModel`).

The model file is imported with `triton_python_backend_utils` already in `sys.modules` (our
pb_utils), under a module name unique to the model file. `execute` (and `initialize`,
`is_ready`, `finalize`) may be coroutines: they run on one event loop that lives as long as the
model, so state a model keeps on the loop (clients, locks) stays valid between batches.
"""
from __future__ import annotations

import asyncio
import functools
import importlib.util
import inspect
import json
import logging
import re
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from tritonpy.backends import config as cfg
from tritonpy.backends.base import (
    Backend,
    BackendError,
    BackendRequest,
    BackendResponse,
    OutputTensor,
    describe_exception,
)
from tritonpy.backends.python import pb_utils
from tritonpy.backends.python.pb_types import TRITONSERVER_REQUEST_RELEASE_RESCHEDULE, number_to_wire, wire_to_number
from tritonpy.proto.messages import ErrorCode, ErrorInfo

log = logging.getLogger("tritonpy.backends.python")

PB_UTILS_MODULE = "triton_python_backend_utils"
MODEL_CLASS = "TritonPythonModel"
_modules: dict[str, ModuleType] = {}


def install_pb_utils() -> None:
    """Make `import triton_python_backend_utils` give our pb_utils."""
    sys.modules[PB_UTILS_MODULE] = pb_utils


def _model_path(config: dict, version_dir: Path) -> Path:
    path = cfg.model_file(config, version_dir, "model.py")
    if not path.is_file():
        raise BackendError(f"unable to find the Python model file '{path}'", ErrorCode.NOT_FOUND)
    return path


def _load_module(config: dict, version_dir: Path) -> ModuleType:
    """Import the model file once per process (auto-complete and initialize share it)."""
    path = _model_path(config, version_dir).resolve()
    cached = _modules.get(str(path))
    if cached is not None:
        return cached
    install_pb_utils()
    folder = str(path.parent)
    if folder not in sys.path:
        sys.path.append(folder)  # sibling modules of model.py import as in Triton
    safe = re.sub(r"[^A-Za-z0-9_]", "_", f"{config.get('name', '')}_{path.parent.name}_{path.stem}")
    module_name = f"tritonpy_pymodel_{safe}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise BackendError(f"cannot import the Python model file '{path}'")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException as exc:
        sys.modules.pop(module_name, None)
        raise BackendError(describe_exception(exc)) from exc
    if not isinstance(getattr(module, MODEL_CLASS, None), type):
        raise BackendError(f"'{path}' does not define class {MODEL_CLASS}")
    _modules[str(path)] = module
    return module


def _response_error(error: Any) -> ErrorInfo:
    if isinstance(error, pb_utils.TritonError):
        return ErrorInfo(error.code(), error.message())
    message = getattr(error, "message", None)
    text = message() if callable(message) else str(error)
    return ErrorInfo(int(ErrorCode.INTERNAL), str(text))


def _sent_or(item: Any, request: pb_utils.InferenceRequest) -> Any:
    """The response a default-mode model sent through the response sender, if it returned none."""
    sender = request._sender
    if item is None:
        sent = request.__dict__.get("_sent")
        if sent:
            return sent[0]
    elif sender is not None and sender._closed:
        raise BackendError("Non-decoupled model cannot send more than one response")
    return item


class PythonBackend(Backend):
    name = "python"

    @classmethod
    def auto_complete_config(
        cls, config: dict[str, Any], model_dir: Path, version_dir: Path, *, backend_config: dict[str, str] | None = None
    ) -> dict[str, Any]:
        model_cls = getattr(_load_module(config, version_dir), MODEL_CLASS)
        hook = getattr(model_cls, "auto_complete_config", None)
        if hook is None:
            return config
        try:
            result = hook(pb_utils.ModelConfig(config))
        except Exception as exc:
            raise BackendError(describe_exception(exc)) from exc
        if not isinstance(result, pb_utils.ModelConfig):
            raise BackendError(
                f"auto_complete_config() must return a pb_utils.ModelConfig, got {type(result).__name__}"
            )
        return result.as_dict()

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        # EXECUTION_ENV_PATH is honoured by the core, which starts this worker with that
        # environment's interpreter (core/instance/python_env.py).
        self._output_names = cfg.io_names(self.config, "output")
        self._decoupled = bool((self.config.get("model_transaction_policy") or {}).get("decoupled"))
        module = _load_module(self.config, self.version_dir)
        self._loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self._loop)
        try:
            self._model = getattr(module, MODEL_CLASS)()
            initialize = getattr(self._model, "initialize", None)
            if initialize is not None:
                self._run(initialize(self._initialize_args()))
        except Exception as exc:
            self._loop.close()
            raise BackendError(describe_exception(exc)) from exc
        if not callable(getattr(self._model, "execute", None)):
            self._loop.close()
            raise BackendError(f"{MODEL_CLASS} in '{self.version_dir}' has no execute() method")

    def _initialize_args(self) -> dict[str, str]:
        kind = self.kind[5:] if self.kind.startswith("KIND_") else self.kind
        return {
            "model_config": json.dumps(self.config),
            "model_instance_kind": kind or "CPU",
            "model_instance_name": self.instance_name,
            "model_instance_device_id": str(self.device_id),
            "model_repository": str(self.model_dir),
            "model_version": self.version_dir.name,
            "model_name": self.model_name,
        }

    def _run(self, value: Any) -> Any:
        if inspect.isawaitable(value):
            return self._loop.run_until_complete(value)
        return value

    def _to_pb(self, request: BackendRequest) -> pb_utils.InferenceRequest:
        # A decoupled request outlives execute() (threads keep sending), but its input blocks are
        # freed when execute() returns: give the model its own copies.
        own = request.stream is not None
        tensors = [
            pb_utils.Tensor(
                name, np.array(array) if own else array, wire_to_number(request.datatypes.get(name) or "FP32")
            )
            for name, array in request.inputs.items()
        ]
        pb_request = pb_utils.InferenceRequest(
            inputs=tensors,
            requested_output_names=list(request.requested_outputs) or list(self._output_names),
            request_id=request.request_id,
            correlation_id=request.correlation_id,
            flags=request.flags,
            parameters=json.dumps(request.parameters),
        )
        stream = request.stream
        if stream is not None:
            pb_request._send_hook = functools.partial(self._stream_send, stream, pb_request)
            pb_request._is_cancelled = lambda: bool(stream.cancelled)
        else:
            # A default-mode model may answer through the sender with FINAL (Triton >= 24.06).
            pb_request._send_hook = functools.partial(self._collect, pb_request)
        return pb_request

    def _stream_send(self, stream: Any, pb_request: pb_utils.InferenceRequest, response: Any, final: bool) -> None:
        item = None if response is None else self._from_pb(response, pb_request)
        try:
            stream.send(item, final)
        except BackendError as exc:
            raise pb_utils.TritonModelException(exc.message) from exc

    @staticmethod
    def _collect(pb_request: pb_utils.InferenceRequest, response: Any, final: bool) -> None:
        sent = pb_request.__dict__.setdefault("_sent", [])
        if response is not None:
            if sent:
                raise pb_utils.TritonModelException(
                    "a model that is not decoupled sends exactly one response per request"
                )
            sent.append(response)

    def execute(self, requests: list[BackendRequest], gathered: dict[str, np.ndarray] | None) -> list[BackendResponse]:
        pb_requests = [self._to_pb(r) for r in requests]
        try:
            results = self._run(self._model.execute(pb_requests))
        except (pb_utils.TritonError, pb_utils.TritonModelException) as exc:
            raise BackendError(exc.message() or type(exc).__name__, exc.code()) from exc
        except Exception as exc:
            raise BackendError(describe_exception(exc)) from exc
        if self._decoupled:
            if results is not None:
                self._fail_open_senders(pb_requests, requests)
            # Responses went (and may still go) through the senders; the core only learns here
            # that this execution finished.
            return [BackendResponse() for _ in requests]
        if results is None:
            results = [None] * len(requests)
        if not isinstance(results, (list, tuple)) or len(results) != len(requests):
            got = len(results) if isinstance(results, (list, tuple)) else type(results).__name__
            raise BackendError(
                f"execute() returned {got} responses for {len(requests)} requests; "
                "it must return exactly one InferenceResponse per request"
            )
        return [self._from_pb(_sent_or(item, req), req) for item, req in zip(results, pb_requests)]

    def _fail_open_senders(self, pb_requests: list, requests: list[BackendRequest]) -> None:
        """A decoupled execute() returned something: Triton answers every request that is still
        open with this error (FINAL), so clients are not left waiting."""
        text = (f"Python model '{self.model_name}' is using the decoupled mode and the execute "
                "function must return None.")
        log.error("%s", text)
        for pb_request, request in zip(pb_requests, requests):
            sender = pb_request.get_response_sender()
            with sender._lock:
                if sender._closed or request.stream is None:
                    continue
                sender._closed = True
            try:
                request.stream.send(BackendResponse.failure(text), True)
            except BackendError:
                pass  # the stream is already gone: nobody is waiting

    @staticmethod
    def _from_pb(item: Any, request: pb_utils.InferenceRequest) -> BackendResponse:
        if item is None:
            if request.release_flags() & TRITONSERVER_REQUEST_RELEASE_RESCHEDULE:
                return BackendResponse.failure(
                    "request rescheduling is not supported yet in tritonpy", ErrorCode.UNSUPPORTED
                )
            return BackendResponse.failure("execute() returned None for this request; expected an InferenceResponse")
        if not isinstance(item, pb_utils.InferenceResponse):
            return BackendResponse.failure(f"execute() returned a {type(item).__name__}; expected an InferenceResponse")
        params = json.loads(item.parameters()) if item.parameters() else None
        if item.has_error():
            return BackendResponse(error=_response_error(item.error()), parameters=params)
        outputs = []
        for tensor in item.output_tensors():
            try:
                datatype = number_to_wire(tensor.triton_dtype())
            except KeyError:
                return BackendResponse.failure(
                    f"output '{tensor.name()}' has an unknown data type {tensor.triton_dtype()}"
                )
            outputs.append(OutputTensor(tensor.name(), datatype, tensor._array))
        return BackendResponse(outputs, parameters=params)

    def is_ready(self) -> bool:
        check = getattr(self._model, "is_ready", None)
        if check is None:
            return True
        return bool(self._run(check()))

    def finalize(self) -> None:
        try:
            finalize = getattr(self._model, "finalize", None)
            if finalize is not None:
                self._run(finalize())
        finally:
            self._loop.close()
