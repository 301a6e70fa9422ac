"""Backfills over DAGs shaped as users write them (examples/dags/user_schedules.py): every kind
of schedule, history made by their own scheduler (catchup over the last three days) and by
hand, ``max_active_runs`` above 1. Everything is asserted from Airflow's run records.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta

import pytest

from backfill.errors import InputError
from backfill.windows import Window
from tests.integration.helpers import assert_serial, runs, submit, wait_done, wait_for
from tests.integration.test_operate import run_cli

pytestmark = pytest.mark.integration

TODAY = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
DAYS = [TODAY - timedelta(days=n) for n in (3, 2, 1)]  # the scheduler's history (user_schedules.START)
FIRST, LAST = DAYS[0].date().isoformat(), DAYS[-1].date().isoformat()
PERIODIC = ["user_cron_daily", "user_cron_interval_daily", "user_delta_daily"]


def scheduler_history(orch, dag: str) -> list:
    """The DAG's own runs at DAYS, once the scheduler has made them and they have ended."""

    def ended():
        rs = orch.airflow.runs_between(dag, DAYS[0], DAYS[-1])
        done = len(rs) == len(DAYS) and all(r.state in ("success", "failed") for r in rs)
        return rs if done else None

    return wait_for(ended, timeout=180, what=f"{dag}'s scheduler history")


def tries(orch, dag: str, run_id: str) -> list[int]:
    path = "/api/v2/dags/{dag_id}/dagRuns/{dag_run_id}/taskInstances"
    body = orch.airflow._call("task instances", orch.airflow._json, "GET", path,
                              path_params={"dag_id": dag, "dag_run_id": run_id})  # fmt: skip
    return [ti["try_number"] for ti in body["task_instances"]]


def set_state(orch, dag: str, run_id: str, state: str) -> None:
    orch.airflow._call("set state", orch.airflow._json, "PATCH", "/api/v2/dags/{dag_id}/dagRuns/{dag_run_id}",
                       path_params={"dag_id": dag, "dag_run_id": run_id}, query=[("update_mask", ["state"])],
                       body={"state": state})  # fmt: skip


def plan(orch, **kwargs):
    return orch.tasks.submit_backfill.apply_async(kwargs={**kwargs, "dry_run": True}).get(timeout=60)


@pytest.mark.parametrize("dag", PERIODIC)
def test_daily_windows_over_the_schedulers_own_history_apply_reprocess(orch, dag):
    r1, r2, r3 = scheduler_history(orch, dag)
    assert all(r.run_type == "scheduled" for r in (r1, r2, r3))
    # The history's outcomes, set as a person would in the UI: day 2 failed, the others succeeded.
    for run, state in ((r1, "success"), (r2, "failed"), (r3, "success")):
        if run.state != state:
            set_state(orch, dag, run.run_id, state)
    r1, r2, r3 = (orch.airflow.get_run(dag, r.run_id) for r in (r1, r2, r3))
    ask = {"dags": [dag], "start": FIRST, "end": LAST, "batch": "daily"}

    planned = plan(orch, **ask, reprocess="failed")
    d = planned["dags"][0]
    assert [a["action"] for a in d["actions"]] == ["skip", "rerun", "skip"]
    assert [a["run_id"] for a in d["actions"]] == [r1.run_id, r2.run_id, r3.run_id]
    assert d["counts"] == {"new": 0, "skip": 2, "rerun": 1, "wait": 0, "conflict": 0} and planned["problems"] == []
    assert any(w.startswith(f"{dag}: max_active_runs=2") for w in planned["warnings"])

    # none: every window is its scheduled run: skipped, naming it, nothing triggered.
    s = submit(orch, **ask)
    assert any("max_active_runs=2" in w for w in s["warnings"])
    assert wait_done(orch.record, s["backfill_id"])["state"] == "succeeded"
    w = orch.record.windows(s["backfill_id"], dag)
    assert [w[i].state for i in range(3)] == ["skipped"] * 3
    assert [w[i].run for i in range(3)] == [r1.run_id, r2.run_id, r3.run_id]
    assert runs(orch.airflow, dag, s["backfill_id"]) == []

    # failed: the failed scheduled run executes again (new end date, new try); the others not.
    submitted = datetime.now(UTC)
    s = submit(orch, **ask, reprocess="failed")
    assert wait_done(orch.record, s["backfill_id"])["state"] == "succeeded"
    w = orch.record.windows(s["backfill_id"], dag)
    assert [w[i].state for i in range(3)] == ["skipped", "success", "skipped"] and w[1].run == r2.run_id
    again = orch.airflow.get_run(dag, r2.run_id)
    assert again.state == "success" and again.end_date > submitted and max(tries(orch, dag, r2.run_id)) >= 2
    assert orch.airflow.get_run(dag, r1.run_id).end_date == r1.end_date
    assert orch.airflow.runs_between(dag, DAYS[0], DAYS[-1]) == [orch.airflow.get_run(dag, r.run_id)
                                                                   for r in (r1, r2, r3)]  # fmt: skip

    # completed: all three again, one at a time, still the same three runs.
    submitted = datetime.now(UTC)
    s = submit(orch, **ask, reprocess="completed")
    assert wait_done(orch.record, s["backfill_id"])["state"] == "succeeded"
    now = [orch.airflow.get_run(dag, r.run_id) for r in (r1, r2, r3)]
    assert all(r.state == "success" and r.end_date > submitted for r in now)
    assert_serial(now)
    assert len(orch.airflow.runs_between(dag, DAYS[0], DAYS[-1])) == 3


