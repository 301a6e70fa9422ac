"""Shared body of the example ETL DAGs ("decks").

Each DAG has one task that "processes" its data interval: it sleeps for a while and can be
told to fail for chosen windows, so the demo and the tests can make slow, fast and failing DAGs
without more DAG files. Knobs come from the run's ``conf``:

- ``sleep``: seconds the task takes (default: the DAG's own default);
- ``fail_windows``: list of ISO ``data_interval_start`` values whose run must fail;
- ``fail_dags``: if given, only these DAGs fail their ``fail_windows``;
- ``fail_once_windows``: like ``fail_windows`` but only on the first try (a re-run after a
  clear succeeds), to show a transient failure and its resumption.
"""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any

from airflow.sdk import dag, get_current_context, task


def make_etl_dag(
    dag_id: str,
    *,
    default_sleep: float,
    schedule: Any = None,
    pool: str | None = None,
    start_date: datetime = datetime(2000, 1, 1),  # windows before a start_date get no tasks
    catchup: bool = False,
    max_active_runs: int = 1,
) -> object:
    @dag(
        dag_id=dag_id,
        schedule=schedule,
        start_date=start_date,
        catchup=catchup,
        max_active_runs=max_active_runs,
        tags=["backfill-example"],
    )
    def etl() -> None:
        @task(pool=pool or "default_pool")
        def process() -> dict[str, str]:
            ctx = get_current_context()
            conf = ctx["dag_run"].conf or {}
            start = ctx["data_interval_start"]
            end = ctx["data_interval_end"]
            print(f"processing {dag_id} [{start}, {end}) conf={conf}")
            time.sleep(float(conf.get("sleep", default_sleep)))
            fail_here = dag_id in conf.get("fail_dags", [dag_id])
            if fail_here and start is not None and start.isoformat() in set(conf.get("fail_windows", [])):
                raise RuntimeError(f"{dag_id}: window {start.isoformat()} told to fail")
            first_try = ctx["ti"].try_number <= 1
            if fail_here and first_try and start is not None and start.isoformat() in conf.get("fail_once_windows", []):
                raise RuntimeError(f"{dag_id}: window {start.isoformat()} told to fail on its first try")
            return {"start": str(start), "end": str(end)}

        process()

    return etl()
