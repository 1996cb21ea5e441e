"""The one surface the frontends call: `ServerFacade`.

HTTP, gRPC, the metrics endpoint and BLS reach the core only through these methods; they translate
their wire formats to and from the core types and nothing more (STYLE.md pattern 6).
`core/server.py:InferenceServer` implements it; so does the frontend tests' fake
(`tests/support/fake_facade.py`), which a test checks against this Protocol method by method.

An inference is two calls that share one lookup: `resolve(name, version)` checks the caller's right
and the model's visibility, finds the model and returns a `ModelTarget` (what a frontend needs to
decode the body, and whether the model is decoupled); `infer(request, target)` then runs the request
without looking the model or the tenant up again. Without a target `infer` resolves by itself (BLS,
the generate extension and anything else that has no body to decode first).
"""
from __future__ import annotations

import dataclasses
from typing import Any, AsyncGenerator, Protocol, TypedDict

from prometheus_client import CollectorRegistry

from tritonpy.core.model.version import ModelIO
from tritonpy.core.observability.metrics import MetricsConfig
from tritonpy.core.errors import ServerError
from tritonpy.core.tenancy.tenants import TenantRegistry
from tritonpy.core.types import InferRequest, InferResponse
from tritonpy.proto import model_config_pb2 as mc

# A JSON document the frontends pass through to the wire unchanged (statistics, model config,
# repository rows, shared-memory status, log and trace settings). Its values are JSON values, which
# Python types only as Any.
JsonObject = dict[str, Any]

# Load parameters: `config` is JSON text, each `file:<path>` is the file's bytes.
LoadParameters = dict[str, str | bytes]

# One step of a response stream: (response or None, is_final).
# (a response, or a non-final error of a decoupled model, or None for an empty final; is_final)
StreamItem = tuple[InferResponse | ServerError | None, bool]


class ServerMetadata(TypedDict):
    name: str
    version: str
    extensions: list[str]


@dataclasses.dataclass(frozen=True, slots=True)
class ModelTarget:
    """A model resolved for one inference request (see the module doc)."""

    name: str
    version: str  # as the client asked for it ("" = the policy's choice)
    io: ModelIO

    @property
    def decoupled(self) -> bool:
        return bool(self.io.decoupled)


class ServerFacade(Protocol):
    """What every frontend may call on the core. Errors are `core.errors.ServerError`."""

    # The tenants file's registry (authentication happens in the frontends); None = open server.
    @property
    def tenants(self) -> TenantRegistry | None: ...

    # --- health & metadata ---------------------------------------------------------------------
    def is_live(self) -> bool: ...

    def is_ready(self) -> bool: ...

    def metadata(self) -> ServerMetadata: ...

    async def model_ready(self, name: str, version: str = "") -> bool: ...

    def model_metadata(self, name: str, version: str = "") -> JsonObject: ...

    def model_config(self, name: str, version: str = "") -> mc.ModelConfig: ...

    def model_config_json(self, name: str, version: str = "") -> JsonObject: ...

    # --- inference -----------------------------------------------------------------------------
    def resolve(self, name: str, version: str = "") -> ModelTarget: ...

    async def infer(self, request: InferRequest, target: ModelTarget | None = None) -> InferResponse: ...

    def infer_stream(
        self, request: InferRequest, target: ModelTarget | None = None
    ) -> AsyncGenerator[StreamItem, None]:
        """Responses of one request as they come; close the generator when done (contextlib.aclosing)."""
        ...

    # --- statistics & repository ---------------------------------------------------------------
    def model_statistics(self, name: str = "", version: str = "") -> list[JsonObject]: ...

    def repository_index(self, ready_only: bool = False) -> list[JsonObject]: ...

    async def load_model(self, name: str, parameters: LoadParameters | None = None) -> None: ...

    async def unload_model(self, name: str, unload_dependents: bool = False) -> None: ...

    # --- shared memory -------------------------------------------------------------------------
    def register_system_shm(self, name: str, key: str, offset: int, byte_size: int) -> None: ...

    def system_shm_status(self, name: str = "") -> list[JsonObject]: ...

    def unregister_system_shm(self, name: str = "") -> None: ...

    def register_cuda_shm(self, name: str, raw_handle: bytes, device_id: int, byte_size: int) -> None: ...

    def cuda_shm_status(self, name: str = "") -> list[JsonObject]: ...

    def unregister_cuda_shm(self, name: str = "") -> None: ...

    # --- logging, trace, metrics ---------------------------------------------------------------
    def log_settings(self) -> JsonObject: ...

    def update_log_settings(self, settings: JsonObject) -> JsonObject: ...

    def trace_settings(self, model: str = "") -> JsonObject: ...

    def update_trace_settings(self, model: str, settings: JsonObject) -> JsonObject: ...

    def metrics_registry(self, config: MetricsConfig, *, cpu_metrics: bool, gpu_metrics: bool) -> CollectorRegistry:
        """The Prometheus registry the metrics endpoint exposes (built once, at endpoint start)."""
        ...


__all__ = ["JsonObject", "LoadParameters", "ModelTarget", "ServerFacade", "ServerMetadata", "StreamItem"]
