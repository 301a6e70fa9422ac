"""The core promises, proven against a real Airflow 3.3, a real Redis and a real Celery worker.

Each test uses its own date range so that Airflow's one-run-per-logical-date rule never links
two tests. Assertions read Airflow's run records (queued_at = trigger time, start/end, state,
conf, data interval) and the backfill record in Redis.
"""

from __future__ import annotations

import base64
import json
import re
import time

import pytest
from airflow_client.client import PoolBody, PoolPatchBody
from airflow_client.client.api.pool_api import PoolApi
from celery import group

from backfill.errors import InputError
from backfill.request import Request, validate
from backfill.settings import Settings
from backfill.windows import Window, window_spec
from tests.integration.helpers import (
    assert_serial,
    by_trigger_time,
    max_concurrent,
    runs,
    submit,
    wait_done,
    wait_for,
)
from tests.integration.test_operate import run_cli

pytestmark = pytest.mark.integration
ETL = ["etl_orders", "etl_users", "etl_payments"]


def lock_keys(orch):
    return orch.ctx.redis.keys(f"{orch.ctx.settings.key_prefix}:lock:*")


def test_serial_per_dag_parallel_across_dags_each_run_carries_its_window(orch):
    s = submit(orch, dags=ETL, start="2001-01-01", end="2001-01-31", batch="weekly", conf={"team": "data"})
    bf = s["backfill_id"]
    assert s["batches"] == {d: 5 for d in ETL}
    assert wait_done(orch.record, bf)["state"] == "succeeded"

    spec = window_spec("2001-01-01", "2001-01-31", "weekly")
    all_runs = {}
    for dag in ETL:
        rs = runs(orch.airflow, dag, bf)
        all_runs[dag] = rs
        assert [r.state for r in rs] == ["success"] * 5
        # Oldest first, strictly one at a time.
        assert [r.logical_date for r in by_trigger_time(rs)] == [w.start for w in spec]
        assert_serial(rs)
        for r, w in zip(rs, spec, strict=True):
            assert r.run_id == f"{bf}__{w.start.isoformat()}"
            assert (r.data_interval_start, r.data_interval_end) == (w.start, w.end)
            assert r.conf == {
                "team": "data",
                "window_start": w.start.isoformat(),
                "window_end": w.end.isoformat(),
                "backfill_id": bf,
            }
    # Different DAGs ran at the same time, and the fast DAG was not held back by the slow one.
    assert max_concurrent([r for rs in all_runs.values() for r in rs]) >= 2
    assert max(r.end_date for r in all_runs["etl_users"]) < max(r.end_date for r in all_runs["etl_payments"])
    # The record agrees, and no lock is left behind.
    for dag in ETL:
        assert orch.record.dag(bf, dag).counts["success"] == 5
    assert lock_keys(orch) == []
    # The worker's log and the record tell the same story, line by line.
    recorded = [(e["dag"], e["start"], e["state"].upper()) for _, e in orch.record.events(bf) if e["kind"] == "window"]
    line = re.compile(rf"{bf} (\S+) \[(\S+), \S+\) #\d+/\d+ ([A-Z_]+)")
    logged = wait_for(
        lambda: len(found := line.findall(orch.worker.log.read_text())) >= len(recorded) and found, 10, "log lines"
    )
    assert len(logged) == len(recorded) >= 2 * 15
    for dag in ETL:
        assert [x for x in logged if x[0] == dag] == [x for x in recorded if x[0] == dag]


def test_reverse_runs_newest_first(orch):
    bf = submit(orch, dags=["etl_users"], start="2001-03-01", end="2001-03-04", batch="daily", reverse=True)[
        "backfill_id"
    ]
    assert wait_done(orch.record, bf)["state"] == "succeeded"
    rs = by_trigger_time(runs(orch.airflow, "etl_users", bf))
    assert [r.logical_date.day for r in rs] == [4, 3, 2, 1]
    assert_serial(rs)


