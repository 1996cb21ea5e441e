"""One model version: its worker instances, scheduler, statistics, and its lifecycle state."""
from __future__ import annotations

import asyncio
import enum
import json
import logging
import time
from typing import Any, Awaitable, Callable

import numpy as np

from tritonpy.core.observability.custom_metrics import CustomMetrics
from tritonpy.core.tenancy.ownership import owned_steps
from tritonpy.core.repository import config as config_mod
from tritonpy.core.repository.config_json import config_to_json
from tritonpy.core.ensemble.executor import EnsembleExecutor, ModelResolver
from tritonpy.core.ensemble.check import step_version, validate_ensemble
from tritonpy.core.errors import ServerError, invalid, unavailable
from tritonpy.core.instance.bls import BlsRouter
from tritonpy.core.instance.worker_instance import InstanceSpec, ResolveShm, WorkerInstance
from tritonpy.core.instance.pool import WorkerPool
from tritonpy.core.options import ServerOptions
from tritonpy.core.repository.poller import Fingerprint
from tritonpy.core.repository.scan import ModelSource, read_labels
from tritonpy.core.scheduling import Scheduler, make_scheduler
from tritonpy.core.observability.stats import ModelStats
from tritonpy.core.types import InferRequest, InferResponse, ResponseTensor
from tritonpy.core.model.request_checks import validate_request
from tritonpy.core.model.warmup import run_warmup
from tritonpy.proto import dtypes, model_config_pb2 as mc

log = logging.getLogger("tritonpy.core.model.version")


class ModelState(str, enum.Enum):
    """Triton's model states; only READY serves requests."""

    LOADING = "LOADING"  # instances starting: not serving
    READY = "READY"  # serving
    UNLOADING = "UNLOADING"  # draining in-flight work: no new requests
    UNAVAILABLE = "UNAVAILABLE"  # failed to load, or unloaded: not serving (reason says why)


class ModelIO:
    """What a frontend needs to decode a request for this model, computed once at load."""

    __slots__ = ("inputs", "outputs", "input_order", "max_batch_size", "decoupled", "labels")

    def __init__(self, config: mc.ModelConfig, labels: dict[str, list[str]]) -> None:
        batch = [-1] if config.max_batch_size > 0 else []
        self.inputs = {
            i.name: (dtypes.CONFIG_TO_WIRE.get(mc.DataType.Name(i.data_type), "BYTES"), batch + list(i.dims))
            for i in config.input
        }
        self.outputs = {
            o.name: dtypes.CONFIG_TO_WIRE.get(mc.DataType.Name(o.data_type), "BYTES") for o in config.output
        }
        self.input_order = [i.name for i in config.input]
        self.max_batch_size = config.max_batch_size
        self.decoupled = config.model_transaction_policy.decoupled
        self.labels = labels


def same_except_counts(a: mc.ModelConfig, b: mc.ModelConfig) -> bool:
    """True when two configurations differ at most in their instance_group counts."""
    if len(a.instance_group) != len(b.instance_group):
        return False
    x, y = mc.ModelConfig(), mc.ModelConfig()
    x.CopyFrom(a)
    y.CopyFrom(b)
    for group in (*x.instance_group, *y.instance_group):
        group.count = 0
    return x == y


