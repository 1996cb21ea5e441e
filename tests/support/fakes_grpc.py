"""A fake core facade for the gRPC frontend tests, and a helper that serves it from a background thread.

The fake implements the facade methods the frontend calls (see docs in helpers/facade.md) with a few
small models and knobs: fail the next request, hold a request until released, count cancellations and
response releases. The gRPC server runs on its own event loop in a thread so that the blocking
`tritonclient.grpc` client can be used from the test thread.
"""
from __future__ import annotations

import asyncio
import threading
from typing import Any, AsyncIterator, Callable

import numpy as np

from support.leaks import free_port
from tritonpy.core.errors import ErrorCode, ServerError, invalid, not_found, unsupported
from tritonpy.core.options import ServerOptions
from tritonpy.core.types import InferRequest, InferResponse, ResponseTensor
from tritonpy.proto import model_config_pb2 as mc

ANY = "*"  # fake-only: an input that accepts any datatype and shape


class FakeModel:
    def __init__(self, name: str, inputs: dict[str, tuple[str, list[int]]], outputs: dict[str, str],
                 max_batch_size: int = 0, decoupled: bool = False, platform: str = "fake") -> None:
        self.name = name
        self.inputs = inputs
        self.outputs = outputs
        self.max_batch_size = max_batch_size
        self.decoupled = decoupled
        self.platform = platform

    def config(self) -> mc.ModelConfig:
        cfg = mc.ModelConfig(name=self.name, platform=self.platform, max_batch_size=self.max_batch_size)
        for name, (dt, dims) in self.inputs.items():
            wire = "BYTES" if dt == ANY else dt
            cfg.input.add(name=name, data_type=mc.DataType.Value("TYPE_STRING" if wire == "BYTES" else f"TYPE_{wire}"),
                          dims=dims)
        for name, dt in self.outputs.items():
            wire = "BYTES" if dt == ANY else dt
            cfg.output.add(name=name, data_type=mc.DataType.Value("TYPE_STRING" if wire == "BYTES" else f"TYPE_{wire}"),
                           dims=[-1])
        cfg.model_transaction_policy.decoupled = self.decoupled
        return cfg


def default_models() -> dict[str, FakeModel]:
    return {m.name: m for m in (
        FakeModel("simple", {"INPUT0": ("INT32", [16]), "INPUT1": ("INT32", [16])},
                  {"OUTPUT0": "INT32", "OUTPUT1": "INT32"}, max_batch_size=8),
        FakeModel("simple_string", {"INPUT0": ("BYTES", [16]), "INPUT1": ("BYTES", [16])},
                  {"OUTPUT0": "BYTES", "OUTPUT1": "BYTES"}, max_batch_size=8),
        FakeModel("identity_fp16", {"INPUT0": ("FP16", [-1])}, {"OUTPUT0": "FP16"}, max_batch_size=8),
        FakeModel("identity", {"INPUT0": (ANY, [-1])}, {"OUTPUT0": ANY}),
        FakeModel("repeat_int32", {"IN": ("INT32", [1])}, {"OUT": "INT32"}, decoupled=True),
        FakeModel("slow", {"INPUT0": ("INT32", [-1])}, {"OUTPUT0": "INT32"}),
    )}


