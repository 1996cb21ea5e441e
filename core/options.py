"""Server options: what the CLI parsed, in one typed object the core and the frontends read."""
from __future__ import annotations

import dataclasses

# (categories, header key, header value)
Restriction = tuple[frozenset[str], str, str]

RESTRICTABLE_CATEGORIES = frozenset(
    {
        "health", "metadata", "inference", "shared-memory", "model-config",
        "model-repository", "statistics", "trace", "logging",
    }
)


@dataclasses.dataclass(slots=True, kw_only=True)
class ServerOptions:
    model_repositories: list[str] = dataclasses.field(default_factory=list)
    server_id: str = "triton"
    # endpoints
    allow_http: bool = True
    allow_grpc: bool = True
    allow_metrics: bool = True
    allow_cpu_metrics: bool = True
    allow_gpu_metrics: bool = True
    http_address: str = "0.0.0.0"
    http_port: int = 8000
    grpc_address: str = "0.0.0.0"
    grpc_port: int = 8001
    metrics_address: str = ""  # "" = same as http_address
    metrics_port: int = 8002
    reuse_http_port: bool = False
    reuse_grpc_port: bool = False
    http_access_log: bool = False
    http_max_input_size: int = 1 << 26
    # Seconds a connection may sit idle or trickle its request headers before it is closed, and
    # the longest silence while a request body arrives (408); 0 = no limit. Like a reverse proxy's
    # client_header/keepalive/client_body timeouts: slowloris and idle floods cannot pin sockets.
    http_idle_timeout: float = 60.0
    http_body_timeout: float = 60.0
    http_restricted_api: list[Restriction] = dataclasses.field(default_factory=list)
    grpc_restricted_protocol: list[Restriction] = dataclasses.field(default_factory=list)
    http_header_forward_pattern: str = ""
    grpc_header_forward_pattern: str = ""
    # gRPC transport
    grpc_keepalive_time: int = 7_200_000
    grpc_keepalive_timeout: int = 20_000
    grpc_keepalive_permit_without_calls: bool = False
    grpc_http2_max_pings_without_data: int = 2
    grpc_http2_min_recv_ping_interval_without_data: int = 300_000
    grpc_http2_max_ping_strikes: int = 2
    grpc_max_connection_age: int = 0  # ms, 0 = unset
    grpc_max_connection_age_grace: int = 0
    grpc_infer_response_compression_level: str = "none"
    grpc_use_ssl: bool = False
    grpc_use_ssl_mutual: bool = False
    grpc_server_cert: str = ""
    grpc_server_key: str = ""
    grpc_root_cert: str = ""
    # models
    model_control_mode: str = "none"  # none | poll | explicit
    load_models: list[str] = dataclasses.field(default_factory=list)
    repository_poll_secs: float = 15.0
    strict_readiness: bool = True
    exit_on_error: bool = True
    exit_timeout_secs: float = 30.0
    autocomplete: bool = True
    model_config_name: str = ""
    # backend name ("" for global keys) -> {key: value}
    backend_config: dict[str, dict[str, str]] = dataclasses.field(default_factory=dict)
    allow_client_shm: bool = False
    # logging
    log_verbose: int = 0
    log_info: bool = True
    log_warning: bool = True
    log_error: bool = True
    log_format: str = "default"
    log_file: str = ""
    # metrics / trace
    metrics_interval_ms: int = 2000
    metrics_config: dict[str, str] = dataclasses.field(default_factory=dict)
    trace_config: dict[str, str] = dataclasses.field(default_factory=dict)
    # multi-tenancy: path of the tenants file ("" = open server, as Triton)
    tenants_config: str = ""

    def backend_settings(self, backend: str) -> dict[str, str]:
        """Global keys overlaid with the backend's own keys."""
        merged = dict(self.backend_config.get("", {}))
        merged.update(self.backend_config.get(backend, {}))
        return merged

    @property
    def default_max_batch_size(self) -> int:
        return int(self.backend_config.get("", {}).get("default-max-batch-size", "4"))
