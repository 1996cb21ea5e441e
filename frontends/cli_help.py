"""Help text for the `tritonpy-server` flags that build_parser() declares without one.

Kept apart from the parser so that the flag table stays readable; `add_help_texts` fills in
whatever has none, and tests/frontends/test_cli.py checks that no flag is left without help.
"""
from __future__ import annotations

import argparse

HELP = {
    "--http-address": "address the HTTP endpoint binds to (default 0.0.0.0)",
    "--http-port": "HTTP endpoint port (default 8000)",
    "--grpc-address": "address the gRPC endpoint binds to (default 0.0.0.0)",
    "--grpc-port": "gRPC endpoint port (default 8001)",
    "--metrics-address": "address of the metrics endpoint (default: the HTTP address)",
    "--metrics-port": "Prometheus metrics port (default 8002)",
    "--http-max-input-size": "largest HTTP request body in bytes, also after decompression (default 64 MiB)",
    "--http-restricted-api": "<category>[,<category>...]:<header>=<value>: those HTTP APIs need that header "
                             "(repeatable)",
    "--grpc-restricted-protocol": "<category>[,<category>...]:<header>=<value>: those gRPC protocols need that "
                                  "metadata (repeatable)",
    "--http-header-forward-pattern": "regular expression: matching HTTP headers become request parameters",
    "--grpc-header-forward-pattern": "regular expression: matching gRPC metadata become request parameters",
    "--grpc-keepalive-time": "gRPC keepalive ping interval, ms (default 7200000)",
    "--grpc-keepalive-timeout": "gRPC keepalive ping timeout, ms (default 20000)",
    "--grpc-http2-max-pings-without-data": "gRPC HTTP/2 pings allowed without data (default 2)",
    "--grpc-http2-min-recv-ping-interval-without-data": "gRPC HTTP/2 minimum ping interval without data, ms "
                                                        "(default 300000)",
    "--grpc-http2-max-ping-strikes": "gRPC HTTP/2 bad pings tolerated before the connection closes (default 2)",
    "--grpc-max-connection-age": "gRPC maximum connection age, ms (0: unlimited)",
    "--grpc-max-connection-age-grace": "gRPC grace period after the maximum connection age, ms (0: unlimited)",
    "--grpc-infer-response-compression-level": "compression of gRPC inference responses",
    "--grpc-server-cert": "server certificate file (PEM) for gRPC over TLS",
    "--grpc-server-key": "server key file (PEM) for gRPC over TLS",
    "--grpc-root-cert": "root certificate file (PEM) to check client certificates with (mTLS)",
    "--model-control-mode": "none: load all at start-up; poll: also follow repository changes; explicit: "
                            "load only --load-model and what the repository API asks for",
    "--load-model": "model to load at start-up in explicit mode (repeatable; * loads all)",
    "--repository-poll-secs": "seconds between repository scans in poll mode (default 15)",
    "--exit-timeout-secs": "seconds shutdown waits for requests in flight (default 30)",
    "--disable-auto-complete-config": "do not complete model configurations from the model files",
    "--model-config-name": "use <model>/configs/<name>.pbtxt instead of config.pbtxt where it exists",
    "--backend-config": "<backend>,<key>=<value> or <key>=<value>: a backend setting (repeatable)",
    "--log-verbose": "verbose logging level (0: off)",
    "--log-format": "log line format: default or ISO8601 (as Triton), or json (one object per line)",
    "--log-file": "write the log to this file instead of stderr",
    "--metrics-interval-ms": "accepted for compatibility: metrics are read fresh at every scrape",
    "--metrics-config": "<key>=<value>: summary_latencies, histogram_latencies, summary_quantiles, ... "
                        "(repeatable)",
}


def add_help_texts(parser: argparse.ArgumentParser) -> None:
    for action in parser._actions:
        if action.help is None and action.option_strings:
            action.help = HELP.get(action.option_strings[0])


__all__ = ["HELP", "add_help_texts"]
