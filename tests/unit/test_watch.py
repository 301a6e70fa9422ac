"""The parked windows and the watcher (backfill.watch), against a real Redis; Airflow's list of
ended runs is a stub here (the real endpoint is tested in tests/integration/test_airflow_client.py,
and every integration test runs its windows through the watcher)."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import pytest
import redis

from backfill import watch
from backfill.clock import Clock
from backfill.errors import AirflowUnavailable
from backfill.locks import DagLocks, WindowKeys
from backfill.watch import UNLEARNT_EVERY, Parking, Watched, Watcher, window_key


class EndedRuns:
    """Airflow's ``POST /dags/~/dagRuns/list``, as far as the watcher asks it."""

    def __init__(self) -> None:
        self.started: set[tuple[str, str]] = set()
        self.ended: set[tuple[str, str]] = set()
        self.asked: list[tuple[str, list[str], float]] = []

    def ended_runs_json(self, dag_ids: list[str], *, since: float) -> list[dict[str, Any]]:
        self.asked.append(("ended", dag_ids, since))
        return [{"dag_id": d, "dag_run_id": r, "state": "success"} for d, r in sorted(self.ended) if d in dag_ids]

    def started_runs_json(self, dag_ids: list[str], *, since: float) -> list[dict[str, Any]]:
        self.asked.append(("started", dag_ids, since))
        out = [{"dag_id": d, "dag_run_id": r, "state": "success"} for d, r in sorted(self.ended) if d in dag_ids]
        out += [{"dag_id": d, "dag_run_id": r, "state": "running", "start_date": "2026-12-01T00:00:00Z"}
                for d, r in sorted(self.started - self.ended) if d in dag_ids]  # fmt: skip
        return out


def _parking(client: redis.Redis) -> Parking:
    return Parking(client, prefix="t")


def _watcher(parking: Parking, airflow: EndedRuns, out: list[dict[str, Any]], holder: str = "w1", *,
             one_list: int = 0) -> Watcher:  # fmt: skip
    """A watcher as with many runs watched (two lists, of the DAGs due), unless ``one_list``."""
    return Watcher(parking=parking, airflow=airflow, publish=out.append, every=0.01, holder=holder,  # type: ignore[arg-type]
                   one_list=one_list)  # fmt: skip


def test_a_parked_message_waits_for_its_deadline_or_its_wake(scratch_redis: redis.Redis) -> None:
    p = _parking(scratch_redis)
    key = window_key("bf-1", "etl", 0)
    p.park(key, {"task": "backfill.run_window", "n": 1}, 100.0, Watched("etl", "bf-1__a", time.time()))
    assert p.claim() == []  # not due yet
    assert p.wake_now([key, window_key("bf-1", "etl", 9)]) == 1  # the other window is not parked: untouched
    (got,) = p.claim()
    assert got[0] == key and got[2] == {"task": "backfill.run_window", "n": 1}
    assert p.claim() == []  # claimed: due again only after the claim's lease
    assert p.done([(got[0], got[1])]) == 1
    assert p.parked() == {} and p.watched() == {}


def test_parking_again_replaces_so_duplicate_deliveries_collapse(scratch_redis: redis.Redis) -> None:
    p = _parking(scratch_redis)
    key = window_key("bf-1", "etl", 0)
    watched = Watched("etl", "bf-1__a", time.time())
    p.park(key, {"n": 1}, 0.0, watched)
    (claimed,) = p.claim()
    assert p.wake({key: {"state": "success"}}) == 0  # being published: not woken again
    # The published message ran and parked its next look before the watcher marked it done,
    # even at the very millisecond of the claim's deadline.
    p.park(key, {"n": 2}, claimed[1] / 1000 - time.time(), watched)
    assert p.done([(claimed[0], claimed[1])]) == 0  # the new parking stays
    assert list(p.parked("bf-1")) == [key] and p.watched()[key] == watched
    p.park(key, {"n": 3}, 100.0, watched)
    assert len(p.parked()) == 1


