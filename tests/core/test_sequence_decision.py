"""The sequence batcher's pure bookkeeping: slots, backlog, idle expiry, and what an instance runs
next. No asyncio, no processes; time is a number."""
from __future__ import annotations

import dataclasses

import pytest

from tritonpy.core.errors import ErrorCode, ServerError
from tritonpy.core.scheduling.decision import IDLE, BatchParams, Send, Wait
from tritonpy.core.scheduling.sequence_decision import SlotTable, direct_decision, oldest_candidates

MS = 1_000_000


@dataclasses.dataclass(eq=False)
class It:
    name: str
    enqueue_ns: int = 0
    rows: int = 1
    shape_key: tuple = ()
    in_queue: bool = False


def table(instances=("a", "b"), slots=2, idle_ms=100, max_backlog=8) -> SlotTable:
    t = SlotTable(slots_per_instance=slots, idle_ns=idle_ms * MS, max_backlog=max_backlog)
    t.set_instances(list(instances))
    return t


def admit(t: SlotTable, cid, *, start=False, end=False, now=0, timeout_ns=0, name=None):
    item = It(name or f"{cid}@{now}", enqueue_ns=now)
    seq = t.admit(item, cid, start=start, end=end, now_ns=now, timeout_ns=timeout_ns, model_name="m")
    return item, seq


def run(t: SlotTable, seq, now=0):
    """Take the sequence's next request and complete it."""
    item = t.take(seq)
    t.done(seq, now)
    return item


def test_new_sequences_spread_over_instances():
    t = table()
    placed = [admit(t, cid, start=True)[1].instance for cid in (1, 2, 3, 4)]
    assert sorted(placed) == ["a", "a", "b", "b"]
    assert placed[0] != placed[1]  # the second sequence goes to the emptier instance
    assert t.active == 4 and t.backlogged == 0


def test_unknown_sequence_without_start_is_refused_with_tritons_message():
    t = table()
    with pytest.raises(ServerError) as err:
        admit(t, 7)
    assert err.value.code == ErrorCode.INVALID_ARG
    assert err.value.message == (
        "inference request for sequence 7 to model 'm' must specify the START flag on the first request of the sequence"
    )
    with pytest.raises(ServerError, match="sequence abc to model"):
        admit(t, "abc")


def test_requests_of_one_sequence_queue_behind_the_executing_one():
    t = table(instances=["a"])
    first, seq = admit(t, 1, start=True)
    second, _ = admit(t, 1, now=1)
    assert t.ready_sequences("a") == [seq]
    assert t.take(seq) is first
    assert t.ready_sequences("a") == []  # one request of a sequence executes at a time
    t.done(seq, 2)
    assert t.ready_sequences("a") == [seq] and seq.queue[0] is second
    assert t.queued == 1


def test_backlog_takes_the_slot_freed_by_end():
    t = table(instances=["a"], slots=1)
    _, s1 = admit(t, 1, start=True)
    _, s2 = admit(t, 2, start=True)
    assert s1.instance == "a" and s2.slot is None and t.backlogged == 1
    admit(t, 2, now=1)  # continuing requests of a backlogged sequence wait with it
    admit(t, 1, end=True, now=2)
    run(t, s1)
    assert s2.slot is None  # the END request has not run yet
    run(t, s1, now=3)
    assert 1 not in t and s2.instance == "a" and t.backlogged == 0
    assert len(s2.queue) == 2


def test_idle_sequence_loses_its_slot_and_needs_start_again():
    t = table(idle_ms=100)
    _, seq = admit(t, 5, start=True, now=0)
    run(t, seq, now=10 * MS)
    assert t.next_deadline() == 110 * MS
    assert t.expire(109 * MS).idle == []
    held_by = seq.instance
    expired = t.expire(110 * MS)
    assert expired.idle == [(5, held_by)]
    assert 5 not in t and t.active == 0
    with pytest.raises(ServerError, match="must specify the START flag"):
        admit(t, 5, now=111 * MS)
    admit(t, 5, start=True, now=112 * MS)  # a new sequence with the same id is fine


def test_busy_sequences_never_expire():
    t = table(idle_ms=1)
    _, seq = admit(t, 1, start=True)
    t.take(seq)
    assert t.expire(10**12).idle == []
    assert t.next_deadline() is None


