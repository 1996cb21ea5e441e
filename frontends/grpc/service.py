"""`inference.GRPCInferenceService` and `grpc.health.v1.Health` on grpc.aio: translate, call the facade, translate back.

Every handler checks the restricted-protocol rule of its category first (Triton answers UNAVAILABLE),
then maps a `ServerError` to the gRPC status Triton uses. Cancellation is never swallowed: when a
client cancels, grpc.aio cancels the handler task and the CancelledError reaches the core, which drops
a request that is still queued.
"""
from __future__ import annotations

import functools
import logging
from typing import Any, AsyncIterator, Awaitable, Callable, TypeAlias, TypeVar

import grpc
from google.protobuf import json_format

from tritonpy.core.errors import ErrorCode, ServerError, internal, invalid, unsupported
from tritonpy.core.facade import LoadParameters, ServerFacade
from tritonpy.frontends.grpc import auth
from tritonpy.frontends.grpc.codec import decode_request, encode_response
from tritonpy.frontends.grpc.params import param_value
from tritonpy.frontends.grpc.status import HeaderForwarder, Restrictions, grpc_status
from tritonpy.frontends.grpc.stream import StreamSession
from tritonpy.frontends.options import GrpcOptions
from tritonpy.proto import grpc_service_pb2 as pb
from tritonpy.proto import grpc_service_pb2_grpc as pb_grpc
from tritonpy.proto import health_pb2, health_pb2_grpc

log = logging.getLogger("tritonpy.frontends.grpc.service")

DECOUPLED_MESSAGE = "ModelInfer RPC doesn't support models with decoupled transaction policy"
REPOSITORY_NAME_MESSAGE = "'repository_name' specification is not supported"

# --grpc-infer-response-compression-level -> the algorithm gRPC core picks for that level when the
# client accepts both (low: gzip, medium/high: deflate).
COMPRESSION = {
    "none": None,
    "low": grpc.Compression.Gzip,
    "medium": grpc.Compression.Deflate,
    "high": grpc.Compression.Deflate,
}

# The call's context; grpc.aio types it by request and response, which the handlers name already.
Context: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"
Req = TypeVar("Req")
Resp = TypeVar("Resp")
Handler = Callable[["InferenceServicer", Req, Context], Awaitable[Resp]]