def test_a_watcher_dying_between_claim_and_publish_loses_nothing(scratch_redis: redis.Redis) -> None:
    p = _parking(scratch_redis)
    key = window_key("bf-1", "etl", 0)
    p.park(key, {"n": 1}, 0.0, Watched("etl", "bf-1__a", time.time()))
    assert len(p.claim(lease=0.2)) == 1  # ... and the watcher died here
    assert p.claim(lease=0.2) == []
    time.sleep(0.3)
    (again,) = p.claim()
    assert again[2] == {"n": 1}


def test_the_watcher_wakes_the_windows_whose_run_started_or_ended(scratch_redis: redis.Redis) -> None:
    p, airflow, out = _parking(scratch_redis), EndedRuns(), []
    now = time.time() - 2.5  # triggered 2.5 s ago: due for a look at their start, and at their end
    p.park(window_key("bf-1", "a", 0), {"w": "a"}, 100.0, Watched("a", "bf-1__x", now))
    p.park(window_key("bf-1", "b", 0), {"w": "b"}, 100.0, Watched("b", "bf-1__x", now))
    p.park(window_key("bf-1", "c", 0), {"w": "c"}, 100.0, Watched("c", "bf-1__x", now, running=True))
    watcher = _watcher(p, airflow, out)
    assert not p.alive()
    airflow.started.update({("b", "bf-1__x"), ("c", "bf-1__x")})
    watcher.tick()
    assert p.alive() and out == [{"w": "b"}]  # b started: it records so (c was seen running already)
    # Starts for the runs not seen started; ends for every run that may have ended (nothing learnt).
    assert [(what, dags) for what, dags, _ in airflow.asked] == [("started", ["a", "b"]), ("ended", ["a", "c"])]
    assert all(since <= now for _, _, since in airflow.asked)
    assert p.ended(window_key("bf-1", "b", 0)) == {"dag_id": "b", "dag_run_id": "bf-1__x", "state": "running",
                                                   "start_date": "2026-12-01T00:00:00Z"}  # fmt: skip
    airflow.ended.add(("a", "bf-1__x"))
    time.sleep(1.1)
    watcher.tick()
    assert out[1:] == [{"w": "a"}]
    assert sorted(p.parked()) == [window_key("bf-1", "c", 0)]  # (b's step has not parked again here)
    # The woken step reads the run as listed, once.
    assert p.ended(window_key("bf-1", "a", 0)) == {"dag_id": "a", "dag_run_id": "bf-1__x", "state": "success"}
    assert p.ended(window_key("bf-1", "a", 0)) is None
    assert p.lists() == watcher.lists >= 2


def test_a_start_is_recorded_without_waking_the_window(scratch_redis: redis.Redis) -> None:
    """With ``started`` (a worker's: ``backfill.runner.record_started``), a run seen running is
    recorded so by the watcher and its window sleeps on: a start costs no task execution."""
    p, airflow, out = _parking(scratch_redis), EndedRuns(), []
    seen: list[tuple[str, str]] = []
    now = time.time() - 1.5
    key = window_key("bf-1", "a", 0)
    p.park(key, {"w": "a"}, 100.0, Watched("a", "bf-1__x", now))
    watcher = Watcher(parking=p, airflow=airflow, publish=out.append, every=0.01,  # type: ignore[arg-type]
                      started=lambda k, run: seen.append((k, run["state"])))  # fmt: skip
    airflow.started.add(("a", "bf-1__x"))
    watcher.tick()
    assert seen == [(key, "running")] and out == [] and list(p.parked()) == [key]
    assert p.ended(key) is None  # nothing to read: it was not woken
    asked = len(airflow.asked)
    watcher.tick()
    assert seen == [(key, "running")]  # seen once
    assert ("started", ["a"]) not in [(w, d) for w, d, _ in airflow.asked[asked:]]
    airflow.ended.add(("a", "bf-1__x"))
    time.sleep(1.1)  # nothing learnt: its end is looked for every second at first
    watcher.tick()
    assert out == [{"w": "a"}]  # woken at its end


