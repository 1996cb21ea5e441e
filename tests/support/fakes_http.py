"""A fake InferenceServer facade for the HTTP frontend tests: real numpy work, real client shared
memory (mmap of /dev/shm), no worker processes. It validates requests the way the core does
(names, datatypes, shapes, batch size) so the frontend is tested against realistic answers.

Knobs: request parameter `fake_error` = an ErrorCode name makes infer fail with that code;
`fake_delay` = seconds to wait before answering (to test cancellation); `live`/`ready` flags.
Counters: `responses_made`/`responses_released` (every response must be released),
`cancelled` (infer calls cancelled while waiting), `requests` (every InferRequest seen).
"""
from __future__ import annotations

import asyncio
import dataclasses
import math
import mmap
import os
from typing import Any, AsyncIterator, Callable, Iterator

import numpy as np

from tritonpy.core.errors import ErrorCode, ServerError
from tritonpy.core.options import ServerOptions
from tritonpy.core.types import InferRequest, InferResponse, ResponseTensor, ShmRef
from tritonpy.proto import dtypes

Tensors = dict[str, np.ndarray]


@dataclasses.dataclass(slots=True)
class FakeModelIO:
    inputs: dict[str, tuple[str, list[int]]]
    outputs: dict[str, str]
    input_order: list[str]
    max_batch_size: int
    decoupled: bool
    labels: dict[str, list[str]] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class FakeModel:
    name: str
    inputs: list[tuple[str, str, list[int]]]  # (name, datatype, dims without batch)
    outputs: list[tuple[str, str, list[int]]]
    run: Callable[[Tensors, InferRequest], Any]  # -> Tensors, or a list of Tensors when decoupled
    max_batch_size: int = 0
    decoupled: bool = False
    platform: str = "python"

    def io(self) -> FakeModelIO:
        batch = [-1] if self.max_batch_size > 0 else []
        return FakeModelIO(
            inputs={n: (dt, batch + list(d)) for n, dt, d in self.inputs},
            outputs={n: dt for n, dt, _ in self.outputs},
            input_order=[n for n, _, _ in self.inputs],
            max_batch_size=self.max_batch_size,
            decoupled=self.decoupled,
        )


def _add_sub(t: Tensors, _: InferRequest) -> Tensors:
    return {"OUTPUT0": t["INPUT0"] + t["INPUT1"], "OUTPUT1": t["INPUT0"] - t["INPUT1"]}


def _add_sub_strings(t: Tensors, _: InferRequest) -> Tensors:
    a = np.vectorize(lambda b: int(b))(t["INPUT0"]).astype(np.int64)
    b = np.vectorize(lambda b: int(b))(t["INPUT1"]).astype(np.int64)
    to_bytes = np.vectorize(lambda v: str(v).encode(), otypes=[np.object_])
    return {"OUTPUT0": to_bytes(a + b), "OUTPUT1": to_bytes(a - b)}


def _identity(t: Tensors, _: InferRequest) -> Tensors:
    return {"OUTPUT0": t["INPUT0"]}


def _repeat(t: Tensors, _: InferRequest) -> list[Tensors]:
    return [{"OUT": np.array([v], dtype=np.int32)} for v in t["IN"].reshape(-1)]


def _text(t: Tensors, req: InferRequest) -> Tensors:
    text = t["text_input"].reshape(-1)[0]
    return {"text_output": np.array([text[::-1]], dtype=np.object_), "length": np.array([len(text)], np.int32)}


def _text_words(t: Tensors, req: InferRequest) -> Iterator[Tensors]:
    """One response per word; the word FAIL fails the stream after the words before it were sent."""
    text = t["text_input"].reshape(-1)[0]
    for word in text.split():
        if word == b"FAIL":
            raise ServerError(ErrorCode.INTERNAL, "the model failed mid-stream")
        yield {"text_output": np.array([word], dtype=np.object_)}


