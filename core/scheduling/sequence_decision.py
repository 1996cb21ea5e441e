"""The sequence batcher's bookkeeping and decisions, free of asyncio (STYLE.md pattern 4).

`SlotTable` knows which sequence (correlation id) holds which slot of which instance, which
sequences wait for a slot (the backlog), what each sequence has queued and whether it has a
request executing. `direct_decision` and `oldest_candidates` say what one instance should run now.
The asyncio scheduler in `sequence.py` only feeds events in and waits.

The rules follow Triton's `SequenceBatchScheduler` (core `sequence_batch_scheduler.cc`):

* Every instance has `slots_per_instance` sequence slots. A START request for an unknown
  correlation id takes a free slot (on the instance with the most free slots, so sequences
  spread over instances); when none is free the sequence waits in the backlog, in arrival
  order, and takes the next slot that frees up. A sequence keeps its slot, hence its instance,
  for its whole life, so state kept in that instance's worker follows it.
* A request without START for an unknown correlation id is an error. A START for a sequence
  that is still active continues in the same slot (Triton logs that the previous sequence ended
  early); the model sees the START flag and resets.
* A sequence has at most one request executing; its requests execute in arrival order.
* A slot is freed when the sequence's END request has completed, when the sequence was idle
  (nothing queued or executing) for `idle_ns`, or when it was cancelled.
* Backlogged requests may carry a timeout: when the earliest one expires, the whole backlogged
  sequence is rejected (Triton: "timeout of the corresponding sequence has been expired").

Deviation, on purpose: Triton's backlog is unbounded; here at most `max_backlog` sequences may
wait for a slot and a START beyond that is refused at once with UNAVAILABLE.
"""
from __future__ import annotations

import collections
import dataclasses
from typing import Callable, Generic, Hashable, Iterable, Protocol, Sequence as Seq, TypeVar, Union

from tritonpy.core.errors import invalid, unavailable
from tritonpy.core.scheduling.decision import IDLE, BatchParams, Decision, Idle, Send, Wait, decide

__all__ = [
    "Item",
    "Sequence",
    "Slot",
    "SlotTable",
    "Expired",
    "direct_decision",
    "oldest_candidates",
    "describe_id",
    "DEFAULT_MAX_BACKLOG",
    "BACKLOG_TIMEOUT_MESSAGE",
]

DEFAULT_MAX_BACKLOG = 1024
BACKLOG_TIMEOUT_MESSAGE = "timeout of the corresponding sequence has been expired"

CorrId = Union[int, str]


class Item(Protocol):
    """A queued request as the table sees it (see `base.Pending`)."""

    rows: int
    shape_key: Hashable
    enqueue_ns: int
    in_queue: bool


# What the table holds: queued requests, and the instances slots belong to (any hashable handle).
ItemT = TypeVar("ItemT", bound=Item)
InstT = TypeVar("InstT")


def describe_id(corr_id: CorrId) -> str:
    """How Triton prints a correlation id in messages: the number, or the string as is."""
    return str(corr_id)


@dataclasses.dataclass(eq=False, slots=True)
class Slot(Generic[ItemT, InstT]):
    """One sequence slot of one instance."""

    instance: InstT
    index: int
    sequence: "Sequence[ItemT, InstT] | None" = None


@dataclasses.dataclass(eq=False, slots=True)
class Sequence(Generic[ItemT, InstT]):
    """One live correlation id: its queued requests, its slot (None while backlogged)."""

    corr_id: CorrId
    queue: collections.deque[ItemT] = dataclasses.field(default_factory=collections.deque)
    slot: Slot[ItemT, InstT] | None = None
    inflight: ItemT | None = None
    # False once an END request was queued (and no START after it): a further request without
    # START is an error, and the slot goes once the queue has drained.
    open: bool = True
    # Still the table's entry for `corr_id` (False after cancel, expiry or a backlog timeout).
    live: bool = True
    last_active_ns: int = 0
    backlog_deadline_ns: int = 0  # 0 = none; only while backlogged

    @property
    def instance(self) -> InstT | None:
        return self.slot.instance if self.slot is not None else None


