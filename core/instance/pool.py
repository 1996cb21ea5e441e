"""The worker instances of one model version, and which of them is free to take a batch.

The scheduler asks the pool for an idle instance (`try_acquire`, or `acquire` to wait, FIFO fair)
and gives it back with `release`. Only instances that are ready *and* not busy are idle: one that
died is taken out at once (its `ready` listener fires), comes back by itself when its restart
succeeded, and is never handed out in between. Idle listeners let a scheduler loop sleep until an
instance frees up instead of polling.
"""
from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
import re
from typing import Callable, Sequence

from tritonpy.core.observability.custom_metrics import CustomMetrics
from tritonpy.core.errors import unavailable
from tritonpy.core.instance.bls import BlsRouter
from tritonpy.core.instance.worker_instance import InstanceSpec, ResolveShm, WorkerInstance
from tritonpy.core.observability.stats import ModelStats

__all__ = ["WorkerPool"]

log = logging.getLogger("tritonpy.core.instance.pool")


class WorkerPool:
    """Holds a model version's `WorkerInstance`s (see the module docstring)."""

    def __init__(
        self,
        specs: Sequence[InstanceSpec],
        *,
        stats: ModelStats | None = None,
        resolve_shm: ResolveShm | None = None,
        bls_router: BlsRouter | None = None,
        custom_metrics: CustomMetrics | None = None,
        on_ready_change: Callable[[WorkerInstance, bool], None] | None = None,
        factory: Callable[[InstanceSpec], WorkerInstance] | None = None,
    ) -> None:
        """`factory(spec)` builds an instance (tests use it to pick a fake worker or a tiny arena)."""
        if not specs:
            raise ValueError("an instance pool needs at least one instance spec")
        self._stats = stats
        self._resolve_shm = resolve_shm
        self._bls_router = bls_router
        self._custom_metrics = custom_metrics
        self._on_ready_change = on_ready_change
        self._factory = factory or self._default_factory
        self._template = specs[-1]
        self._config_json: str | None = None
        self.instances: list[WorkerInstance] = [self._make(spec) for spec in specs]
        self._idle: collections.deque[WorkerInstance] = collections.deque()
        self._busy: set[WorkerInstance] = set()
        self._waiters: collections.deque[asyncio.Future[WorkerInstance]] = collections.deque()
        self._idle_listeners: list[Callable[[], None]] = []
        self.idle_event = asyncio.Event()  # set while at least one instance is idle
        self._stopping = False

    # --- construction ----------------------------------------------------------------------
    def _default_factory(self, spec: InstanceSpec) -> WorkerInstance:
        return WorkerInstance(
            spec, stats=self._stats, resolve_shm=self._resolve_shm, bls_router=self._bls_router,
            custom_metrics=self._custom_metrics,
        )

    def _make(self, spec: InstanceSpec) -> WorkerInstance:
        inst = self._factory(spec)
        inst.add_ready_listener(self._ready_changed)
        return inst

    # --- counts ----------------------------------------------------------------------------
    @property
    def ready_count(self) -> int:
        return sum(1 for inst in self.instances if inst.ready)

    @property
    def any_ready(self) -> bool:
        return any(inst.ready for inst in self.instances)

    @property
    def restarts(self) -> int:
        return sum(inst.restarts for inst in self.instances)

    def idle_count(self) -> int:
        return len(self._idle)

    def __len__(self) -> int:
        return len(self.instances)

    # --- handing instances out -------------------------------------------------------------
    def try_acquire(self) -> WorkerInstance | None:
        """An idle instance (now busy), or None."""
        while self._idle:
            inst = self._idle.popleft()
            if inst.ready:
                self._busy.add(inst)
                self._update_event()
                return inst
        self._update_event()
        return None

    def try_acquire_instance(self, instance: WorkerInstance) -> bool:
        """Take this particular instance if it is idle (now busy). The sequence batcher pins each
        sequence to one instance and must run its requests there."""
        if instance not in self._idle or not instance.ready:
            return False
        self._idle.remove(instance)
        self._busy.add(instance)
        self._update_event()
        return True

    async def acquire(self) -> WorkerInstance:
        """Wait for an idle instance; waiters are served first come, first served."""
        if self._stopping:
            raise unavailable("the model's instances are stopping")
        if not self._waiters:
            inst = self.try_acquire()
            if inst is not None:
                return inst
        fut: asyncio.Future[WorkerInstance] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            return await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.release(fut.result())  # handed over just as the caller gave up
            raise
        finally:
            try:
                self._waiters.remove(fut)
            except ValueError:
                pass

    def release(self, instance: WorkerInstance) -> None:
        """Give back an acquired instance; it is idle again only if it is (still or again) ready."""
        self._busy.discard(instance)
        if instance.ready and instance in self.instances:
            self._make_idle(instance)

    async def wait_idle(self) -> None:
        """Return once some instance is idle."""
        await self.idle_event.wait()

    def add_idle_listener(self, callback: Callable[[], None]) -> None:
        self._idle_listeners.append(callback)

    def remove_idle_listener(self, callback: Callable[[], None]) -> None:
        try:
            self._idle_listeners.remove(callback)
        except ValueError:
            pass

    def _make_idle(self, inst: WorkerInstance) -> None:
        if inst in self._busy or inst in self._idle:
            return
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                self._busy.add(inst)
                fut.set_result(inst)
                return
        self._idle.append(inst)
        self._update_event()
        for cb in list(self._idle_listeners):
            try:
                cb()
            except Exception:
                log.exception("idle listener failed")

    def _ready_changed(self, inst: WorkerInstance, ready: bool) -> None:
        if ready:
            if inst in self.instances and not self._stopping:
                self._make_idle(inst)
        else:
            try:
                self._idle.remove(inst)
            except ValueError:
                pass
            self._update_event()
        if self._on_ready_change is not None:
            try:
                self._on_ready_change(inst, ready)
            except Exception:
                log.exception("readiness callback failed")

    def _update_event(self) -> None:
        if self._idle:
            self.idle_event.set()
        else:
            self.idle_event.clear()

    # --- lifecycle -------------------------------------------------------------------------
    async def start_all(self) -> str:
        """Start every instance; returns the backend-completed config JSON ('' when none).

        When the first instance autocompletes the config it starts alone first and the others
        start, concurrently, with the completed config. If any instance fails, all are stopped
        and the first failure is raised.
        """
        completed = ""
        pending = list(self.instances)
        first = pending[0]
        try:
            if first.spec.autocomplete:
                completed = await first.start()
                pending = pending[1:]
                if completed:
                    self._config_json = completed
                    for inst in pending:
                        inst.use_config(completed)
            await self._start_many(pending)
        except BaseException:
            await self.stop_all(timeout=5.0)
            raise
        return completed

    async def _start_many(self, instances: list[WorkerInstance]) -> None:
        if not instances:
            return
        results = await asyncio.gather(*(inst.start() for inst in instances), return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            for err in errors[1:]:
                log.warning("another instance failed to start as well: %s", err)
            raise errors[0]

    async def stop_all(self, timeout: float = 10.0) -> None:
        """Stop every instance (each drains its in-flight batches within `timeout`)."""
        self._stopping = True
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_exception(unavailable("the model's instances are stopping"))
                fut.exception()
        self._idle.clear()
        self._update_event()
        await asyncio.gather(*(inst.stop(timeout) for inst in self.instances), return_exceptions=True)

    async def resize(self, new_count: int, *, config_json: str | None = None) -> None:
        """Grow or shrink in place. New instances use `config_json` (the completed config) when
        given; removed ones are taken idle ones first and drain what they run before stopping."""
        if new_count < 1:
            raise ValueError("an instance pool keeps at least one instance")
        if config_json:
            self._config_json = config_json
        count = len(self.instances)
        if new_count > count:
            added: list[WorkerInstance] = []
            for _ in range(new_count - count):
                inst = self._make(self._spec_for_new())
                if self._config_json:
                    inst.use_config(self._config_json)
                added.append(inst)
                self.instances.append(inst)  # not ready yet, so not handed out
            try:
                await self._start_many(added)
            except BaseException:
                for inst in added:
                    self._forget(inst)
                await asyncio.gather(*(inst.stop(5.0) for inst in added), return_exceptions=True)
                raise
        elif new_count < count:
            # Idle or broken ones go first, then the newest busy ones.
            order = sorted(
                self.instances,
                key=lambda i: (i in self._busy, i.ready and i not in self._idle, -self.instances.index(i)),
            )
            removed = order[: count - new_count]
            for inst in removed:
                self._forget(inst)
            await asyncio.gather(*(inst.stop(10.0) for inst in removed), return_exceptions=True)

    def _forget(self, inst: WorkerInstance) -> None:
        if inst in self.instances:
            self.instances.remove(inst)
        try:
            self._idle.remove(inst)
        except ValueError:
            pass
        self._update_event()

    def _spec_for_new(self) -> InstanceSpec:
        names = {inst.name for inst in self.instances}
        base = re.sub(r"_\d+$", "", self._template.instance_name) or self._template.model_name
        k = len(self.instances)
        while f"{base}_{k}" in names:
            k += 1
        return dataclasses.replace(self._template, instance_name=f"{base}_{k}", autocomplete=False)

    async def is_ready(self) -> bool:
        """True when at least one instance is alive and its model says it is ready."""
        candidates = [inst for inst in self.instances if inst.ready]
        if not candidates:
            return False
        answers = await asyncio.gather(*(inst.is_ready() for inst in candidates), return_exceptions=True)
        return any(a is True for a in answers)