def test_after_end_a_request_without_start_is_refused_but_start_reuses_the_slot():
    t = table()
    _, seq = admit(t, 9, start=True)
    admit(t, 9, end=True, now=1)
    with pytest.raises(ServerError, match="must specify the START flag"):
        admit(t, 9, now=2)
    _, again = admit(t, 9, start=True, now=3)
    assert again is seq and len(seq.queue) == 3  # continues in the same slot, in order
    for now in (4, 5, 6):
        run(t, seq, now)
    assert 9 in t and seq.slot is not None  # the last START reopened it


def test_backlog_timeout_rejects_the_whole_waiting_sequence():
    t = table(instances=["a"], slots=1)
    admit(t, 1, start=True)
    w1, s2 = admit(t, 2, start=True, now=0, timeout_ns=50 * MS)
    w2, _ = admit(t, 2, now=10 * MS)
    assert t.next_deadline() == 50 * MS
    expired = t.expire(50 * MS)
    assert expired.timed_out == [w1, w2]
    assert 2 not in t and t.backlogged == 0 and t.queued == 1


def test_backlog_is_bounded():
    t = table(instances=["a"], slots=1, max_backlog=1)
    admit(t, 1, start=True)
    admit(t, 2, start=True)
    with pytest.raises(ServerError) as err:
        admit(t, 3, start=True)
    assert err.value.code == ErrorCode.UNAVAILABLE
    assert "Exceeds maximum queue size" in err.value.message and "sequence 3" in err.value.message


def test_cancel_frees_the_slot_after_the_executing_request():
    t = table(instances=["a"], slots=1)
    _, seq = admit(t, 1, start=True)
    queued, _ = admit(t, 1, now=1)
    t.take(seq)
    _, waiting = admit(t, 2, start=True)
    assert t.cancel(seq) == [queued] and queued.in_queue is False
    assert 1 not in t and waiting.slot is None  # still executing: the slot is held
    t.done(seq, 5)
    assert waiting.instance == "a"


def test_removed_instance_sends_its_idle_sequences_back_to_the_backlog_front():
    t = table(instances=["a", "b"], slots=1)
    _, s1 = admit(t, 1, start=True)
    _, s2 = admit(t, 2, start=True)
    _, s3 = admit(t, 3, start=True)  # backlogged
    gone = s1.instance
    t.set_instances(["b"] if gone == "a" else ["a"])
    assert s1.slot is None and t.backlogged == 2
    t.set_instances(["a", "b"])  # the instance comes back: the moved sequence goes first
    assert s1.slot is not None and s3.slot is None
    assert s2.slot is not None


def test_take_all_empties_everything():
    t = table()
    items = [admit(t, cid, start=True)[0] for cid in (1, 2, 3, 4, 5)]
    assert sorted(i.name for i in t.take_all()) == sorted(i.name for i in items)
    assert t.queued == 0 and t.active == 0 and t.backlogged == 0


# --- decisions -----------------------------------------------------------------------------------------------
def test_direct_sends_every_ready_slot_at_once_by_default():
    heads = [It("x", 0), It("y", 5)]
    assert direct_decision(heads, slots=4, now_ns=5, max_delay_ns=0, min_slot_utilization=0.5) == Send(2)
    assert direct_decision([], slots=4, now_ns=5, max_delay_ns=0, min_slot_utilization=0.0) is IDLE


def test_direct_waits_for_slot_utilization_or_the_delay():
    heads = [It("x", 0)]
    kw = dict(slots=4, max_delay_ns=100, min_slot_utilization=0.5)
    assert direct_decision(heads, now_ns=10, **kw) == Wait(100)
    assert direct_decision(heads, now_ns=101, **kw) == Send(1)
    assert direct_decision(heads + [It("y", 3)], now_ns=10, **kw) == Send(2)


def test_oldest_batches_the_oldest_heads_first():
    heads = [It("late", 30), It("early", 10), It("mid", 20)]
    params = BatchParams.make(max_batch_size=2, preferred=[2])
    decision, order = oldest_candidates(heads, now_ns=40, params=params)
    assert decision == Send(2)
    assert [heads[i].name for i in order[:2]] == ["early", "mid"]


def test_oldest_waits_for_the_preferred_size_within_the_delay():
    params = BatchParams.make(max_batch_size=4, preferred=[4], max_queue_delay_us=1000)
    decision, _ = oldest_candidates([It("a", 0), It("b", 0)], now_ns=10, params=params)
    assert decision == Wait(1_000_000)
    decision, _ = oldest_candidates([It("a", 0), It("b", 0)], now_ns=1_000_000, params=params)
    assert decision == Send(2)