@dataclasses.dataclass(slots=True)
class Expired(Generic[ItemT, InstT]):
    """What `SlotTable.expire` found: idle sequences whose slot was freed (with the instance that
    held it, so its worker can drop their state), and backlogged requests whose timeout passed."""

    idle: list[tuple[CorrId, InstT]] = dataclasses.field(default_factory=list)
    timed_out: list[ItemT] = dataclasses.field(default_factory=list)


class SlotTable(Generic[ItemT, InstT]):
    """Sequences, slots and the backlog of one model version (see the module docstring)."""

    def __init__(self, *, slots_per_instance: int, idle_ns: int, max_backlog: int = DEFAULT_MAX_BACKLOG) -> None:
        self.slots_per_instance = max(1, int(slots_per_instance))
        self.idle_ns = max(1, int(idle_ns))
        self.max_backlog = max(0, int(max_backlog))
        self._slots: dict[InstT, list[Slot[ItemT, InstT]]] = {}  # instance -> its slots, in instance order
        self._sequences: dict[CorrId, Sequence[ItemT, InstT]] = {}
        self._backlog: collections.deque[Sequence[ItemT, InstT]] = collections.deque()
        self._queued = 0

    # --- instances --------------------------------------------------------------------------
    def set_instances(self, instances: Iterable[InstT]) -> None:
        """Follow the pool: new instances get free slots (backlogged sequences take them); the
        sequences of an instance that left are moved back to the front of the backlog, once
        nothing of theirs is executing there."""
        current = list(instances)
        known = set(current)
        for inst in list(self._slots):
            if inst not in known:
                slots = self._slots.pop(inst)
                orphans = [s.sequence for s in slots if s.sequence is not None]
                for seq in reversed(orphans):
                    if seq.inflight is None:
                        self._unpin(seq, front=True)
        for inst in current:
            if inst not in self._slots:
                self._slots[inst] = [Slot(inst, i) for i in range(self.slots_per_instance)]
        self._fill_from_backlog()

    @property
    def instances(self) -> list[InstT]:
        return list(self._slots)

    # --- admission --------------------------------------------------------------------------
    def admit(
        self,
        item: ItemT,
        corr_id: CorrId,
        *,
        start: bool,
        end: bool,
        now_ns: int,
        timeout_ns: int = 0,
        model_name: str = "",
        ready: Callable[[InstT], bool] | None = None,
    ) -> Sequence[ItemT, InstT]:
        """Queue `item` for its sequence; raises ServerError when it cannot be accepted.

        `ready(instance) -> bool`, when given, says which instances can take a new sequence now;
        ready ones are preferred (a restarting instance still counts when no other has room).
        """
        seq = self._sequences.get(corr_id)
        if seq is None or (not seq.open and not start):
            if not start:
                raise invalid(
                    f"inference request for sequence {describe_id(corr_id)} to model '{model_name}' must "
                    "specify the START flag on the first request of the sequence"
                )
            if seq is None:
                seq = self._new_sequence(corr_id, model_name, ready)
        item.in_queue = True
        seq.queue.append(item)
        self._queued += 1
        seq.open = not end
        seq.last_active_ns = now_ns
        if seq.slot is None and timeout_ns > 0:
            deadline = now_ns + timeout_ns
            if not seq.backlog_deadline_ns or deadline < seq.backlog_deadline_ns:
                seq.backlog_deadline_ns = deadline
        return seq

    def _new_sequence(
        self, corr_id: CorrId, model_name: str, ready: Callable[[InstT], bool] | None
    ) -> Sequence[ItemT, InstT]:
        slot = self._free_slot(ready)
        if slot is None and len(self._backlog) >= self.max_backlog:
            total = sum(len(v) for v in self._slots.values())
            raise unavailable(
                f"Exceeds maximum queue size: inference request for sequence {describe_id(corr_id)} to model "
                f"'{model_name}' cannot start, all {total} sequence slots are in use and {len(self._backlog)} "
                "sequences already wait for one"
            )
        seq: Sequence[ItemT, InstT] = Sequence(corr_id)
        self._sequences[corr_id] = seq
        if slot is not None:
            self._pin(seq, slot)
        else:
            self._backlog.append(seq)
        return seq

    def _free_slot(self, ready: Callable[[InstT], bool] | None) -> Slot[ItemT, InstT] | None:
        """The lowest free slot of the instance with the most free slots (ready ones first)."""
        best: tuple[tuple[bool, int, int], Slot[ItemT, InstT]] | None = None
        for order, (inst, slots) in enumerate(self._slots.items()):
            free = [s for s in slots if s.sequence is None]
            if not free:
                continue
            is_ready = True if ready is None else bool(ready(inst))
            key = (is_ready, len(free), -order)
            if best is None or key > best[0]:
                best = (key, free[0])
        return best[1] if best is not None else None

    def _pin(self, seq: Sequence[ItemT, InstT], slot: Slot[ItemT, InstT]) -> None:
        slot.sequence = seq
        seq.slot = slot
        seq.backlog_deadline_ns = 0

    def _unpin(self, seq: Sequence[ItemT, InstT], *, front: bool) -> None:
        if seq.slot is not None and seq.slot.sequence is seq:
            seq.slot.sequence = None
        seq.slot = None
        if seq.live:
            if front:
                self._backlog.appendleft(seq)
            else:
                self._backlog.append(seq)

    def _fill_from_backlog(self) -> None:
        while self._backlog:
            slot = self._free_slot(None)
            if slot is None:
                return
            seq = self._backlog.popleft()
            if seq.live:
                self._pin(seq, slot)

    # --- dispatch ---------------------------------------------------------------------------
    def ready_sequences(self, instance: InstT) -> list[Sequence[ItemT, InstT]]:
        """Sequences on `instance` whose next request may go now, in slot order."""
        return [
            s.sequence
            for s in self._slots.get(instance, ())
            if s.sequence is not None and s.sequence.queue and s.sequence.inflight is None
        ]

    def take(self, seq: Sequence[ItemT, InstT]) -> ItemT:
        """Pop the sequence's next request; it is executing until `done`."""
        item = seq.queue.popleft()
        item.in_queue = False
        self._queued -= 1
        seq.inflight = item
        return item

    def done(self, seq: Sequence[ItemT, InstT], now_ns: int) -> None:
        """The executing request of `seq` finished (whatever its result)."""
        seq.inflight = None
        seq.last_active_ns = max(seq.last_active_ns, now_ns)
        slot = seq.slot
        if slot is not None and slot.instance not in self._slots:
            self._unpin(seq, front=True)  # its instance left the pool meanwhile
        if not seq.live or (not seq.open and not seq.queue):
            self._drop(seq)
        self._fill_from_backlog()

    # --- removal ----------------------------------------------------------------------------
    def sequence_of(self, corr_id: CorrId) -> Sequence[ItemT, InstT] | None:
        return self._sequences.get(corr_id)

    def withdraw(self, item: ItemT, seq: Sequence[ItemT, InstT]) -> bool:
        """Take a queued `item` out of `seq` (its caller gave up)."""
        if not item.in_queue:
            return False
        try:
            seq.queue.remove(item)
        except ValueError:
            return False
        item.in_queue = False
        self._queued -= 1
        return True

    def cancel(self, seq: Sequence[ItemT, InstT]) -> list[ItemT]:
        """End `seq` now: returns its queued requests (removed); its slot is freed at once, or
        when its executing request finishes. Later requests for the id need START again."""
        items = list(seq.queue)
        seq.queue.clear()
        self._queued -= len(items)
        for item in items:
            item.in_queue = False
        self._forget(seq)
        if seq.inflight is None:
            self._drop(seq)
            self._fill_from_backlog()
        return items

    def _forget(self, seq: Sequence[ItemT, InstT]) -> None:
        seq.live = False
        seq.open = False
        if self._sequences.get(seq.corr_id) is seq:
            del self._sequences[seq.corr_id]

    def _drop(self, seq: Sequence[ItemT, InstT]) -> None:
        """The sequence is over: forget it and free its slot (or its backlog place)."""
        self._forget(seq)
        if seq.slot is not None:
            if seq.slot.sequence is seq:
                seq.slot.sequence = None
            seq.slot = None
        else:
            try:
                self._backlog.remove(seq)
            except ValueError:
                pass

    def take_all(self) -> list[ItemT]:
        """Every queued request (slots and backlog); the table forgets every sequence without
        an executing request."""
        items: list[ItemT] = []
        for seq in list(self._sequences.values()):
            items.extend(self.cancel(seq))
        return items

    # --- time -------------------------------------------------------------------------------
    def expire(self, now_ns: int) -> Expired[ItemT, InstT]:
        """Free the slots of idle sequences; reject backlogged sequences whose timeout passed."""
        out: Expired[ItemT, InstT] = Expired()
        for seq in list(self._sequences.values()):
            if seq.slot is not None:
                if not seq.queue and seq.inflight is None and now_ns - seq.last_active_ns >= self.idle_ns:
                    instance = seq.slot.instance
                    self._drop(seq)
                    out.idle.append((seq.corr_id, instance))
            elif seq.backlog_deadline_ns and seq.backlog_deadline_ns <= now_ns:
                out.timed_out.extend(self.cancel(seq))
        if out.idle:
            self._fill_from_backlog()
        return out

    def next_deadline(self) -> int | None:
        """The earliest time at which `expire` would find something (None: nothing can expire)."""
        best: int | None = None
        for seq in self._sequences.values():
            if seq.slot is not None:
                if seq.queue or seq.inflight is not None:
                    continue
                when = seq.last_active_ns + self.idle_ns
            elif seq.backlog_deadline_ns:
                when = seq.backlog_deadline_ns
            else:
                continue
            if best is None or when < best:
                best = when
        return best

    # --- views ------------------------------------------------------------------------------
    @property
    def queued(self) -> int:
        """Requests queued (in slots or the backlog), not executing."""
        return self._queued

    @property
    def active(self) -> int:
        """Sequences holding a slot."""
        return sum(1 for slots in self._slots.values() for s in slots if s.sequence is not None)

    @property
    def backlogged(self) -> int:
        return len(self._backlog)

    def __contains__(self, corr_id: CorrId) -> bool:
        return corr_id in self._sequences