def test_weekly_windows_over_a_daily_dag_conflict_known_before_anything_starts(orch):
    dag = "user_cron_daily"
    history = {r.run_id for r in scheduler_history(orch, dag)}
    ask = {"dags": [dag], "start": FIRST, "end": LAST, "batch": "weekly"}

    d = plan(orch, **ask)["dags"][0]
    # Weekly windows start on Mondays, cut to the range: a window cut to one day (the range
    # starts on a Sunday or ends on a Monday) is exactly the daily run's, skipped (it succeeded).
    days = [(datetime.fromisoformat(hi) - datetime.fromisoformat(lo)).days for lo, hi in d["windows"]]
    assert [a["action"] for a in d["actions"]] == ["skip" if n == 1 else "conflict" for n in days]
    at = days.index(next(n for n in days if n > 1))  # the first window over a daily run covering only its date
    conflict = d["actions"][at]
    assert conflict["run_id"] in history and "only its logical date" in conflict["reason"]
    out = run_cli("plan", dag, "--start", FIRST, "--end", LAST, "--batch", "weekly", code=2)
    assert "CONFLICT" in out and "conflict with existing runs" in out

    with pytest.raises(InputError) as refused:
        submit(orch, **ask)
    out = run_cli("submit", dag, "--start", FIRST, "--end", LAST, "--batch", "weekly", code=2)
    assert out.startswith("Error: conflicts: ") and conflict["run_id"] in out
    assert conflict["run_id"] in str(refused.value) and "on_conflict" in str(refused.value)
    assert {r.run_id for r in orch.airflow.runs_between(dag, DAYS[0], DAYS[-1])} == history

    s = submit(orch, **ask, on_conflict="skip")
    assert wait_done(orch.record, s["backfill_id"])["state"] == "succeeded"
    w = orch.record.windows(s["backfill_id"], dag)[at]
    assert w.state == "skipped" and w.run in history and "covering only its logical date" in str(w.reason)
    assert runs(orch.airflow, dag, s["backfill_id"]) == []


