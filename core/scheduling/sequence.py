"""Triton's sequence batcher for one model version (`sequence_batching { ... }`).

Stateful models see the requests of one sequence (one correlation id) in order, on one instance:
each sequence holds a slot of an instance for its life (see `sequence_decision.SlotTable`), has at
most one request executing, and its requests go out in arrival order. Per instance:

* `direct` (the default): a batch takes the next request of every ready slot at once (one request
  per slot; `max_queue_delay_microseconds` with `minimum_slot_utilization` may hold it back).
* `oldest`: the next requests of the instance's candidate sequences (`max_candidate_sequences`
  slots) are batched like the dynamic batcher does: oldest first, `preferred_batch_size`,
  `max_queue_delay_microseconds`. As in Triton, a sequence stays on its instance.

The core adds the control inputs the model asks for (`sequence_controls.py`) and the sequence
flags. Implicit state (`sequence_batching.state`) lives in the instance's worker, keyed by
correlation id (backends/worker/state.py): this scheduler tells the worker when a sequence ended
without an END request (idle timeout, cancellation), so it drops the state.

Idle sequences (nothing queued or executing for `max_sequence_idle_microseconds`, default 1 s)
lose their slot; a later request for them without START is refused. Sequences beyond the slot
count wait in a backlog, bounded by `max_backlog` sequences; backlogged requests honour their
request timeout. Cancelling a queued request cancels the rest of its sequence, as in Triton.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from typing import Callable, Protocol

from tritonpy.core.errors import ErrorCode, ServerError, invalid, unsupported
from tritonpy.core.observability.stats import ModelStats
from tritonpy.core.scheduling.base import CANCELED, REJECTED, InstancePool, InstT, Pending, Scheduler
from tritonpy.core.scheduling.decision import BatchParams, Send, Wait
from tritonpy.core.scheduling.sequence_controls import Controls
from tritonpy.core.scheduling.sequence_decision import (
    BACKLOG_TIMEOUT_MESSAGE,
    DEFAULT_MAX_BACKLOG,
    CorrId,
    Sequence,
    SlotTable,
    direct_decision,
    oldest_candidates,
)
from tritonpy.core.types import InferResponse
from tritonpy.proto import model_config_pb2 as mc

__all__ = ["SequenceBatcher", "PinningPool", "DEFAULT_IDLE_US"]

log = logging.getLogger("tritonpy.core.scheduling.sequence")

DEFAULT_IDLE_US = 1_000_000
_CANCELLED_MESSAGE = "the sequence was cancelled: a request of it was cancelled while queued"


class PinningPool(Protocol[InstT]):
    """What the sequence batcher needs from a pool besides `base.InstancePool`: the instances
    themselves, and taking one particular idle instance (the one a sequence is pinned to)."""

    instances: list[InstT]

    def try_acquire_instance(self, instance: InstT) -> bool: ...


def _ready(instance: object) -> bool:
    ready = getattr(instance, "ready", None)
    if ready is not None:
        return bool(ready)
    return not getattr(instance, "dead", False)


class SequenceBatcher(Scheduler[InstT]):
    """Schedules the requests of a sequence model (see the module docstring)."""

    def __init__(
        self,
        *,
        config: mc.ModelConfig,
        pool: InstancePool[InstT],
        stats: ModelStats,
        model_name: str,
        version: str,
        clock: Callable[[], int] = time.monotonic_ns,
        max_backlog: int = DEFAULT_MAX_BACKLOG,
    ) -> None:
        seq = config.sequence_batching
        if seq.iterative_sequence:
            raise unsupported(f"model '{model_name}': sequence_batching.iterative_sequence is not supported")
        self._oldest = seq.HasField("oldest")
        super().__init__(
            config=config, pool=pool, stats=stats, model_name=model_name, version=version, clock=clock,
            preserve_ordering=bool(self._oldest and seq.oldest.preserve_ordering),
        )
        batch = max(1, int(config.max_batch_size))
        if self._oldest and int(seq.oldest.max_candidate_sequences) > 0:
            slots = int(seq.oldest.max_candidate_sequences)
        else:
            slots = batch
        idle_us = int(seq.max_sequence_idle_microseconds) or DEFAULT_IDLE_US
        self._table: SlotTable[Pending, InstT] = SlotTable(
            slots_per_instance=slots, idle_ns=idle_us * 1000, max_backlog=max_backlog
        )
        self._controls = Controls.from_config(config)
        self._direct_delay_ns = int(seq.direct.max_queue_delay_microseconds) * 1000
        self._direct_min_util = float(seq.direct.minimum_slot_utilization)
        self._oldest_params = BatchParams.make(
            max_batch_size=int(config.max_batch_size),
            preferred=seq.oldest.preferred_batch_size,
            max_queue_delay_us=int(seq.oldest.max_queue_delay_microseconds),
        )
        self._sequence_of: dict[Pending, Sequence[Pending, InstT]] = {}  # queued and executing entries

    # --- views ----------------------------------------------------------------------------------
    @property
    def pending_count(self) -> int:
        return self._table.queued

    @property
    def table(self) -> SlotTable[Pending, InstT]:
        return self._table

    @property
    def slots_per_instance(self) -> int:
        return self._table.slots_per_instance

    # --- Scheduler hooks --------------------------------------------------------------------------
    def _admit(self, entry: Pending, now_ns: int) -> None:
        request = entry.request
        model = self._model_name
        corr_id = request.sequence_id
        if isinstance(corr_id, bool) or corr_id in (0, "", None):
            raise invalid(f"inference request to model '{model}' must specify a non-zero or non-empty correlation ID")
        if self._batched and entry.rows > 1:
            raise invalid(
                f"inference request to model '{model}' must specify batch-size 1 due to requirements of sequence "
                "batcher"
            )
        self._controls.check_id(corr_id)
        self._sync_instances()
        previous = self._table.sequence_of(corr_id)
        conflict = previous is not None and previous.open and bool(request.sequence_start)
        seq = self._table.admit(
            entry,
            corr_id,
            start=bool(request.sequence_start),
            end=bool(request.sequence_end),
            now_ns=now_ns,
            timeout_ns=max(0, int(request.timeout_us)) * 1000,
            model_name=model,
            ready=_ready,
        )
        if conflict:
            log.warning(
                "[%s] sequence %s has a conflict: the previous sequence did not end before this sequence "
                "start; it is terminated early", self._label, corr_id,
            )
        self._sequence_of[entry] = seq

    def _withdraw(self, entry: Pending) -> bool:
        seq = self._sequence_of.get(entry)
        if seq is None or not self._table.withdraw(entry, seq):
            return False
        del self._sequence_of[entry]
        # As in Triton, a cancelled request cancels the rest of its sequence.
        instance = seq.instance
        rest = self._table.cancel(seq)
        error = ServerError(ErrorCode.CANCELLED, _CANCELLED_MESSAGE)
        for other in rest:
            self._sequence_of.pop(other, None)
            self._reject(other, error, CANCELED)
        if instance is not None:
            self._end_sequences(instance, [seq.corr_id])
        return True

    def _take_all(self) -> list[Pending]:
        entries = self._table.take_all()
        for entry in entries:
            self._sequence_of.pop(entry, None)
        return entries

    def _pump(self, now_ns: int) -> int | None:
        table = self._table
        self._sync_instances()
        expired = table.expire(now_ns)
        if expired.idle:
            log.debug("[%s] %d idle sequence(s) released their slot", self._label, len(expired.idle))
            by_instance: dict[InstT, list[CorrId]] = {}
            for corr_id, instance in expired.idle:
                by_instance.setdefault(instance, []).append(corr_id)
            for instance, ids in by_instance.items():
                self._end_sequences(instance, ids)
        if expired.timed_out:
            timeout = ServerError(ErrorCode.UNAVAILABLE, BACKLOG_TIMEOUT_MESSAGE)
            for entry in expired.timed_out:
                self._sequence_of.pop(entry, None)
                self._reject(entry, timeout, REJECTED)
        wake_at: int | None = None
        for instance in table.instances:
            ready = table.ready_sequences(instance)
            if not ready:
                continue
            chosen, wait_until = self._choose(ready, now_ns)
            if chosen:
                if not self._acquire(instance):
                    continue  # busy: its idle listener wakes us
                self._dispatch([self._prepare(table.take(seq)) for seq in chosen], instance)
            elif wait_until is not None and (wake_at is None or wait_until < wake_at):
                wake_at = wait_until
        deadline = table.next_deadline()
        if deadline is not None and (wake_at is None or deadline < wake_at):
            wake_at = deadline
        return wake_at

    def _finish(self, entry: Pending, result: InferResponse | ServerError | None, fail_reason: str) -> None:
        seq = self._sequence_of.pop(entry, None)
        super()._finish(entry, result, fail_reason)
        if seq is not None and seq.inflight is entry:
            self._table.done(seq, self._clock())
            self._wake.set()

    # --- helpers ----------------------------------------------------------------------------------
    def _choose(
        self, ready: list[Sequence[Pending, InstT]], now_ns: int
    ) -> tuple[list[Sequence[Pending, InstT]], int | None]:
        """Which of an instance's ready sequences go out now, or when to look again."""
        heads = [seq.queue[0] for seq in ready]
        stopping = self._stopping
        if not self._oldest:
            decision = direct_decision(
                heads,
                slots=self._table.slots_per_instance,
                now_ns=now_ns,
                max_delay_ns=0 if stopping else self._direct_delay_ns,
                min_slot_utilization=self._direct_min_util,
            )
            order = list(range(len(ready)))
        else:
            params = self._oldest_params.with_delay_ns(0) if stopping else self._oldest_params
            decision, order = oldest_candidates(heads, now_ns=now_ns, params=params)
        if isinstance(decision, Send):
            return [ready[i] for i in order[: decision.count]], None
        if isinstance(decision, Wait):
            return [], decision.until_ns
        return [], None

    def _acquire(self, instance: InstT) -> bool:
        take = getattr(self._pool, "try_acquire_instance", None)
        if take is None:
            raise unsupported(f"model '{self._model_name}': the instance pool cannot pin sequences to instances")
        return bool(take(instance))

    def _prepare(self, entry: Pending) -> Pending:
        """The request as the model sees it: its inputs plus the control inputs."""
        request = entry.request
        controls = self._controls.tensors(
            request.sequence_id, start=bool(request.sequence_start), end=bool(request.sequence_end)
        )
        if controls:
            entry.request = dataclasses.replace(request, inputs=[*request.inputs, *controls])
        return entry

    def _sync_instances(self) -> None:
        instances = getattr(self._pool, "instances", None)
        if instances is None:
            raise unsupported(f"model '{self._model_name}': the instance pool does not list its instances")
        if list(instances) != self._table.instances:
            self._table.set_instances(instances)

    def _end_sequences(self, instance: InstT, corr_ids: list[CorrId]) -> None:
        """Tell the instance's worker to drop what it keeps for these sequences (implicit state)."""
        end: Callable[[list[CorrId]], None] | None = getattr(instance, "end_sequences", None)
        if end is None:
            return
        try:
            end(list(corr_ids))
        except Exception:
            log.exception("[%s] telling %s that sequences ended failed", self._label, getattr(instance, "name", "?"))
