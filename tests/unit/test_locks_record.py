"""Per-DAG locks and the backfill record against a real redis-server (database 1, emptied)."""

from __future__ import annotations

import json
import time

from backfill.clock import Clock
from backfill.locks import DagLocks, WindowKeys
from backfill.record import DagRecord, Record
from backfill.request import Request, validate
from backfill.states import TERMINAL

EMPTY = {s: 0 for s in sorted(TERMINAL)}


def test_lock_has_one_owner_expires_without_renewal_and_is_released_only_by_its_owner(scratch_redis):
    locks = DagLocks(scratch_redis, prefix="t", ttl=0.6)
    assert locks.acquire("dag", "bf-a__1") is None
    assert locks.acquire("dag", "bf-b__1") == "bf-a__1"  # held: the other waits and learns who holds it
    assert locks.release("dag", "bf-b__1") is False  # nobody frees a lock that is not theirs
    # Renewal keeps a live but slow holder's lock past the TTL.
    for _ in range(4):
        time.sleep(0.3)
        assert locks.acquire("dag", "bf-a__1") is None
    assert locks.acquire("dag", "bf-b__1") == "bf-a__1"
    # A holder that dies stops renewing: the lock expires and the next one gets it.
    time.sleep(0.8)
    assert locks.acquire("dag", "bf-b__1") is None
    assert locks.release("dag", "bf-a__1") is False  # the old holder cannot free the new one's lock
    assert locks.release("dag", "bf-b__1") is True
    assert locks.holder("dag") is None


def test_window_states_are_final_and_counted_once(scratch_redis):
    record = Record(scratch_redis, prefix="t", ttl=60)
    params = validate(Request(dags=["a", "b"], start="2024-01-01", end="2024-01-03", batch="daily"), max_windows=10)
    assert record.create(params) is True
    assert record.create(params) is False  # the same id twice: not overwritten
    bf = params.backfill_id
    assert record.transition(params, "a", 0, "waiting", reason="DAG busy: run x is running") is True
    assert record.transition(params, "a", 0, "waiting", reason="DAG busy: run x is running") is False
    assert record.transition(params, "a", 0, "triggered", run="r0") is True
    assert record.transition(params, "a", 0, "success", run="r0", duration=1.5) is True
    # A redelivered task cannot move a finished window nor count it twice.
    assert record.transition(params, "a", 0, "success", run="r0") is False
    assert record.transition(params, "a", 0, "failed", reason="late") is False
    assert record.window(bf, "a", 0).state == "success"
    assert record.dag(bf, "a").counts["success"] == 1
    states = [e["state"] for _, e in record.events(bf) if e.get("dag") == "a"]
    assert states == ["waiting", "triggered", "success"]

    assert record.mark_not_run(params, "a", 1, reason="not run: window 0 failed") == 2
    assert record.dag(bf, "a").counts["not_run"] == 2
    assert record.finish_dag(params, "a", "failed") == 1
    assert record.finish_dag(params, "a", "failed") == -1  # closed once only
    assert record.meta(bf)["state"] == "running"
    assert record.finish_dag(params, "b", "succeeded") == 0
    meta = record.meta(bf)
    assert meta["state"] == "failed" and meta["finished_at"]
    assert 0 < scratch_redis.ttl(record.k_meta(bf)) <= 60  # a finished record expires


def test_arm_checks_cancel_lock_and_slots_then_renews_them(scratch_redis):
    from backfill.throttle import Throttle

    locks = DagLocks(scratch_redis, prefix="t", ttl=0.5, slot_ttl=0.5)
    th = Throttle(scratch_redis, prefix="t", ttl=0.5, stale=60, global_limit=1)
    keys = th.slot_keys("bf-a", max_parallel_dags=0)
    window = WindowKeys("t:bf:bf-a", "t:bf:bf-a:win:d", 0)
    arm = lambda: locks.arm("d", "bf-a__1", window=window, member="bf-a__1@d", slot_keys=keys)  # noqa: E731
    assert arm() == "lost"  # never taken
    assert locks.acquire("d", "bf-a__1") is None
    assert arm() == "slot"  # the lock, but no slot
    assert th.acquire("bf-a", "bf-a__1@d", max_parallel_dags=0) is None
    assert arm() == "ok"
    time.sleep(0.3)
    assert arm() == "ok"  # renewed both: still held past the first 0.5 s
    time.sleep(0.3)
    assert locks.holder("d") == "bf-a__1" and th.glob.in_use() == 1
    scratch_redis.hset("t:bf:bf-a:win:d", "0", '{"state": "skipped"}')
    assert arm() == "ended"  # ended by another delivery meanwhile: no trigger
    scratch_redis.hset("t:bf:bf-a", "cancelled", "1")
    assert arm() == "cancelled"  # a cancel flagged before the last check: no trigger