def default_models() -> dict[str, FakeModel]:
    models = [
        FakeModel("simple", [("INPUT0", "INT32", [16]), ("INPUT1", "INT32", [16])],
                  [("OUTPUT0", "INT32", [16]), ("OUTPUT1", "INT32", [16])], _add_sub, max_batch_size=8),
        FakeModel("add_sub", [("INPUT0", "FP32", [4]), ("INPUT1", "FP32", [4])],
                  [("OUTPUT0", "FP32", [4]), ("OUTPUT1", "FP32", [4])], _add_sub),
        FakeModel("simple_string", [("INPUT0", "BYTES", [16]), ("INPUT1", "BYTES", [16])],
                  [("OUTPUT0", "BYTES", [16]), ("OUTPUT1", "BYTES", [16])], _add_sub_strings, max_batch_size=8),
        FakeModel("repeat_int32", [("IN", "INT32", [-1])], [("OUT", "INT32", [1])], _repeat, decoupled=True),
        FakeModel("text_gen", [("text_input", "BYTES", [1])],
                  [("text_output", "BYTES", [1]), ("length", "INT32", [1])], _text),
        FakeModel("text_words", [("text_input", "BYTES", [1])], [("text_output", "BYTES", [1])],
                  _text_words, decoupled=True),
        FakeModel("two_dynamic", [("INPUT0", "FP32", [-1, -1])], [("OUTPUT0", "FP32", [-1, -1])], _identity),
        FakeModel("batched_fp32", [("INPUT0", "FP32", [-1])], [("OUTPUT0", "FP32", [-1])], _identity,
                  max_batch_size=4),
    ]
    for dt in ("FP32", "FP16", "BF16", "BOOL", "BYTES", "UINT8", "INT8", "INT64", "UINT64", "FP64"):
        dims = [1] if dt == "BYTES" else [-1]
        models.append(FakeModel(f"identity_{dt.lower()}", [("INPUT0", dt, dims)], [("OUTPUT0", dt, dims)], _identity))
    return {m.name: m for m in models}


def _err(code: ErrorCode, message: str) -> ServerError:
    return ServerError(code, message)


