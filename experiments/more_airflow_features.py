"""The experiments behind the rest of docs/concurrency.md's verdicts (run by airflow_features):

5. a pool of one slot shared by two DAGs: does a long task of one DAG hold up the other DAG?
6. sensors in ``reschedule`` and deferrable modes: do they free the worker slot while waiting,
   and do they keep one run at a time?
7. cancelling a native backfill while its first run runs: what happens to that run and the rest?
8. ``depends_on_past`` + ``wait_for_downstream`` with ``max_active_runs=1``: windows queued
   oldest first with the second failing, and two windows queued newest first;
9. ``max_consecutive_failed_dag_runs=2`` with every window queued up front, two failing.
"""

from __future__ import annotations

import contextlib
import time
from collections import Counter
from datetime import datetime, timedelta

from airflow_client.client import BackfillApi, BackfillPostBody, DagRunApi

from backfill.airflow import AirflowClient, RunInfo
from backfill.errors import AirflowConflict, AirflowNotFound, AirflowUnavailable
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


def _task_span(airflow: AirflowClient, dag: str, run_id: str) -> tuple[datetime, datetime]:
    (ti,) = task_instances(airflow, dag, run_id)
    return ti.start_date, ti.end_date


def _wait_state(airflow: AirflowClient, dag: str, run_id: str, states: set[str], timeout: float = 120) -> RunInfo:
    deadline = time.time() + timeout
    while True:
        run = airflow.get_run(dag, run_id)
        if run.state in states:
            return run
        if time.time() > deadline:  # a finding drawn from a setup that did not happen would be void
            raise TimeoutError(f"{dag}: run {run_id} not in {sorted(states)} within {timeout:.0f} s ({run.state})")
        time.sleep(0.5)


def _delete(airflow: AirflowClient, dag: str, runs: list[RunInfo]) -> None:
    """Runs left running forever (or failed) would hold the DAG for the next experiment; Airflow
    deletes only runs that are not active, so they are failed first."""
    api = DagRunApi(airflow.api_client)
    for run in runs:
        if run.active:
            airflow.fail_run(dag, run.run_id)
        with contextlib.suppress(AirflowNotFound):
            airflow._call("delete run", api.delete_dag_run, dag, run.run_id)


def shared_pool(airflow: AirflowClient) -> Experiment:
    a, b, tag = "exp_shared_pool_a", "exp_shared_pool_b", new_tag()
    e = Experiment("5. A pool shared by two DAGs", "DAGs `exp_shared_pool_a` (one 8 s task) and `exp_shared_pool_b` "
                   "(one 1 s task), both in pool `exp_shared_slot` of 1 slot. A run of A, then, once A's task "
                   "runs, a run of B.")  # fmt: skip
    trigger(airflow, a, fresh_day(airflow, a), f"{tag}__a")
    _wait_state(airflow, a, f"{tag}__a", {"running"})
    deadline = time.time() + 60
    while not any(ti.state == "running" for ti in task_instances(airflow, a, f"{tag}__a")):
        if time.time() > deadline:
            raise TimeoutError(f"{a}: its task did not start within 60 s")
        time.sleep(0.3)
    trigger(airflow, b, fresh_day(airflow, b), f"{tag}__b")
    run_a, run_b = wait_runs(airflow, a, tag, 1)[0], wait_runs(airflow, b, tag, 1)[0]
    e.runs = [run_a, run_b]
    a_task, b_task = _task_span(airflow, a, run_a.run_id), _task_span(airflow, b, run_b.run_id)
    waited = (b_task[0] - run_b.start_date).total_seconds()
    e.facts = {"b_waited_s": round(waited, 1), "b_started_after_a_ended": b_task[0] >= a_task[1],
               "b_run_s": round((run_b.end_date - run_b.start_date).total_seconds(), 1)}  # fmt: skip
    e.findings = [
        Finding("other DAGs are never blocked", not e.facts["b_started_after_a_ended"],
                f"B's 1 s task waited {e.facts['b_waited_s']} s (state `scheduled`) for A's task to free the "
                f"shared slot; B's run took {e.facts['b_run_s']} s"),
    ]  # fmt: skip
    return e


