"""`tritonpy-bench` entry point: parse, discover the model, build the requests, run every load
level, write CSV/JSON/plot, print the summary.

Exit status: 0 on success, 1 for a problem with the server or the model (unknown model, a request
the server rejects, nothing completed), 2 for bad arguments (argparse's usage errors).
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import urllib.parse
from typing import Any, Coroutine, Protocol, Sequence, TypeVar

import aiohttp

from .control import Control, make_control
from .load import LoadGenerator
from .measure import LevelResult, Measurer
from .model_io import BenchError, ModelPlan, load_steps, resolve_inputs, resolve_outputs
from .options import BenchOptions, parse_options
from .plot import write_html
from .progress import Progress, rich_available
from .report import HEADERS, print_summary, run_facts, table_rows, write_csv, write_json
from .requests import grpc_bodies, http_bodies, http_requests
from .shm_regions import ShmLayout, ShmSet
from .transports import (AiohttpSender, GrpcChannel, GrpcSender, GrpcStreamSender, RawHttpSender,
                         RequestFailed, Sender)

log = logging.getLogger("tritonpy.bench.cli")


class _Senders:
    """Makes the sender of each slot for the chosen protocol; owns the shared channel/session."""

    def __init__(self, opts: BenchOptions, plan: ModelPlan, shm: ShmSet | None) -> None:
        self.opts, self.plan, self.shm = opts, plan, shm
        self._grpc: GrpcChannel | None = None
        self._session: aiohttp.ClientSession | None = None
        host, _, port = opts.url.rpartition(":")
        self.host, self.port = host, int(port)
        path = f"/v2/models/{urllib.parse.quote(plan.name, safe='')}"
        if plan.version:
            path += f"/versions/{urllib.parse.quote(plan.version, safe='')}"
        self.path = path + "/infer"
        self._shared_http: list[bytes] | None = None
        self._shared_grpc: list[bytes] | None = None

    def _layout(self) -> ShmLayout | None:
        return self.shm.layout if self.shm is not None else None

    async def make(self, slot: int) -> Sender:
        o = self.opts
        if o.protocol == "http":
            bodies = http_bodies(self.plan, o.http_format, self._layout(), slot)
            if o.http_client == "aiohttp":
                if self._session is None:
                    self._session = aiohttp.ClientSession(
                        connector=aiohttp.TCPConnector(limit=0), timeout=aiohttp.ClientTimeout(total=300))
                return AiohttpSender(self._session, f"http://{o.url}{self.path}", bodies)
            return RawHttpSender(self.host, self.port, http_requests(o.url, self.path, bodies))
        if self._grpc is None:
            self._grpc = GrpcChannel(o.url)
        messages = grpc_bodies(self.plan, self._layout(), slot)
        if o.streaming:
            return GrpcStreamSender(self._grpc.stream, messages)
        return GrpcSender(self._grpc.unary, messages)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
        if self._grpc is not None:
            await self._grpc.close()


async def _plan(opts: BenchOptions, control: Control) -> ModelPlan:
    metadata = await control.metadata()
    max_batch = await control.max_batch_size()
    inputs = resolve_inputs(metadata, max_batch, opts.batch_size, opts.shapes)
    outputs = resolve_outputs(metadata, max_batch, opts.batch_size)
    steps = load_steps(inputs, opts.input_data)
    return ModelPlan(opts.model, opts.model_version, max_batch, inputs, outputs, steps)


async def _run(opts: BenchOptions) -> tuple[list[LevelResult], dict[str, Any]]:
    control = make_control(opts.protocol, opts.url, opts.model, opts.model_version)
    shm: ShmSet | None = None
    registered: list[str] = []
    senders: _Senders | None = None
    load: LoadGenerator | None = None
    progress = Progress(opts.progress, opts.mode)
    results: list[LevelResult] = []
    try:
        server = await control.server_metadata()
        plan = await _plan(opts, control)
        if opts.shared_memory == "system":
            slots = int(max(opts.levels)) if opts.mode == "concurrency" else opts.max_outstanding
            shm = ShmSet(plan, slots + 1, opts.output_shm_size)  # +1: the probe request's slot
            for name, region in ((shm.input_name, shm.inputs), (shm.output_name, shm.outputs)):
                await control.register_system_shm(name, "/" + region.key, region.size)
                registered.append(name)
        senders = _Senders(opts, plan, shm)
        probe = await senders.make(slots if shm is not None else 0)
        try:
            await probe.infer()
        except RequestFailed as exc:
            raise BenchError(f"the server rejected a request to {opts.model!r}: {exc}") from None
        except OSError as exc:
            raise BenchError(f"cannot send to {opts.url}: {exc}") from None
        finally:
            await probe.close()
        load = LoadGenerator(opts.mode, senders.make, max_outstanding=opts.max_outstanding,
                             distribution=opts.request_distribution)
        measurer = Measurer(
            load, control, mode=opts.mode, measurement_mode=opts.measurement_mode,
            interval_ms=opts.measurement_interval_ms, window_count=opts.measurement_request_count,
            request_count=opts.request_count, stability=opts.stability_percentage,
            max_trials=opts.max_trials, warmup_ms=opts.warmup_ms, progress=progress.window)
        for level in opts.levels:
            result = await measurer.run_level(level)
            results.append(result)
            if result.requests == 0 and result.errors:
                raise BenchError(f"every request failed at {opts.mode} {level:g}: {result.first_error}")
        return results, server
    finally:
        progress.close()
        if load is not None:
            await load.stop()
        if senders is not None:
            await senders.close()
        for name in registered:
            with contextlib.suppress(BenchError):
                await control.unregister_system_shm(name)
        if shm is not None:
            shm.close()
        await control.close()


_T = TypeVar("_T")


class _Runner(Protocol):
    def __call__(self, main: Coroutine[Any, Any, _T], /) -> _T: ...


def _event_loop_runner() -> _Runner:
    """uvloop when installed (it lowers the client's CPU per request), asyncio's loop otherwise."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run
    return uvloop.run


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    try:
        opts = parse_options(sys.argv[1:] if argv is None else argv)
    except SystemExit as exc:  # argparse: usage error (2) or --help (0)
        return int(exc.code or 0)
    try:
        results, server = _event_loop_runner()(_run(opts))
    except BenchError as exc:
        print(f"tritonpy-bench: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("tritonpy-bench: interrupted", file=sys.stderr)
        return 130
    extra = {"protocol": opts.protocol + ("-stream" if opts.streaming else ""),
             "http_format": opts.http_format if opts.protocol == "http" else None,
             "http_client": opts.http_client if opts.protocol == "http" else None,
             "shared_memory": opts.shared_memory, "model": opts.model, "batch_size": opts.batch_size,
             "mode": opts.mode, "url": opts.url}
    facts = run_facts(opts.command, server, extra)
    if opts.csv_path:
        write_csv(opts.csv_path, results)
    if opts.json_path:
        write_json(opts.json_path, facts, results)
    if opts.plot_path:
        label = "c=" if opts.mode == "concurrency" else "r="
        pts = [(r.throughput, r.latency_us["p50"], r.latency_us["p99"], f"{label}{r.level:g}", r.stable)
               for r in results]
        # Named by what was measured, not by the metadata's name ('triton' from tritonpy and Triton alike).
        name = opts.label or f"{opts.url} {extra['protocol']}"
        write_html(opts.plot_path, [(name, pts)], f"{opts.model}: latency vs throughput",
                   f"{facts['command']}\n{facts['machine']}\n{facts['client_versions']}\n"
                   f"server metadata: {facts['server']}", table=(HEADERS, table_rows(results)))
    if not opts.quiet:
        use_rich = opts.progress in ("auto", "rich") and rich_available() and sys.stdout.isatty()
        print_summary(results, use_rich)
    return 0


if __name__ == "__main__":
    sys.exit(main())