def test_a_run_it_did_not_start_makes_the_window_wait(orch):
    outside = window_spec("2002-06-01", "2002-06-01", "daily").window(0)
    ext = orch.airflow.trigger("etl_orders", "manual__outside_run_2002", outside, conf={"sleep": 8})
    bf = submit(orch, dags=["etl_orders"], start="2002-01-01", end="2002-01-02", batch="daily")["backfill_id"]

    first = orch.record.params(bf).spec.window(0)
    waiting = wait_for(
        lambda: (w := orch.record.window(bf, "etl_orders", 0)).state == "waiting" and w, 15, "waiting window"
    )
    assert waiting.reason == f"DAG busy: run {ext.run_id} is running" or ext.run_id in str(waiting.reason)
    assert wait_done(orch.record, bf)["state"] == "succeeded"

    ext_done = orch.airflow.get_run("etl_orders", ext.run_id)
    ours = by_trigger_time(runs(orch.airflow, "etl_orders", bf))
    assert ours[0].logical_date == first.start
    assert ours[0].queued_at >= ext_done.end_date  # not even triggered while the other ran
    assert_serial(ours)
    states = [e["state"] for _, e in orch.record.events(bf) if e.get("idx") == 0]
    first_trigger = states.index("triggered")
    assert first_trigger >= 1 and set(states[:first_trigger]) == {"waiting"}
    assert states[first_trigger:] == ["triggered", "running", "success"]


def test_two_backfills_on_one_dag_never_overlap(orch):
    a = orch.tasks.submit_backfill.apply_async(
        kwargs={"dags": ["etl_users"], "start": "2003-01-01", "end": "2003-01-04", "batch": "daily"}
    )
    b = orch.tasks.submit_backfill.apply_async(
        kwargs={"dags": ["etl_users", "etl_orders"], "start": "2003-02-01", "end": "2003-02-04", "batch": "daily"}
    )
    bf_a, bf_b = a.get(timeout=60)["backfill_id"], b.get(timeout=60)["backfill_id"]
    assert wait_done(orch.record, bf_a)["state"] == "succeeded"
    assert wait_done(orch.record, bf_b)["state"] == "succeeded"
    both = runs(orch.airflow, "etl_users", bf_a) + runs(orch.airflow, "etl_users", bf_b)
    assert len(both) == 8
    assert_serial(both)
    # The lock made one of them wait for the other at least once, and said so.
    reasons = [e.get("reason") or "" for bf in (bf_a, bf_b) for _, e in orch.record.events(bf)]
    assert any("DAG locked by backfill" in r or "DAG busy" in r for r in reasons)
    assert lock_keys(orch) == []


def test_a_failing_window_stops_its_dag_only(orch):
    spec = window_spec("2004-01-01", "2004-01-28", "weekly")
    bad = spec.window(1)
    conf = {"fail_windows": [bad.start.isoformat()], "fail_dags": ["etl_orders"]}
    bf = submit(
        orch, dags=["etl_orders", "etl_users"], start="2004-01-01", end="2004-01-28", batch="weekly", conf=conf
    )["backfill_id"]
    assert wait_done(orch.record, bf)["state"] == "failed"

    failing = runs(orch.airflow, "etl_orders", bf)
    assert [(r.logical_date, r.state) for r in failing] == [(spec.window(0).start, "success"), (bad.start, "failed")]
    others = runs(orch.airflow, "etl_users", bf)
    assert [r.state for r in others] == ["success"] * spec.count

    windows = orch.record.windows(bf, "etl_orders")
    assert windows[1].state == "failed" and failing[1].run_id in str(windows[1].reason)
    for idx in range(2, spec.count):
        assert windows[idx].state == "not_run"
        assert "on_failure=stop" in str(windows[idx].reason) and bad.start.isoformat() in str(windows[idx].reason)
    assert orch.record.dag(bf, "etl_orders").state == "failed"
    assert orch.record.dag(bf, "etl_users").state == "succeeded"
    assert lock_keys(orch) == []


def test_on_failure_continue_goes_on(orch):
    spec = window_spec("2004-03-01", "2004-03-04", "daily")
    conf = {"fail_windows": [spec.window(1).start.isoformat()]}
    bf = submit(
        orch, dags=["etl_users"], start="2004-03-01", end="2004-03-04", batch="daily", conf=conf, on_failure="continue"
    )["backfill_id"]
    assert wait_done(orch.record, bf)["state"] == "failed"
    assert [r.state for r in runs(orch.airflow, "etl_users", bf)] == ["success", "failed", "success", "success"]
    counts = orch.record.dag(bf, "etl_users").counts
    assert (counts["success"], counts["failed"]) == (3, 1)


