"""Airflow DAG. DAGs of the experiments in experiments/airflow_features.py, which evaluate
Airflow's own concurrency features against the orchestrator's requirements (docs/concurrency.md).
Not examples to follow: each one shows what a feature does and does not guarantee.

- ``exp_max_active_runs``: ``max_active_runs=1``; its run fails when ``conf["fail"]`` is true;
- ``exp_pool``: ``max_active_runs=16``, two tasks (extract, load) in a pool of one slot;
- ``exp_sensor``: ``max_active_runs=16``, waits (sensor) for its own previous day's run, then works;
- ``exp_native``: a daily schedule and ``max_active_runs=1``, for Airflow's native backfill; its
  run for the 3rd of a month fails.
"""

from __future__ import annotations

import time
from datetime import datetime, timedelta

from airflow.providers.standard.sensors.external_task import ExternalTaskSensor
from airflow.sdk import dag, get_current_context, task

START = datetime(2000, 1, 1)


@dag(dag_id="exp_max_active_runs", schedule=None, start_date=START, catchup=False, max_active_runs=1,
     tags=["experiment"])  # fmt: skip
def exp_max_active_runs() -> None:
    @task
    def work() -> None:
        time.sleep(2)
        if (get_current_context()["dag_run"].conf or {}).get("fail"):
            raise RuntimeError("told to fail")

    work()


@dag(dag_id="exp_pool", schedule=None, start_date=START, catchup=False, max_active_runs=16, tags=["experiment"])
def exp_pool() -> None:
    @task(pool="exp_one_slot")
    def extract() -> None:
        time.sleep(2)

    @task(pool="exp_one_slot")
    def load() -> None:
        time.sleep(2)

    extract() >> load()


@dag(dag_id="exp_sensor", schedule=None, start_date=START, catchup=False, max_active_runs=16, tags=["experiment"])
def exp_sensor() -> None:
    previous_day = ExternalTaskSensor(
        task_id="previous_day_done",
        external_dag_id="exp_sensor",
        external_task_id="work",
        execution_delta=timedelta(days=1),
        poke_interval=1,
        timeout=12,
        mode="poke",
    )

    @task
    def work() -> None:
        time.sleep(2)

    previous_day >> work()


@dag(dag_id="exp_native", schedule="@daily", start_date=START, catchup=False, max_active_runs=1, tags=["experiment"])
def exp_native() -> None:
    @task
    def work() -> None:
        time.sleep(2)
        logical = get_current_context()["logical_date"]
        if logical is not None and logical.day == 3:
            raise RuntimeError("the run of the 3rd fails")

    work()


exp_max_active_runs()
exp_pool()
exp_sensor()
exp_native()