# --- what one instance runs next ------------------------------------------------------------------
def direct_decision(
    heads: Seq[Item], *, slots: int, now_ns: int, max_delay_ns: int, min_slot_utilization: float
) -> Decision:
    """`direct`: one request from every ready slot, at once, unless a batching delay is configured
    (`max_queue_delay_microseconds` AND `minimum_slot_utilization`): then wait until enough slots
    are ready or the oldest head has waited the delay (Triton's DirectSequenceBatch)."""
    if not heads:
        return IDLE
    if max_delay_ns <= 0 or min_slot_utilization <= 0.0:
        return Send(len(heads))
    oldest = min(h.enqueue_ns for h in heads)
    if now_ns - oldest > max_delay_ns or len(heads) / max(1, slots) >= min_slot_utilization:
        return Send(len(heads))
    return Wait(oldest + max_delay_ns)


def oldest_candidates(heads: Seq[Item], *, now_ns: int, params: BatchParams) -> tuple[Decision, list[int]]:
    """`oldest`: dynamic batching over the next request of each candidate sequence, oldest first.

    Returns the decision and the order (indexes into `heads`) that a `Send(n)` refers to: the
    first n of that order go out together."""
    order = sorted(range(len(heads)), key=lambda i: heads[i].enqueue_ns)
    decision = decide((heads[i] for i in order), now_ns, 1, params)
    if isinstance(decision, Idle):
        return IDLE, []
    return decision, order
