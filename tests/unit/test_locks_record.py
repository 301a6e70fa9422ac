"""Per-DAG locks and the backfill record against a real redis-server (database 1, emptied)."""

from __future__ import annotations

import time

from backfill.locks import DagLocks
from backfill.planning import Request, validate
from backfill.record import Record


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
    assert record.window(bf, "a", 0)["state"] == "success"
    assert record.dag(bf, "a")["success"] == "1"
    states = [e["state"] for _, e in record.events(bf) if e.get("dag") == "a"]
    assert states == ["waiting", "triggered", "success"]

    assert record.mark_not_run(params, "a", 1, reason="not run: window 0 failed") == 2
    assert record.dag(bf, "a")["not_run"] == "2"
    assert record.finish_dag(params, "a", "failed") == 1
    assert record.finish_dag(params, "a", "failed") == -1  # closed once only
    assert record.meta(bf)["state"] == "running"
    assert record.finish_dag(params, "b", "succeeded") == 0
    meta = record.meta(bf)
    assert meta["state"] == "failed" and meta["finished_at"]
    assert 0 < scratch_redis.ttl(record.k_meta(bf)) <= 60  # a finished record expires
