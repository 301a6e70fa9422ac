"""Airflow DAG. Example deck: `etl_payments`, one task that takes about 3 s per window."""

from _etl import make_etl_dag

dag = make_etl_dag("etl_payments", default_sleep=3)