def test_a_few_runs_are_watched_with_one_list(scratch_redis: redis.Redis) -> None:
    """A few runs watched: each look is one list for all of them, starts and ends at once (a
    start seen there is recorded for free, a short run's too)."""
    p, airflow, out = _parking(scratch_redis), EndedRuns(), []
    seen: list[str] = []
    now = time.time() - 1.5
    for dag in ("a", "b", "c"):
        p.park(window_key("bf-1", dag, 0), {"w": dag}, 100.0, Watched(dag, "bf-1__x", now))
    watcher = Watcher(parking=p, airflow=airflow, publish=out.append, every=0.01,  # type: ignore[arg-type]
                      started=lambda k, run: seen.append(k))  # fmt: skip
    airflow.started.update({("a", "bf-1__x"), ("b", "bf-1__x")})
    airflow.ended.add(("b", "bf-1__x"))
    watcher.tick()
    assert [(what, dags) for what, dags, _ in airflow.asked] == [("started", ["a", "b", "c"])]
    assert all(since <= now for _, _, since in airflow.asked)
    assert out == [{"w": "b"}] and seen == [window_key("bf-1", "a", 0)]


def test_a_short_run_gets_no_look_for_its_start(scratch_redis: redis.Redis) -> None:
    """A run expected to end within seconds is looked at only for its end: each look is a
    request, and ``status`` could not usefully show it running anyway (bench B2)."""
    p, airflow, out = _parking(scratch_redis), EndedRuns(), []
    scratch_redis.hset("t:bf:bf-1:dag:fast", mapping={"avg_duration": 3, "dev_duration": 0.3, "avg_run": 2,
                                                      "dev_run": 0.2})  # fmt: skip
    p.park(window_key("bf-1", "fast", 0), {"w": 1}, 100.0, Watched("fast", "bf-1__x", time.time() - 2.0))
    watcher = _watcher(p, airflow, out)
    for _ in range(5):
        watcher.tick()
        time.sleep(0.05)
    assert [what for what, _, _ in airflow.asked] == []  # its end is due 3 s after its trigger
    time.sleep(1.2)
    watcher.tick()
    assert [what for what, _, _ in airflow.asked] == ["ended"]


def test_lists_follow_the_runs_pace_not_every_round(scratch_redis: redis.Redis) -> None:
    """A run expected to take a minute is not listed every round: one list serves every run,
    and runs are listed when their DAG's pace says (backfill.pacing)."""
    p, airflow, out = _parking(scratch_redis), EndedRuns(), []
    scratch_redis.hset("t:bf:bf-1:dag:slow", mapping={"avg_duration": 60, "dev_duration": 3, "avg_run": 59,
                                                      "dev_run": 3})  # fmt: skip
    p.park(window_key("bf-1", "slow", 0), {"w": 1}, 100.0, Watched("slow", "bf-1__x", time.time(), running=True))
    watcher = _watcher(p, airflow, out)
    waits = []
    for _ in range(20):
        waits.append(watcher.tick())
        time.sleep(0.01)
    assert airflow.asked == []  # its end is not expected for about a minute
    assert min(waits) == watcher.every  # nothing due: a round per `every`, for new windows


def test_one_watcher_at_a_time(scratch_redis: redis.Redis) -> None:
    p = _parking(scratch_redis)
    first, second = _watcher(p, EndedRuns(), []), _watcher(_parking(scratch_redis), EndedRuns(), [], holder="w2")
    first.tick()
    assert p.lease("w2", 5.0) is False
    second.tick()  # stands by
    assert p.lease("w1", 5.0) is True
    p.give_up("w1")
    assert not p.alive() and p.holder() is None
    assert p.lease("w2", 0.2) is True  # the stand-by takes over
    assert p.holder() == "w2" and p.alive()
    time.sleep(0.3)  # ... and dies: its lease runs out, and with it the heartbeat windows read
    p._alive_until = 0.0  # (alive() keeps its answer for a second)
    assert not p.alive()
    assert p.lease("w1", 5.0) is True


