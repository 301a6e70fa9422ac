"""Workers killed with SIGKILL mid-backfill: nothing lost, nothing run twice, never two at once.

Tasks are acknowledged late, so a killed worker's messages (running ones and countdowns it was
holding) return to the queue after the visibility timeout (30 s in the tests) and another
worker carries on; each window then finds its run by its deterministic run id.
"""

from __future__ import annotations

import signal
import time
from collections import Counter

import pytest

from backfill.windows import window_spec
from tests.conftest import WORKER_ENV
from tests.integration.helpers import assert_serial, runs, submit, wait_done, wait_for

pytestmark = pytest.mark.integration


def test_workers_killed_repeatedly_lose_nothing_and_run_nothing_twice(orch):
    stack = orch.stack
    spare = stack.start_worker("w2", concurrency=2, **WORKER_ENV)
    dags = ["etl_orders", "etl_users"]
    spec = window_spec("2012-01-01", "2012-01-06", "daily")
    bf = submit(orch, dags=dags, start="2012-01-01", end="2012-01-06", batch="daily", conf={"sleep": 4})["backfill_id"]
    victims = {"w1": orch.worker, "w2": spare}
    kills = 0
    try:
        for name in ("w1", "w2", "w1"):
            # Kill while a window's run is in Airflow, then bring the worker back.
            wait_for(
                lambda: any(orch.record.dag(bf, d).current_state == "running" for d in dags),
                120,
                "a running window",
            )
            victims[name].signal(signal.SIGKILL)
            victims[name].popen.wait(10)
            kills += 1
            time.sleep(2)
            victims[name] = stack.start_worker(name, concurrency=2, **WORKER_ENV)
        meta = wait_done(orch.record, bf, timeout=600)
    finally:
        orch.worker = victims["w1"]  # later tests use the live one
        stack.stop(victims["w2"])
    assert kills == 3
    assert_once_each(orch, bf, meta, dags, spec)


def assert_once_each(orch, bf: str, meta: dict, dags: list[str], spec) -> None:
    """The backfill succeeded with exactly one run per window, each succeeded, never two at
    once on a DAG (from Airflow's run records), and the record counts them."""
    assert meta["state"] == "succeeded"
    for dag in dags:
        rs = runs(orch.airflow, dag, bf)
        assert Counter(r.logical_date for r in rs) == Counter(w.start for w in spec)
        assert {r.state for r in rs} == {"success"}
        assert_serial(rs)
        assert orch.record.dag(bf, dag).counts["success"] == spec.count


def test_the_watchers_worker_killed_while_windows_are_parked_loses_nothing(orch):
    """Windows waiting for their runs are parked in Redis (backfill.watch), not held by a worker:
    SIGKILL the worker whose thread holds the watcher's lease while they wait, and the other
    worker's watcher takes over and wakes them; every window runs once, serial."""
    stack, parking = orch.stack, orch.ctx.parking
    spare = stack.start_worker("w2", concurrency=2, **WORKER_ENV)
    workers = {"w1": orch.worker, "w2": spare}
    dags = ["etl_orders", "etl_users"]
    spec = window_spec("2012-02-01", "2012-02-04", "daily")
    bf = submit(orch, dags=dags, start="2012-02-01", end="2012-02-04", batch="daily", conf={"sleep": 6})["backfill_id"]
    try:
        wait_for(lambda: len(parking.parked(bf)) == 2, 120, "both DAGs' windows parked")

        def ours() -> str | None:  # the lease of a worker killed by an earlier test lasts its TTL
            holder = parking.holder() or ""
            return next((n for n, w in workers.items() if holder.endswith(f":{w.popen.pid}")), None)

        victim = wait_for(ours, 90, "the lease held by one of this test's workers")
        holder = parking.holder()
        workers[victim].signal(signal.SIGKILL)
        workers[victim].popen.wait(10)
        survivor = next(w for n, w in workers.items() if n != victim)
        taken = wait_for(lambda: (h := parking.holder()) != holder and h, 60, "the lease taken over")
        assert taken.endswith(f":{survivor.popen.pid}")
        meta = wait_done(orch.record, bf, timeout=300)
        workers[victim] = stack.start_worker(victim, concurrency=2, **WORKER_ENV)
    finally:
        orch.worker = workers["w1"]  # later tests use the live one
        stack.stop(workers["w2"])
    assert_once_each(orch, bf, meta, dags, spec)
    assert parking.parked(bf) == {}