def rpc(category: str) -> Callable[[Handler[Req, Resp]], Handler[Req, Resp]]:
    """Wrap a unary handler: restricted-protocol check, then ServerError -> gRPC status."""

    def wrap(fn: Handler[Req, Resp]) -> Handler[Req, Resp]:
        @functools.wraps(fn)
        async def handler(self: InferenceServicer, request: Req, context: Context) -> Resp:
            if self.restrictions:
                denied = self.restrictions.denied(category, context.invocation_metadata())
                if denied is not None:
                    await context.abort(grpc.StatusCode.UNAVAILABLE, denied)
            await auth.enter(self.server, category, context)  # tenancy, next to the restrictions
            try:
                return await fn(self, request, context)
            except ServerError as err:
                failure = err
            except Exception as exc:  # a bug here must not look like a client error
                log.exception("%s failed", fn.__name__)
                failure = internal(f"{fn.__name__} failed: {exc}")
            trailing = auth.retry_after_metadata(failure)
            if trailing:
                context.set_trailing_metadata(trailing)
            await context.abort(grpc_status(failure.code), failure.message)
            raise AssertionError("unreachable: abort() ends the call by raising")

        return handler

    return wrap


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    """One instance per endpoint; holds the facade and the option-derived rules."""

    def __init__(self, server: ServerFacade, options: GrpcOptions) -> None:
        self.server = server
        self.restrictions = Restrictions(options.restricted_protocol)
        self.forwarder = HeaderForwarder(options.header_forward_pattern)
        level = (options.infer_response_compression_level or "none").lower()
        if level not in COMPRESSION:
            raise ValueError(f"invalid gRPC infer response compression level '{level}'")
        self.compression: grpc.Compression | None = COMPRESSION[level]

    def forwarded(self, context: Context) -> dict[str, str] | None:
        return self.forwarder.params(context.invocation_metadata()) if self.forwarder else None

    # --- health ---------------------------------------------------------------------------------
    @rpc("health")
    async def ServerLive(self, request: pb.ServerLiveRequest, context: Context) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=self.server.is_live())

    @rpc("health")
    async def ServerReady(self, request: pb.ServerReadyRequest, context: Context) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self.server.is_ready())

    @rpc("health")
    async def ModelReady(self, request: pb.ModelReadyRequest, context: Context) -> pb.ModelReadyResponse:
        return pb.ModelReadyResponse(ready=await self.server.model_ready(request.name, request.version))

    # --- metadata & config ----------------------------------------------------------------------
    @rpc("metadata")
    async def ServerMetadata(self, request: pb.ServerMetadataRequest, context: Context) -> pb.ServerMetadataResponse:
        meta = self.server.metadata()
        return pb.ServerMetadataResponse(
            name=meta.get("name", ""), version=meta.get("version", ""), extensions=meta.get("extensions", [])
        )

    @rpc("metadata")
    async def ModelMetadata(self, request: pb.ModelMetadataRequest, context: Context) -> pb.ModelMetadataResponse:
        meta = self.server.model_metadata(request.name, request.version)
        out = pb.ModelMetadataResponse(
            name=meta.get("name", ""), versions=meta.get("versions", []), platform=meta.get("platform", "")
        )
        for kind in ("inputs", "outputs"):
            target = getattr(out, kind)
            for tensor in meta.get(kind, []):
                target.add(name=tensor["name"], datatype=tensor["datatype"], shape=tensor.get("shape", []))
        return out

    @rpc("model-config")
    async def ModelConfig(self, request: pb.ModelConfigRequest, context: Context) -> pb.ModelConfigResponse:
        out = pb.ModelConfigResponse()
        out.config.CopyFrom(self.server.model_config(request.name, request.version))
        return out

    @rpc("statistics")
    async def ModelStatistics(self, request: pb.ModelStatisticsRequest, context: Context) -> pb.ModelStatisticsResponse:
        stats = self.server.model_statistics(request.name, request.version)
        try:
            return json_format.ParseDict({"model_stats": stats}, pb.ModelStatisticsResponse(),
                                         ignore_unknown_fields=True)
        except json_format.ParseError as exc:
            raise internal(f"statistics could not be converted: {exc}") from exc

    # --- inference ------------------------------------------------------------------------------
    @rpc("inference")
    async def ModelInfer(self, request: pb.ModelInferRequest, context: Context) -> pb.ModelInferResponse:
        if self.compression is not None:
            context.set_compression(self.compression)
        server = self.server
        # The model and the caller's rights are looked up once, here; `infer` reuses the target.
        target = server.resolve(request.model_name, request.model_version)
        if target.decoupled:
            raise unsupported(DECOUPLED_MESSAGE)
        infer_request, _ = decode_request(request, self.forwarded(context))
        response = await server.infer(infer_request, target)
        try:
            return encode_response(response)
        finally:
            response.release()

    async def ModelStreamInfer(self, request_iterator: AsyncIterator[pb.ModelInferRequest], context: Context) -> None:
        if self.restrictions:
            denied = self.restrictions.denied("inference", context.invocation_metadata())
            if denied is not None:
                await context.abort(grpc.StatusCode.UNAVAILABLE, denied)
        await auth.enter(self.server, "inference", context)
        if self.compression is not None:
            context.set_compression(self.compression)
        await StreamSession(self, context).run(request_iterator)

    # --- model repository -----------------------------------------------------------------------
    @rpc("model-repository")
    async def RepositoryIndex(self, request: pb.RepositoryIndexRequest, context: Context) -> pb.RepositoryIndexResponse:
        if request.repository_name:
            raise unsupported(REPOSITORY_NAME_MESSAGE)
        out = pb.RepositoryIndexResponse()
        for entry in self.server.repository_index(ready_only=request.ready):
            out.models.add(
                name=entry.get("name", ""), version=str(entry.get("version", "") or ""),
                state=entry.get("state", "") or "", reason=entry.get("reason", "") or "",
            )
        return out

    @rpc("model-repository")
    async def RepositoryModelLoad(
        self, request: pb.RepositoryModelLoadRequest, context: Context
    ) -> pb.RepositoryModelLoadResponse:
        if request.repository_name:
            raise unsupported(REPOSITORY_NAME_MESSAGE)
        parameters: LoadParameters = {}
        for key, param in request.parameters.items():
            kind = param.WhichOneof("parameter_choice")
            if key == "config":
                if kind != "string_param":
                    raise invalid(f"invalid value type for load parameter '{key}', expected string_param.")
                parameters[key] = param.string_param
            elif key.startswith("file:"):
                if kind != "bytes_param":
                    raise invalid(f"invalid value type for load parameter '{key}', expected bytes_param.")
                parameters[key] = param.bytes_param
            else:
                raise invalid(f"unrecognized load parameter '{key}'.")
        await self.server.load_model(request.model_name, parameters or None)
        return pb.RepositoryModelLoadResponse()

    @rpc("model-repository")
    async def RepositoryModelUnload(
        self, request: pb.RepositoryModelUnloadRequest, context: Context
    ) -> pb.RepositoryModelUnloadResponse:
        if request.repository_name:
            raise unsupported(REPOSITORY_NAME_MESSAGE)
        unload_dependents = False
        if "unload_dependents" in request.parameters:
            param = request.parameters["unload_dependents"]
            if param.WhichOneof("parameter_choice") != "bool_param":
                raise invalid("invalid value type for 'unload_dependents' parameter, expected bool_param.")
            unload_dependents = param.bool_param
        await self.server.unload_model(request.model_name, unload_dependents=unload_dependents)
        return pb.RepositoryModelUnloadResponse()

    # --- shared memory --------------------------------------------------------------------------
    @rpc("shared-memory")
    async def SystemSharedMemoryStatus(
        self, request: pb.SystemSharedMemoryStatusRequest, context: Context
    ) -> pb.SystemSharedMemoryStatusResponse:
        out = pb.SystemSharedMemoryStatusResponse()
        for region in self.server.system_shm_status(request.name):
            out.regions[region["name"]].CopyFrom(
                pb.SystemSharedMemoryStatusResponse.RegionStatus(
                    name=region["name"], key=region.get("key", ""), offset=int(region.get("offset", 0)),
                    byte_size=int(region.get("byte_size", 0)),
                )
            )
        return out

    @rpc("shared-memory")
    async def SystemSharedMemoryRegister(
        self, request: pb.SystemSharedMemoryRegisterRequest, context: Context
    ) -> pb.SystemSharedMemoryRegisterResponse:
        self.server.register_system_shm(request.name, request.key, request.offset, request.byte_size)
        return pb.SystemSharedMemoryRegisterResponse()

    @rpc("shared-memory")
    async def SystemSharedMemoryUnregister(
        self, request: pb.SystemSharedMemoryUnregisterRequest, context: Context
    ) -> pb.SystemSharedMemoryUnregisterResponse:
        self.server.unregister_system_shm(request.name)
        return pb.SystemSharedMemoryUnregisterResponse()

    @rpc("shared-memory")
    async def CudaSharedMemoryStatus(
        self, request: pb.CudaSharedMemoryStatusRequest, context: Context
    ) -> pb.CudaSharedMemoryStatusResponse:
        out = pb.CudaSharedMemoryStatusResponse()
        for region in self.server.cuda_shm_status(request.name):
            out.regions[region["name"]].CopyFrom(
                pb.CudaSharedMemoryStatusResponse.RegionStatus(
                    name=region["name"], device_id=int(region.get("device_id", 0)),
                    byte_size=int(region.get("byte_size", 0)),
                )
            )
        return out

    @rpc("shared-memory")
    async def CudaSharedMemoryRegister(
        self, request: pb.CudaSharedMemoryRegisterRequest, context: Context
    ) -> pb.CudaSharedMemoryRegisterResponse:
        self.server.register_cuda_shm(request.name, request.raw_handle, request.device_id, request.byte_size)
        return pb.CudaSharedMemoryRegisterResponse()

    @rpc("shared-memory")
    async def CudaSharedMemoryUnregister(
        self, request: pb.CudaSharedMemoryUnregisterRequest, context: Context
    ) -> pb.CudaSharedMemoryUnregisterResponse:
        self.server.unregister_cuda_shm(request.name)
        return pb.CudaSharedMemoryUnregisterResponse()

    # --- trace & logging ------------------------------------------------------------------------
    @rpc("trace")
    async def TraceSetting(self, request: pb.TraceSettingRequest, context: Context) -> pb.TraceSettingResponse:
        if len(request.settings):
            update: dict[str, Any] = {}
            for key, setting in request.settings.items():
                values = list(setting.value)
                if not values:
                    update[key] = None  # an empty list clears the setting
                elif key == "trace_level":
                    update[key] = values
                elif len(values) == 1:
                    update[key] = values[0]
                else:
                    raise invalid(f"expect only 1 value for '{key}'")
            current = self.server.update_trace_settings(request.model_name, update)
        else:
            current = self.server.trace_settings(request.model_name)
        out = pb.TraceSettingResponse()
        for key, value in current.items():
            if value is None:
                continue
            values = [str(v) for v in value] if isinstance(value, (list, tuple)) else [str(value)]
            out.settings[key].value.extend(values)
        return out

    @rpc("logging")
    async def LogSettings(self, request: pb.LogSettingsRequest, context: Context) -> pb.LogSettingsResponse:
        if len(request.settings):
            update: dict[str, Any] = {}
            for key, setting in request.settings.items():
                kind = setting.WhichOneof("parameter_choice")
                if key == "log_file":
                    raise ServerError(
                        ErrorCode.UNSUPPORTED, "log file location can not be updated through network protocol"
                    )
                if key in ("log_info", "log_warning", "log_error") and kind != "bool_param":
                    raise invalid(f"expect boolean for '{key}'")
                if key == "log_verbose_level" and kind != "uint32_param":
                    raise invalid(f"expect int32 for '{key}'")
                if key == "log_format" and kind != "string_param":
                    raise invalid(f"expect string for '{key}'")
                update[key] = param_value(setting)
            current = self.server.update_log_settings(update)
        else:
            current = self.server.log_settings()
        out = pb.LogSettingsResponse()
        for key, value in current.items():
            shown = out.settings[key]
            if isinstance(value, bool):
                shown.bool_param = value
            elif isinstance(value, int):
                shown.uint32_param = value
            else:
                shown.string_param = "" if value is None else str(value)
        return out


class HealthServicer(health_pb2_grpc.HealthServicer):
    """The standard gRPC health check: SERVING exactly when the server is ready (Triton calls IsReady)."""

    def __init__(self, server: ServerFacade, restrictions: Restrictions) -> None:
        self.server = server
        self.restrictions = restrictions

    async def Check(
        self, request: health_pb2.HealthCheckRequest, context: Context
    ) -> health_pb2.HealthCheckResponse:
        if self.restrictions:
            denied = self.restrictions.denied("health", context.invocation_metadata())
            if denied is not None:
                await context.abort(grpc.StatusCode.UNAVAILABLE, denied)
        await auth.enter(self.server, "health", context)
        status = health_pb2.HealthCheckResponse
        return status(status=status.SERVING if self.server.is_ready() else status.NOT_SERVING)
