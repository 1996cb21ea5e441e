"""The protocol-neutral server facade: HTTP and gRPC call these methods and nothing deeper."""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import shutil
import tempfile
from typing import AsyncGenerator, Iterator

from prometheus_client import CollectorRegistry

from tritonpy.core.observability.custom_metrics import CustomMetrics
from tritonpy.core.instance import cgroups, streams as decoupled
from tritonpy.core.admission import admit_quota, admitted
from tritonpy.core.facade import JsonObject, LoadParameters, ModelTarget, ServerMetadata, StreamItem
from tritonpy.core.tenancy import tenants
from tritonpy.core.repository.config_json import model_metadata as render_metadata
from tritonpy.core.errors import ErrorCode, ServerError, invalid, unavailable, unsupported
from tritonpy.core.observability.log_settings import LogSettings
from tritonpy.core.repository.manager import ModelManager
from tritonpy.core.model.version import ModelVersion
from tritonpy.core.observability.metrics import MetricsConfig, make_registry
from tritonpy.core.options import ServerOptions
from tritonpy.core.tenancy import ownership, views
from tritonpy.core.tenancy.quota import Admission, QuotaBook
from tritonpy.core.shm_registry import ShmRegistry
from tritonpy.core.observability.trace_settings import TraceSettings
from tritonpy.core.types import InferRequest, InferResponse, ShmRef
from tritonpy.proto import model_config_pb2 as mc
from tritonpy.proto.messages import TensorRef
from tritonpy.shm.segment import sweep_orphans

log = logging.getLogger("tritonpy.core.server")

VERSION = "2.73.0"  # the Triton protocol/feature level we follow (reported in server metadata)
EXTENSIONS = [
    "classification",
    "model_repository",
    "model_repository(unload_dependents)",
    "schedule_policy",
    "model_configuration",
    "system_shared_memory",
    "cuda_shared_memory",
    "binary_tensor_data",
    "parameters",
    "statistics",
    "trace",
    "logging",
]


@dataclasses.dataclass(frozen=True, slots=True)
class _Resolved(ModelTarget):
    """What `resolve` found: the model version and the caller, so `infer` need not look again."""

    mv: ModelVersion
    tenant: tenants.Tenant | None


