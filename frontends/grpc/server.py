"""Build and start the grpc.aio server: services, channel arguments, TLS, bind address."""
from __future__ import annotations

import logging

import grpc

from tritonpy.core.facade import ServerFacade
from tritonpy.frontends.grpc.service import HealthServicer, InferenceServicer
from tritonpy.frontends.options import GrpcOptions
from tritonpy.proto import grpc_service_pb2_grpc, health_pb2_grpc

log = logging.getLogger("tritonpy.frontends.grpc.server")

# Triton raises gRPC's 4 MB default to INT32_MAX in both directions.
MAX_MESSAGE_SIZE = (1 << 31) - 1


def channel_args(options: GrpcOptions) -> list[tuple[str, int]]:
    """gRPC core arguments from the endpoint options (Triton's keepalive and message-size settings)."""
    args = [
        ("grpc.max_send_message_length", MAX_MESSAGE_SIZE),
        ("grpc.max_receive_message_length", MAX_MESSAGE_SIZE),
        # grpcio turns SO_REUSEPORT on by default, which would let a second server silently share the port.
        ("grpc.so_reuseport", 1 if options.reuse_port else 0),
        ("grpc.keepalive_time_ms", int(options.keepalive_time)),
        ("grpc.keepalive_timeout_ms", int(options.keepalive_timeout)),
        ("grpc.keepalive_permit_without_calls", 1 if options.keepalive_permit_without_calls else 0),
        ("grpc.http2.max_pings_without_data", int(options.http2_max_pings_without_data)),
        ("grpc.http2.min_recv_ping_interval_without_data_ms",
         int(options.http2_min_recv_ping_interval_without_data)),
        ("grpc.http2.max_ping_strikes", int(options.http2_max_ping_strikes)),
    ]
    if options.max_connection_age:
        args.append(("grpc.max_connection_age_ms", int(options.max_connection_age)))
    if options.max_connection_age_grace:
        args.append(("grpc.max_connection_age_grace_ms", int(options.max_connection_age_grace)))
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


def server_credentials(options: GrpcOptions) -> grpc.ServerCredentials:
    """TLS (and with `use_ssl_mutual`, verified client certificates) from PEM files."""
    mutual = options.use_ssl_mutual
    cert = _read(options.server_cert, "server certificate")
    key = _read(options.server_key, "server key")
    root_path = options.root_cert
    root = _read(root_path, "root certificate") if (root_path or mutual) else None
    return grpc.ssl_server_credentials([(key, cert)], root_certificates=root, require_client_auth=mutual)


async def start_grpc(server: ServerFacade, options: GrpcOptions) -> grpc.aio.Server:
    """Serve `inference.GRPCInferenceService` and `grpc.health.v1.Health` for `server` (the core facade).

    Returns the started grpc.aio server; stop it with `await endpoint.stop(grace)`. Binding failures
    raise OSError so the caller can report them like any other listen error.
    """
    servicer = InferenceServicer(server, options)
    endpoint = grpc.aio.server(options=channel_args(options))
    grpc_service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, endpoint)
    health_pb2_grpc.add_HealthServicer_to_server(HealthServicer(server, servicer.restrictions), endpoint)
    address = bind_address(options.address, options.port)
    use_ssl = options.use_ssl or options.use_ssl_mutual
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