def test_a_cancel_leaves_a_lock_armed_for_an_unrecorded_trigger_to_its_holder(scratch_redis):
    locks = DagLocks(scratch_redis, prefix="t", ttl=60)
    assert locks.acquire("d", "bf-a__1") is None
    assert locks.release_idle("d", "bf-b__") == 0  # not that backfill's
    assert locks.arm("d", "bf-a__1", window=WindowKeys("t:bf:bf-a", "t:w", 0), member="m", slot_keys=[]) == "ok"
    assert locks.release_idle("d", "bf-a__") == -1  # its trigger may be on its way
    locks.disarm("d", "bf-a__1")  # the trigger is recorded: the run is in Airflow for all to see
    assert locks.release_idle("d", "bf-a__") == 1
    assert locks.holder("d") is None


def test_a_note_never_revives_a_final_window_and_a_claim_has_one_winner(scratch_redis):
    record = Record(scratch_redis, prefix="t", ttl=60)
    params = validate(Request(dags=["a"], start="2024-01-01", end="2024-01-03", batch="daily"), max_windows=10)
    record.create(params)
    assert record.claim(params, "a", 0, "run_id", None, run_id="r1", clear_at=1.5) is True
    assert record.claim(params, "a", 0, "run_id", None, run_id="r2") is False  # claimed already
    assert record.claim(params, "a", 0, "clear_at", 1.5, clear_at=9.0) is True  # compare-and-set
    assert record.window(params.backfill_id, "a", 0).run_id == "r1"
    record.transition(params, "a", 0, "cancelled", reason="backfill cancelled")
    assert record.note(params, "a", 0, unavailable_since=1.0) is False
    assert record.window(params.backfill_id, "a", 0).state == "cancelled"


def test_a_backfill_is_recorded_whole_or_not_at_all(scratch_redis):
    record = Record(scratch_redis, prefix="t", ttl=60)
    params = validate(Request(dags=["a", "b"], start="2024-01-01", end="2024-01-03", batch="daily"), max_windows=10)
    assert record.create(params) is True
    meta = record.meta(params.backfill_id)
    assert meta["state"] == "running" and meta["dags_left"] == "2"
    assert record.dag(params.backfill_id, "b") == DagRecord(state="pending", total=params.count("b"), counts=EMPTY)
    assert [e["state"] for _, e in record.events(params.backfill_id)] == ["planned"]
    assert params.backfill_id in record.recent()


def test_window_events_are_stored_compact_and_read_back_whole(scratch_redis):
    """A window's event keeps only what its index does not give back (bench B3: the record of a
    73,000-window backfill); ``events`` returns it as it always did."""
    record = Record(scratch_redis, prefix="t", ttl=60, clock=FixedClock(1_750_000_000.12345))
    params = validate(Request(dags=["a", "b"], start="2024-01-01", end="2024-01-02", batch="daily"), max_windows=10)
    record.create(params)
    bf, window = params.backfill_id, params.spec.window(1)
    own = params.run_id(window)
    assert record.transition(params, "b", 1, "waiting", reason="DAG busy: run x is running") is True
    assert record.transition(params, "b", 1, "triggered", run=own) is True
    assert record.transition(params, "b", 1, "triggered", run=own) is False  # same state, no reason: no event
    assert record.transition(params, "b", 1, "success", run="manual__other", duration=2.5) is True
    # A window event of a record written before 2026-11-30 (JSON under "e") is read as it was.
    old = {
        "ts": 1.5,
        "kind": "window",
        "dag": "a",
        "idx": 0,
        "start": "s",
        "end": "e",
        "state": "waiting",
        "reason": None,
    }
    scratch_redis.xadd(record.k_events(bf), {"e": json.dumps(old)})
    stored = [f for _, f in scratch_redis.xrange(record.k_events(bf))][1:]
    assert stored[1] == {b"t": b"1750000000.123", b"d": b"1", b"i": b"1", b"s": b"triggered", b"o": b"1"}
    assert scratch_redis.hget(record.k_dag(bf, "b"), "started_at") == b"1750000000.123"  # the first event's time
    bounds = {"start": window.start.isoformat(), "end": window.end.isoformat()}
    at = {"ts": 1750000000.123, "kind": "window", "dag": "b", "idx": 1, **bounds}
    assert [e for _, e in record.events(bf)][1:] == [
        {**at, "state": "waiting", "reason": "DAG busy: run x is running"},
        {**at, "state": "triggered", "reason": None, "run": own},
        {**at, "state": "success", "reason": None, "run": "manual__other", "duration": 2.5},
        old,
    ]
    assert [e["state"] for _, e in record.events(bf, after=record.events(bf)[1][0], count=2)] == [
        "triggered",
        "success",
    ]
    # An empty reason clears the one recorded and is not stored.
    assert "reason" not in json.loads(scratch_redis.hget(record.k_windows(bf, "b"), "1"))
    assert record.window(bf, "b", 1).reason is None and record.dag(bf, "b").reason is None