class InferenceServer:
    """Owns the model manager, shared-memory registry, log and trace settings; implements
    `core.facade.ServerFacade` by delegation (admission: core/admission.py)."""

    def __init__(self, options: ServerOptions) -> None:
        self._cgroups = False  # holds this process's cgroup parents (core/instance/cgroups.py)
        self.options = options
        self.server_id = options.server_id
        self.version = VERSION
        self.extensions = list(EXTENSIONS)
        self.log = LogSettings(
            log_file=options.log_file, log_info=options.log_info, log_warning=options.log_warning,
            log_error=options.log_error, log_verbose_level=options.log_verbose, log_format=options.log_format,
        )
        self.trace = TraceSettings.from_options(options.trace_config)
        self.shm = ShmRegistry(allow_client_shm=options.allow_client_shm)
        # Multi-tenancy (docs/multitenancy.md): None without a tenants file (open, as Triton).
        self.tenants = tenants.TenantRegistry(options.tenants_config) if options.tenants_config else None
        self.quotas = QuotaBook()
        self.runtime_dir = ""
        # What Python models report through pb_utils.MetricFamily, exported at /metrics (per server).
        self.custom_metrics = CustomMetrics()
        self.models: ModelManager | None = None
        self._live = False
        self._exiting = False

    # --- lifecycle ---------------------------------------------------------------------------
    async def start(self) -> list[tuple[str, str]]:
        """Load models per the control mode; returns (model, reason) for the ones that failed."""
        self.log.apply()
        swept = sweep_orphans()
        if swept:
            log.info("removed %d shared-memory segment(s) left by a server that was killed", len(swept))
        self.runtime_dir = tempfile.mkdtemp(prefix="tritonpy-")
        if not self._cgroups:  # the start-up line naming what enforces worker limits (cgroups.py)
            self._cgroups = True
            log.info("worker limits: %s", cgroups.acquire())
        # `bls_router=self`: Python models' BLS calls run through this server (core/instance/bls.py).
        self.models = ModelManager(
            self.options, runtime_dir=self.runtime_dir, resolve_shm=self._resolve_shm, bls_router=self,
            custom_metrics=self.custom_metrics,
        )
        if self.tenants is not None:
            self.tenants.start()
        failures = await self.models.startup()
        self._live = True
        return failures

    def begin_shutdown(self) -> None:
        """Readiness goes false at once; requests in flight carry on."""
        self._exiting = True

    async def stop(self, timeout: float | None = None) -> None:
        self._exiting = True
        if self.tenants is not None:
            await self.tenants.stop()
        if self.models is not None:
            await self.models.shutdown(self.options.exit_timeout_secs if timeout is None else timeout)
        self._live = False
        if self._cgroups:
            self._cgroups = False
            cgroups.release()
        if self.runtime_dir:
            shutil.rmtree(self.runtime_dir, ignore_errors=True)
        self.log.close()

    # --- health & metadata -------------------------------------------------------------------
    def is_live(self) -> bool:
        return self._live and not self._exiting

    def is_ready(self) -> bool:
        if not self.is_live() or self.models is None:
            return False
        if self.options.strict_readiness:
            return self.models.all_ready()
        return True

    def metadata(self) -> ServerMetadata:
        return {"name": self.server_id, "version": self.version, "extensions": list(self.extensions)}

    def _models(self) -> ModelManager:
        if self.models is None:
            raise unavailable("Server is not ready")
        return self.models

    async def model_ready(self, name: str, version: str = "") -> bool:
        if version and not version.isdigit():
            raise invalid(f"failed to get model version from specified version string '{version}'")
        if not tenants.may_see(name):
            return False  # what an unknown model answers
        mv = self._models().find(name, version)
        return mv is not None and await mv.ready()

    def model_metadata(self, name: str, version: str = "") -> JsonObject:
        tenants.check_visible(name)
        mv = self._models().get(name, version)
        versions = [str(v) for v in self._models().entries[name].ready_versions()]
        return render_metadata(mv.config, versions)

    def model_config(self, name: str, version: str = "") -> mc.ModelConfig:
        tenants.check_visible(name)
        return self._models().get(name, version).config

    def model_config_json(self, name: str, version: str = "") -> JsonObject:
        tenants.check_visible(name)
        return self._models().get(name, version).config_json

    # --- inference ---------------------------------------------------------------------------
    def resolve(self, name: str, version: str = "") -> _Resolved:
        """The caller's right and the model's visibility, then the model: once per request."""
        tenant = tenants.require("inference")
        tenants.check_visible(name)
        mv = self._models().get(name, version)
        assert mv.io is not None
        return _Resolved(name=name, version=version, io=mv.io, mv=mv, tenant=tenant)

    def _target(self, request: InferRequest, target: ModelTarget | None) -> _Resolved:
        # A target stands for this request's model, looked up for this caller; anything else is
        # looked up again. So is a version that stopped serving since (a reload swapped it out while
        # the body was read): the fresh lookup finds the one serving now, as a client expects.
        if (isinstance(target, _Resolved) and target.name == request.model_name
                and target.version == request.model_version and target.tenant is tenants.CURRENT.get()
                and target.mv.serving):
            return target
        return self.resolve(request.model_name, request.model_version)

    async def infer(self, request: InferRequest, target: ModelTarget | None = None) -> InferResponse:
        resolved = self._target(request, target)
        if resolved.decoupled:
            raise unsupported("ModelInfer RPC doesn't support models with decoupled transaction policy")
        return await self._infer_admitted(resolved, request)

    async def infer_stream(
        self, request: InferRequest, target: ModelTarget | None = None
    ) -> AsyncGenerator[StreamItem, None]:
        """Responses of one request as they come: (response, is_final)."""
        resolved = self._target(request, target)
        if resolved.decoupled:
            # 0..N responses as the model sends them (core/instance/streams.py).
            request.stream = decoupled.ResponseStream()
            label = f"{request.model_name}:{request.id}"
            async with contextlib.aclosing(
                decoupled.run_decoupled(self._infer_admitted(resolved, request), request.stream, label)
            ) as responses:
                async for item in responses:
                    yield item
            return
        response = await self._infer_admitted(resolved, request)
        yield response, True

    async def _infer_admitted(self, resolved: _Resolved, request: InferRequest) -> InferResponse:
        tenant = resolved.tenant
        capacity = self.tenants.queue_capacity if tenant is not None and self.tenants is not None else 0
        async with admitted(request, resolved.mv, tenant, shm=self.shm, quotas=self.quotas,
                            queue_capacity=capacity):
            return await resolved.mv.infer(request)

    # --- model-to-model calls (BLS, ensemble steps): core/tenancy/ownership.py -------------------
    def owner(self, model: str) -> tenants.Tenant | None:
        """The tenant `model` acts as when it calls other models; None = the server."""
        return ownership.owner_of(self.tenants.config, model) if self.tenants is not None else None

    def admit_inner(self, owner: tenants.Tenant, mv: ModelVersion) -> Admission | None:
        """An ensemble step's quota slot, taken from the ensemble's owner."""
        capacity = self.tenants.queue_capacity if self.tenants is not None else 0
        return admit_quota(mv, owner, self.quotas, capacity)

    def _resolve_shm(self, ref: ShmRef, datatype: str, shape: list[int], name: str = "") -> TensorRef:
        tref, _ = self.shm.resolve(ref.region, ref.offset, ref.byte_size, tensor=name)
        tref.name = name
        tref.datatype = datatype
        tref.shape = list(shape)
        return tref

    # --- statistics & repository -------------------------------------------------------------
    def model_statistics(self, name: str = "", version: str = "") -> list[JsonObject]:
        tenants.require("statistics")
        models = self._models()
        if not name:
            return [mv.stats.as_dict() for mv in models.all_versions() if mv.serving and tenants.may_see(mv.name)]
        tenants.check_visible(name)
        entry = models.entries.get(name)
        if entry is None or not entry.versions:
            raise not_found_model(name)
        if version:
            mv = models.get(name, version)
            return [mv.stats.as_dict()]
        return [mv.stats.as_dict() for mv in entry.versions.values() if mv.serving]

    def repository_index(self, ready_only: bool = False) -> list[JsonObject]:
        rows = self._models().index(ready_only)
        for row in rows:  # a worker that died at its memory ceiling: say so in the model's status
            if not row.get("reason") and row.get("version"):
                mv = self._models().find(row["name"], row["version"])
                if mv is not None and mv.stats.last_worker_failure:
                    row["reason"] = f"worker restarted after: {mv.stats.last_worker_failure}"
        if tenants.CURRENT.get() is not None:
            rows = [row for row in rows if tenants.may_see(row["name"])]
        return rows

    async def load_model(self, name: str, parameters: LoadParameters | None = None) -> None:
        tenants.require("model-control")
        if not tenants.may_see(name):  # what loading a name the repository lacks answers
            raise invalid(f"failed to load '{name}', failed to poll from model repository")
        # Tasks the load starts (schedulers, supervisors) outlive this call: they must not carry
        # the caller's tenant, so the load itself runs as the server.
        token = tenants.CURRENT.set(None)
        try:
            await self._models().load(name, parameters)
        finally:
            tenants.CURRENT.reset(token)

    async def unload_model(self, name: str, unload_dependents: bool = False) -> None:
        tenants.require("model-control")
        if not tenants.may_see(name):
            raise invalid(f"failed to unload '{name}', Model to be unloaded has not been served")
        await self._models().unload(name, unload_dependents)

    # --- shared memory -----------------------------------------------------------------------
    # With tenants, region names are stored as '<tenant>/<name>' (tenants.shm_name): one tenant's
    # regions cannot be named, listed or used by another; clients only ever see their own names.
    def register_system_shm(self, name: str, key: str, offset: int, byte_size: int) -> None:
        tenant = tenants.require("shared-memory")
        with _client_names(name):
            # the key is bound to its first registrant (core/shm_registry.py): no tenant reaches
            # another's memory by naming its key
            owner = tenant.name if tenant is not None else None
            self.shm.register_system(tenants.shm_name(name), key, offset, byte_size, owner=owner)

    def system_shm_status(self, name: str = "") -> list[JsonObject]:
        tenants.require("shared-memory")
        with _client_names(name):
            return _own_regions(self.shm.system_status(tenants.shm_name(name)))

    def unregister_system_shm(self, name: str = "") -> None:
        tenants.require("shared-memory")
        if name or tenants.CURRENT.get() is None:
            with _client_names(name):
                self.shm.unregister_system(tenants.shm_name(name))
            return
        for region in tenants.shm_own(r["name"] for r in self.shm.system_status()):
            self.shm.unregister_system(region)

    def register_cuda_shm(self, name: str, raw_handle: bytes, device_id: int, byte_size: int) -> None:
        tenants.require("shared-memory")
        with _client_names(name):
            self.shm.register_cuda(tenants.shm_name(name), raw_handle, device_id, byte_size)

    def cuda_shm_status(self, name: str = "") -> list[JsonObject]:
        tenants.require("shared-memory")
        with _client_names(name):
            return _own_regions(self.shm.cuda_status(tenants.shm_name(name)))

    def unregister_cuda_shm(self, name: str = "") -> None:
        tenants.require("shared-memory")
        if name or tenants.CURRENT.get() is None:
            with _client_names(name):
                self.shm.unregister_cuda(tenants.shm_name(name))
            return
        for region in tenants.shm_own(r["name"] for r in self.shm.cuda_status()):
            self.shm.unregister_cuda(region)

    # --- logging & trace ---------------------------------------------------------------------
    def log_settings(self) -> JsonObject:
        tenants.require("logging")
        return self.log.as_dict()

    def update_log_settings(self, settings: JsonObject) -> JsonObject:
        tenants.require("logging")
        views.require_operator("the log settings")  # server-wide (core/tenancy/views.py)
        return self.log.update(settings)

    def trace_settings(self, model: str = "") -> JsonObject:
        tenants.require("trace")
        if model:
            tenants.check_visible(model)
            self._models().get(model)
        return self.trace.get(model)

    def update_trace_settings(self, model: str, settings: JsonObject) -> JsonObject:
        tenants.require("trace")
        if model:
            tenants.check_visible(model)
            self._models().get(model)
        if isinstance(settings, dict):
            views.check_trace_update(model, settings)  # a tenant: its own models, no file paths
        return self.trace.update(model, settings)

    def metrics_registry(self, config: MetricsConfig, *, cpu_metrics: bool, gpu_metrics: bool) -> CollectorRegistry:
        return make_registry(self, cpu_metrics=cpu_metrics, config=config, gpu_metrics=gpu_metrics)


@contextlib.contextmanager
def _client_names(name: str) -> Iterator[None]:
    """Errors about a namespaced region name show the name the client used."""
    try:
        yield
    except ServerError as exc:
        stored = tenants.shm_name(name)
        if stored != name:
            exc.message = exc.message.replace(stored, name)
            exc.args = (exc.message,)
        raise


def _own_regions(rows: list[JsonObject]) -> list[JsonObject]:
    """Status rows of the caller's regions, under the names it registered them with."""
    names = tenants.shm_own(row["name"] for row in rows)
    return [{**row, "name": names[row["name"]]} for row in rows if row["name"] in names]


def not_found_model(name: str) -> ServerError:
    return ServerError(ErrorCode.NOT_FOUND, f"Request for unknown model: '{name}' is not found")


__all__ = ["InferenceServer", "VERSION", "EXTENSIONS"]
