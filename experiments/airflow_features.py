"""Experiments: what Airflow's own features guarantee, against the orchestrator's requirements.

    python -m experiments.airflow_features --out docs/experiments/airflow-features.md

starts its own ``airflow standalone`` 3.3 (on a private PostgreSQL) with ``examples/dags`` (the experiment DAGs are in
``examples/dags/exp_airflow_features.py``), runs the nine experiments at once, prints the
report (Markdown) and stops every process it started. ``--airflow-url/--user/--password``
use a running Airflow instead. ``tests/integration/test_experiments.py`` runs the same
experiments against the test session's Airflow and checks every finding in
``docs/concurrency.md``.

1. ``max_active_runs=1``: four runs triggered at once, newest first, the second oldest fails.
2. pools: three runs of a DAG whose two tasks share a pool of one slot.
3. sensors: three consecutive days of a DAG that waits for its own previous day.
4. native backfill (``POST /api/v2/backfills``): a DAG without a schedule; a dry run; five days
   with a failure on the 3rd and a manual run triggered meanwhile; a second backfill.

5 to 9 are in ``more_airflow_features.py``: a pool shared by two DAGs, sensors in reschedule and
deferrable modes, cancelling a native backfill, ``depends_on_past`` + ``wait_for_downstream``,
``max_consecutive_failed_dag_runs``.
"""

from __future__ import annotations

import argparse
import contextlib
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

from airflow_client.client import BackfillApi, BackfillPostBody, PoolApi, PoolBody

from backfill.airflow import AirflowClient, AirflowConfig, RunInfo
from backfill.errors import AirflowConflict, AirflowError, AirflowNotFound, AirflowUnavailable
from experiments import more_airflow_features as more
from experiments._common import (
    Experiment,
    Finding,
    fresh_day,
    max_overlap,
    new_tag,
    spans,
    task_instances,
    trigger,
    wait_runs,
)

REPO = Path(__file__).resolve().parent.parent


# -- the experiments ----------------------------------------------------------------------


def max_active_runs(airflow: AirflowClient) -> Experiment:
    dag, tag = "exp_max_active_runs", new_tag()
    e = Experiment("1. `max_active_runs=1`", "DAG `exp_max_active_runs` (`max_active_runs=1`, one 2 s task). "
                   "Four daily runs triggered at once, newest first; the second oldest is told to fail.")  # fmt: skip
    first = fresh_day(airflow, dag)
    days = [first + timedelta(days=i) for i in range(4)]
    for i in reversed(range(4)):
        trigger(airflow, dag, days[i], f"{tag}__{i}", {"fail": i == 1})
    runs = e.runs = wait_runs(airflow, dag, tag, 4)
    failed = next(r for r in runs if r.state == "failed")
    after = [r for r in runs if r.start_date and r.start_date >= failed.end_date]
    start_order = [runs.index(r) for r in sorted(runs, key=lambda r: r.start_date)]
    e.facts = {"accepted": len(runs), "max_at_once": max_overlap(spans(runs)), "ran_after_failure": len(after),
               "start_order": start_order}  # fmt: skip
    e.findings = [
        Finding("one run of the DAG at a time", e.facts["max_at_once"] == 1,
                f"at most {e.facts['max_at_once']} run at once (counts every run of the DAG, manual or scheduled)"),
        Finding("a run over the limit waits instead of failing", e.facts["accepted"] == 4,
                "all 4 triggers accepted; the extra runs wait in `queued`"),
        Finding("windows run in the order asked", start_order == [0, 1, 2, 3],
                f"started in the order of windows {start_order} (oldest = 0): the order they were triggered "
                "in (newest first here), not the windows' order; all windows must be queued up front, in order"),
        Finding("nothing runs after a failed window", not after,
                f"{len(after)} run(s) started after window 1 failed"),
        Finding("windows that are not the DAG's schedule", True, "triggered runs take any data interval"),
    ]  # fmt: skip
    return e


def pools(airflow: AirflowClient) -> Experiment:
    dag, tag = "exp_pool", new_tag()
    e = Experiment("2. Pools", "DAG `exp_pool` (`max_active_runs=16`, tasks extract → load, both in pool "
                   "`exp_one_slot` of 1 slot, 2 s each). Three daily runs triggered at once.")  # fmt: skip
    first = fresh_day(airflow, dag)
    for i in range(3):
        trigger(airflow, dag, first + timedelta(days=i), f"{tag}__{i}")
    runs = e.runs = wait_runs(airflow, dag, tag, 3)
    tis = []
    for i, run in enumerate(runs):
        tis += [
            (ti.start_date, f"{ti.task_id}#{i}") for ti in task_instances(airflow, dag, run.run_id) if ti.start_date
        ]
    order = [name for _, name in sorted(tis)]
    interleaved = order != sorted(order, key=lambda n: (int(n.split("#")[1]), n.split("#")[0] != "extract"))
    e.facts = {"max_runs_at_once": max_overlap(spans(runs)), "task_order": order, "interleaved": interleaved}
    e.findings = [
        Finding("one run of the DAG at a time", e.facts["max_runs_at_once"] == 1,
                f"{e.facts['max_runs_at_once']} runs were running at once: a pool limits task instances, not runs"),
        Finding("one window finishes before the next starts", not interleaved,
                "task order " + ", ".join(order) + " (task#window)"),
    ]  # fmt: skip
    return e


