"""`tritonpy-server`: Triton's command line, parsed into ServerOptions, then the server and its endpoints."""
from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys

from tritonpy.core.options import RESTRICTABLE_CATEGORIES, Restriction, ServerOptions
from tritonpy import __version__
from tritonpy.frontends.cli_help import add_help_texts

log = logging.getLogger("tritonpy.frontends.cli")

_TRUE = {"true", "1", "on", "yes"}
_FALSE = {"false", "0", "off", "no"}


def parse_bool(text: str) -> bool:
    value = text.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise argparse.ArgumentTypeError(f"invalid boolean value '{text}' (use true or false)")


def _bool_flag(parser: argparse.ArgumentParser, name: str, default: bool, help_text: str) -> None:
    # Triton's booleans take a value (--flag=false); a bare --flag means true.
    parser.add_argument(name, type=parse_bool, nargs="?", const=True, default=default, metavar="BOOL", help=help_text)


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got '{text}'") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got '{text}'")
    return value


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got '{text}'") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a non-negative number of seconds, got '{text}'")
    return value


def _port(text: str) -> int:
    value = _non_negative_int(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"port out of range: {value}")
    return value


def parse_restriction(text: str) -> Restriction:
    """`<category>[,<category>...]:<key>=<value>` (Triton's --http-restricted-api syntax)."""
    cats, sep, rest = text.partition(":")
    key, sep2, value = rest.partition("=")
    if not sep or not sep2 or not cats or not key:
        raise argparse.ArgumentTypeError(f"expected '<category>[,...]:<key>=<value>', got '{text}'")
    categories = frozenset(c.strip() for c in cats.split(",") if c.strip())
    unknown = categories - RESTRICTABLE_CATEGORIES
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown restricted category '{sorted(unknown)[0]}'; known: {', '.join(sorted(RESTRICTABLE_CATEGORIES))}"
        )
    return categories, key, value


def parse_backend_config(text: str) -> tuple[str, str, str]:
    """`<backend>,<key>=<value>` or, for global settings, `<key>=<value>`."""
    head, sep, setting = text.partition(",")
    if not sep:
        backend, setting = "", text
    else:
        backend = head
    key, eq, value = setting.partition("=")
    if not eq or not key:
        raise argparse.ArgumentTypeError(f"expected '<backend>,<key>=<value>' or '<key>=<value>', got '{text}'")
    return backend, key, value


def _key_value(text: str) -> tuple[str, str]:
    key, eq, value = text.partition("=")
    if not eq or not key:
        raise argparse.ArgumentTypeError(f"expected '<key>=<value>', got '{text}'")
    return key, value