def test_once_none_and_asset_schedules(orch):
    # @once: its one run has no interval and the schedule no periods: a conflict, never re-run.
    (once,) = wait_for(lambda: [r for r in orch.airflow.runs_between("user_once", DAYS[0], DAYS[0])
                                if r.state in ("success", "failed")], timeout=180, what="user_once's run")  # fmt: skip
    ask = {"dags": ["user_once"], "start": DAYS[0].date().isoformat(), "end": DAYS[1].date().isoformat()}
    assert [a["action"] for a in plan(orch, **ask)["dags"][0]["actions"]] == ["conflict", "new"]
    with pytest.raises(InputError, match=re.escape(once.run_id)):
        submit(orch, **ask)
    s = submit(orch, **ask, on_conflict="skip")
    assert wait_done(orch.record, s["backfill_id"])["state"] == "succeeded"
    (ran,) = runs(orch.airflow, "user_once", s["backfill_id"])
    assert (ran.data_interval_start, ran.data_interval_end) == (DAYS[1], DAYS[2]) and ran.state == "success"
    assert orch.airflow.get_run("user_once", once.run_id).end_date == once.end_date

    # schedule=None, history made by hand: a run without an interval conflicts; a run covering
    # exactly the window is the window's run (skipped under reprocess=none).
    dag, base = "user_manual", datetime(2016, 3, 1, tzinfo=UTC)
    orch.airflow._call("trigger", orch.airflow._json, "POST", "/api/v2/dags/{dag_id}/dagRuns",
                       path_params={"dag_id": dag}, body={"dag_run_id": "manual__hist_a", "logical_date":
                       base.isoformat(), "conf": {"sleep": 0.1}})  # fmt: skip
    orch.airflow.trigger(dag, "manual__hist_b", Window(base + timedelta(days=1), base + timedelta(days=2)),
                         conf={"sleep": 0.1})  # fmt: skip
    made = lambda: orch.airflow.runs_between(dag, base, base + timedelta(days=1))  # noqa: E731
    wait_for(lambda: len(made()) == 2 and all(r.state == "success" for r in made()), 120, "manual runs")
    ask = {"dags": [dag], "start": "2016-03-01", "end": "2016-03-03"}
    acts = plan(orch, **ask)["dags"][0]["actions"]
    assert [(a["action"], a["run_id"]) for a in acts] == [("conflict", "manual__hist_a"), ("skip", "manual__hist_b"),
                                                         ("new", None)]  # fmt: skip
    s = submit(orch, **ask, on_conflict="skip", conf={"sleep": 0.1})
    assert wait_done(orch.record, s["backfill_id"])["state"] == "succeeded"
    w = orch.record.windows(s["backfill_id"], dag)
    assert [w[i].state for i in range(3)] == ["skipped", "skipped", "success"]

    # Asset-scheduled: runs made by asset events have no logical date, so they hold none.
    orch.airflow._call("trigger", orch.airflow._json, "POST", "/api/v2/dags/{dag_id}/dagRuns",
                       path_params={"dag_id": "user_orders_producer"},
                       body={"dag_run_id": "manual__publish", "logical_date": None, "conf": {}})  # fmt: skip
    consumer = "user_asset_consumer"

    def asset_run():
        rs = orch.airflow._call("runs", orch.airflow._json, "GET", "/api/v2/dags/{dag_id}/dagRuns",
                                path_params={"dag_id": consumer})["dag_runs"]  # fmt: skip
        return [r for r in rs if r["run_type"] == "asset_triggered"]

    (made,) = wait_for(asset_run, timeout=120, what="an asset-triggered run")
    assert made["logical_date"] is None
    ask = {"dags": [consumer], "start": FIRST, "end": LAST}
    assert [a["action"] for a in plan(orch, **ask)["dags"][0]["actions"]] == ["new"] * 3
    s = submit(orch, **ask)
    assert wait_done(orch.record, s["backfill_id"])["state"] == "succeeded"
    ran = runs(orch.airflow, consumer, s["backfill_id"])
    assert [(r.data_interval_start, r.state) for r in ran] == [(d, "success") for d in DAYS]


