"""Airflow DAG. Example deck: `etl_orders`, one task that takes about 2 s per window."""

from _etl import make_etl_dag

dag = make_etl_dag("etl_orders", default_sleep=2)