def build_parser() -> argparse.ArgumentParser:
    # long: one statement per flag, in Triton's order; a table reads better whole than split.
    p = argparse.ArgumentParser(
        prog="tritonpy-server",
        description="Serve a Triton model repository over HTTP/REST, gRPC and Prometheus metrics.",
        allow_abbrev=False,
    )
    p.add_argument("--model-repository", "--model-store", dest="model_repository", action="append", default=[],
                   metavar="PATH", help="model repository path (repeatable)")
    p.add_argument("--id", dest="server_id", default="triton", help="server identifier reported in metadata")
    _bool_flag(p, "--allow-http", True, "enable the HTTP/REST endpoint")
    _bool_flag(p, "--allow-grpc", True, "enable the gRPC endpoint")
    _bool_flag(p, "--allow-metrics", True, "enable the Prometheus metrics endpoint")
    _bool_flag(p, "--allow-gpu-metrics", True, "report GPU metrics (when a GPU is present)")
    _bool_flag(p, "--allow-cpu-metrics", True, "report CPU metrics")
    p.add_argument("--http-address", default="0.0.0.0")
    p.add_argument("--http-port", type=_port, default=8000)
    p.add_argument("--grpc-address", default="0.0.0.0")
    p.add_argument("--grpc-port", type=_port, default=8001)
    p.add_argument("--metrics-address", default="")
    p.add_argument("--metrics-port", type=_port, default=8002)
    _bool_flag(p, "--reuse-http-port", False, "let several servers share the HTTP port (SO_REUSEPORT)")
    _bool_flag(p, "--reuse-grpc-port", False, "let several servers share the gRPC port (SO_REUSEPORT)")
    p.add_argument("--http-thread-count", type=_non_negative_int, default=8,
                   help="accepted for compatibility; the HTTP server is asynchronous")
    p.add_argument("--http-max-input-size", type=_non_negative_int, default=1 << 26)
    p.add_argument("--http-idle-timeout", type=_non_negative_float, default=60.0,
                   help="seconds before an idle connection, or one still sending its headers, is closed (0 = never)")
    p.add_argument("--http-body-timeout", type=_non_negative_float, default=60.0,
                   help="seconds without request-body bytes before the request fails with 408 (0 = never)")
    p.add_argument("--http-restricted-api", action="append", type=parse_restriction, default=[])
    p.add_argument("--grpc-restricted-protocol", action="append", type=parse_restriction, default=[])
    p.add_argument("--http-header-forward-pattern", default="")
    p.add_argument("--grpc-header-forward-pattern", default="")
    p.add_argument("--grpc-keepalive-time", type=_non_negative_int, default=7_200_000)
    p.add_argument("--grpc-keepalive-timeout", type=_non_negative_int, default=20_000)
    _bool_flag(p, "--grpc-keepalive-permit-without-calls", False, "allow keepalive pings without calls")
    p.add_argument("--grpc-http2-max-pings-without-data", type=_non_negative_int, default=2)
    p.add_argument("--grpc-http2-min-recv-ping-interval-without-data", type=_non_negative_int, default=300_000)
    p.add_argument("--grpc-http2-max-ping-strikes", type=_non_negative_int, default=2)
    p.add_argument("--grpc-max-connection-age", type=_non_negative_int, default=0)
    p.add_argument("--grpc-max-connection-age-grace", type=_non_negative_int, default=0)
    p.add_argument("--grpc-infer-response-compression-level", choices=["none", "low", "medium", "high"],
                   default="none")
    _bool_flag(p, "--grpc-use-ssl", False, "serve gRPC over TLS")
    _bool_flag(p, "--grpc-use-ssl-mutual", False, "require client certificates (mTLS)")
    p.add_argument("--grpc-server-cert", default="")
    p.add_argument("--grpc-server-key", default="")
    p.add_argument("--grpc-root-cert", default="")
    p.add_argument("--model-control-mode", choices=["none", "poll", "explicit"], default="none")
    p.add_argument("--load-model", action="append", default=[], metavar="NAME")
    p.add_argument("--repository-poll-secs", type=_non_negative_int, default=15)
    _bool_flag(p, "--strict-readiness", True, "server ready only when every model is ready")
    _bool_flag(p, "--exit-on-error", True, "exit when a model fails to load at start-up")
    p.add_argument("--exit-timeout-secs", type=_non_negative_int, default=30)
    p.add_argument("--disable-auto-complete-config", action="store_true")
    p.add_argument("--strict-model-config", type=parse_bool, nargs="?", const=True, default=None, metavar="BOOL",
                   help="deprecated: true is the same as --disable-auto-complete-config")
    p.add_argument("--model-config-name", default="")
    p.add_argument("--backend-config", action="append", type=parse_backend_config, default=[])
    _bool_flag(p, "--allow-client-shm", False, "allow clients to register shared-memory regions")
    p.add_argument("--log-verbose", type=_non_negative_int, default=0)
    _bool_flag(p, "--log-info", True, "log INFO lines")
    _bool_flag(p, "--log-warning", True, "log WARNING lines")
    _bool_flag(p, "--log-error", True, "log ERROR lines")
    p.add_argument("--log-format", choices=["default", "ISO8601", "json"], default="default")
    p.add_argument("--log-file", default="")
    p.add_argument("--metrics-interval-ms", type=_non_negative_int, default=2000)
    p.add_argument("--metrics-config", action="append", type=_key_value, default=[])
    p.add_argument("--trace-config", action="append", default=[], help="[triton,]<key>=<value>")
    p.add_argument("--tenants-config", default="", metavar="PATH",
                   help="tenants file (JSON or YAML): API keys, rights, quotas; see docs/multitenancy.md")
    p.add_argument("--version", action="version", version=f"tritonpy-server {__version__}")
    add_help_texts(p)
    return p