def test_a_cancel_wakes_the_backfills_parked_windows_only(scratch_redis: redis.Redis) -> None:
    p = _parking(scratch_redis)
    for bf in ("bf-1", "bf-2"):
        p.park(window_key(bf, "etl", 0), {"bf": bf}, 100.0, Watched("etl", f"{bf}__a", time.time()))
    assert p.wake_backfill("bf-1") == 1
    assert [m for _, _, m in p.claim()] == [{"bf": "bf-1"}]


def test_only_the_dags_of_runs_due_are_listed(scratch_redis: redis.Redis) -> None:
    """At a thousand DAGs in flight a list of every DAG's ends would be pages long: a round
    lists the DAGs whose runs are due, from the last list that covered them."""
    p, airflow, out = _parking(scratch_redis), EndedRuns(), []
    scratch_redis.hset("t:bf:bf-1:dag:slow", mapping={"avg_duration": 60, "dev_duration": 3, "avg_run": 59,
                                                      "dev_run": 3})  # fmt: skip
    now = time.time() - 2.5
    p.park(window_key("bf-1", "fast", 0), {"w": 1}, 100.0, Watched("fast", "bf-1__x", now, running=True))
    p.park(window_key("bf-1", "slow", 0), {"w": 2}, 100.0, Watched("slow", "bf-1__x", now, running=True))
    watcher = _watcher(p, airflow, out)
    watcher.tick()
    assert [(what, dags) for what, dags, _ in airflow.asked] == [("ended", ["fast"])]  # slow: a minute from its end
    time.sleep(1.2)
    watcher.tick()  # covered 1.2 s ago: the next list reaches back from then, not from the trigger
    assert airflow.asked[1][1] == ["fast"] and airflow.asked[1][2] > airflow.asked[0][2] + 1


def test_a_list_covers_runs_from_a_tenth_of_their_length_before_their_expected_end(scratch_redis: redis.Redis) -> None:
    """A deviation learnt from a few runs is often narrower than their spread: a list made anyway
    covers a run from two deviations and at least a tenth of its length before its expected end
    (a run of 20 s that ended 1.5 s early is seen by the next list, not 1 s after it)."""
    p, airflow, out = _parking(scratch_redis), EndedRuns(), []
    for dag in ("early", "later"):
        scratch_redis.hset(f"t:bf:bf-1:dag:{dag}", mapping={"avg_duration": 20, "dev_duration": 0.5})
    now = time.time()
    p.park(window_key("bf-1", "new", 0), {"w": 1}, 100.0, Watched("new", "bf-1__x", now - 3, running=True))
    p.park(window_key("bf-1", "early", 0), {"w": 2}, 100.0, Watched("early", "bf-1__x", now - 18.5, running=True))
    p.park(window_key("bf-1", "later", 0), {"w": 3}, 100.0, Watched("later", "bf-1__x", now - 17, running=True))
    _watcher(p, airflow, out).tick()  # the new DAG's run (nothing learnt) is due: a list is made
    assert [(what, dags) for what, dags, _ in airflow.asked] == [("ended", ["early", "new"])]


def test_deadlines_hold_when_every_list_fails(scratch_redis: redis.Redis) -> None:
    """Airflow failing every list must not keep parked windows from their own looks."""
    p, out = _parking(scratch_redis), []

    class Down(EndedRuns):
        def ended_runs_json(self, dag_ids: list[str], *, since: float) -> list[dict[str, Any]]:
            raise AirflowUnavailable("Airflow answered HTTP 503")

    p.park(window_key("bf-1", "a", 0), {"w": "due"}, 0.0, Watched("a", "bf-1__x", time.time() - 5, running=True))
    # Another window's run is due for a look: the round asks Airflow, which fails.
    p.park(window_key("bf-1", "b", 0), {"w": "b"}, 100.0, Watched("b", "bf-1__x", time.time() - 5, running=True))
    with pytest.raises(AirflowUnavailable):
        _watcher(p, Down(), out).tick()
    assert out == [{"w": "due"}]