def sensors(airflow: AirflowClient) -> Experiment:
    dag, tag = "exp_sensor", new_tag()
    e = Experiment("3. Sensors", "DAG `exp_sensor` (`max_active_runs=16`): an `ExternalTaskSensor` waits for the "
                   "`work` task of the DAG's own previous day (poke every 1 s, timeout 12 s), then `work` (2 s). "
                   "Three consecutive days triggered at once.")  # fmt: skip
    first = fresh_day(airflow, dag)
    for i in range(3):
        trigger(airflow, dag, first + timedelta(days=i), f"{tag}__{i}")
    runs = e.runs = wait_runs(airflow, dag, tag, 3)
    sensor_spans = []
    for run in runs:
        tis = task_instances(airflow, dag, run.run_id, task_id="previous_day_done")
        sensor_spans += [(ti.start_date, ti.end_date) for ti in tis if ti.start_date and ti.end_date]
    held = sum((end - start).total_seconds() for start, end in sensor_spans)
    e.facts = {"max_runs_at_once": max_overlap(spans(runs)), "sensors_at_once": max_overlap(sensor_spans),
               "slot_seconds_waiting": round(held), "states": [r.state for r in runs]}  # fmt: skip
    e.findings = [
        Finding("one run of the DAG at a time", e.facts["max_runs_at_once"] == 1,
                f"{e.facts['max_runs_at_once']} runs running at once, each holding a worker slot with its sensor "
                f"({e.facts['sensors_at_once']} sensors at once, {e.facts['slot_seconds_waiting']} slot-seconds "
                "spent waiting)"),
        Finding("the first window runs", runs[0].state == "success",
                f"states {e.facts['states']}: the first window waits for a day outside the range until its sensor "
                "times out, and each later one fails the same way after it"),
        Finding("windows that are not the DAG's schedule", False,
                "the sensor finds the previous window by a fixed `execution_delta`: windows must be evenly spaced"),
    ]  # fmt: skip
    return e


def native_backfill(airflow: AirflowClient) -> Experiment:
    dag, tag = "exp_native", new_tag()
    api = BackfillApi(airflow.api_client)
    e = Experiment("4. Native backfill (`POST /api/v2/backfills`)",
                   "DAG `exp_native` (daily schedule, `max_active_runs=1`, one 2 s task; the run of the 3rd of a "
                   "month fails). A backfill of days 1 to 5 of a month with `max_active_runs=1`; while it runs, a "
                   "manual run of another day and a second backfill are requested.")  # fmt: skip
    rejected = _post(airflow, api, "exp_max_active_runs", datetime(2001, 1, 1, tzinfo=UTC), 2)
    first = fresh_day(airflow, dag, month_start=True)
    body = BackfillPostBody(dag_id=dag, from_date=first, to_date=first + timedelta(days=13), max_active_runs=1)
    dry = airflow._call("dry run", api.create_backfill_dry_run, body)
    # Created with the DAG paused, then unpaused: creating a backfill while the scheduler
    # writes to SQLite can fail with 503 "Database is locked" (see bench/airflow_benches.py).
    airflow.set_paused(dag, True)
    try:
        _create(airflow, api, dag, first, 5)
    finally:
        airflow.set_paused(dag, False)
    time.sleep(3)
    manual_day = first + timedelta(days=20)
    trigger(airflow, dag, manual_day, f"{tag}__manual")
    second = _post(airflow, api, dag, first + timedelta(days=40), 2)
    deadline = time.time() + 180
    while time.time() < deadline:
        runs = [r for r in _runs_between(airflow, dag, first, manual_day) if r.run_type != "scheduled"]
        if len(runs) >= 6 and not any(r.active for r in runs):
            break
        time.sleep(1)
    e.runs = runs = sorted(runs, key=lambda r: r.logical_date)
    failed = [r for r in runs if r.state == "failed"]
    after = [r for r in runs if failed and r.run_type == "backfill" and r.start_date >= failed[0].end_date]
    e.facts = {"non_periodic": rejected, "dry_run_days": len(dry.backfills), "second_backfill": second,
               "max_at_once": max_overlap(spans(runs)), "ran_after_failure": len(after)}  # fmt: skip
    e.findings = [
        Finding("any DAG", rejected == "created", f"a DAG without a schedule: {rejected}"),
        Finding("windows that are not the DAG's schedule", False,
                f"a dry run of 14 days gives {len(dry.backfills)} runs: one per scheduled interval, no other batch"),
        Finding("nothing runs after a failed window", not after, f"{len(after)} run(s) started after the 3rd failed"),
        Finding("one run of the DAG at a time, including runs it did not start", e.facts["max_at_once"] == 1,
                f"{e.facts['max_at_once']} runs at once: the manual run ran beside the backfill's "
                "(a backfill's max_active_runs is counted apart from the DAG's)"),
        Finding("several backfills of one DAG wait for each other", not second.startswith("HTTP 409"),
                f"a second backfill while one is active: {second}"),
    ]  # fmt: skip
    return e