def options_from_args(argv: list[str] | None = None) -> ServerOptions:
    # long: one line per option field, mapping each flag to ServerOptions in one visible place.
    parser = build_parser()
    a = parser.parse_args(argv)
    if not a.model_repository:
        parser.error("--model-repository (or --model-store) is required")
    if a.model_control_mode != "explicit" and a.load_model:
        parser.error("--load-model is only allowed with --model-control-mode=explicit")
    if "*" in a.load_model and len(a.load_model) > 1:
        parser.error("--load-model=* must be the only --load-model")
    cats: set[str] = set()
    for flag, restrictions in (("--http-restricted-api", a.http_restricted_api),
                               ("--grpc-restricted-protocol", a.grpc_restricted_protocol)):
        cats.clear()
        for categories, _, _ in restrictions:
            if cats & categories:
                parser.error(f"{flag}: category '{sorted(cats & categories)[0]}' appears in more than one group")
            cats |= categories
    backend_config: dict[str, dict[str, str]] = {}
    for backend, key, value in a.backend_config:
        backend_config.setdefault(backend, {})[key] = value
    trace_config: dict[str, str] = {}
    for item in a.trace_config:
        head, _, rest = item.partition(",")
        setting = rest if head in ("triton", "opentelemetry") and rest else item
        key, eq, value = setting.partition("=")
        if not eq:
            parser.error(f"--trace-config: expected '[triton,]<key>=<value>', got '{item}'")
        trace_config[key] = value
    try:
        from tritonpy.core.observability.metrics import MetricsConfig

        MetricsConfig.from_options(dict(a.metrics_config))
    except ValueError as exc:
        parser.error(str(exc))
    if a.tenants_config:
        from tritonpy.core.tenancy.tenants import load_tenants_file

        try:
            load_tenants_file(a.tenants_config)
        except (OSError, ValueError) as exc:
            parser.error(f"--tenants-config: {exc}")
    autocomplete = not a.disable_auto_complete_config and not bool(a.strict_model_config)
    return ServerOptions(
        model_repositories=a.model_repository, server_id=a.server_id,
        allow_http=a.allow_http, allow_grpc=a.allow_grpc, allow_metrics=a.allow_metrics,
        allow_cpu_metrics=a.allow_cpu_metrics, allow_gpu_metrics=a.allow_gpu_metrics,
        http_address=a.http_address, http_port=a.http_port, grpc_address=a.grpc_address, grpc_port=a.grpc_port,
        metrics_address=a.metrics_address or a.http_address, metrics_port=a.metrics_port,
        reuse_http_port=a.reuse_http_port, reuse_grpc_port=a.reuse_grpc_port,
        http_max_input_size=a.http_max_input_size,
        http_idle_timeout=a.http_idle_timeout, http_body_timeout=a.http_body_timeout,
        http_restricted_api=a.http_restricted_api, grpc_restricted_protocol=a.grpc_restricted_protocol,
        http_header_forward_pattern=a.http_header_forward_pattern,
        grpc_header_forward_pattern=a.grpc_header_forward_pattern,
        grpc_keepalive_time=a.grpc_keepalive_time, grpc_keepalive_timeout=a.grpc_keepalive_timeout,
        grpc_keepalive_permit_without_calls=a.grpc_keepalive_permit_without_calls,
        grpc_http2_max_pings_without_data=a.grpc_http2_max_pings_without_data,
        grpc_http2_min_recv_ping_interval_without_data=a.grpc_http2_min_recv_ping_interval_without_data,
        grpc_http2_max_ping_strikes=a.grpc_http2_max_ping_strikes,
        grpc_max_connection_age=a.grpc_max_connection_age,
        grpc_max_connection_age_grace=a.grpc_max_connection_age_grace,
        grpc_infer_response_compression_level=a.grpc_infer_response_compression_level,
        grpc_use_ssl=a.grpc_use_ssl, grpc_use_ssl_mutual=a.grpc_use_ssl_mutual,
        grpc_server_cert=a.grpc_server_cert, grpc_server_key=a.grpc_server_key, grpc_root_cert=a.grpc_root_cert,
        model_control_mode=a.model_control_mode, load_models=a.load_model,
        repository_poll_secs=a.repository_poll_secs, strict_readiness=a.strict_readiness,
        exit_on_error=a.exit_on_error, exit_timeout_secs=a.exit_timeout_secs, autocomplete=autocomplete,
        model_config_name=a.model_config_name, backend_config=backend_config, allow_client_shm=a.allow_client_shm,
        log_verbose=a.log_verbose, log_info=a.log_info, log_warning=a.log_warning, log_error=a.log_error,
        log_format=a.log_format, log_file=a.log_file, metrics_interval_ms=a.metrics_interval_ms,
        metrics_config=dict(a.metrics_config), trace_config=trace_config, tenants_config=a.tenants_config,
    )


def missing_repository(paths: list[str]) -> str | None:
    """Triton's start-up error for a local model repository that is not there, else None."""
    for path in paths:
        if "://" not in path and not os.path.isdir(path):
            what = "failed to stat file" if not os.path.exists(path) else "not a directory:"
            return f"error: creating server: Internal - {what} {path}"
    return None


def main(argv: list[str] | None = None) -> int:
    options = options_from_args(argv)
    refusal = missing_repository(options.model_repositories)
    if refusal:  # as Triton: no server that reports ready while serving nothing
        print(refusal, file=sys.stderr)
        return 1
    from tritonpy.frontends.runner import run_server  # imported late: --help stays fast

    try:
        import uvloop
    except ImportError:
        return asyncio.run(run_server(options))
    return uvloop.run(run_server(options))


if __name__ == "__main__":
    sys.exit(main())