def test_logical_date_rule_and_reprocess(orch):
    dag, start, end = "etl_users", "2005-01-01", "2005-01-02"
    first = submit(orch, dags=[dag], start=start, end=end, batch="daily")["backfill_id"]
    assert wait_done(orch.record, first)["state"] == "succeeded"
    r1, r2 = runs(orch.airflow, dag, first)
    orch.airflow.fail_run(dag, r2.run_id)  # pretend the second day failed

    # none: both windows are held by runs of that very interval -> skipped, nothing triggered.
    none = submit(orch, dags=[dag], start=start, end=end, batch="daily")["backfill_id"]
    assert wait_done(orch.record, none)["state"] == "succeeded"
    assert runs(orch.airflow, dag, none) == []
    w = orch.record.windows(none, dag)
    assert [w[0].state, w[1].state] == ["skipped", "skipped"]
    assert r1.run_id in str(w[0].reason) and "reprocess=none" in str(w[0].reason)

    # failed: only the failed one is run again (the existing run is cleared: same interval).
    failed = submit(orch, dags=[dag], start=start, end=end, batch="daily", reprocess="failed")["backfill_id"]
    assert wait_done(orch.record, failed)["state"] == "succeeded"
    w = orch.record.windows(failed, dag)
    assert [w[0].state, w[1].state] == ["skipped", "success"]
    assert lock_keys(orch) == []  # the window that re-ran another run's id released its own lock
    again1, again2 = orch.airflow.get_run(dag, r1.run_id), orch.airflow.get_run(dag, r2.run_id)
    assert again1.end_date == r1.end_date
    assert again2.state == "success" and again2.queued_at > r2.end_date

    # completed: everything again.
    completed = submit(orch, dags=[dag], start=start, end=end, batch="daily", reprocess="completed")["backfill_id"]
    assert wait_done(orch.record, completed)["state"] == "succeeded"
    assert orch.airflow.get_run(dag, r1.run_id).queued_at > again1.end_date
    assert_serial([orch.airflow.get_run(dag, r1.run_id), orch.airflow.get_run(dag, r2.run_id)])

    # A held logical date covering ANOTHER interval: never silently re-run; refused at submit,
    # naming the run, nothing triggered.
    with pytest.raises(InputError, match=re.escape(r1.run_id)):
        submit(orch, dags=[dag], start="2005-01-01", end="2005-01-02", batch="weekly")
    assert lock_keys(orch) == []

    # One that appears after the submit fails only its window, with the reason.
    late = submit(orch, dags=["etl_payments", dag], start="2005-01-03", end="2005-01-04", batch="daily",
                  conf={"sleep": 3})["backfill_id"]  # fmt: skip
    w = window_spec("2005-01-04", "2005-01-04", "daily").window(0)
    orch.airflow.trigger(dag, "manual__late_conflict", Window(w.start, w.start + (w.end - w.start) * 2), conf={})
    assert wait_done(orch.record, late)["state"] == "failed"
    ws = orch.record.windows(late, dag)
    assert ws[1].state == "failed" and "manual__late_conflict" in str(ws[1].reason)
    assert orch.record.dag(late, "etl_payments").state == "succeeded"
    assert lock_keys(orch) == []
    # Its resume is refused for that conflict, unless told to skip such windows.
    assert "conflicts: 1 window(s)" in run_cli("resume", late, code=2)
    resumed = json.loads(run_cli("resume", late, "--on-conflict", "skip", "--json"))["backfill_id"]
    assert wait_done(orch.record, resumed)["state"] == "succeeded"
    (only,) = orch.record.windows(resumed, dag).values()
    assert only.state == "skipped" and "manual__late_conflict" in str(only.reason)
    assert runs(orch.airflow, dag, resumed) == []


def test_bad_input_is_refused_and_nothing_is_triggered(orch):
    before = orch.record.recent(1000)
    with pytest.raises(InputError, match=r"dags: unknown to Airflow at .*: nope_dag"):
        submit(orch, dags=["etl_users", "nope_dag"], start="2006-01-01", end="2006-01-03", batch="daily")
    with pytest.raises(InputError, match="batch: unknown batch size 'yearly'"):
        submit(orch, dags=["etl_users"], start="2006-01-01", end="2006-01-03", batch="yearly")
    with pytest.raises(InputError, match="more than the cap"):
        submit(orch, dags=["etl_users"], start="2000-01-01", end="2030-12-31", batch="hourly")
    assert orch.airflow.runs_at("etl_users", window_spec("2006-01-01", "2006-01-01", "daily").window(0).start) == []
    assert orch.record.recent(1000) == before

    orch.airflow.set_paused("etl_payments", True)
    try:
        with pytest.raises(InputError, match=r"paused in Airflow: etl_payments .*unpause=True"):
            submit(orch, dags=["etl_payments"], start="2006-02-01", end="2006-02-01", batch="daily")
        assert orch.record.recent(1000) == before
        bf = submit(orch, dags=["etl_payments"], start="2006-02-01", end="2006-02-01", batch="daily", unpause=True)[
            "backfill_id"
        ]
        assert wait_done(orch.record, bf)["state"] == "succeeded"
        assert orch.airflow.get_dag("etl_payments").is_paused is False
    finally:
        orch.airflow.set_paused("etl_payments", False)