def test_with_the_watcher_off_messages_parked_before_are_still_published(scratch_redis: redis.Redis) -> None:
    p, out = _parking(scratch_redis), []
    p.park(window_key("bf-1", "a", 0), {"w": 1}, 0.2, Watched("a", "bf-1__x", time.time()))
    stop = threading.Event()
    thread = threading.Thread(target=_watcher(p, EndedRuns(), out).run, args=(stop,), kwargs={"drain_only": True})
    thread.start()
    try:
        deadline = time.monotonic() + 5
        while not out and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        stop.set()
        thread.join(5)
    assert out == [{"w": 1}] and p.holder() is None  # no lease taken, no heartbeat: nothing parks anew


def test_the_watcher_keeps_a_parked_windows_lock_and_slots_past_their_lease(scratch_redis: redis.Redis) -> None:
    """A window parks for longer than its lock's lease (``Settings.watched_wait``): the watcher
    renews its lock and slots (``Parking.hold_all``) until the window ends, and the renewals
    stop with the window's message: nothing is kept for an ended window."""
    p, airflow, out = _parking(scratch_redis), EndedRuns(), []
    locks = DagLocks(scratch_redis, prefix="t", ttl=0.6, slot_ttl=0.6)
    keys = WindowKeys("t:bf:bf-1", "t:bf:bf-1:windows:etl", 0)
    slot = "t:slots:bf-1"
    assert locks.acquire("etl", "bf-1__a") is None
    hold = locks.hold_spec("etl", "bf-1__a", window=keys, member="etl|bf-1__a", slot_keys=[slot])
    key = window_key("bf-1", "etl", 0)
    p.park(key, {"n": 1}, 100.0, Watched("etl", "bf-1__a", time.time(), running=True, hold=hold))
    watcher = Watcher(parking=p, airflow=airflow, publish=out.append, every=0.01, holder="w1",  # type: ignore[arg-type]
                      hold_every=0.2)  # fmt: skip
    for _ in range(15):  # 1.5 s: over twice the lease
        watcher.tick()
        time.sleep(0.1)
    assert locks.holder("etl") == "bf-1__a"
    assert scratch_redis.zscore(slot, "etl|bf-1__a") > locks.now_ms()
    # The window ended (its run listed ended: woken, published): nothing held for it any more.
    scratch_redis.hset(keys.windows, "0", '{"state": "success"}')
    airflow.ended.add(("etl", "bf-1__a"))
    for _ in range(10):
        watcher.tick()
        time.sleep(0.1)
    assert out == [{"n": 1}] and scratch_redis.hlen(p.k_hold) == 0
    assert locks.holder("etl") is None


def test_renewals_keep_nothing_for_an_ended_cancelled_or_waiting_window(scratch_redis: redis.Redis) -> None:
    p = _parking(scratch_redis)
    locks = DagLocks(scratch_redis, prefix="t", ttl=10, slot_ttl=10)
    states = (("a", "failed"), ("b", "running"), ("c", None), ("d", "waiting"))  # d: a failed attempt's retry
    for n, (dag, state) in enumerate(states):
        keys = WindowKeys(f"t:bf:bf-{n}", f"t:bf:bf-{n}:windows:{dag}", 0)
        if state:
            scratch_redis.hset(keys.windows, "0", json.dumps({"state": state}))
        if dag == "c":
            scratch_redis.hset(keys.meta, "cancelled", "1")
        hold = locks.hold_spec(dag, f"bf-{n}__x", window=keys, member=f"{dag}|x", slot_keys=[])
        p.park(window_key(f"bf-{n}", dag, 0), {"n": n}, 100.0, Watched(dag, f"bf-{n}__x", time.time(), hold=hold))
    assert p.hold_all() == 1
    assert [locks.holder(d) for d in "abcd"] == [None, "bf-1__x", None, None]