class FixedClock(Clock):
    def __init__(self, t: float) -> None:
        self.t = t

    def now(self) -> float:
        return self.t


def test_windows_wanting_a_dag_get_it_first_come_or_by_priority_and_a_silent_one_leaves_the_line(scratch_redis):
    locks = DagLocks(scratch_redis, prefix="t", ttl=60, stale=0.3)
    assert locks.take("d", "a__1") is None
    assert locks.take("d", "b__1") == ("a__1", True)  # held: b joins the line
    assert locks.take("d", "c__1", head_start=0) == ("a__1", True)
    assert locks.queue("d") == ("a__1", ["b__1", "c__1"])
    assert locks.release("d", "a__1")
    # Free, but promised to b, first in line: a's next window waits behind b and c.
    assert locks.take("d", "a__2") == ("b__1", False)
    assert locks.take("d", "b__1") is None and locks.queue("d") == ("b__1", ["c__1", "a__2"])
    assert locks.release("d", "b__1")
    # A higher priority goes ahead of the line: the DAG is free, so it takes it at once.
    assert locks.take("d", "p__1", head_start=100) is None
    assert locks.queue("d") == ("p__1", ["c__1", "a__2"])
    assert locks.release("d", "p__1")
    # One that stops asking leaves the line after ``stale``: the next one takes the DAG.
    time.sleep(0.4)
    assert locks.take("d", "a__2") is None and locks.queue("d") == ("a__2", [])


def test_a_step_reads_its_window_and_takes_its_woken_run_in_one_round_trip(scratch_redis):
    """``Record.snapshot``: the window, the cancel flag, the pace, the lock, and the run the
    watcher woke the window for, taken (read once: a stale one would outlive its attempt)."""
    record = Record(scratch_redis, prefix="t", ttl=60)
    params = validate(Request(dags=["a"], start="2024-01-01", end="2024-01-02", batch="daily"), max_windows=10)
    record.create(params)
    bf = params.backfill_id
    record.transition(params, "a", 0, "triggered", run="r0")
    scratch_redis.hset("t:park:ended", f"{bf}/a/0", json.dumps({"dag_run_id": "r0", "state": "success"}))
    rec, cancelled, _, (holder, _), woken = record.snapshot(bf, "a", 0, lock_key="t:lock:a",
                                                            also=("t:park:ended", f"{bf}/a/0"))  # fmt: skip
    assert rec.state == "triggered" and not cancelled and holder == ""
    assert json.loads(woken) == {"dag_run_id": "r0", "state": "success"}
    assert record.snapshot(bf, "a", 0, lock_key="t:lock:a", also=("t:park:ended", f"{bf}/a/0"))[4] is None
    # Recorded and released in one pipeline: the transition's answer comes first.
    pipe = scratch_redis.pipeline(transaction=False)
    record.queue_transition(pipe, params, "a", 0, "success", run="r0")
    pipe.hset("t:probe", "x", "1")
    code, _ = pipe.execute()
    assert record.transitioned(params, "a", 0, "success", code) == 2 and record.window(bf, "a", 0).state == "success"