def test_a_repeated_step_reattaches_to_its_run_instead_of_making_a_second(orch):
    """What a redelivered task does after its worker died between trigger and record."""
    ctx = orch.ctx
    params = validate(
        Request(dags=["etl_orders"], start="2007-05-01", end="2007-05-01", batch="daily"),
        max_windows=ctx.settings.max_windows,
    )
    ctx.record.create(params)
    assert ctx.runner.step(params, "etl_orders", 0).done is False  # triggered
    ctx.redis.hdel(ctx.record.k_windows(params.backfill_id, "etl_orders"), "0")  # "crash": record lost
    for _ in range(200):
        step = ctx.runner.step(params, "etl_orders", 0)
        if step.done:
            break
        time.sleep(min(step.delay, 1))
    assert step.state == "success"
    held = ctx.airflow.runs_at("etl_orders", params.window_at(0, "etl_orders").start)
    assert [r.run_id for r in held] == [params.run_id(params.window_at(0, "etl_orders"))]


def test_two_worker_processes_carry_fifty_dags_in_flight(orch):
    """50 windows triggered and waited on at once by one worker with 2 processes.

    The fleet's tasks run in the Airflow pool ``fleet_gate``, closed (0 slots) until all 50
    runs exist, so that the 2-core SQLite Airflow is not asked to run 50 tasks at once.
    """
    pools = PoolApi(orch.airflow.api_client)
    pools.post_pool(PoolBody(name="fleet_gate", slots=0))
    fleet = [f"fleet_{i:02d}" for i in range(50)]
    try:
        bf = submit(orch, dags=fleet, start="2008-01-01", end="2008-01-01", batch="daily")["backfill_id"]

        def in_flight():
            states = [orch.record.window(bf, dag, 0).state for dag in fleet]
            return sum(s in ("triggered", "running") for s in states) == 50

        wait_for(in_flight, 120, "50 windows in flight")
        assert orch.record.meta(bf)["state"] == "running"
        # The waiting windows hold no process: each is a message parked in Redis, which the
        # watcher publishes when its run ends (backfill.watch). (At any instant a few are being
        # looked at instead: look until one snapshot shows at least 40.)
        parked = wait_for(lambda: len(p := orch.ctx.parking.parked(bf)) >= 40 and p, 60, "40 parked windows")
        assert {key.split("/")[1] for key in parked} <= set(fleet)
        assert orch.ctx.parking.alive()
    finally:
        pools.patch_pool(
            "fleet_gate", PoolPatchBody(pool="fleet_gate", slots=6, include_deferred=False), update_mask=["slots"]
        )
    assert wait_done(orch.record, bf, timeout=420)["state"] == "succeeded"
    all_runs = [r for dag in fleet for r in runs(orch.airflow, dag, bf)]
    assert len(all_runs) == 50 and {r.state for r in all_runs} == {"success"}
    assert max_concurrent(all_runs) == 50


def test_no_broker_message_exceeds_64_kib_whatever_the_range(orch):
    """Ten years of daily windows for 20 DAGs at the default segment size: every first message
    carries one segment (not 3,652 links) and ends with the link that continues the chain."""
    ctx = orch.ctx
    params = validate(
        Request(dags=[f"fleet_{i:02d}" for i in range(20)], start="2010-01-01", end="2019-12-31", batch="daily"),
        max_windows=ctx.settings.max_windows,
    )
    queue = "size-probe"
    ctx.redis.delete(queue)
    size = Settings().segment_size
    group(orch.tasks.segment(params, dag, 0, size=size) for dag in params.dags).apply_async(queue=queue)
    messages = ctx.redis.lrange(queue, 0, -1)
    ctx.redis.delete(queue)
    assert len(messages) == 20
    largest = max(len(m) for m in messages)
    assert largest <= 64 * 1024
    message = json.loads(messages[0])
    assert message["headers"]["task"] == "backfill.run_window"
    _args, _kwargs, embed = json.loads(base64.b64decode(message["body"]))
    rest = [link["task"] for link in reversed(embed["chain"])]  # Celery keeps the chain reversed
    assert rest == ["backfill.run_window"] * (size - 1) + ["backfill.continue_dag"]
