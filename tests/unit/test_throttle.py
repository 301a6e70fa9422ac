"""The throttle's fair semaphores against a real redis-server (database 1, emptied)."""

from __future__ import annotations

import time

from backfill.throttle import Semaphore, Throttle


def test_a_slot_goes_to_the_head_of_the_line_and_a_dag_queues_again_for_each_window(scratch_redis):
    sem = Semaphore(scratch_redis, "t:s", ttl=60, stale=60)
    assert sem.acquire("a1", 1).granted
    first, second = sem.acquire("b1", 1), sem.acquire("c1", 1)
    assert (first.granted, first.position, second.position) == (False, 1, 2)
    assert sem.acquire("a1", 1).granted  # the holder keeps its slot on every look
    sem.release("a1")
    # a2 (the same DAG's next window) asks before b1 looks again, but b1 is ahead in line.
    assert sem.acquire("a2", 1).position == 3
    assert not sem.acquire("c1", 1).granted
    assert sem.acquire("b1", 1).granted
    sem.release("b1")
    assert sem.acquire("c1", 1).granted
    sem.release("c1")
    assert sem.acquire("a2", 1).granted


def test_limits_hold_expire_and_can_be_overridden_at_run_time(scratch_redis):
    sem = Semaphore(scratch_redis, "t:s", ttl=0.5, stale=0.5)
    assert [sem.acquire(m, 2).granted for m in ("a", "b", "c")] == [True, True, False]
    assert sem.acquire("c", 2).in_use == 2
    time.sleep(0.7)  # a and b died without releasing: their slots come back; c's place went stale too
    assert sem.acquire("c", 2).granted
    sem.set_limit(0)  # 0 = no limit, for every worker at once
    assert all(sem.acquire(m, 2).granted for m in ("d", "e", "f"))
    sem.set_limit(None)
    assert sem.limit_override() is None and not sem.acquire("g", 2).granted


def test_a_backfill_at_its_own_limit_does_not_hold_back_another_under_the_global_cap(scratch_redis):
    th = Throttle(scratch_redis, prefix="t", ttl=60, stale=60, global_limit=2)
    assert th.acquire("bf-a", "bf-a__1", max_parallel_dags=1) is None
    why = th.acquire("bf-a", "bf-a__2", max_parallel_dags=1)
    assert why and why.startswith("max_parallel_dags=1 reached")
    assert th.acquire("bf-b", "bf-b__1", max_parallel_dags=0) is None  # bf-a's waiter is not in the global line
    why = th.acquire("bf-b", "bf-b__2", max_parallel_dags=0)
    assert why and why.startswith("global limit reached (2 runs in flight")
    th.release_backfill("bf-a")
    assert th.glob.members("bf-a") == [] and th.of_backfill("bf-a").members() == []
    assert th.acquire("bf-b", "bf-b__2", max_parallel_dags=0) is None


def test_one_script_renews_the_lock_and_the_slots_of_a_window_in_flight(scratch_redis):
    from backfill.locks import DagLocks, WindowKeys

    th = Throttle(scratch_redis, prefix="t", ttl=0.5, stale=60, global_limit=1)
    locks = DagLocks(scratch_redis, prefix="t", ttl=0.5)
    keys = th.slot_keys("bf-a", max_parallel_dags=0)
    assert locks.acquire("d", "bf-a__1") is None
    assert th.acquire("bf-a", "bf-a__1@d", max_parallel_dags=0) is None
    for _ in range(4):  # a renewal every 0.3 s keeps both past their 0.5 s TTL
        time.sleep(0.3)
        window = WindowKeys("t:bf:bf-a", "t:bf:bf-a:win:d", 0)
        assert locks.hold("d", "bf-a__1", window=window, member="bf-a__1@d", slot_keys=keys) is None
    assert th.acquire("bf-b", "bf-b__1@e", max_parallel_dags=0) is not None  # still held
    assert locks.acquire("d", "bf-b__1") == "bf-a__1"


def test_a_worker_clock_ahead_expires_nothing_early(scratch_redis):
    """Expiries are judged on Redis's clock: a worker whose own clock is an hour ahead neither
    takes a live lock nor drops a live slot."""
    from backfill.clock import Clock
    from backfill.locks import DagLocks

    class Ahead(Clock):
        def now(self) -> float:
            return time.time() + 3600

    th, ahead = Throttle(scratch_redis, prefix="t", ttl=60, stale=60, global_limit=1), Ahead()
    fast = Throttle(scratch_redis, prefix="t", ttl=60, stale=60, global_limit=1, clock=ahead)
    assert th.acquire("bf-a", "bf-a__1@d", max_parallel_dags=0) is None
    assert fast.acquire("bf-b", "bf-b__1@e", max_parallel_dags=0) is not None  # the slot is still held
    assert th.glob.in_use() == 1
    assert DagLocks(scratch_redis, prefix="t", ttl=60).acquire("d", "bf-a__1") is None
    assert DagLocks(scratch_redis, prefix="t", ttl=60, clock=ahead).acquire("d", "bf-b__1") == "bf-a__1"


def test_priority_goes_first_under_the_global_cap_without_starving_the_others(scratch_redis):
    from backfill.throttle import PRIORITY_PLACES, Throttle

    throttle = Throttle(scratch_redis, prefix="t", ttl=60, stale=600, global_limit=1)
    assert throttle.acquire("low", "holder@d", max_parallel_dags=0) is None  # the one slot
    assert throttle.acquire("low", "low-1@d", max_parallel_dags=0) is not None  # waits first
    assert throttle.acquire("high", "high-1@d", max_parallel_dags=2, priority=1) is not None  # asks later
    throttle.release("low", "holder@d")
    # The freed slot goes to the later, higher-priority window; the low one keeps its place.
    assert throttle.acquire("low", "low-1@d", max_parallel_dags=0) is not None
    assert throttle.acquire("high", "high-1@d", max_parallel_dags=2, priority=1) is None
    # A stream of high-priority windows overtakes the low one at most PRIORITY_PLACES times.
    holder, overtaken = "high-1@d", 0
    for i in range(2, 3 * PRIORITY_PLACES):
        member = f"high-{i}@d"
        assert throttle.acquire("high", member, max_parallel_dags=2, priority=1) is not None
        throttle.release("high", holder)
        if throttle.acquire("low", "low-1@d", max_parallel_dags=0) is None:
            break
        assert throttle.acquire("high", member, max_parallel_dags=2, priority=1) is None
        holder, overtaken = member, overtaken + 1
    else:
        raise AssertionError("the low-priority window never got a slot")
    assert PRIORITY_PLACES - 5 <= overtaken <= PRIORITY_PLACES