def test_a_batch_published_at_once_is_done_and_a_failed_batch_comes_back(scratch_redis: redis.Redis) -> None:
    """``publish_many`` (a worker's: one round trip to the broker) either published the whole
    claimed batch, done, or raised having published some or none: then none is marked done,
    and every message is due again once its claim runs out (a duplicate costs one look)."""
    p, batches = _parking(scratch_redis), []
    for n in range(3):
        p.park(window_key("bf-1", "etl", n), {"n": n}, 0.0, Watched("etl", f"bf-1__{n}", time.time()))

    def fail(messages: list[dict[str, Any]]) -> None:
        raise OSError("broker gone")

    watcher = Watcher(parking=p, airflow=EndedRuns(), publish=lambda m: None, every=0.01, holder="w1",  # type: ignore[arg-type]
                      publish_many=fail)  # fmt: skip
    with pytest.raises(OSError):
        watcher._publish_due()
    assert len(p.parked()) == 3 and p.claim() == []  # claimed: not due before the lease runs out
    scratch_redis.zadd(p.k_due, {window_key("bf-1", "etl", n): 1 for n in range(3)})  # the lease ran out
    watcher.publish_many = batches.append
    assert watcher._publish_due() == 3
    assert [sorted(m["n"] for m in b) for b in batches] == [[0, 1, 2]] and p.parked() == {}


def test_among_many_a_run_with_nothing_learnt_is_listed_every_half_second(scratch_redis: redis.Redis) -> None:
    """A thousand DAGs' first windows end within seconds of one another and nothing says when:
    every list covers their runs, and lists come every ``UNLEARNT_EVERY`` s, not every round's
    ``every`` (1 s): a first window's end is seen about half a second late at most (bench B4)."""
    p, airflow, out = _parking(scratch_redis), EndedRuns(), []
    p.park(window_key("bf-1", "new", 0), {"w": 1}, 100.0, Watched("new", "bf-1__x", time.time() - 20, running=True))
    watcher = Watcher(parking=p, airflow=airflow, publish=out.append, every=1.0, holder="w1", one_list=0)  # type: ignore[arg-type]
    wait = watcher.tick()
    assert len(airflow.asked) == 1 and wait <= UNLEARNT_EVERY + 0.01
    time.sleep(UNLEARNT_EVERY + 0.02)
    watcher.tick()
    assert len(airflow.asked) == 2


def test_among_many_the_pace_of_runs_with_nothing_learnt_is_read_again_every_few_seconds(
    scratch_redis: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Re-reading the pace of every run with nothing learnt at every list was a thousand reads a
    round at a thousand DAGs (bench B4): it is read when parked, then every ``REFRESH_EVERY`` s,
    and what was learnt meanwhile is then used."""

    class Later(Clock):  # this process's clock, moved on at will
        by = 0.0

        def now(self) -> float:
            return time.time() + self.by

    clock, airflow, out = Later(), EndedRuns(), []
    p = Parking(scratch_redis, prefix="t", clock=clock)
    p.park(window_key("bf-1", "new", 0), {"w": 1}, 100.0, Watched("new", "bf-1__x", time.time() - 20, running=True))
    watcher, reads = _watcher(p, airflow, out), []
    real = p.paces
    monkeypatch.setattr(p, "paces", lambda pairs: (reads.append(len(pairs)) if pairs else None) or real(pairs))
    for _ in range(5):
        watcher.tick()
        time.sleep(0.02)
    assert len(airflow.asked) == 5 and reads == [1, 1]  # listed every round; read when parked, and once more
    scratch_redis.hset("t:bf:bf-1:dag:new", mapping={"avg_duration": 60, "dev_duration": 3})  # learnt meanwhile
    clock.by = watch.REFRESH_EVERY
    watcher.tick()
    assert reads == [1, 1, 1]
    asked = len(airflow.asked)
    for _ in range(3):
        time.sleep(0.02)
        watcher.tick()
    assert len(airflow.asked) == asked  # a 60 s run 25 s in: not due for half a minute
