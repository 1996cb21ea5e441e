"""One fake of the core facade (`tritonpy.core.facade.ServerFacade`) for every frontend test: HTTP,
gRPC and the metrics endpoint. tests/frontends/test_fake_facade.py checks it against the Protocol.

Requests are checked by the core's own `validate_request` against each fake model's real
`ModelConfig`; the models are numpy functions (tests/support/fake_models.py); no worker process.

Knobs:
- `fail_next`: a ServerError the next request raises (once);
- request parameter `fake_error` = an ErrorCode name: that request fails with that code;
- request parameter `fake_delay` = seconds the request waits before it runs (cancellation tests);
- `gate`: requests to the model "slow" wait until it is set (made lazily on the serving loop);
- `stream_fail_after`: decoupled models raise after this many responses;
- `live`, `ready`, `allow_client_shm`;
- `real_shm`: True reads inputs from and writes outputs to the registered /dev/shm regions; False
  only records the references (an input read from shm is zeros, an output keeps its reference).
Probes: `requests` (every InferRequest seen), `started` (requests that passed validation),
`cancelled`, `responses_made` / `responses_released` (every response must be released),
`inference_count`, `loads`, `unloads`, `system_shm`, `cuda_shm`.
"""
from __future__ import annotations

import asyncio
import math
import mmap
import os
from typing import AsyncGenerator

import numpy as np
from prometheus_client import CollectorRegistry

from support.fake_models import SLOW, FakeModel, Tensors, classify, default_models
from tritonpy.core.errors import ErrorCode, ServerError, invalid, not_found, unsupported
from tritonpy.core.facade import JsonObject, LoadParameters, ModelTarget, ServerMetadata, StreamItem
from tritonpy.core.model.request_checks import validate_request
from tritonpy.core.observability.metrics import MetricsConfig
from tritonpy.core.tenancy.tenants import TenantRegistry
from tritonpy.core.types import InferRequest, InferResponse, ResponseTensor, ShmRef
from tritonpy.proto import dtypes
from tritonpy.proto import model_config_pb2 as mc

DECOUPLED_MESSAGE = "ModelInfer RPC doesn't support models with decoupled transaction policy"
LOG_FORMATS = ("default", "ISO8601")
# Loads that fail, with the reason: a name the repository lacks, and a model without its file.
LOAD_FAILURES = {"nope": "failed to poll from model repository", "broken": "no model file"}
# Fixed durations in the statistics, so the protobuf conversion of every field is exercised.
_DURATION = {"count": 2, "ns": 2000}


