"""Airflow DAG. DAGs of the experiments in experiments/airflow_features.py, which evaluate
Airflow's own concurrency features against the orchestrator's requirements (docs/concurrency.md).
Not examples to follow: each one shows what a feature does and does not guarantee.

- ``exp_max_active_runs``: ``max_active_runs=1``; its run fails when ``conf["fail"]`` is true;
- ``exp_pool``: ``max_active_runs=16``, two tasks (extract, load) in a pool of one slot;
- ``exp_sensor``: ``max_active_runs=16``, waits (sensor) for its own previous day's run, then works;
- ``exp_native``: a daily schedule and ``max_active_runs=1``, for Airflow's native backfill; its
  run for the 3rd of a month fails;
- ``exp_shared_pool_a`` and ``exp_shared_pool_b``: two DAGs whose tasks share a pool of one slot;
- ``exp_sensor_reschedule``, ``exp_sensor_deferrable``: ``exp_sensor`` in the sensor's other modes;
- ``exp_native_cancel``: a daily schedule, one 4 s task, for cancelling a native backfill;
- ``exp_depends_on_past`` and ``exp_depends_on_past_newest``: ``max_active_runs=1``, tasks with
  ``depends_on_past`` and ``wait_for_downstream``; a run fails when ``conf["fail"]`` is true;
- ``exp_consecutive_failures``: ``max_active_runs=1``, ``max_consecutive_failed_dag_runs=2``; a
  run fails when ``conf["fail"]`` is true.
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


def sensor_dag(dag_id: str, **mode: object) -> None:
    """Waits (sensor) for the ``work`` task of its own previous day, then works."""

    @dag(dag_id=dag_id, schedule=None, start_date=START, catchup=False, max_active_runs=16, tags=["experiment"])
    def sensing() -> None:
        previous_day = ExternalTaskSensor(
            task_id="previous_day_done",
            external_dag_id=dag_id,
            external_task_id="work",
            execution_delta=timedelta(days=1),
            timeout=12,
            **mode,  # type: ignore[arg-type]
        )

        @task
        def work() -> None:
            time.sleep(2)

        previous_day >> work()

    sensing()


def _fail_if_told() -> None:
    if (get_current_context()["dag_run"].conf or {}).get("fail"):
        raise RuntimeError("told to fail")


def depends_on_past_dag(dag_id: str) -> None:
    args = {"depends_on_past": True, "wait_for_downstream": True}

    @dag(dag_id=dag_id, schedule=None, start_date=START, catchup=False, max_active_runs=1, default_args=args,
         tags=["experiment"])  # fmt: skip
    def ordered() -> None:
        @task
        def extract() -> None:
            time.sleep(1)
            _fail_if_told()

        @task
        def load() -> None:
            time.sleep(1)

        extract() >> load()

    ordered()


def shared_pool_dag(dag_id: str, seconds: int) -> None:
    @dag(dag_id=dag_id, schedule=None, start_date=START, catchup=False, tags=["experiment"])
    def pooled() -> None:
        @task(pool="exp_shared_slot")
        def work() -> None:
            time.sleep(seconds)

        work()

    pooled()


@dag(dag_id="exp_native", schedule="@daily", start_date=START, catchup=False, max_active_runs=1, tags=["experiment"])
def exp_native() -> None:
    @task
    def work() -> None:
        time.sleep(2)
        logical = get_current_context()["logical_date"]
        if logical is not None and logical.day == 3:
            raise RuntimeError("the run of the 3rd fails")

    work()


@dag(dag_id="exp_native_cancel", schedule="@daily", start_date=START, catchup=False, max_active_runs=1,
     tags=["experiment"])  # fmt: skip
def exp_native_cancel() -> None:
    @task
    def work() -> None:
        time.sleep(4)

    work()


@dag(dag_id="exp_consecutive_failures", schedule=None, start_date=START, catchup=False, max_active_runs=1,
     max_consecutive_failed_dag_runs=2, tags=["experiment"])  # fmt: skip
def exp_consecutive_failures() -> None:
    @task
    def work() -> None:
        time.sleep(1)
        _fail_if_told()

    work()


exp_max_active_runs()
exp_pool()
sensor_dag("exp_sensor", mode="poke", poke_interval=1)
sensor_dag("exp_sensor_reschedule", mode="reschedule", poke_interval=2)
sensor_dag("exp_sensor_deferrable", deferrable=True, poke_interval=1)
exp_native()
exp_native_cancel()
shared_pool_dag("exp_shared_pool_a", 8)
shared_pool_dag("exp_shared_pool_b", 1)
depends_on_past_dag("exp_depends_on_past")
depends_on_past_dag("exp_depends_on_past_newest")
exp_consecutive_failures()
