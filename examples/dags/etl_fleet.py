"""Airflow DAG file that makes a fleet of 50 small decks (fleet_00 .. fleet_49).

Used to show that two worker processes carry 50 DAGs in flight at once: a waiting window holds
no worker process. Their task runs in the pool ``fleet_gate`` (create it first, e.g. in the UI or
``POST /api/v2/pools``): with 0 slots every run waits, so a test can hold 50 runs in flight
without asking a 2-core SQLite Airflow to execute 50 tasks at once, then open the gate.
"""

from _etl import make_etl_dag

for _i in range(50):
    globals()[f"fleet_{_i:02d}"] = make_etl_dag(f"fleet_{_i:02d}", default_sleep=1, pool="fleet_gate")