class FakeFacade:
    """Implements tritonpy.core.facade.ServerFacade over in-process fake models."""

    def __init__(self, *, allow_client_shm: bool = True, real_shm: bool = True) -> None:
        self.tenants: TenantRegistry | None = None
        self.server_id = "triton"
        self.version = "2.73.0"
        self.extensions = ["classification", "sequence", "model_repository", "binary_tensor_data", "statistics",
                           "logging"]
        self.models = default_models()
        self.allow_client_shm = allow_client_shm
        self.real_shm = real_shm
        self.live = True
        self.ready = True
        self.fail_next: ServerError | None = None
        self.stream_fail_after: int | None = None
        self.gate: asyncio.Event | None = None
        self.requests: list[InferRequest] = []
        self.started = 0
        self.cancelled = 0
        self.responses_made = 0
        self.responses_released = 0
        self.inference_count: dict[str, int] = {}
        self.loads: list[tuple[str, LoadParameters | None]] = []
        self.unloads: list[tuple[str, bool]] = []
        self.system_shm: dict[str, JsonObject] = {}
        self.cuda_shm: dict[str, JsonObject] = {}
        self.logs: JsonObject = {"log_file": "", "log_info": True, "log_warning": True, "log_error": True,
                                 "log_verbose_level": 0, "log_format": "default"}
        self.trace: dict[str, JsonObject] = {"": {"trace_level": ["OFF"], "trace_rate": "1000", "trace_count": "-1",
                                                  "log_frequency": "0", "trace_file": "", "trace_mode": "triton"}}

    # --- health & metadata -------------------------------------------------------------------
    def is_live(self) -> bool:
        return self.live

    def is_ready(self) -> bool:
        return self.live and self.ready

    def metadata(self) -> ServerMetadata:
        return {"name": self.server_id, "version": self.version, "extensions": list(self.extensions)}

    def _model(self, name: str, version: str = "") -> FakeModel:
        model = self.models.get(name)
        if model is None:
            raise not_found(f"Request for unknown model: '{name}' is not found")
        if version not in ("", "1"):
            raise not_found(f"Request for unknown model: '{name}' version {version} is not found")
        return model

    async def model_ready(self, name: str, version: str = "") -> bool:
        await asyncio.sleep(0)
        return self.ready and name in self.models and version in ("", "1")

    def model_metadata(self, name: str, version: str = "") -> JsonObject:
        m = self._model(name, version)
        batch = [-1] if m.max_batch_size > 0 else []
        return {
            "name": m.name, "versions": ["1"], "platform": m.platform,
            "inputs": [{"name": n, "datatype": dt, "shape": batch + d} for n, dt, d in m.inputs],
            "outputs": [{"name": n, "datatype": dt, "shape": batch + d} for n, dt, d in m.outputs],
        }

    def model_config(self, name: str, version: str = "") -> mc.ModelConfig:
        return self._model(name, version).config()

    def model_config_json(self, name: str, version: str = "") -> JsonObject:
        m = self._model(name, version)
        return {
            "name": m.name, "platform": m.platform, "backend": "python", "max_batch_size": m.max_batch_size,
            "input": [{"name": n, "data_type": dtypes.WIRE_TO_CONFIG[dt], "dims": d} for n, dt, d in m.inputs],
            "output": [{"name": n, "data_type": dtypes.WIRE_TO_CONFIG[dt], "dims": d} for n, dt, d in m.outputs],
            "model_transaction_policy": {"decoupled": m.decoupled},
        }

    # --- inference ---------------------------------------------------------------------------
    def resolve(self, name: str, version: str = "") -> ModelTarget:
        return ModelTarget(name=name, version=version, io=self._model(name, version).io())

    async def infer(self, request: InferRequest, target: ModelTarget | None = None) -> InferResponse:
        m = self._model(request.model_name, request.model_version)
        if m.decoupled:
            raise unsupported(DECOUPLED_MESSAGE)
        tensors = await self._prepare(m, request)
        result = m.run(tensors, request)
        assert isinstance(result, dict)
        return self._response(m, request, result)

    async def infer_stream(
        self, request: InferRequest, target: ModelTarget | None = None
    ) -> AsyncGenerator[StreamItem, None]:
        m = self._model(request.model_name, request.model_version)
        tensors = await self._prepare(m, request)
        result = m.run(tensors, request)
        if isinstance(result, dict):
            yield self._response(m, request, result), True
            return
        for i, tensors_out in enumerate(result):
            if self.stream_fail_after is not None and i >= self.stream_fail_after:
                raise ServerError(ErrorCode.INTERNAL, f"decoupled model failed after {i} responses")
            await asyncio.sleep(0)
            yield self._response(m, request, tensors_out), False
        yield None, True

    async def _prepare(self, m: FakeModel, request: InferRequest) -> Tensors:
        """Check the request, apply the knobs, wait if asked to: the request's input arrays."""
        self.requests.append(request)
        tensors = self._validate(m, request)
        self.started += 1
        if self.fail_next is not None:
            err, self.fail_next = self.fail_next, None
            raise err
        code = request.parameters.get("fake_error")
        if code:
            raise ServerError(ErrorCode[str(code)], f"fake {code} error")
        try:
            await asyncio.sleep(float(request.parameters.get("fake_delay", 0) or 0))
            if m.name == SLOW:
                if self.gate is None:
                    self.gate = asyncio.Event()
                await self.gate.wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        self.inference_count[m.name] = self.inference_count.get(m.name, 0) + 1
        return tensors

    def _validate(self, m: FakeModel, request: InferRequest) -> Tensors:
        if m.any_input:
            names = {name for name, _, _ in m.inputs}
            for t in request.inputs:
                if t.name not in names:
                    raise invalid(f"unexpected inference input '{t.name}' for model '{m.name}'")
        else:
            validate_request(m.config(), request)
        tensors: Tensors = {}
        for t in request.inputs:
            if t.shm is not None:
                tensors[t.name] = self._read_shm(t.shm, t.datatype, list(t.shape))
            else:
                assert t.data is not None
                tensors[t.name] = t.data
        return tensors

    def _outputs(self, m: FakeModel, request: InferRequest, result: Tensors) -> list[ResponseTensor]:
        types = {n: dt for n, dt, _ in m.outputs}
        wanted = {o.name: o for o in request.outputs or ()}
        names = list(wanted) if request.outputs is not None else [n for n, _, _ in m.outputs]
        outs = []
        for name in names:
            if name not in result:
                continue
            arr = np.asarray(result[name])
            dt = dtypes.numpy_to_wire(arr.dtype) if m.any_input else types[name]
            asked = wanted.get(name)
            if asked is not None and asked.classification:
                arr, dt = classify(arr, asked.classification, m.max_batch_size > 0), "BYTES"
            out = ResponseTensor(name=name, datatype=dt, shape=list(arr.shape), data=arr)
            if asked is not None and asked.shm is not None:
                out.shm = self._write_shm(asked.shm, dt, arr)
                out.data = None
            outs.append(out)
        return outs

    def _response(self, m: FakeModel, request: InferRequest, result: Tensors) -> InferResponse:
        outputs = self._outputs(m, request, result)
        self.responses_made += 1

        def release() -> None:
            self.responses_released += 1

        params = {k: v for k, v in request.parameters.items() if k.startswith("echo_")}
        return InferResponse(model_name=m.name, model_version="1", id=request.id, outputs=outputs,
                             parameters=params, _release=release)

    # --- client shared memory ------------------------------------------------------------------
    def _region(self, ref: ShmRef) -> tuple[str, int, int]:
        region = self.system_shm.get(ref.region)
        if region is None:
            raise not_found(f"Unable to find shared memory region: '{ref.region}'")
        if ref.offset + ref.byte_size > region["byte_size"]:
            raise invalid(f"shared memory region '{ref.region}' is too small")
        return region["key"], region["offset"] + ref.offset, ref.byte_size

    def _read_shm(self, ref: ShmRef, dt: str, shape: list[int]) -> np.ndarray:
        if not self.real_shm:
            return np.zeros(shape, dtype=np.object_ if dt == "BYTES" else dtypes.wire_to_numpy(dt))
        key, start, size = self._region(ref)
        with open("/dev/shm/" + key.lstrip("/"), "rb") as f, mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ) as mm:
            raw = bytes(mm[start:start + size])
        if dt == "BYTES":
            return dtypes.deserialize_bytes(raw, math.prod(shape)).reshape(shape)
        return np.frombuffer(raw, dtype=dtypes.wire_to_numpy(dt), count=math.prod(shape)).reshape(shape)

    def _write_shm(self, ref: ShmRef, dt: str, arr: np.ndarray) -> ShmRef:
        if not self.real_shm:
            return ref
        key, start, size = self._region(ref)
        raw = dtypes.serialize_bytes(arr) if dt == "BYTES" else np.ascontiguousarray(arr).tobytes()
        if len(raw) > size:
            raise invalid(f"shared memory size for output is too small ({size} < {len(raw)})")
        with open("/dev/shm/" + key.lstrip("/"), "r+b") as f, mmap.mmap(f.fileno(), 0) as mm:
            mm[start:start + len(raw)] = raw
        return ShmRef(region=ref.region, byte_size=len(raw), offset=ref.offset)

    def _shm_allowed(self) -> None:
        if not self.allow_client_shm:
            raise ServerError(ErrorCode.UNSUPPORTED, "client shared memory is disabled (--allow-client-shm=false)")

    def _new_region(self, name: str) -> None:
        self._shm_allowed()
        if name in self.system_shm or name in self.cuda_shm:
            raise ServerError(ErrorCode.ALREADY_EXISTS, f"shared memory region '{name}' already in manager")

    def register_system_shm(self, name: str, key: str, offset: int, byte_size: int) -> None:
        self._new_region(name)
        path = "/dev/shm/" + key.lstrip("/")
        if self.real_shm and (not os.path.exists(path) or os.path.getsize(path) < offset + byte_size):
            raise invalid(f"Unable to open shared memory region: '{key}'")
        self.system_shm[name] = {"name": name, "key": key, "offset": offset, "byte_size": byte_size}

    def system_shm_status(self, name: str = "") -> list[JsonObject]:
        if name and name not in self.system_shm:
            raise not_found(f"Unable to find system shared memory region: '{name}'")
        return [dict(r) for n, r in self.system_shm.items() if not name or n == name]

    def unregister_system_shm(self, name: str = "") -> None:
        self._shm_allowed()
        if name:
            self.system_shm.pop(name, None)
        else:
            self.system_shm.clear()

    def register_cuda_shm(self, name: str, raw_handle: bytes, device_id: int, byte_size: int) -> None:
        self._new_region(name)
        self.cuda_shm[name] = {"name": name, "device_id": device_id, "byte_size": byte_size, "raw": raw_handle}

    def cuda_shm_status(self, name: str = "") -> list[JsonObject]:
        return [{k: v for k, v in r.items() if k != "raw"} for n, r in self.cuda_shm.items() if not name or n == name]

    def unregister_cuda_shm(self, name: str = "") -> None:
        self._shm_allowed()
        if name:
            self.cuda_shm.pop(name, None)
        else:
            self.cuda_shm.clear()

    # --- statistics, repository ----------------------------------------------------------------
    def model_statistics(self, name: str = "", version: str = "") -> list[JsonObject]:
        names = [self._model(name, version).name] if name else sorted(self.models)
        return [self._stats(n) for n in names]

    def _stats(self, name: str) -> JsonObject:
        count = self.inference_count.get(name, 0)
        kinds = ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output", "cache_hit",
                 "cache_miss")
        return {
            "name": name, "version": "1", "last_inference": 1700000000000, "inference_count": count,
            "execution_count": count,
            "inference_stats": {k: dict(_DURATION) for k in kinds},
            "response_stats": {"0": {k: dict(_DURATION) for k in ("compute_infer", "compute_output", "success",
                                                                  "fail", "empty_response", "cancel")}},
            "batch_stats": [{"batch_size": 1, "compute_input": _DURATION, "compute_infer": _DURATION,
                             "compute_output": _DURATION}],
            "memory_usage": [{"type": "CPU", "id": 0, "byte_size": 64}],
        }

    def repository_index(self, ready_only: bool = False) -> list[JsonObject]:
        rows: list[JsonObject] = [{"name": n, "version": "1", "state": "READY", "reason": ""}
                                  for n in sorted(self.models)]
        if not ready_only:
            rows.append({"name": "never_loaded"})  # in the repository, never loaded: a name only
        return rows

    async def load_model(self, name: str, parameters: LoadParameters | None = None) -> None:
        self.loads.append((name, parameters))
        if name in LOAD_FAILURES:
            raise invalid(f"failed to load '{name}', {LOAD_FAILURES[name]}")

    async def unload_model(self, name: str, unload_dependents: bool = False) -> None:
        self.unloads.append((name, unload_dependents))
        if name not in self.models:
            raise invalid(f"failed to unload '{name}', Model to be unloaded has not been served")

    # --- logging, trace, metrics ---------------------------------------------------------------
    def log_settings(self) -> JsonObject:
        return dict(self.logs)

    def update_log_settings(self, settings: JsonObject) -> JsonObject:
        for key, value in settings.items():
            if key not in self.logs:
                raise invalid(f"unknown log setting '{key}'")
            if key == "log_verbose_level" and (type(value) is not int or value < 0):
                raise invalid("log_verbose_level must be a non-negative integer")
            if key in ("log_info", "log_warning", "log_error") and type(value) is not bool:
                raise invalid(f"{key} must be a boolean")
            if key == "log_format" and value not in LOG_FORMATS:
                raise invalid(f"invalid argument for log_format, got '{value}'")
        self.logs.update(settings)
        return dict(self.logs)

    def trace_settings(self, model: str = "") -> JsonObject:
        if model:
            self._model(model)
        return {**self.trace[""], **self.trace.get(model, {})}

    def update_trace_settings(self, model: str, settings: JsonObject) -> JsonObject:
        if model:
            self._model(model)
        target = self.trace.setdefault(model, {})
        for key, value in settings.items():
            if key not in self.trace[""]:
                raise invalid(f"unknown trace setting '{key}'")
            if key == "trace_rate" and value is not None and not str(value).isdigit():
                raise invalid(f"Unable to parse 'trace_rate', got: {value}")
            if value is None and model:
                target.pop(key, None)
            elif value is not None:
                target[key] = value
        return self.trace_settings(model)

    def metrics_registry(self, config: MetricsConfig, *, cpu_metrics: bool, gpu_metrics: bool) -> CollectorRegistry:
        # The endpoint's own behaviour (content type, methods, tenancy) is what frontend tests check;
        # the families are the core's, tested end to end.
        return CollectorRegistry(auto_describe=False)
