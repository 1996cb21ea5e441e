"""The identity backend: output i of the config is input i of the request, unchanged.

Useful for tests and for measuring the server's own overhead (no compute). Config parameter
`execute_delay_ms` makes each batch take at least that long, to exercise queueing and batching.
When the core gathered the batch, outputs are row slices of the gathered inputs, so the worker
writes each output once for the whole batch.
"""
from __future__ import annotations

import time
from typing import Any

import numpy as np

from tritonpy.backends import config as cfg
from tritonpy.backends.base import Backend, BackendError, BackendRequest, BackendResponse, OutputTensor, split_rows
from tritonpy.proto.messages import ErrorCode


class IdentityBackend(Backend):
    name = "identity"

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._pairs = list(zip(cfg.io_names(self.config, "input"), cfg.io_names(self.config, "output")))
        if not self._pairs:
            raise BackendError(
                f"identity model '{self.model_name}' needs inputs and outputs in its configuration "
                "(output i returns input i)"
            )
        params = cfg.parameters(self.config)
        try:
            self._delay_s = float(params.get("execute_delay_ms", "0") or 0) / 1000.0
        except ValueError as exc:
            raise BackendError(f"parameter execute_delay_ms must be a number: {exc}") from exc

    def _respond(self, request: BackendRequest, sources: dict[str, np.ndarray]) -> BackendResponse:
        wanted = set(request.requested_outputs)
        outputs: list[OutputTensor] = []
        for in_name, out_name in self._pairs:
            if wanted and out_name not in wanted:
                continue
            if in_name not in sources:
                if out_name in wanted:
                    return BackendResponse.failure(
                        f"identity model '{self.model_name}': output '{out_name}' needs input '{in_name}', "
                        "which the request does not have",
                        ErrorCode.INVALID_ARG,
                    )
                continue  # an optional input left out: its output is left out too
            datatype = request.datatypes.get(in_name, "")
            outputs.append(OutputTensor(out_name, datatype, sources[in_name]))
        return BackendResponse(outputs)

    def execute(self, requests: list[BackendRequest], gathered: dict[str, np.ndarray] | None) -> list[BackendResponse]:
        if self._delay_s > 0:
            time.sleep(self._delay_s)
        if gathered and len(requests) > 1:
            sizes = [r.batch_size for r in requests]
            per_request: list[dict[str, np.ndarray]] = [dict(r.inputs) for r in requests]
            for name, whole in gathered.items():
                if whole.ndim == 0 or whole.shape[0] != sum(sizes):
                    continue
                for slot, view in zip(per_request, split_rows(whole, sizes)):
                    slot[name] = view
            return [self._respond(r, src) for r, src in zip(requests, per_request)]
        return [self._respond(r, r.inputs) for r in requests]