class FakeServer:
    """Implements the facade contract (docs: /work/helpers/facade.md) over in-process fake models."""

    def __init__(self, options: ServerOptions | None = None) -> None:
        self.options = options or ServerOptions(allow_client_shm=True)
        self.server_id = self.options.server_id
        self.version = "2.73.0"
        self.extensions = ["classification", "model_repository", "binary_tensor_data", "statistics"]
        self.models = default_models()
        self.live = True
        self.ready = True
        self.requests: list[InferRequest] = []
        self.responses_made = 0
        self.responses_released = 0
        self.cancelled = 0
        self.inference_count: dict[str, int] = {}
        self.loads: list[tuple[str, Any]] = []
        self.unloads: list[tuple[str, bool]] = []
        self.system_regions: dict[str, tuple[str, int, int]] = {}
        self.cuda_regions: dict[str, tuple[bytes, int, int]] = {}
        self.logs: dict[str, Any] = {"log_file": "", "log_info": True, "log_warning": True, "log_error": True,
                                     "log_verbose_level": 0, "log_format": "default"}
        self.trace_global: dict[str, Any] = {"trace_level": ["OFF"], "trace_rate": "1000", "trace_count": "-1",
                                             "log_frequency": "0", "trace_file": ""}
        self.trace_models: dict[str, dict[str, Any]] = {}

    # --- health & metadata -------------------------------------------------------------------
    def is_live(self) -> bool:
        return self.live

    def is_ready(self) -> bool:
        return self.live and self.ready

    def metadata(self) -> dict:
        return {"name": self.server_id, "version": self.version, "extensions": list(self.extensions)}

    def _model(self, name: str, version: str = "") -> FakeModel:
        model = self.models.get(name)
        if model is None:
            raise _err(ErrorCode.NOT_FOUND, f"Request for unknown model: '{name}' is not found")
        if version not in ("", "1"):
            raise _err(ErrorCode.NOT_FOUND, f"Request for unknown model: '{name}' version {version} is not found")
        return model

    async def model_ready(self, name: str, version: str = "") -> bool:
        await asyncio.sleep(0)
        return self.ready and name in self.models and version in ("", "1")

    def model_metadata(self, name: str, version: str = "") -> dict:
        m = self._model(name, version)
        batch = [-1] if m.max_batch_size > 0 else []
        return {
            "name": m.name, "versions": ["1"], "platform": m.platform,
            "inputs": [{"name": n, "datatype": dt, "shape": batch + d} for n, dt, d in m.inputs],
            "outputs": [{"name": n, "datatype": dt, "shape": batch + d} for n, dt, d in m.outputs],
        }

    def model_config_json(self, name: str, version: str = "") -> dict:
        m = self._model(name, version)
        return {
            "name": m.name, "platform": m.platform, "backend": "python", "max_batch_size": m.max_batch_size,
            "input": [{"name": n, "data_type": dtypes.WIRE_TO_CONFIG[dt], "dims": d} for n, dt, d in m.inputs],
            "output": [{"name": n, "data_type": dtypes.WIRE_TO_CONFIG[dt], "dims": d} for n, dt, d in m.outputs],
            "model_transaction_policy": {"decoupled": m.decoupled},
        }

    def is_decoupled(self, name: str, version: str = "") -> bool:
        return self._model(name, version).decoupled

    def model_io(self, name: str, version: str = "") -> FakeModelIO:
        return self._model(name, version).io()

    # --- inference ---------------------------------------------------------------------------
    def _validate(self, m: FakeModel, req: InferRequest) -> Tensors:
        spec = {n: (dt, d) for n, dt, d in m.inputs}
        if len(req.inputs) != len(spec):
            raise _err(ErrorCode.INVALID_ARG,
                       f"expected {len(spec)} inputs but got {len(req.inputs)} inputs for model '{m.name}'")
        tensors: Tensors = {}
        for t in req.inputs:
            if t.name not in spec:
                raise _err(ErrorCode.INVALID_ARG, f"unexpected inference input '{t.name}' for model '{m.name}'")
            dt, dims = spec[t.name]
            if t.datatype != dt:
                raise _err(ErrorCode.INVALID_ARG, f"inference input data-type is '{t.datatype}', model expects "
                                                  f"'{dt}' for '{m.name}'")
            shape = list(t.shape)
            if m.max_batch_size > 0:
                if not shape or shape[0] > m.max_batch_size:
                    raise _err(ErrorCode.INVALID_ARG,
                               f"inference request batch-size must be <= {m.max_batch_size} for '{m.name}'")
                shape = shape[1:]
            if len(shape) != len(dims) or any(d != -1 and d != s for d, s in zip(dims, shape)):
                raise _err(ErrorCode.INVALID_ARG, f"unexpected shape for input '{t.name}' for model '{m.name}'")
            if t.shm is not None:
                if t.data is not None:
                    raise _err(ErrorCode.INVALID_ARG, "input has both data and shared memory")
                tensors[t.name] = self._read_shm(t.shm, dt, list(t.shape))
            else:
                assert t.data is not None
                assert list(t.data.shape) == list(t.shape), (t.data.shape, t.shape)
                tensors[t.name] = t.data
        return tensors

    def _maybe_fail(self, req: InferRequest) -> None:
        code = req.parameters.get("fake_error")
        if code:
            raise _err(ErrorCode[code], f"fake {code} error")

    def _outputs(self, m: FakeModel, req: InferRequest, result: Tensors) -> list[ResponseTensor]:
        types = {n: dt for n, dt, _ in m.outputs}
        wanted = req.outputs if req.outputs is not None else None
        names = [o.name for o in wanted] if wanted is not None else [n for n, _, _ in m.outputs]
        outs = []
        for i, name in enumerate(names):
            if name not in types:
                raise _err(ErrorCode.INVALID_ARG, f"unexpected inference output '{name}' for model '{m.name}'")
            if name not in result:
                continue
            arr = np.asarray(result[name])
            ro = wanted[i] if wanted is not None else None
            dt = types[name]
            if ro is not None and ro.classification:
                arr, dt = self._classify(arr, ro.classification, m.max_batch_size > 0), "BYTES"
            out = ResponseTensor(name=name, datatype=dt, shape=list(arr.shape), data=arr)
            if ro is not None and ro.shm is not None:
                out.shm = self._write_shm(ro.shm, dt, arr)
                out.data = None
            outs.append(out)
        return outs

    @staticmethod
    def _classify(arr: np.ndarray, n: int, batched: bool) -> np.ndarray:
        rows = arr.reshape(arr.shape[0], -1) if batched else arr.reshape(1, -1)
        k = min(n, rows.shape[1])
        result = np.empty((rows.shape[0], k), dtype=np.object_)
        for r, row in enumerate(rows):
            order = np.argsort(-row.astype(np.float64), kind="stable")[:k]
            for c, idx in enumerate(order):
                result[r, c] = f"{row[idx]}:{idx}".encode()
        return result if batched else result.reshape(k)

    def _response(self, m: FakeModel, req: InferRequest, result: Tensors) -> InferResponse:
        outputs = self._outputs(m, req, result)
        self.responses_made += 1

        def release() -> None:
            self.responses_released += 1

        params = {k: v for k, v in req.parameters.items() if k.startswith("echo_")}
        return InferResponse(model_name=m.name, model_version="1", id=req.id, outputs=outputs,
                             parameters=params, _release=release)

    async def _prepare(self, req: InferRequest) -> tuple[FakeModel, Tensors]:
        self.requests.append(req)
        m = self._model(req.model_name, req.model_version)
        tensors = self._validate(m, req)
        self._maybe_fail(req)
        delay = float(req.parameters.get("fake_delay", 0) or 0)
        try:
            await asyncio.sleep(delay)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        self.inference_count[m.name] = self.inference_count.get(m.name, 0) + 1
        return m, tensors

    async def infer(self, request: InferRequest) -> InferResponse:
        m = self._model(request.model_name, request.model_version)
        if m.decoupled:
            raise _err(ErrorCode.UNSUPPORTED, "ModelInfer RPC doesn't support models with decoupled transaction policy")
        m, tensors = await self._prepare(request)
        return self._response(m, request, m.run(tensors, request))

    async def infer_stream(self, request: InferRequest) -> AsyncIterator[tuple[InferResponse | None, bool]]:
        m, tensors = await self._prepare(request)
        if not m.decoupled:
            yield self._response(m, request, m.run(tensors, request)), True
            return
        for result in m.run(tensors, request):
            await asyncio.sleep(0)
            yield self._response(m, request, result), False
        yield None, True

    # --- client shared memory (real /dev/shm mappings) ---------------------------------------
    def _region(self, ref: ShmRef) -> tuple[str, int, int]:
        region = self.system_regions.get(ref.region)
        if region is None:
            raise _err(ErrorCode.NOT_FOUND, f"Unable to find shared memory region: '{ref.region}'")
        key, offset, size = region
        if ref.offset + ref.byte_size > size:
            raise _err(ErrorCode.INVALID_ARG, f"shared memory region '{ref.region}' is too small")
        return key, offset + ref.offset, ref.byte_size

    def _read_shm(self, ref: ShmRef, dt: str, shape: list[int]) -> np.ndarray:
        key, start, size = self._region(ref)
        with open("/dev/shm/" + key.lstrip("/"), "rb") as f, mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ) as mm:
            raw = bytes(mm[start:start + size])
        if dt == "BYTES":
            return dtypes.deserialize_bytes(raw, math.prod(shape)).reshape(shape)
        return np.frombuffer(raw, dtype=dtypes.wire_to_numpy(dt), count=math.prod(shape)).reshape(shape)

    def _write_shm(self, ref: ShmRef, dt: str, arr: np.ndarray) -> ShmRef:
        key, start, size = self._region(ref)
        raw = dtypes.serialize_bytes(arr) if dt == "BYTES" else np.ascontiguousarray(arr).tobytes()
        if len(raw) > size:
            raise _err(ErrorCode.INVALID_ARG, f"shared memory size for output is too small ({size} < {len(raw)})")
        with open("/dev/shm/" + key.lstrip("/"), "r+b") as f, mmap.mmap(f.fileno(), 0) as mm:
            mm[start:start + len(raw)] = raw
        return ShmRef(region=ref.region, byte_size=len(raw), offset=ref.offset)

    def register_system_shm(self, name: str, key: str, offset: int, byte_size: int) -> None:
        if not self.options.allow_client_shm:
            raise _err(ErrorCode.UNSUPPORTED, "client shared memory is disabled (--allow-client-shm=false)")
        if name in self.system_regions or name in self.cuda_regions:
            raise _err(ErrorCode.ALREADY_EXISTS, f"shared memory region '{name}' already in manager")
        path = "/dev/shm/" + key.lstrip("/")
        if not os.path.exists(path) or os.path.getsize(path) < offset + byte_size:
            raise _err(ErrorCode.INVALID_ARG, f"Unable to open shared memory region: '{key}'")
        self.system_regions[name] = (key, offset, byte_size)

    def system_shm_status(self, name: str = "") -> list[dict]:
        if name and name not in self.system_regions:
            raise _err(ErrorCode.NOT_FOUND, f"Unable to find system shared memory region: '{name}'")
        return [{"name": n, "key": k, "offset": o, "byte_size": s}
                for n, (k, o, s) in self.system_regions.items() if not name or n == name]

    def unregister_system_shm(self, name: str = "") -> None:
        if name:
            self.system_regions.pop(name, None)
        else:
            self.system_regions.clear()

    def register_cuda_shm(self, name: str, raw_handle: bytes, device_id: int, byte_size: int) -> None:
        if name in self.system_regions or name in self.cuda_regions:
            raise _err(ErrorCode.ALREADY_EXISTS, f"shared memory region '{name}' already in manager")
        self.cuda_regions[name] = (raw_handle, device_id, byte_size)

    def cuda_shm_status(self, name: str = "") -> list[dict]:
        return [{"name": n, "device_id": d, "byte_size": s}
                for n, (_, d, s) in self.cuda_regions.items() if not name or n == name]

    def unregister_cuda_shm(self, name: str = "") -> None:
        if name:
            self.cuda_regions.pop(name, None)
        else:
            self.cuda_regions.clear()

    # --- statistics, repository, logging, trace ----------------------------------------------
    def model_statistics(self, name: str = "", version: str = "") -> list[dict]:
        names = [self._model(name, version).name] if name else sorted(self.models)
        return [{"name": n, "version": "1", "inference_count": self.inference_count.get(n, 0),
                 "execution_count": self.inference_count.get(n, 0)} for n in names]

    def repository_index(self, ready_only: bool = False) -> list[dict]:
        return [{"name": n, "version": "1", "state": "READY", "reason": ""} for n in sorted(self.models)]

    async def load_model(self, name: str, parameters: dict[str, str | bytes] | None = None) -> None:
        self.loads.append((name, parameters))
        if name not in self.models:
            raise _err(ErrorCode.INVALID_ARG, f"failed to load '{name}', failed to poll from model repository")

    async def unload_model(self, name: str, unload_dependents: bool = False) -> None:
        self.unloads.append((name, unload_dependents))
        if name not in self.models:
            raise _err(ErrorCode.INVALID_ARG, f"failed to unload '{name}', Model to be unloaded has not been served")

    def log_settings(self) -> dict:
        return dict(self.logs)

    def update_log_settings(self, settings: dict) -> dict:
        for key, value in settings.items():
            if key not in self.logs:
                raise _err(ErrorCode.INVALID_ARG, f"unknown log setting '{key}'")
            if key == "log_verbose_level" and (type(value) is not int or value < 0):
                raise _err(ErrorCode.INVALID_ARG, "log_verbose_level must be a non-negative integer")
            if key in ("log_info", "log_warning", "log_error") and type(value) is not bool:
                raise _err(ErrorCode.INVALID_ARG, f"{key} must be a boolean")
            self.logs[key] = value
        return dict(self.logs)

    def trace_settings(self, model: str = "") -> dict:
        if model:
            self._model(model)
        return {**self.trace_global, **self.trace_models.get(model, {})}

    def update_trace_settings(self, model: str, settings: dict) -> dict:
        target = self.trace_global
        if model:
            self._model(model)
            target = self.trace_models.setdefault(model, {})
        for key, value in settings.items():
            if key not in self.trace_global:
                raise _err(ErrorCode.INVALID_ARG, f"unknown trace setting '{key}'")
            if value is None:
                target.pop(key, None)
            else:
                target[key] = value
        return self.trace_settings(model)


class HttpServerThread:
    """The HTTP app serving a FakeServer on 127.0.0.1 from its own event loop in a thread, so the
    blocking tritonclient.http client can run in the test's thread."""

    def __init__(self, server: Any) -> None:
        import threading

        self.server = server
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="http-test-server", daemon=True)
        self.runner: Any = None
        self.port = 0

    def __enter__(self) -> "HttpServerThread":
        from tritonpy.frontends.http.app import start_http

        self._thread.start()
        fut = asyncio.run_coroutine_threadsafe(start_http(self.server, "127.0.0.1", 0), self.loop)
        self.runner = fut.result(timeout=10)
        self.port = self.runner.addresses[0][1]
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.runner is not None:
            asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(timeout=10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
        self.loop.close()

    @property
    def url(self) -> str:
        return f"127.0.0.1:{self.port}"


def http_request(port: int, method: str, path: str, body: bytes | str | None = None,
                 headers: dict[str, str] | None = None, timeout: float = 10.0) -> tuple[int, dict[str, str], bytes]:
    """One plain HTTP/1.1 request with http.client: (status, headers, body)."""
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, {k: v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()
