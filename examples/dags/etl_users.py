"""Airflow DAG. Example deck: `etl_users`, one task that takes about 1 s per window."""

from _etl import make_etl_dag

dag = make_etl_dag("etl_users", default_sleep=1)
