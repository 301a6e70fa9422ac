"""Airflow DAGs of the benchmarks (bench/), started with their own Airflow.

- ``bench_daily_1..3``: the B1 comparison with Airflow's native backfill: a daily schedule
  (native backfill only follows a DAG's own schedule), ``max_active_runs=1``, one 1 s task;
- ``bench_run_2s`` / ``bench_run_60s``: the B2 load measurement, one task of 2 s / 60 s.
"""

from __future__ import annotations

import time
from datetime import datetime

from airflow.sdk import dag, task


def _make(dag_id: str, *, seconds: float, schedule: str | None) -> object:
    @dag(
        dag_id=dag_id,
        schedule=schedule,
        start_date=datetime(2000, 1, 1),
        catchup=False,
        max_active_runs=1,
        tags=["backfill-bench"],
    )
    def bench() -> None:
        @task
        def work() -> None:
            time.sleep(seconds)

        work()

    return bench()


for _i in (1, 2, 3):
    globals()[f"bench_daily_{_i}"] = _make(f"bench_daily_{_i}", seconds=1, schedule="@daily")
bench_run_2s = _make("bench_run_2s", seconds=2, schedule=None)
bench_run_60s = _make("bench_run_60s", seconds=60, schedule=None)
