"""Build and start the grpc.aio server: services, channel arguments, TLS, bind address."""
from __future__ import annotations

import logging
from typing import Any

import grpc

from tritonpy.frontends.grpc.service import HealthServicer, InferenceServicer
from tritonpy.proto import grpc_service_pb2_grpc, health_pb2_grpc

log = logging.getLogger("tritonpy.frontends.grpc.server")

# Triton raises gRPC's 4 MB default to INT32_MAX in both directions.
MAX_MESSAGE_SIZE = (1 << 31) - 1


def channel_args(options: Any) -> list[tuple[str, int]]:
    """gRPC core arguments from the server options (Triton's keepalive and message-size settings)."""

    def opt(name: str, default: int) -> int:
        return int(getattr(options, name, default))

    args = [
        ("grpc.max_send_message_length", MAX_MESSAGE_SIZE),
        ("grpc.max_receive_message_length", MAX_MESSAGE_SIZE),
        # grpcio turns SO_REUSEPORT on by default, which would let a second server silently share the port.
        ("grpc.so_reuseport", 1 if getattr(options, "reuse_grpc_port", False) else 0),
        ("grpc.keepalive_time_ms", opt("grpc_keepalive_time", 7_200_000)),
        ("grpc.keepalive_timeout_ms", opt("grpc_keepalive_timeout", 20_000)),
        ("grpc.keepalive_permit_without_calls", 1 if getattr(options, "grpc_keepalive_permit_without_calls", False)
         else 0),
        ("grpc.http2.max_pings_without_data", opt("grpc_http2_max_pings_without_data", 2)),
        ("grpc.http2.min_recv_ping_interval_without_data_ms",
         opt("grpc_http2_min_recv_ping_interval_without_data", 300_000)),
        ("grpc.http2.max_ping_strikes", opt("grpc_http2_max_ping_strikes", 2)),
    ]
    if opt("grpc_max_connection_age", 0):
        args.append(("grpc.max_connection_age_ms", opt("grpc_max_connection_age", 0)))
    if opt("grpc_max_connection_age_grace", 0):
        args.append(("grpc.max_connection_age_grace_ms", opt("grpc_max_connection_age_grace", 0)))
    return args


def bind_address(address: str, port: int) -> str:
    """`host:port` for gRPC; IPv6 hosts get brackets (`::1` or `ipv6:[::1]` -> `[::1]:port`)."""
    host = address.strip()
    if host.startswith("ipv6:"):
        host = host[len("ipv6:"):]
    if host.startswith("ipv4:"):
        host = host[len("ipv4:"):]
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"{host}:{port}"


def _read(path: str, what: str) -> bytes:
    if not path:
        raise OSError(f"gRPC SSL is enabled but no {what} file was given")
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise OSError(f"cannot read the gRPC {what} file '{path}': {exc}") from exc


def server_credentials(options: Any) -> grpc.ServerCredentials:
    """TLS (and with `grpc_use_ssl_mutual`, verified client certificates) from PEM files."""
    mutual = bool(getattr(options, "grpc_use_ssl_mutual", False))
    cert = _read(getattr(options, "grpc_server_cert", ""), "server certificate")
    key = _read(getattr(options, "grpc_server_key", ""), "server key")
    root_path = getattr(options, "grpc_root_cert", "")
    root = _read(root_path, "root certificate") if (root_path or mutual) else None
    return grpc.ssl_server_credentials([(key, cert)], root_certificates=root, require_client_auth=mutual)


async def start_grpc(server: Any, options: Any = None) -> grpc.aio.Server:
    """Serve `inference.GRPCInferenceService` and `grpc.health.v1.Health` for `server` (the core facade).

    Returns the started grpc.aio server; stop it with `await endpoint.stop(grace)`. Binding failures
    raise OSError so the caller can report them like any other listen error.
    """
    if options is None:
        options = server.options
    servicer = InferenceServicer(server, options)
    endpoint = grpc.aio.server(options=channel_args(options))
    grpc_service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, endpoint)
    health_pb2_grpc.add_HealthServicer_to_server(HealthServicer(server, servicer.restrictions), endpoint)
    address = bind_address(getattr(options, "grpc_address", "0.0.0.0"), int(getattr(options, "grpc_port", 8001)))
    use_ssl = bool(getattr(options, "grpc_use_ssl", False) or getattr(options, "grpc_use_ssl_mutual", False))
    try:
        if use_ssl:
            port = endpoint.add_secure_port(address, server_credentials(options))
        else:
            port = endpoint.add_insecure_port(address)
    except RuntimeError as exc:
        raise OSError(f"failed to bind the gRPC endpoint to {address}: {exc}") from exc
    if not port:
        raise OSError(f"failed to bind the gRPC endpoint to {address}")
    await endpoint.start()
    log.debug("gRPC endpoint listening on %s (ssl=%s)", address, use_ssl)
    return endpoint