def sensor_modes(airflow: AirflowClient) -> Experiment:
    dags, tag = ("exp_sensor_reschedule", "exp_sensor_deferrable"), new_tag()
    e = Experiment("6. Sensors in `reschedule` and deferrable modes",
                   "`exp_sensor` (experiment 3) with `mode=\"reschedule\"` (poke every 2 s) and with "
                   "`deferrable=True` (the triggerer pokes every 1 s); three consecutive days of each triggered at "
                   "once; the sensors' states sampled every 0.5 s while they wait.")  # fmt: skip
    for dag in dags:
        first = fresh_day(airflow, dag)
        for i in range(3):
            trigger(airflow, dag, first + timedelta(days=i), f"{tag}__{i}")
    seen: dict[str, Counter[str]] = {dag: Counter() for dag in dags}
    deadline = time.time() + 120
    while time.time() < deadline:
        active = False
        for dag in dags:
            for ti in task_instances(airflow, dag, task_id="previous_day_done"):
                if ti.dag_run_id.startswith(tag) and ti.state:
                    seen[dag][str(getattr(ti.state, "value", ti.state))] += 1
            active |= any(r.active for r in airflow.runs_by_prefix(dag, tag))
        if not active:
            break
        time.sleep(0.5)
    runs = {dag: wait_runs(airflow, dag, tag, 3) for dag in dags}
    e.runs = [r for dag in dags for r in runs[dag]]
    resched, deferred = seen["exp_sensor_reschedule"], seen["exp_sensor_deferrable"]
    e.facts = {f"{dag}_states": dict(seen[dag]) for dag in dags} | {
        f"{dag}_max_runs_at_once": max_overlap(spans(runs[dag])) for dag in dags
    }
    e.facts["states"] = {dag: [r.state for r in runs[dag]] for dag in dags}

    def share(c: Counter[str], state: str) -> str:
        others = ", ".join(f"{n} `{s}`" for s, n in c.most_common() if s not in (state, "running"))
        return f"of {sum(c.values())} samples: {c[state]} `{state}`, {c['running']} `running` (others: {others})"

    e.findings = [
        # Any sample in the freed state proves the slot is given back between pokes (a `poke` sensor
        # is never seen so); how the samples split with `running` depends on the machine's load (a
        # re-queued poke's start-up counts as `running`), so it is reported, not judged.
        Finding("a waiting sensor frees its worker slot (reschedule)", resched["up_for_reschedule"] > 0,
                share(resched, "up_for_reschedule")),
        Finding("a waiting sensor frees its worker slot (deferrable)", deferred["deferred"] > 0,
                share(deferred, "deferred")),
        Finding("one run of the DAG at a time",
                any(e.facts[f"{dag}_max_runs_at_once"] == 1 for dag in dags),
                "runs at once: " + ", ".join(f"{e.facts[f'{d}_max_runs_at_once']} ({d})" for d in dags)),
        Finding("the first window runs", all(runs[dag][0].state == "success" for dag in dags),
                f"states {e.facts['states']}: as in poke mode, each window waits for a day outside the range or a "
                "failed one, until its sensor times out"),
    ]  # fmt: skip
    return e


def native_cancel(airflow: AirflowClient) -> Experiment:
    dag = "exp_native_cancel"
    api = BackfillApi(airflow.api_client)
    e = Experiment("7. Cancelling a native backfill", "DAG `exp_native_cancel` (daily schedule, `max_active_runs=1`, "
                   "one 4 s task). A backfill of 5 days (`max_active_runs=1`), cancelled "
                   "(`PUT /api/v2/backfills/{id}/cancel`) once its first run is running.")  # fmt: skip
    first = fresh_day(airflow, dag, month_start=True) + timedelta(days=9)
    body = BackfillPostBody(dag_id=dag, from_date=first, to_date=first + timedelta(days=4), max_active_runs=1)
    created = None
    for _ in range(20):
        try:
            created = airflow._call("backfill", api.create_backfill, body, idempotent=False)
            break
        except (AirflowUnavailable, AirflowConflict):
            time.sleep(0.5)
    assert created is not None, "the backfill was not created"
    deadline = time.time() + 120
    while not any(r.state == "running" for r in airflow.runs_between(dag, first, first + timedelta(days=4))):
        if time.time() > deadline:
            raise TimeoutError(f"{dag}: no run of the backfill running within 120 s")
        time.sleep(0.3)
    cancelled_at = airflow._call("cancel", api.cancel_backfill, created.id, idempotent=False).completed_at
    before = {r.run_id: r.state for r in airflow.runs_between(dag, first, first + timedelta(days=4))}
    deadline = time.time() + 120
    while time.time() < deadline:
        runs = airflow.runs_between(dag, first, first + timedelta(days=4))
        if not any(r.active for r in runs):
            break
        time.sleep(0.5)
    e.runs = runs = sorted(runs, key=lambda r: r.logical_date)
    running = [r for r in runs if before.get(r.run_id) == "running"]
    never_started = [r for r in runs if r.start_date is None]
    kept = running[0] if running else None
    e.facts = {"runs_at_cancel": before, "states_after": [r.state for r in runs], "never_started": len(never_started),
               "running_run_ended_s_after_cancel": round((kept.end_date - cancelled_at).total_seconds(), 1)
               if kept and kept.end_date else None}  # fmt: skip
    e.findings = [
        Finding("a cancel stops the run in flight", bool(kept) and kept.state != "success",
                f"the running run kept running and ended `{kept.state if kept else '-'}` "
                f"{e.facts['running_run_ended_s_after_cancel']} s after the cancel"),
        Finding("a cancel leaves the rest not run",
                len(never_started) == len(runs) - len(running) and all(r.state == "failed" for r in never_started),
                f"the {len(never_started)} queued runs were marked `failed` without starting (no task ran)"),
    ]  # fmt: skip
    return e