class ModelVersion:
    """A loaded (or loading) version of a model. Cleans up after itself on any failure."""

    def __init__(
        self,
        *,
        source: ModelSource,
        version: int,
        config: mc.ModelConfig,
        options: ServerOptions,
        runtime_dir: str,
        resolve_shm: ResolveShm | None = None,
        bls_router: BlsRouter | None = None,
        custom_metrics: CustomMetrics | None = None,
        resolve_model: ModelResolver | None = None,
    ) -> None:
        self.name = source.name
        self.version = version
        self.source = source
        self.config = config
        self.options = options
        self.runtime_dir = runtime_dir
        self.resolve_shm = resolve_shm
        self.bls_router = bls_router  # the server, for Python models' BLS calls (core/instance/bls.py)
        self.custom_metrics = custom_metrics  # the server's store of pb_utils metrics
        # How an ensemble finds its composing models (the manager's `get`); unused otherwise.
        self.resolve_model = resolve_model
        self.ensemble: EnsembleExecutor | None = None
        self.state = ModelState.LOADING
        self.reason = ""
        self.stats = ModelStats(self.name, str(version))
        self.pool: WorkerPool | None = None
        self.scheduler: Scheduler[WorkerInstance] | None = None
        self.io: ModelIO | None = None
        self.config_json: dict[str, Any] = {}  # Triton's JSON form of `config`
        self.load_duration_s = 0.0
        self.inflight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        # What the load asked for (before backend completion) and the files it saw: the manager
        # compares them on a reload to keep or resize this version instead of replacing it.
        self.requested: mc.ModelConfig = config
        self.model_print: Fingerprint = ()
        self.version_print: Fingerprint = ()
        self._unloading: asyncio.Task[None] | None = None

    # --- lifecycle ---------------------------------------------------------------------------
    def _specs(self, config: mc.ModelConfig, autocomplete: bool) -> list[InstanceSpec]:
        backend = config.backend or config_mod.backend_for(config)
        config_json = json.dumps(config_to_json(config))
        specs: list[InstanceSpec] = []
        for group in config.instance_group:
            for i in range(max(group.count, 1)):
                specs.append(
                    InstanceSpec(
                        model_name=self.name,
                        model_version=self.version,
                        model_dir=str(self.source.path),
                        instance_name=f"{group.name or self.name}_{i}",
                        kind=mc.ModelInstanceGroup.Kind.Name(group.kind),
                        device_id=group.gpus[0] if group.gpus else 0,
                        backend=backend,
                        config_json=config_json,
                        autocomplete=autocomplete and not specs,
                        backend_config=self.options.backend_settings(backend),
                        runtime_dir=self.runtime_dir,
                        log_verbose=self.options.log_verbose,
                    )
                )
        return specs

    async def load(self) -> None:
        """Start instances and the scheduler; on failure the state is UNAVAILABLE with the reason."""
        started = time.monotonic()
        try:
            await self._load()
        except ServerError as exc:
            await self._teardown(timeout=5.0)
            self.state = ModelState.UNAVAILABLE
            self.reason = exc.message
            raise
        except Exception as exc:  # a bug or an unexpected OS error: still clean up and report
            log.exception("loading model '%s' version %d failed", self.name, self.version)
            await self._teardown(timeout=5.0)
            self.state = ModelState.UNAVAILABLE
            self.reason = f"{type(exc).__name__}: {exc}"
            raise unavailable(f"failed to load '{self.name}' version {self.version}: {self.reason}") from exc
        self.load_duration_s = time.monotonic() - started
        self.state = ModelState.READY
        self.reason = ""

    async def _load(self) -> None:
        opts = self.options
        config = self.config
        if config.platform == config_mod.ENSEMBLE_PLATFORM:
            self._load_ensemble(config)
            return
        autocomplete = opts.autocomplete
        specs = self._specs(config, autocomplete)
        if not specs:
            raise invalid(f"model '{self.name}': instance_group yields no instances")
        self.pool = WorkerPool(
            specs, stats=self.stats, resolve_shm=self.resolve_shm, bls_router=self.bls_router,
            custom_metrics=self.custom_metrics,
        )
        completed = await self.pool.start_all()
        if completed:
            config = config_mod.apply_backend_completion(config, completed)
            config = config_mod.finalize_config(
                config, default_max_batch_size=opts.default_max_batch_size, autocomplete=True
            )
        config_mod.validate_config(config)
        self.config = config
        wanted = sum(max(g.count, 1) for g in config.instance_group)
        if wanted != len(specs) or completed:
            # the rest of the instances start with the completed configuration
            await self.pool.resize(wanted, config_json=json.dumps(config_to_json(config)))
        labels = {}
        for out in config.output:
            if out.label_filename:
                labels[out.name] = read_labels(self.source.path, out.label_filename)
        self.io = ModelIO(config, labels)
        self.config_json = config_to_json(config)
        self.scheduler = make_scheduler(config, self.pool, self.stats, self.name, str(self.version))
        self.scheduler.start()
        if config.model_warmup:
            await run_warmup(self.name, self.source.path, config, self.scheduler, len(self.pool))

    def _load_ensemble(self, config: mc.ModelConfig) -> None:
        """An ensemble runs in the core: no workers, only checks against its composing models."""
        config_mod.validate_config(config)
        if self.resolve_model is None:
            raise unavailable(f"model '{self.name}': ensembles need the model manager to find their composing models")
        resolve = self.resolve_model
        validate_ensemble(config, lambda name, version: resolve(name, version).config)
        if any(resolve(s.model_name, step_version(s)).config.model_transaction_policy.decoupled
               for s in config.ensemble_scheduling.step):
            # A decoupled step makes the ensemble answer 0..N responses: serve it as decoupled.
            config.model_transaction_policy.decoupled = True
        self.config = config
        labels = {o.name: read_labels(self.source.path, o.label_filename) for o in config.output if o.label_filename}
        self.io = ModelIO(config, labels)
        self.config_json = config_to_json(config)
        self.stats.configure(config)
        # Steps run as the ensemble's owner (core/tenancy/ownership.py; the router is the server).
        steps = owned_steps(self.name, resolve, self.bls_router)
        self.ensemble = EnsembleExecutor(config=config, resolve=steps, stats=self.stats)
        self.ensemble.version = str(self.version)

    async def resize(self, requested: mc.ModelConfig) -> None:
        """Apply a configuration that differs only in instance counts: add or remove workers in place."""
        if self.pool is None or self.state != ModelState.READY:
            raise unavailable(f"model '{self.name}' version {self.version} is not at ready state")
        config = mc.ModelConfig()
        config.CopyFrom(self.config)
        for group, wanted in zip(config.instance_group, requested.instance_group):
            group.count = wanted.count
        total = sum(max(g.count, 1) for g in config.instance_group)
        rendered = config_to_json(config)
        await self.pool.resize(total, config_json=json.dumps(rendered))
        self.config = config
        self.config_json = rendered
        self.requested = requested
        log.info("model '%s' version %d: now %d instance(s)", self.name, self.version, total)

    def begin_unload(self) -> None:
        """Stop taking new requests now (the draining happens in `unload`)."""
        if self.state == ModelState.READY and (self.pool is not None or self.ensemble is not None):
            self.state = ModelState.UNLOADING

    async def unload(self, timeout: float) -> None:
        """Refuse new requests, let queued and in-flight ones finish (within `timeout`), stop workers.

        Concurrent calls (an unload racing a shutdown) share one teardown."""
        if self._unloading is None:
            if self.state == ModelState.UNAVAILABLE and self.pool is None and self.ensemble is None:
                return
            self._unloading = asyncio.get_running_loop().create_task(
                self._unload(timeout), name=f"tritonpy-unload[{self.name}:{self.version}]"
            )
        await asyncio.shield(self._unloading)

    async def _unload(self, timeout: float) -> None:
        self.state = ModelState.UNLOADING
        try:
            await self._teardown(timeout=timeout)
        finally:
            self.state = ModelState.UNAVAILABLE
            self.reason = "unloaded"

    async def _teardown(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        if self.scheduler is not None:
            try:
                await self.scheduler.stop(drain=True, timeout=timeout)
            except Exception:
                log.exception("stopping the scheduler of '%s' failed", self.name)
            self.scheduler = None
        try:
            await asyncio.wait_for(self._idle.wait(), max(0.0, deadline - time.monotonic()))
        except asyncio.TimeoutError:
            log.warning("model '%s': %d request(s) still in flight at unload", self.name, self.inflight)
        if self.pool is not None:
            await self.pool.stop_all(timeout=max(1.0, deadline - time.monotonic()))
            self.pool = None
        self.ensemble = None

    # --- serving -----------------------------------------------------------------------------
    @property
    def serving(self) -> bool:
        return self.state == ModelState.READY

    async def ready(self) -> bool:
        if self.state == ModelState.READY and self.ensemble is not None:
            return True
        if self.state != ModelState.READY or self.pool is None:
            return False
        return await self.pool.is_ready()

    def instances_alive(self) -> bool:
        if self.ensemble is not None:  # no instances of its own
            return self.state == ModelState.READY
        return self.state == ModelState.READY and self.pool is not None and self.pool.any_ready

    async def infer(self, request: InferRequest) -> InferResponse:
        run: Callable[[InferRequest, int], Awaitable[InferResponse]] | None = None
        if self.ensemble is not None:
            run = self.ensemble.infer
        elif self.scheduler is not None:
            run = self.scheduler.enqueue
        if self.state != ModelState.READY or run is None:
            raise unavailable(f"Request for unknown model: '{self.name}' version {self.version} is not at ready state")
        batch_size = validate_request(self.config, request)
        self.inflight += 1
        self._idle.clear()
        try:
            response = await run(request, batch_size)
        finally:
            self.inflight -= 1
            if not self.inflight:
                self._idle.set()
        response.model_name = self.name
        response.model_version = str(self.version)
        response.id = request.id
        if request.outputs:
            try:
                self._post_process(request, response, batch_size)
            except BaseException:
                response.release()
                raise
        return response

    def _post_process(self, request: InferRequest, response: InferResponse, batch_size: int) -> None:
        """Classification, asked per requested output. (Outputs written to client shared memory
        already come back with `shm` set and no data, from the instance; the facade refuses
        classification together with shared memory.)"""
        by_name = {o.name: o for o in response.outputs}
        for wanted in request.outputs or ():
            out = by_name.get(wanted.name)
            if out is not None and wanted.classification:
                self._classify(out, wanted.classification, batch_size)

    def _classify(self, out: ResponseTensor, top_n: int, batch_size: int) -> None:
        if out.datatype == "BYTES" or out.data is None:
            raise invalid(f"output '{out.name}': classification needs a numeric output")
        labels = self.io.labels.get(out.name, []) if self.io else []
        data = np.asarray(out.data)
        batched = self.config.max_batch_size > 0
        rows = data.reshape(batch_size, -1) if batched else data.reshape(1, -1)
        n = min(top_n, rows.shape[1])
        result = np.empty((rows.shape[0], n), dtype=np.object_)
        for r, row in enumerate(rows):
            order = np.argsort(-row, kind="stable")[:n]
            for j, idx in enumerate(order):
                text = f"{float(row[idx]):f}:{int(idx)}"
                if idx < len(labels):
                    text += f":{labels[idx]}"
                result[r, j] = text.encode()
        out.datatype = "BYTES"
        out.data = result if batched else result.reshape(n)
        out.shape = list(out.data.shape)