def test_status_and_report_verify_serial_runs_from_airflows_records(orch, tmp_path):
    dag, day = "user_manual", DAYS[1].date().isoformat()  # after the DAG's start date: its task runs
    s = submit(orch, dags=[dag], start=day, end=day, conf={"sleep": 8})
    bf = s["backfill_id"]
    wait_for(lambda: orch.record.window(bf, dag, 0).state == "running", 60, "our run running")
    # max_active_runs=3: Airflow lets a person start another run beside ours.
    other = Window(DAYS[2], TODAY)
    orch.airflow.trigger(dag, "manual__beside_ours", other, conf={"sleep": 2})
    assert wait_done(orch.record, bf)["state"] == "succeeded"

    out = run_cli("status", bf)
    assert "OVERLAP" in out and "manual__beside_ours (manual)" in out
    data = json.loads(run_cli("status", bf, "--json"))
    (o,) = data["dags"][0]["serial"]["overlaps"]
    assert o["other"] == "manual__beside_ours" and o["ours"] == f"{bf}__{DAYS[1].isoformat()}"
    ours, theirs = orch.airflow.get_run(dag, o["ours"]), orch.airflow.get_run(dag, o["other"])
    assert theirs.start_date < ours.end_date and ours.start_date < theirs.end_date  # Airflow's own dates
    assert "OVERLAP" in run_cli("report", bf)
    page = tmp_path / "r.html"
    run_cli("report", bf, "--html", str(page))
    assert 'class="overlap"' in page.read_text()

    # A DAG with max_active_runs=1 and no outside run: serial, verified.
    s = submit(orch, dags=["etl_users"], start="2016-05-02", end="2016-05-03", conf={"sleep": 0.2})
    assert wait_done(orch.record, s["backfill_id"])["state"] == "succeeded"
    out = run_cli("status", s["backfill_id"])
    assert "serial, verified from Airflow's records (2 run(s) of ours)" in out and "OVERLAP" not in out
    assert "serial, verified" in run_cli("report", s["backfill_id"])
    assert "OVERLAP" not in run_cli("status", s["backfill_id"], "--no-verify")


def test_runs_made_by_airflows_native_backfill_are_found_too(orch):
    dag = "user_cron_interval_daily"
    scheduler_history(orch, dag)
    started = datetime.now(UTC)
    orch.airflow._call("native backfill", orch.airflow._json, "POST", "/api/v2/backfills", path_params={},
                       body={"dag_id": dag, "from_date": DAYS[0].isoformat(), "to_date": DAYS[1].isoformat(),
                             "reprocess_behavior": "completed", "max_active_runs": 1})  # fmt: skip

    def natives():
        rs = orch.airflow.runs_between(dag, DAYS[0], DAYS[1])
        done = all(r.run_type == "backfill" and r.end_date and r.end_date > started for r in rs)
        return rs if done and len(rs) == 2 else None

    made = wait_for(natives, timeout=120, what="the native backfill's runs")
    ask = {"dags": [dag], "start": DAYS[0].date().isoformat(), "end": DAYS[1].date().isoformat()}
    acts = plan(orch, **ask)["dags"][0]["actions"]
    assert [(a["action"], a["run_id"], a["run_type"]) for a in acts] == [("skip", r.run_id, "backfill") for r in made]
    s = submit(orch, **ask, reprocess="completed")
    assert wait_done(orch.record, s["backfill_id"])["state"] == "succeeded"
    again = [orch.airflow.get_run(dag, r.run_id) for r in made]
    assert all(r.state == "success" and r.end_date > made[-1].end_date for r in again)


def test_cancel_fail_running_also_fails_a_run_of_others_that_the_backfill_re_ran(orch):
    dag = "user_manual"
    window = Window(TODAY, TODAY + timedelta(days=1))
    orch.airflow.trigger(dag, "manual__long", window, conf={"sleep": 30})
    set_state(orch, dag, "manual__long", "failed")  # a failed run of someone else's: ours to re-run
    s = submit(orch, dags=[dag], start=TODAY.date().isoformat(), end=TODAY.date().isoformat(), reprocess="failed")
    bf = s["backfill_id"]
    wait_for(lambda: orch.record.window(bf, dag, 0).state == "running", 60, "the re-run running")
    out = json.loads(run_cli("cancel", bf, "--fail-running", "--json"))
    assert f"{dag}/manual__long" in out["failed_runs"]
    run = orch.airflow.get_run(dag, "manual__long")
    assert run.state == "failed" and (run.end_date - run.start_date).total_seconds() < 25  # stopped, not finished
    assert orch.record.window(bf, dag, 0).state == "cancelled"
