"""Results out: CSV rows, a JSON document with the run's facts (machine, versions, command), and
the summary table on the console (rich when available, plain text otherwise)."""
from __future__ import annotations

import contextlib
import csv
import json
import os
import platform
import sys
import time
from importlib import metadata as importlib_metadata
from typing import Any, TextIO

from .measure import LevelResult


def run_facts(command: str, server: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """What a reader needs to trust and reproduce a figure."""
    cpu_model = "unknown"
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu_model = line.split(":", 1)[1].strip()
                    break
    versions = {"python": platform.python_version()}
    for dist in ("numpy", "aiohttp", "grpcio", "tritonclient", "tritonpy"):
        with contextlib.suppress(importlib_metadata.PackageNotFoundError):
            versions[dist] = importlib_metadata.version(dist)
    load1 = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    return {
        "command": command,
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"cpus": os.cpu_count(), "cpu_model": cpu_model, "platform": platform.platform(),
                    "loadavg_1m_at_end": load1},
        "client_versions": versions,
        "server": {k: server.get(k) for k in ("name", "version") if k in server},
        **extra,
    }


def write_csv(path: str, results: list[LevelResult]) -> None:
    rows = [r.row() for r in results]
    if not rows:
        return
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def write_json(path: str, facts: dict[str, Any], results: list[LevelResult]) -> None:
    doc: dict[str, Any] = {"run": facts, "results": [r.row() for r in results]}
    for row, result in zip(doc["results"], results):
        if result.first_error:
            row["first_error"] = result.first_error
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(doc, fh, indent=2)
        fh.write("\n")


HEADERS = ("level", "infer/s", "p50 µs", "p90 µs", "p95 µs", "p99 µs", "srv queue", "srv in",
           "srv infer", "srv out", "client cpu µs/req", "stable")


def table_rows(results: list[LevelResult]) -> list[tuple[str, ...]]:
    out: list[tuple[str, ...]] = []
    for r in results:
        s = r.server
        out.append((
            f"{'c=' if r.mode == 'concurrency' else 'r='}{r.level:g}", f"{r.throughput:,.1f}",
            f"{r.latency_us['p50']:.0f}", f"{r.latency_us['p90']:.0f}", f"{r.latency_us['p95']:.0f}",
            f"{r.latency_us['p99']:.0f}", f"{s['queue_us']:.0f}", f"{s['compute_input_us']:.0f}",
            f"{s['compute_infer_us']:.0f}", f"{s['compute_output_us']:.0f}",
            f"{r.client_cpu_us_per_request:.0f}{' (sat)' if r.saturated else ''}",
            "yes" if r.stable else "NO",
        ))
    return out


def print_summary(results: list[LevelResult], use_rich: bool, stream: TextIO = sys.stdout) -> None:
    rows = table_rows(results)
    if use_rich:
        from rich.console import Console
        from rich.table import Table

        table = Table(title="tritonpy-bench (server columns: µs per request from the statistics extension)")
        for h in HEADERS:
            table.add_column(h, justify="right", no_wrap=True)
        for row in rows:
            table.add_row(*row)
        console = Console(file=stream)
        if console.width < 150:  # a narrow terminal would cut the figures to "88…"
            console = Console(file=stream, width=150)
        console.print(table)
    else:
        widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(HEADERS)]
        print("  ".join(h.rjust(w) for h, w in zip(HEADERS, widths)), file=stream)
        for row in rows:
            print("  ".join(c.rjust(w) for c, w in zip(row, widths)), file=stream)
    for r in results:
        if r.errors:
            print(f"warning: {r.errors} failed requests at {r.mode} {r.level:g}; first: {r.first_error}",
                  file=sys.stderr)
        if r.saturated:
            print(f"warning: at {r.mode} {r.level:g} the client used {r.client_cpu_util:.0%} of a core "
                  f"({r.client_cpu_us_per_request:.0f} µs CPU per request): it is CPU-saturated, so the "
                  "figures are limited by the client as much as by the server", file=sys.stderr)
        if not r.stable:
            print(f"warning: {r.mode} {r.level:g} did not stabilise within the trials; figures are from "
                  "the last windows", file=sys.stderr)