class FakeServer:
    """Same surface as tritonpy.core.server.InferenceServer, backed by tiny numpy models."""

    def __init__(self, options: ServerOptions | None = None) -> None:
        self.options = options or ServerOptions()
        self.server_id = "triton"
        self.version = "2.73.0"
        self.extensions = ["classification", "sequence", "model_repository", "statistics", "logging"]
        self.models = default_models()
        self.live = True
        self.ready = True
        # knobs and probes
        self.fail_next: ServerError | None = None
        self.stream_fail_after: int | None = None  # decoupled: raise after this many responses
        self.gate: asyncio.Event | None = None  # "slow" waits for this (created on the server loop)
        self.started = 0  # requests that reached infer()
        self.cancelled = 0
        self.released = 0
        self.requests: list[InferRequest] = []
        self.loads: list[tuple[str, dict | None]] = []
        self.unloads: list[tuple[str, bool]] = []
        self.system_shm: dict[str, dict] = {}
        self.cuda_shm: dict[str, dict] = {}
        self._log = {"log_file": "", "log_info": True, "log_warning": True, "log_error": True,
                     "log_verbose_level": 0, "log_format": "default"}
        self._trace: dict[str, dict[str, Any]] = {"": {"trace_level": ["OFF"], "trace_rate": "1000",
                                                       "trace_count": "-1", "log_frequency": "0",
                                                       "trace_file": "", "trace_mode": "triton"}}

    # --- health & metadata ------------------------------------------------------------------------
    def is_live(self) -> bool:
        return self.live

    def is_ready(self) -> bool:
        return self.ready

    def metadata(self) -> dict:
        return {"name": self.server_id, "version": self.version, "extensions": list(self.extensions)}

    def _model(self, name: str, version: str = "") -> FakeModel:
        model = self.models.get(name)
        if model is None:
            raise not_found(f"Request for unknown model: '{name}' is not found")
        if version not in ("", "1"):
            raise not_found(f"Request for unknown model: '{name}' version {version} is not found")
        return model

    async def model_ready(self, name: str, version: str = "") -> bool:
        try:
            self._model(name, version)
        except ServerError:
            return False
        return self.ready

    def model_metadata(self, name: str, version: str = "") -> dict:
        m = self._model(name, version)
        batch = [-1] if m.max_batch_size else []
        return {
            "name": m.name, "versions": ["1"], "platform": m.platform,
            "inputs": [{"name": n, "datatype": "BYTES" if dt == ANY else dt, "shape": batch + dims}
                       for n, (dt, dims) in m.inputs.items()],
            "outputs": [{"name": n, "datatype": "BYTES" if dt == ANY else dt, "shape": batch + [-1]}
                        for n, dt in m.outputs.items()],
        }

    def model_config(self, name: str, version: str = "") -> mc.ModelConfig:
        return self._model(name, version).config()

    def is_decoupled(self, name: str, version: str = "") -> bool:
        return self._model(name, version).decoupled

    # --- inference --------------------------------------------------------------------------------
    def _check(self, request: InferRequest) -> FakeModel:
        m = self._model(request.model_name, request.model_version)
        given = {t.name for t in request.inputs}
        for t in request.inputs:
            if t.name not in m.inputs:
                raise invalid(f"unexpected inference input '{t.name}' for model '{m.name}'")
            want = m.inputs[t.name][0]
            if want != ANY and t.datatype != want:
                raise invalid(f"inference input '{t.name}' data-type is '{t.datatype}', but model '{m.name}' "
                              f"expects '{want}'")
        missing = set(m.inputs) - given
        if missing:
            raise invalid(f"expected {len(m.inputs)} inputs but got {len(given)} inputs for model '{m.name}'")
        for out in request.outputs or ():
            if out.name not in m.outputs:
                raise invalid(f"unexpected inference output '{out.name}' for model '{m.name}'")
        return m

    def _respond(self, m: FakeModel, request: InferRequest, values: dict[str, np.ndarray]) -> InferResponse:
        wanted = request.outputs if request.outputs is not None else None
        outs: list[ResponseTensor] = []
        order = [o.name for o in wanted] if wanted is not None else list(m.outputs)
        by_name = {o.name: o for o in wanted or ()}
        for name in order:
            arr = values[name]
            req_out = by_name.get(name)
            if req_out is not None and req_out.shm is not None:
                outs.append(ResponseTensor(name=name, datatype=_wire(arr), shape=list(arr.shape), shm=req_out.shm))
            elif req_out is not None and req_out.classification:
                outs.append(_classify(name, arr, req_out.classification))
            else:
                outs.append(ResponseTensor(name=name, datatype=_wire(arr), shape=list(arr.shape), data=arr))

        def release() -> None:
            self.released += 1

        return InferResponse(model_name=m.name, model_version="1", id=request.id, outputs=outs,
                             parameters=dict(request.parameters), _release=release)

    def _data(self, request: InferRequest, name: str, m: FakeModel) -> np.ndarray:
        t = next(t for t in request.inputs if t.name == name)
        if t.data is not None:
            return t.data
        dt = m.inputs[name][0]
        return np.zeros(t.shape, dtype=np.int32 if dt in (ANY, "INT32") else np.float32)

    async def infer(self, request: InferRequest) -> InferResponse:
        m = self._check(request)
        if m.decoupled:
            raise unsupported("ModelInfer RPC doesn't support models with decoupled transaction policy")
        return await self._run(m, request)

    async def _run(self, m: FakeModel, request: InferRequest) -> InferResponse:
        self.requests.append(request)
        self.started += 1
        if self.fail_next is not None:
            err, self.fail_next = self.fail_next, None
            raise err
        if m.name == "slow":
            try:
                if self.gate is None:
                    self.gate = asyncio.Event()
                await self.gate.wait()
            except asyncio.CancelledError:
                self.cancelled += 1
                raise
            return self._respond(m, request, {"OUTPUT0": self._data(request, "INPUT0", m)})
        if m.name == "simple":
            a, b = self._data(request, "INPUT0", m), self._data(request, "INPUT1", m)
            return self._respond(m, request, {"OUTPUT0": a + b, "OUTPUT1": a - b})
        if m.name == "simple_string":
            a, b = self._data(request, "INPUT0", m), self._data(request, "INPUT1", m)
            ai, bi = a.astype(np.bytes_).astype(np.int32), b.astype(np.bytes_).astype(np.int32)
            return self._respond(m, request, {"OUTPUT0": _as_bytes(ai + bi), "OUTPUT1": _as_bytes(ai - bi)})
        return self._respond(m, request, {"OUTPUT0": self._data(request, "INPUT0", m)})

    async def infer_stream(self, request: InferRequest) -> AsyncIterator[tuple[InferResponse | None, bool]]:
        m = self._check(request)
        if not m.decoupled:
            yield await self._run(m, request), True
            return
        self.requests.append(request)
        self.started += 1
        if self.fail_next is not None:
            err, self.fail_next = self.fail_next, None
            raise err
        base = request.inputs[0].data
        for i in range(3):
            if self.stream_fail_after is not None and i >= self.stream_fail_after:
                raise ServerError(ErrorCode.INTERNAL, f"decoupled model failed after {i} responses")
            await asyncio.sleep(0)
            yield self._respond(m, request, {"OUT": (base + i).astype(np.int32)}), False
        yield None, True

    # --- statistics & repository ------------------------------------------------------------------
    def model_statistics(self, name: str = "", version: str = "") -> list[dict]:
        names = [name] if name else sorted(self.models)
        out = []
        for n in names:
            self._model(n, version)
            d = {"count": 2, "ns": 2000}
            out.append({
                "name": n, "version": "1", "last_inference": 1700000000000, "inference_count": 2,
                "execution_count": 1,
                "inference_stats": {k: d for k in ("success", "fail", "queue", "compute_input", "compute_infer",
                                                   "compute_output", "cache_hit", "cache_miss")},
                "response_stats": {"0": {"compute_infer": d, "compute_output": d, "success": d, "fail": d,
                                         "empty_response": d, "cancel": d}},
                "batch_stats": [{"batch_size": 1, "compute_input": d, "compute_infer": d, "compute_output": d}],
                "memory_usage": [{"type": "CPU", "id": 0, "byte_size": 64}],
            })
        return out

    def repository_index(self, ready_only: bool = False) -> list[dict]:
        rows = [{"name": n, "version": "1", "state": "READY", "reason": ""} for n in sorted(self.models)]
        if not ready_only:
            rows.append({"name": "never_loaded"})
        return rows

    async def load_model(self, name: str, parameters: dict | None = None) -> None:
        if name == "broken":
            raise invalid("failed to load 'broken': no model file")
        self.loads.append((name, parameters))

    async def unload_model(self, name: str, unload_dependents: bool = False) -> None:
        if name not in self.models:
            raise invalid(f"failed to unload '{name}', Model to be unloaded has not been served")
        self.unloads.append((name, unload_dependents))

    # --- shared memory ------------------------------------------------------------------------------
    def _shm_allowed(self) -> None:
        if not self.options.allow_client_shm:
            raise ServerError(ErrorCode.UNSUPPORTED, "client shared memory is disabled on this server")

    def register_system_shm(self, name: str, key: str, offset: int, byte_size: int) -> None:
        self._shm_allowed()
        if name in self.system_shm or name in self.cuda_shm:
            raise ServerError(ErrorCode.ALREADY_EXISTS, f"shared memory region '{name}' already in manager")
        self.system_shm[name] = {"name": name, "key": key, "offset": offset, "byte_size": byte_size}

    def system_shm_status(self, name: str = "") -> list[dict]:
        if name:
            if name not in self.system_shm:
                raise not_found(f"Unable to find system shared memory region: '{name}'")
            return [self.system_shm[name]]
        return list(self.system_shm.values())

    def unregister_system_shm(self, name: str = "") -> None:
        self._shm_allowed()
        if name:
            self.system_shm.pop(name, None)
        else:
            self.system_shm.clear()

    def register_cuda_shm(self, name: str, raw_handle: bytes, device_id: int, byte_size: int) -> None:
        self._shm_allowed()
        self.cuda_shm[name] = {"name": name, "device_id": device_id, "byte_size": byte_size, "raw": raw_handle}

    def cuda_shm_status(self, name: str = "") -> list[dict]:
        rows = [{k: v for k, v in r.items() if k != "raw"} for r in self.cuda_shm.values()]
        return [r for r in rows if not name or r["name"] == name]

    def unregister_cuda_shm(self, name: str = "") -> None:
        self._shm_allowed()
        if name:
            self.cuda_shm.pop(name, None)
        else:
            self.cuda_shm.clear()

    # --- logging & trace ----------------------------------------------------------------------------
    def log_settings(self) -> dict:
        return dict(self._log)

    def update_log_settings(self, settings: dict) -> dict:
        for key, value in settings.items():
            if key not in self._log:
                raise invalid(f"logging setting '{key}' is unknown")
            if key == "log_format" and value not in ("default", "ISO8601"):
                raise invalid(f"invalid argument for log_format, got '{value}'")
            self._log[key] = value
        return dict(self._log)

    def trace_settings(self, model: str = "") -> dict:
        merged = dict(self._trace[""])
        merged.update(self._trace.get(model, {}))
        return merged

    def update_trace_settings(self, model: str, settings: dict) -> dict:
        if model:
            self._model(model)
        target = self._trace.setdefault(model, {})
        for key, value in settings.items():
            if key == "trace_rate" and value is not None and not str(value).isdigit():
                raise invalid(f"Unable to parse 'trace_rate', got: {value}")
            if value is None:
                target.pop(key, None)
            else:
                target[key] = value
        return self.trace_settings(model)


