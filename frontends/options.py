"""Each endpoint's own options, typed and frozen, cut from the server options the CLI parsed.

An endpoint reads only its own settings, so a test (or an embedding program) builds exactly the
options it needs, and a misspelt setting is a type error rather than a silent default.
"""
from __future__ import annotations

import dataclasses

from tritonpy.core.options import Restriction, ServerOptions

DEFAULT_MAX_INPUT_SIZE = 1 << 26  # --http-max-input-size's default (64 MiB)


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class HttpOptions:
    max_input_size: int = DEFAULT_MAX_INPUT_SIZE
    restricted_api: tuple[Restriction, ...] = ()
    header_forward_pattern: str = ""
    access_log: bool = False
    reuse_port: bool = False
    # seconds; 0 = no limit (--http-idle-timeout, --http-body-timeout)
    idle_timeout: float = 60.0
    body_timeout: float = 60.0

    @classmethod
    def from_server(cls, options: ServerOptions) -> HttpOptions:
        return cls(
            max_input_size=options.http_max_input_size or DEFAULT_MAX_INPUT_SIZE,
            restricted_api=tuple(options.http_restricted_api),
            header_forward_pattern=options.http_header_forward_pattern,
            access_log=options.http_access_log,
            reuse_port=options.reuse_http_port,
            idle_timeout=options.http_idle_timeout,
            body_timeout=options.http_body_timeout,
        )


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class GrpcOptions:
    address: str = "0.0.0.0"
    port: int = 8001
    reuse_port: bool = False
    restricted_protocol: tuple[Restriction, ...] = ()
    header_forward_pattern: str = ""
    infer_response_compression_level: str = "none"
    # transport (milliseconds, Triton's flag names without the `grpc_` prefix)
    keepalive_time: int = 7_200_000
    keepalive_timeout: int = 20_000
    keepalive_permit_without_calls: bool = False
    http2_max_pings_without_data: int = 2
    http2_min_recv_ping_interval_without_data: int = 300_000
    http2_max_ping_strikes: int = 2
    max_connection_age: int = 0  # 0 = unset
    max_connection_age_grace: int = 0
    # TLS
    use_ssl: bool = False
    use_ssl_mutual: bool = False
    server_cert: str = ""
    server_key: str = ""
    root_cert: str = ""

    @classmethod
    def from_server(cls, options: ServerOptions) -> GrpcOptions:
        return cls(
            address=options.grpc_address,
            port=options.grpc_port,
            reuse_port=options.reuse_grpc_port,
            restricted_protocol=tuple(options.grpc_restricted_protocol),
            header_forward_pattern=options.grpc_header_forward_pattern,
            infer_response_compression_level=options.grpc_infer_response_compression_level,
            keepalive_time=options.grpc_keepalive_time,
            keepalive_timeout=options.grpc_keepalive_timeout,
            keepalive_permit_without_calls=options.grpc_keepalive_permit_without_calls,
            http2_max_pings_without_data=options.grpc_http2_max_pings_without_data,
            http2_min_recv_ping_interval_without_data=options.grpc_http2_min_recv_ping_interval_without_data,
            http2_max_ping_strikes=options.grpc_http2_max_ping_strikes,
            max_connection_age=options.grpc_max_connection_age,
            max_connection_age_grace=options.grpc_max_connection_age_grace,
            use_ssl=options.grpc_use_ssl,
            use_ssl_mutual=options.grpc_use_ssl_mutual,
            server_cert=options.grpc_server_cert,
            server_key=options.grpc_server_key,
            root_cert=options.grpc_root_cert,
        )


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class MetricsOptions:
    # --metrics-config key=value pairs (checked by core.observability.metrics.MetricsConfig)
    config: tuple[tuple[str, str], ...] = ()
    cpu_metrics: bool = True
    gpu_metrics: bool = True

    @classmethod
    def from_server(cls, options: ServerOptions) -> MetricsOptions:
        return cls(
            config=tuple(options.metrics_config.items()),
            cpu_metrics=options.allow_cpu_metrics,
            gpu_metrics=options.allow_gpu_metrics,
        )


__all__ = ["DEFAULT_MAX_INPUT_SIZE", "GrpcOptions", "HttpOptions", "MetricsOptions"]