def depends_on_past(airflow: AirflowClient) -> Experiment:
    dag, newest, tag = "exp_depends_on_past", "exp_depends_on_past_newest", new_tag()
    e = Experiment("8. `depends_on_past` + `wait_for_downstream`, `max_active_runs=1`",
                   "DAGs `exp_depends_on_past` and `exp_depends_on_past_newest` (`max_active_runs=1`, tasks extract "
                   "→ load with `depends_on_past=True, wait_for_downstream=True`). Four windows queued oldest first, "
                   "the second told to fail; on the other DAG, two windows queued newest first. Observed for 20 s "
                   "after the failure, then deleted (they would hold the DAG for ever).")  # fmt: skip
    first = fresh_day(airflow, dag)
    for i in range(4):
        trigger(airflow, dag, first + timedelta(days=i), f"{tag}__{i}", {"fail": i == 1})
    other = fresh_day(airflow, newest)
    for i in reversed(range(2)):
        trigger(airflow, newest, other + timedelta(days=i), f"{tag}__{i}")
    _wait_state(airflow, dag, f"{tag}__1", {"failed", "success"})
    time.sleep(20)
    runs = sorted(airflow.runs_by_prefix(dag, tag), key=lambda r: r.logical_date)
    flipped = sorted(airflow.runs_by_prefix(newest, tag), key=lambda r: r.logical_date)
    e.runs = runs + flipped
    started = {r.run_id: [ti.task_id for ti in task_instances(airflow, dag, r.run_id) if ti.start_date] for r in runs}
    flipped_started = [ti for r in flipped for ti in task_instances(airflow, newest, r.run_id) if ti.start_date]
    e.facts = {"states": [r.state for r in runs], "tasks_started": started,
               "newest_first_states": [r.state for r in flipped],
               "newest_first_tasks_started": len(flipped_started)}  # fmt: skip
    _delete(airflow, dag, runs)
    _delete(airflow, newest, flipped)
    after_failure = [name for r in runs[2:] for name in started[r.run_id]]
    e.findings = [
        Finding("nothing runs after a failed window", not after_failure,
                f"no task of a later window started ({len(after_failure)})"),
        Finding("the DAG is free again after a failure", runs[2].state not in ("running", "queued"),
                f"states {e.facts['states']}: window 2 stays `running` with no task started and window 3 "
                "`queued` behind it, for ever (Airflow's deadlock check is off for `depends_on_past`); every later "
                "run of the DAG, scheduled ones too, waits until someone acts"),
        Finding("windows queued newest first run", bool(flipped_started),
                f"states {e.facts['newest_first_states']}, {len(flipped_started)} task(s) started: the newest window "
                "runs first and waits for the older one, which cannot start (`max_active_runs=1`): a deadlock"),
    ]  # fmt: skip
    return e


def consecutive_failures(airflow: AirflowClient) -> Experiment:
    dag, tag = "exp_consecutive_failures", new_tag()
    e = Experiment("9. `max_consecutive_failed_dag_runs=2`",
                   "DAG `exp_consecutive_failures` (`max_active_runs=1`, `max_consecutive_failed_dag_runs=2`, one "
                   "1 s task). Five windows queued up front in order (as `max_active_runs=1` needs), the first two "
                   "told to fail.")  # fmt: skip
    first = fresh_day(airflow, dag)
    for i in range(5):
        trigger(airflow, dag, first + timedelta(days=i), f"{tag}__{i}", {"fail": i < 2})
    runs = e.runs = wait_runs(airflow, dag, tag, 5)
    failed = [r for r in runs if r.state == "failed"]
    ran_after = [r for r in runs if r.start_date and failed and r.start_date >= max(f.end_date for f in failed)]
    paused = airflow.get_dag(dag).is_paused
    if paused:
        airflow.set_paused(dag, False)
    e.facts = {"states": [r.state for r in runs], "ran_after_two_failures": len(ran_after), "paused": paused}
    e.findings = [
        Finding("nothing runs after a failed window", not ran_after,
                f"{len(ran_after)} run(s) started after two consecutive failures; the DAG was "
                f"{'paused' if paused else 'not paused'}: Airflow counts the DAG's newest runs (by `run_after`, "
                "queued ones included), so windows queued up front keep the check from firing"),
    ]  # fmt: skip
    return e


EXPERIMENTS = (shared_pool, sensor_modes, native_cancel, depends_on_past, consecutive_failures)