def _wire(arr: np.ndarray) -> str:
    from tritonpy.proto import dtypes

    return dtypes.numpy_to_wire(arr.dtype)


def _as_bytes(arr: np.ndarray) -> np.ndarray:
    out = np.empty(arr.shape, dtype=np.object_)
    out.reshape(-1)[:] = [str(int(v)).encode() for v in arr.reshape(-1)]
    return out


def _classify(name: str, arr: np.ndarray, top: int) -> ResponseTensor:
    """Triton's classification output: per batch row, the top-N "value:index" strings."""
    rows = arr.reshape(arr.shape[0], -1) if arr.ndim > 1 else arr.reshape(1, -1)
    n = min(top, rows.shape[1])
    out = np.empty((rows.shape[0], n), dtype=np.object_)
    for r, row in enumerate(rows):
        idx = np.argsort(-row, kind="stable")[:n]
        out[r] = [f"{float(row[i]):f}:{int(i)}".encode() for i in idx]
    shape = list(out.shape) if arr.ndim > 1 else [n]
    return ResponseTensor(name=name, datatype="BYTES", shape=shape, data=out.reshape(shape))


class ThreadedGrpc:
    """Runs `start_grpc(fake, options)` on a private event loop in a daemon thread."""

    def __init__(self, fake: Any, options: ServerOptions | None = None, *, address: str = "127.0.0.1") -> None:
        self.fake = fake
        self.options = options or ServerOptions()
        self.options.grpc_address = address
        self.options.grpc_port = free_port()
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="tritonpy-test-grpc", daemon=True)
        self._endpoint: Any = None

    @property
    def url(self) -> str:
        host = self.options.grpc_address
        host = f"[{host}]" if ":" in host else host
        return f"{host}:{self.options.grpc_port}"

    def start(self) -> "ThreadedGrpc":
        from tritonpy.frontends.grpc.server import start_grpc

        self._thread.start()
        self._endpoint = self.run(start_grpc(self.fake, self.options))
        return self

    def run(self, coro: Any, timeout: float = 30.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def call(self, fn: Callable[[], Any]) -> Any:
        """Run a plain function on the server loop (for asyncio objects the fake owns)."""

        async def go() -> Any:
            return fn()

        return self.run(go())

    def stop(self) -> None:
        if self._endpoint is not None:
            self.run(self._endpoint.stop(0))
            self._endpoint = None
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()
