"""Batch handling shared by the framework backends (onnxruntime, pytorch, openvino, tensorflow, tensorrt).

Each of those runs a model that takes named numeric tensors and returns named numeric tensors;
what differs is only the call into the framework. `ArrayBackend` does the rest once:

- a batch of several requests runs as ONE framework call, on the core's gathered tensors when it
  sent them (no copy) or on inputs concatenated here; outputs are split into row views, which the
  worker then writes to shared memory once for the whole batch;
- if that call fails, each request runs alone, so one bad request fails by itself;
- config `reshape` on inputs and outputs, and only requested outputs in each response.

Subclasses set `_input_names`, `_output_names` (config order) and implement `_infer`; those that
read inputs and outputs from the model file complete the config with `_complete_from_model`.
"""
from __future__ import annotations

import logging
from typing import Any

import numpy as np

from tritonpy.backends import array_config
from tritonpy.backends import config as cfg
from tritonpy.backends.base import Backend, BackendError, BackendRequest, BackendResponse, OutputTensor, split_rows
from tritonpy.proto import dtypes
from tritonpy.proto.messages import ErrorCode

log = logging.getLogger("tritonpy.backends.array_backend")


class ArrayBackend(Backend):
    """A backend whose model maps numeric input arrays to numeric output arrays."""

    # True when `_infer` returns the framework's own buffers, which its next call overwrites:
    # requests run one by one then keep copies (a single call per batch needs none).
    _transient_outputs = False
    # True for frameworks tritonpy runs on the CPU only: a KIND_GPU instance fails its load.
    _cpu_only = False

    @classmethod
    def _complete_from_model(
        cls,
        config: dict,
        inputs: list[array_config.TensorInfo],
        outputs: list[array_config.TensorInfo],
        backend_config: dict[str, str] | None,
    ) -> dict:
        """`auto_complete_config` for a model whose file declares its inputs and outputs."""
        default_mbs = array_config.default_max_batch_size(backend_config)
        return array_config.auto_complete(config, inputs, outputs, default_max_batch_size=default_mbs)

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._max_batch = int(self.config.get("max_batch_size") or 0)
        self._input_names: list[str] = cfg.io_names(self.config, "input")
        self._output_names: list[str] = cfg.io_names(self.config, "output")
        self._in_reshape = {
            e["name"]: [int(d) for d in e["reshape"].get("shape", [])] for e in self.config["input"] if e.get("reshape")
        }
        self._out_dims = {
            e["name"]: [int(d) for d in e.get("dims") or []] for e in self.config["output"] if e.get("reshape")
        }
        self._output_types = {
            e["name"]: dtypes.CONFIG_TO_WIRE.get(e.get("data_type", ""), "")
            for e in self.config["output"]
        }
        if self._cpu_only and self.kind == "KIND_GPU":
            raise BackendError(
                f"tritonpy's {self.name} backend runs on the CPU only; use KIND_CPU", ErrorCode.UNSUPPORTED
            )

    # -- to implement -------------------------------------------------------------------

    def _infer(self, feeds: dict[str, np.ndarray], fetch: list[str]) -> list[np.ndarray]:
        """Run the model once; return one array per name in `fetch`, in that order.

        Raise BackendError (with INVALID_ARG for a bad input) on failure.
        """
        raise BackendError(f"backend '{self.name}' has no inference function")

    # -- helpers --------------------------------------------------------------------------

    def _feed(self, name: str, array: np.ndarray, rows: int | None) -> np.ndarray:
        if name in self._in_reshape:
            array = array.reshape(([rows] if rows is not None else []) + self._in_reshape[name])
        return array

    def _shape_output(self, name: str, array: np.ndarray, rows: int | None) -> np.ndarray:
        if name in self._out_dims:
            array = array.reshape(([rows] if rows is not None else []) + self._out_dims[name])
        return array

    def _fetch_names(self, requests: list[BackendRequest]) -> list[str]:
        wanted: set[str] = set()
        for r in requests:
            if not r.requested_outputs:
                return list(self._output_names)
            wanted.update(r.requested_outputs)
        return [n for n in self._output_names if n in wanted]

    def _missing(self, request: BackendRequest) -> list[str]:
        """Inputs the request must carry and does not (it fails alone, before the model runs)."""
        return [n for n in self._input_names if n not in request.inputs]

    def _feed_names(self, request: BackendRequest) -> list[str]:
        """The request's inputs that go to the model (every configured one, by default)."""
        return self._input_names

    def _response(self, request: BackendRequest, fetch: list[str], arrays: list[np.ndarray]) -> BackendResponse:
        wanted = set(request.requested_outputs)
        outputs = []
        for name, arr in zip(fetch, arrays):
            if wanted and name not in wanted:
                continue
            datatype = self._output_types.get(name) or dtypes.numpy_to_wire(arr.dtype)
            outputs.append(OutputTensor(name, datatype, arr))
        return BackendResponse(outputs)

    def _safe_infer(self, feeds: dict[str, np.ndarray], fetch: list[str]) -> list[np.ndarray]:
        try:
            arrays = self._infer(feeds, fetch)
        except BackendError:
            raise
        except Exception as exc:
            raise BackendError(f"{self.name} execute failure: {type(exc).__name__}: {exc}") from exc
        if len(arrays) != len(fetch):
            raise BackendError(f"{self.name}: model produced {len(arrays)} outputs, expected {len(fetch)}")
        return arrays

    # -- execution -----------------------------------------------------------------------

    def _run_one(self, request: BackendRequest) -> BackendResponse:
        missing = self._missing(request)
        if missing:
            return BackendResponse.failure(
                f"expected input(s) missing from the request: {', '.join(missing)}", ErrorCode.INVALID_ARG
            )
        fetch = self._fetch_names([request])
        rows = request.batch_size if self._max_batch > 0 else None
        try:
            feeds = {n: self._feed(n, request.inputs[n], rows) for n in self._feed_names(request)}
            arrays = self._safe_infer(feeds, fetch)
        except BackendError as exc:
            return BackendResponse.failure(exc.message, exc.code)
        return self._response(request, fetch, [self._shape_output(n, a, rows) for n, a in zip(fetch, arrays)])

    def _batched_inputs(
        self, requests: list[BackendRequest], gathered: dict[str, np.ndarray] | None, total: int
    ) -> dict[str, np.ndarray] | None:
        if any(self._missing(r) for r in requests):
            return None
        names = self._feed_names(requests[0])
        if any(set(self._feed_names(r)) != set(names) for r in requests[1:]):
            return None  # requests that leave out different optional inputs cannot run as one
        if gathered and all(n in gathered and gathered[n].ndim > 0 and gathered[n].shape[0] == total for n in names):
            return {n: gathered[n] for n in names}
        joined: dict[str, np.ndarray] = {}
        for n in names:
            parts = [r.inputs[n] for r in requests]
            if any(p.ndim == 0 or p.shape[1:] != parts[0].shape[1:] or p.dtype != parts[0].dtype for p in parts):
                return None
            joined[n] = np.concatenate(parts)
        return joined

    def execute(self, requests: list[BackendRequest], gathered: dict[str, np.ndarray] | None) -> list[BackendResponse]:
        if self._max_batch > 0 and len(requests) > 1:
            sizes = [r.batch_size for r in requests]
            total = sum(sizes)
            batch = self._batched_inputs(requests, gathered, total)
            if batch is not None:
                fetch = self._fetch_names(requests)
                try:
                    feeds = {n: self._feed(n, a, total) for n, a in batch.items()}
                    arrays = [self._shape_output(n, a, total) for n, a in zip(fetch, self._safe_infer(feeds, fetch))]
                    for name, arr in zip(fetch, arrays):
                        if arr.ndim == 0 or arr.shape[0] != total:
                            rows_out = arr.shape[0] if arr.ndim else 0
                            raise BackendError(f"output '{name}' has {rows_out} rows for a batch of {total}")
                except BackendError as exc:
                    log.warning(
                        "batched run of %d requests failed (%s); running them one by one", len(requests), exc.message
                    )
                else:
                    per_output = [split_rows(arr, sizes) for arr in arrays]
                    return [
                        self._response(r, fetch, [views[i] for views in per_output]) for i, r in enumerate(requests)
                    ]
        responses = []
        for r in requests:
            response = self._run_one(r)
            if self._transient_outputs and len(requests) > 1:
                for out in response.outputs:
                    out.array = np.array(out.array)
            responses.append(response)
        return responses
