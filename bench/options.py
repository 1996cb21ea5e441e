"""Command-line options of `tritonpy-bench`, parsed into one typed, validated `BenchOptions`.

The flag names follow perf_analyzer's where it has one (`-m`, `-u`, `-i`, `--concurrency-range`,
`--request-rate-range`, `--measurement-interval`, `--stability-percentage`, `--shared-memory`,
`--input-data`, `--shape`, `-f`), so a user can move a command line between the two tools.
Every problem with the arguments is an argparse error: a usage line and exit status 2.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import shlex
from typing import Sequence


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class BenchOptions:
    model: str
    model_version: str
    url: str
    protocol: str  # "http" | "grpc"
    streaming: bool
    http_format: str  # "binary" | "json"
    http_client: str  # "raw" | "aiohttp"
    mode: str  # "concurrency" | "rate"
    levels: tuple[float, ...]
    request_distribution: str  # "constant" | "poisson"
    max_outstanding: int
    batch_size: int
    shapes: dict[str, tuple[int, ...]]
    input_data: str  # "random" | "zero" | path to a JSON file
    shared_memory: str  # "none" | "system"
    output_shm_size: int
    warmup_ms: int
    measurement_mode: str  # "time_windows" | "count_windows"
    measurement_interval_ms: int
    measurement_request_count: int
    request_count: int  # > 0: one fixed window of exactly this many requests per level
    stability_percentage: float
    max_trials: int
    csv_path: str | None
    json_path: str | None
    plot_path: str | None
    label: str  # the server's name in the plot
    quiet: bool
    progress: str  # "auto" | "rich" | "plain" | "none"
    command: str


def _range(text: str, *, integer: bool) -> tuple[float, ...]:
    """`start[:end[:step]]` -> the values, inclusive of end (perf_analyzer's meaning)."""
    parts = text.split(":")
    if not 1 <= len(parts) <= 3 or any(p.strip() == "" for p in parts):
        raise argparse.ArgumentTypeError(f"expected start[:end[:step]], got {text!r}")
    conv = int if integer else float
    try:
        nums = [conv(p) for p in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number range: {text!r}") from None
    start = nums[0]
    end = nums[1] if len(nums) > 1 else start
    step = nums[2] if len(nums) > 2 else (1 if integer else max(start, 1))
    if start <= 0 or end < start or step <= 0:
        raise argparse.ArgumentTypeError(f"need 0 < start <= end and step > 0, got {text!r}")
    values: list[float] = []
    v = start
    while v <= end + 1e-9 and len(values) < 10_000:
        values.append(v)
        v += step
    return tuple(values)


def _shape(text: str) -> tuple[str, tuple[int, ...]]:
    """`NAME:d1,d2,...` -> (name, dims); dims exclude the batch dimension."""
    name, sep, dims = text.rpartition(":")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected NAME:d1,d2,..., got {text!r}")
    try:
        values = tuple(int(d) for d in dims.split(",")) if dims else ()
    except ValueError:
        raise argparse.ArgumentTypeError(f"shape dims must be integers, got {text!r}") from None
    if any(d < 0 for d in values):
        raise argparse.ArgumentTypeError(f"shape dims must be >= 0, got {text!r}")
    return name, values


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return value


def _non_negative(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tritonpy-bench",
        description="Load generator for Triton-protocol inference servers (tritonpy or NVIDIA Triton).",
    )
    p.add_argument("-m", "--model-name", required=True, help="model to load")
    p.add_argument("-x", "--model-version", default="", help="model version (default: server's choice)")
    p.add_argument("-u", "--url", default=None, help="host:port (default 127.0.0.1:8000 http, :8001 grpc)")
    p.add_argument("-i", "--protocol", choices=("http", "grpc"), default="http")
    p.add_argument("--streaming", action="store_true", help="gRPC bidirectional streaming (ModelStreamInfer)")
    p.add_argument("--http-format", choices=("binary", "json"), default="binary",
                   help="HTTP tensor encoding: binary extension or JSON data")
    p.add_argument("--http-client", choices=("raw", "aiohttp"), default="raw",
                   help="raw: pre-serialised HTTP/1.1 on asyncio sockets (fastest); aiohttp: its client")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--concurrency-range", type=lambda s: _range(s, integer=True), default=None,
                      metavar="START:END:STEP", help="closed loop: N requests always in flight (default 1)")
    mode.add_argument("--request-rate-range", type=lambda s: _range(s, integer=False), default=None,
                      metavar="START:END:STEP", help="open loop: send N requests per second")
    p.add_argument("--request-distribution", choices=("constant", "poisson"), default="constant")
    p.add_argument("--max-outstanding", type=_positive, default=512,
                   help="request-rate mode: most requests in flight at once (sends wait beyond it)")
    p.add_argument("-b", "--batch-size", type=_positive, default=1)
    p.add_argument("--shape", type=_shape, action="append", default=[], metavar="NAME:D1,D2",
                   help="shape of an input with variable dims (without the batch dim); repeatable")
    p.add_argument("--input-data", default="random", help="random | zero | path to a JSON data file")
    p.add_argument("--shared-memory", choices=("none", "system"), default="none")
    p.add_argument("--output-shared-memory-size", type=_positive, default=102400,
                   help="bytes per output region slot when an output shape is not fixed")
    p.add_argument("--warmup-interval", type=_non_negative, default=500, metavar="MS",
                   help="load before the first window of each level, not measured")
    p.add_argument("--measurement-mode", choices=("time_windows", "count_windows"), default="time_windows")
    p.add_argument("-p", "--measurement-interval", type=_positive, default=5000, metavar="MS")
    p.add_argument("--measurement-request-count", type=_positive, default=50,
                   help="count_windows: requests per window")
    p.add_argument("--request-count", type=_non_negative, default=0,
                   help="measure exactly this many requests per level (one window, no stability loop)")
    p.add_argument("-s", "--stability-percentage", type=float, default=10.0)
    p.add_argument("-r", "--max-trials", type=_positive, default=10)
    p.add_argument("-f", "--csv", dest="csv_path", default=None, help="write results as CSV")
    p.add_argument("--json", dest="json_path", default=None, help="write results and run facts as JSON")
    p.add_argument("--plot", dest="plot_path", default=None,
                   help="latency-vs-throughput report: HTML (plot, results table, run facts) and a PNG beside it")
    p.add_argument("--label", default="",
                   help="the server's name in the report (default '<host:port> <protocol>'; server metadata "
                        "cannot tell tritonpy from Triton, which both answer name 'triton')")
    p.add_argument("--progress", choices=("auto", "rich", "plain", "none"), default="auto")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress and no summary table")
    return p


def parse_options(argv: Sequence[str]) -> BenchOptions:
    """Parse and cross-check; argparse errors exit with status 2."""
    parser = build_parser()
    a = parser.parse_args(list(argv))
    if a.streaming and a.protocol != "grpc":
        parser.error("--streaming needs -i grpc")
    if a.stability_percentage <= 0:
        parser.error("--stability-percentage must be > 0")
    if a.input_data not in ("random", "zero"):
        if not os.path.isfile(a.input_data):
            parser.error(f"--input-data: no such file {a.input_data!r} (or use random / zero)")
    shapes: dict[str, tuple[int, ...]] = {}
    for name, dims in a.shape:
        shapes[name] = dims
    if a.request_rate_range is not None:
        mode, levels = "rate", a.request_rate_range
    else:
        mode, levels = "concurrency", a.concurrency_range or (1,)
    if mode == "concurrency" and len(levels) > 1024:
        parser.error("--concurrency-range gives more than 1024 levels")
    url = a.url or ("127.0.0.1:8001" if a.protocol == "grpc" else "127.0.0.1:8000")
    if url.startswith(("http://", "https://")):
        if url.startswith("https://"):
            parser.error("https is not supported; give host:port")
        url = url[len("http://"):]
    if ":" not in url:
        parser.error(f"--url must be host:port, got {url!r}")
    return BenchOptions(
        model=a.model_name, model_version=a.model_version, url=url, protocol=a.protocol,
        streaming=a.streaming, http_format=a.http_format, http_client=a.http_client, mode=mode,
        levels=tuple(levels), request_distribution=a.request_distribution,
        max_outstanding=a.max_outstanding, batch_size=a.batch_size, shapes=shapes,
        input_data=a.input_data, shared_memory=a.shared_memory,
        output_shm_size=a.output_shared_memory_size, warmup_ms=a.warmup_interval,
        measurement_mode=a.measurement_mode, measurement_interval_ms=a.measurement_interval,
        measurement_request_count=a.measurement_request_count, request_count=a.request_count,
        stability_percentage=a.stability_percentage, max_trials=a.max_trials,
        csv_path=a.csv_path, json_path=a.json_path, plot_path=a.plot_path, label=a.label, quiet=a.quiet,
        progress="none" if a.quiet else a.progress,
        command=shlex.join(["tritonpy-bench", *argv]),
    )
