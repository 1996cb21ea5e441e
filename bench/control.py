"""The non-inference calls the benchmark makes: model metadata/config, statistics, shared-memory
registration; over HTTP (aiohttp) or gRPC (grpc.aio), whichever protocol the load uses, so the tool
needs only the one endpoint the user gave it, on tritonpy and on NVIDIA Triton alike.
"""
from __future__ import annotations

import abc
import dataclasses
import urllib.parse
from typing import Any

import aiohttp
import grpc
from google.protobuf import json_format

from tritonpy.proto import grpc_service_pb2 as pb
from tritonpy.proto import grpc_service_pb2_grpc as pb_grpc

from .model_io import BenchError

GRPC_OPTIONS = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]


@dataclasses.dataclass(frozen=True, slots=True)
class StatsSnapshot:
    """Cumulative counters of the statistics extension for one model (all versions summed)."""
    success_count: int = 0
    success_ns: int = 0
    fail_count: int = 0
    queue_ns: int = 0
    compute_input_ns: int = 0
    compute_infer_ns: int = 0
    compute_output_ns: int = 0
    inference_count: int = 0
    execution_count: int = 0

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> "StatsSnapshot":
        totals = {f.name: 0 for f in dataclasses.fields(cls)}
        for model in doc.get("model_stats", []):
            inf = model.get("inference_stats", {})
            totals["success_count"] += int(inf.get("success", {}).get("count", 0))
            totals["success_ns"] += int(inf.get("success", {}).get("ns", 0))
            totals["fail_count"] += int(inf.get("fail", {}).get("count", 0))
            for key in ("queue", "compute_input", "compute_infer", "compute_output"):
                totals[f"{key}_ns"] += int(inf.get(key, {}).get("ns", 0))
            totals["inference_count"] += int(model.get("inference_count", 0))
            totals["execution_count"] += int(model.get("execution_count", 0))
        return cls(**totals)

    def minus(self, older: "StatsSnapshot") -> "StatsSnapshot":
        return StatsSnapshot(**{f.name: getattr(self, f.name) - getattr(older, f.name)
                                for f in dataclasses.fields(self)})


class Control(abc.ABC):
    """Protocol-neutral: metadata, config, stats, shm registration."""

    @abc.abstractmethod
    async def metadata(self) -> dict[str, Any]: ...
    @abc.abstractmethod
    async def max_batch_size(self) -> int: ...
    @abc.abstractmethod
    async def stats(self) -> StatsSnapshot: ...
    @abc.abstractmethod
    async def register_system_shm(self, name: str, key: str, size: int) -> None: ...
    @abc.abstractmethod
    async def unregister_system_shm(self, name: str) -> None: ...
    @abc.abstractmethod
    async def server_metadata(self) -> dict[str, Any]: ...
    @abc.abstractmethod
    async def close(self) -> None: ...


class HttpControl(Control):
    def __init__(self, url: str, model: str, version: str) -> None:
        self._base = f"http://{url}"
        self._model_path = f"/v2/models/{urllib.parse.quote(model, safe='')}"
        if version:
            self._model_path += f"/versions/{urllib.parse.quote(version, safe='')}"
        self._model = model
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60))

    async def _call(self, method: str, path: str, body: Any = None) -> dict[str, Any]:
        try:
            async with self._session.request(method, self._base + path, json=body) as resp:
                text = await resp.text()
                doc: dict[str, Any] = {}
                if text:
                    try:
                        doc = await resp.json(content_type=None)
                    except ValueError:
                        doc = {"error": text}
                if resp.status != 200:
                    raise BenchError(f"{method} {path} -> HTTP {resp.status}: {doc.get('error', text)}")
                return doc
        except aiohttp.ClientError as exc:
            raise BenchError(f"cannot reach the server at {self._base}: {exc}") from None

    async def metadata(self) -> dict[str, Any]:
        return await self._call("GET", self._model_path)

    async def max_batch_size(self) -> int:
        doc = await self._call("GET", self._model_path + "/config")
        return int(doc.get("max_batch_size", 0))

    async def stats(self) -> StatsSnapshot:
        return StatsSnapshot.from_json(await self._call("GET", self._model_path + "/stats"))

    async def register_system_shm(self, name: str, key: str, size: int) -> None:
        await self._call("POST", f"/v2/systemsharedmemory/region/{name}/register",
                         {"key": key, "offset": 0, "byte_size": size})

    async def unregister_system_shm(self, name: str) -> None:
        await self._call("POST", f"/v2/systemsharedmemory/region/{name}/unregister")

    async def server_metadata(self) -> dict[str, Any]:
        return await self._call("GET", "/v2")

    async def close(self) -> None:
        await self._session.close()


class GrpcControl(Control):
    def __init__(self, url: str, model: str, version: str) -> None:
        self._channel = grpc.aio.insecure_channel(url, options=GRPC_OPTIONS)
        # grpcio-tools generates the stub without type hints.
        self._stub = pb_grpc.GRPCInferenceServiceStub(self._channel)  # type: ignore[no-untyped-call]
        self._url, self._model, self._version = url, model, version

    async def _call(self, rpc: str, request: Any) -> Any:
        try:
            return await getattr(self._stub, rpc)(request, timeout=60)
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.UNAVAILABLE:
                raise BenchError(f"cannot reach the server at {self._url}: {exc.details()}") from None
            raise BenchError(f"{rpc} -> {exc.code().name}: {exc.details()}") from None

    @staticmethod
    def _dict(message: Any) -> dict[str, Any]:
        return json_format.MessageToDict(message, preserving_proto_field_name=True)

    async def metadata(self) -> dict[str, Any]:
        resp = await self._call("ModelMetadata", pb.ModelMetadataRequest(name=self._model, version=self._version))
        return {
            "name": resp.name,
            "inputs": [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in resp.inputs],
            "outputs": [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in resp.outputs],
        }

    async def max_batch_size(self) -> int:
        resp = await self._call("ModelConfig", pb.ModelConfigRequest(name=self._model, version=self._version))
        return int(resp.config.max_batch_size)

    async def stats(self) -> StatsSnapshot:
        resp = await self._call("ModelStatistics",
                                pb.ModelStatisticsRequest(name=self._model, version=self._version))
        return StatsSnapshot.from_json(self._dict(resp))

    async def register_system_shm(self, name: str, key: str, size: int) -> None:
        await self._call("SystemSharedMemoryRegister",
                         pb.SystemSharedMemoryRegisterRequest(name=name, key=key, offset=0, byte_size=size))

    async def unregister_system_shm(self, name: str) -> None:
        await self._call("SystemSharedMemoryUnregister", pb.SystemSharedMemoryUnregisterRequest(name=name))

    async def server_metadata(self) -> dict[str, Any]:
        return self._dict(await self._call("ServerMetadata", pb.ServerMetadataRequest()))

    async def close(self) -> None:
        await self._channel.close()


def make_control(protocol: str, url: str, model: str, version: str) -> Control:
    return GrpcControl(url, model, version) if protocol == "grpc" else HttpControl(url, model, version)