def _post(airflow: AirflowClient, api: BackfillApi, dag: str, first: datetime, days: int, must: bool = False) -> str:
    body = BackfillPostBody(dag_id=dag, from_date=first, to_date=first + timedelta(days=days - 1), max_active_runs=1)
    try:
        airflow._call("backfill", api.create_backfill, body, idempotent=False)
        return "created"
    except AirflowError as exc:
        if must:
            raise
        return f"HTTP {exc.status}: {str(exc).split('): ', 1)[-1][:160]}"


def _create(airflow: AirflowClient, api: BackfillApi, dag: str, first: datetime, days: int) -> None:
    """Create a backfill, through SQLite's 503s: an error may come after it was created."""
    for attempt in range(20):
        try:
            _post(airflow, api, dag, first, days, must=True)
            return
        except (AirflowUnavailable, AirflowConflict):
            backfills = airflow._call("backfills", api.list_backfills, dag, limit=100).backfills
            if any(b.from_date == first for b in backfills):
                return
            if attempt == 19:
                raise
            time.sleep(0.5)


def _runs_between(airflow: AirflowClient, dag: str, first: datetime, last: datetime) -> list[RunInfo]:
    return airflow.runs_between(dag, first, last)


EXPERIMENTS = (max_active_runs, pools, sensors, native_backfill, *more.EXPERIMENTS)
DAGS = ("exp_max_active_runs", "exp_pool", "exp_sensor", "exp_native", "exp_shared_pool_a", "exp_shared_pool_b",
        "exp_sensor_reschedule", "exp_sensor_deferrable", "exp_native_cancel", "exp_depends_on_past",
        "exp_depends_on_past_newest", "exp_consecutive_failures")  # fmt: skip


def run_all(airflow: AirflowClient) -> list[Experiment]:
    """Every experiment, at once (each on its own DAG)."""
    deadline = time.time() + 180
    for dag in DAGS:
        while True:  # a fresh Airflow parses DAG files over its first seconds
            try:
                airflow.get_dag(dag)
                break
            except AirflowNotFound:
                if time.time() > deadline:
                    raise
                time.sleep(2)
    for pool_name in ("exp_one_slot", "exp_shared_slot"):
        with contextlib.suppress(AirflowConflict):  # made by an earlier run
            airflow._call("pool", PoolApi(airflow.api_client).post_pool, PoolBody(name=pool_name, slots=1))
    with ThreadPoolExecutor(len(EXPERIMENTS)) as pool:
        return list(pool.map(lambda f: f(airflow), EXPERIMENTS))


def report(experiments: list[Experiment]) -> str:
    out = ["# Experiments: Airflow's own features against the requirements", "",
           "Output of `python -m experiments.airflow_features` (a real `airflow standalone` 3.3 on PostgreSQL). "
           "Times are seconds from the experiment's first run start.", ""]  # fmt: skip
    for e in experiments:
        out += [f"## {e.title}", "", e.setup, "", "| requirement | met | what happened |", "|---|---|---|"]
        out += [f"| {f.requirement} | {'yes' if f.met else '**no**'} | {f.evidence} |" for f in e.findings]
        t0 = min((r.start_date for r in e.runs if r.start_date), default=None)
        out += ["", "| run | type | logical date | state | start | end |", "|---|---|---|---|---|---|"]
        for r in e.runs:
            rel = [f"{(d - t0).total_seconds():.1f}" if d and t0 else "-" for d in (r.start_date, r.end_date)]
            day = r.logical_date.date().isoformat() if r.logical_date else "-"
            out.append(f"| `{r.run_id}` | {r.run_type} | {day} | {r.state} | {rel[0]} | {rel[1]} |")
        out.append("")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m experiments.airflow_features", description=__doc__.split("\n")[0])
    ap.add_argument("--airflow-url")
    ap.add_argument("--user", default="admin")
    ap.add_argument("--password")
    ap.add_argument("--out", type=Path, help="also write the report to this file")
    args = ap.parse_args()
    stack = None
    if args.airflow_url:
        airflow = AirflowClient(AirflowConfig(url=args.airflow_url, username=args.user, password=args.password))
    else:
        from devstack import Stack

        stack = Stack(REPO / ".stack" / "experiments")
        print("starting airflow standalone with examples/dags ...", flush=True)
        stack.start_airflow(expect_dags=len(DAGS), database_url=stack.start_postgres())
        airflow = AirflowClient(AirflowConfig(url=stack.airflow_url, username="admin", password=stack.airflow_password))
    try:
        text = report(run_all(airflow))
    finally:
        if stack is not None:
            stack.stop_all()
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
